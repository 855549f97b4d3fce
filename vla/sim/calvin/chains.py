"""The 1000 CALVIN evaluation chains: the reference's seeded generation, and the shipped result.

Generation (as the reference evaluation does it, with numpy's legacy generator, see `legacy_rng`):
the 1000 chains are split over the 192 initial states in consecutive near-equal sections (40
states get 6, the rest 5); for state i the generator is seeded with i and draws 5 distinct
subtasks until that many feasible chains were found (duplicates kept); the (state, chain) pairs,
in state order, are then shuffled once with seed 0. Other totals give a different set, not a
prefix, so only N = 1000 is generated and a smaller evaluation takes the first n of them.

Generation needs minutes (millions of rejected draws, each checked in Python), so the result ships as
`data/eval_chains.json` (`python -m vla.sim.calvin.chains` regenerates it) and
`evaluation_chains()` reads it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from vla.sim.base import SimError
from vla.sim.calvin.legacy_rng import LegacyRandom
from vla.sim.calvin.tasks import STATE_KEYS, SUBTASKS, State, feasible_chain, initial_states

NUM_CHAINS = 1000
CHAIN_LENGTH = 5
DATA_FILE = "eval_chains.json"
SHUFFLE_SEED = 0


@dataclass(frozen=True)
class Chain:
    index: int  # position in the evaluation order (the resume key)
    state_id: int  # which of the 192 initial states
    state: tuple[tuple[str, Any], ...]  # the symbolic start state, in key order
    subtasks: tuple[str, ...]

    @property
    def state_dict(self) -> State:
        return dict(self.state)


def quota(total: int, parts: int) -> list[int]:
    """numpy `array_split` section sizes: the first `total % parts` sections get one more."""
    base, extra = divmod(total, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


def chains_for_state(state: State, count: int, seed: int) -> list[tuple[str, ...]]:
    """`count` feasible chains drawn with the generator seeded with `seed` (duplicates kept)."""
    rng = LegacyRandom(seed)
    out: list[tuple[str, ...]] = []
    while len(out) < count:
        chain = tuple(SUBTASKS[k] for k in rng.choice_without_replacement(len(SUBTASKS), CHAIN_LENGTH))
        if feasible_chain(state, chain):
            out.append(chain)
    return out


def generate_chains(total: int = NUM_CHAINS, progress: bool = False) -> list[tuple[int, tuple[str, ...]]]:
    """(initial state id, subtasks) pairs in evaluation order, generated as the reference does."""
    states = initial_states()
    pairs: list[tuple[int, tuple[str, ...]]] = []
    for i, (state, count) in enumerate(zip(states, quota(total, len(states)), strict=True)):
        pairs += [(i, chain) for chain in chains_for_state(state, count, seed=i)]
        if progress:
            print(f"\rstate {i + 1}/{len(states)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    LegacyRandom(SHUFFLE_SEED).shuffle(pairs)
    return pairs


# --- the shipped file ---------------------------------------------------------------------------------


def to_json(pairs: list[tuple[int, tuple[str, ...]]]) -> dict[str, Any]:
    states = initial_states()
    return {
        "description": "CALVIN evaluation chains (reference order): initial state id, its symbolic state "
        "(values in state_keys order) and the 5 subtasks; regenerate with `python -m vla.sim.calvin.chains`",
        "state_keys": list(STATE_KEYS),
        "chains": [
            {"state_id": sid, "state": [states[sid][k] for k in STATE_KEYS], "subtasks": list(chain)}
            for sid, chain in pairs
        ],
    }


def dump_json(data: dict[str, Any]) -> str:
    """The data file's text: one chain per line (readable diffs, small file)."""
    head = {k: v for k, v in data.items() if k != "chains"}
    lines = [json.dumps(c, separators=(", ", ": ")) for c in data["chains"]]
    body = json.dumps(head, indent=1)[:-2]  # drop the closing brace; the chain list follows
    return body + ',\n "chains": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def _data_text() -> str:
    return resources.files("vla.sim.calvin").joinpath("data", DATA_FILE).read_text()


@lru_cache(maxsize=1)
def _shipped() -> tuple[Chain, ...]:
    try:
        data = json.loads(_data_text())
        keys = tuple(data["state_keys"])
        if keys != STATE_KEYS:
            raise ValueError(f"state_keys {keys} differ from {STATE_KEYS}")
        return tuple(
            Chain(n, int(c["state_id"]), tuple(zip(keys, c["state"], strict=True)), tuple(c["subtasks"]))
            for n, c in enumerate(data["chains"])
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SimError(
            f"vla/sim/calvin/data/{DATA_FILE}: unreadable ({e}); reinstall vla or regenerate it with "
            "`python -m vla.sim.calvin.chains`"
        ) from None


def evaluation_chains(n: int = NUM_CHAINS) -> list[Chain]:
    """The first `n` of the reference's 1000 evaluation chains."""
    chains = _shipped()
    if not 1 <= n <= len(chains):
        raise SimError(f"the CALVIN evaluation has {len(chains)} chains; asked for {n} (choose 1..{len(chains)})")
    return list(chains[:n])


def main() -> None:
    path = Path(__file__).parent / "data" / DATA_FILE
    pairs = generate_chains(progress=True)
    path.write_text(dump_json(to_json(pairs)))
    print(f"wrote {len(pairs)} chains to {path}")


if __name__ == "__main__":
    main()
