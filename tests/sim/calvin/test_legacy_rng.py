"""The pure-Python legacy generator against numpy's RandomState (the reference RNG), and FNV-1."""

from __future__ import annotations

import numpy as np
import pytest

from vla.sim.calvin.chains import chains_for_state, quota
from vla.sim.calvin.legacy_rng import LegacyRandom, fnv1_32, init_genrand
from vla.sim.calvin.tasks import SUBTASKS, feasible_chain, initial_states


@pytest.mark.parametrize("seed", [0, 1, 7, 191, 3910690890, 2**32 - 1])
def test_seeding_is_numpy_integer_seeding(seed):
    key = np.random.RandomState(seed).get_state()[1]
    assert init_genrand(seed) == tuple(int(v) for v in key)


@pytest.mark.parametrize("seed", [0, 3, 55])
def test_draws_match_numpy(seed):
    ours, ref = LegacyRandom(seed), np.random.RandomState(seed)
    words = [ours.bits32() for _ in range(700)]  # crosses a 624-word block
    assert words == ref.randint(0, 2**32, size=700, dtype=np.uint64).tolist()
    for _ in range(50):  # the first states' permutation draws, many blocks deep
        assert ours.permutation(34) == ref.permutation(34).tolist()
    assert ours.uniform(1.0, 2.0) == ref.uniform(1.0, 2.0)
    assert ours.random() == ref.random_sample()
    items, ref_items = list(range(37)), list(range(37))
    ours.shuffle(items)
    ref.shuffle(ref_items)
    assert items == ref_items
    assert ours.choice_without_replacement(34, 5) == ref.choice(34, size=5, replace=False).tolist()
    assert [ours.interval(5) for _ in range(20)] == [int(ref.randint(0, 6)) for _ in range(20)]


def test_a_permutation_crossing_the_word_buffer_stays_exact():
    ours, ref = LegacyRandom(11), np.random.RandomState(11)
    for _ in range(623):
        assert ours.bits32() == int(ref.randint(0, 2**32, dtype=np.uint64))
    ours._words, ours._pos = ours._words[: ours._pos + 3], ours._pos  # only 3 buffered words left
    assert ours.permutation(34) == ref.permutation(34).tolist()


def test_fnv1_vectors():
    assert fnv1_32("test") == 3910690890  # text: UTF-16-LE bytes
    assert fnv1_32(b"test") == 3698262380
    assert fnv1_32(b"") == 0  # start value 0, not the usual offset basis


def _numpy_chains_for_state(state, count, seed):
    """The reference's per-state loop with numpy itself."""
    np.random.seed(seed)
    out = []
    while len(out) < count:
        chain = tuple(np.random.choice(list(SUBTASKS), size=5, replace=False).tolist())
        if feasible_chain(state, chain):
            out.append(chain)
    return out


def test_regenerating_a_prefix_matches_numpy_and_the_shipped_file():
    from vla.sim.calvin.chains import evaluation_chains

    states, counts = initial_states(), quota(1000, 192)
    shipped = evaluation_chains(1000)
    # Undo the final seed-0 shuffle with numpy: shipped[j] is the unshuffled pair order[j].
    order = list(range(1000))
    np.random.RandomState(0).shuffle(order)
    unshuffled = [None] * 1000
    for j, k in enumerate(order):
        unshuffled[k] = shipped[j]
    start = 0
    for i in range(3):
        ours = chains_for_state(states[i], counts[i], seed=i)
        assert ours == _numpy_chains_for_state(states[i], counts[i], seed=i)
        logged = unshuffled[start : start + counts[i]]
        assert [c.state_id for c in logged] == [i] * counts[i]
        assert [c.subtasks for c in logged] == ours
        start += counts[i]
