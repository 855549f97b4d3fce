"""The CALVIN evaluation protocol: 1000 reference chains of 5 language subtasks, one chain per episode.

Per chain (as the reference `evaluate_policy.py`): one reset to the chain's start state, then per
subtask its validation instruction, a fresh observation history, up to 360 steps, success as soon
as the oracle sees that subtask happen since the subtask began; the scene is not reset between
subtasks and a chain stops at its first failure. Metrics: `chain_sr[i]` = share of chains with at
least i consecutive successes (i = 1..5), average length = their sum (= mean completed subtasks).

A chain is one `EpisodeSpec` (`calvin/<k>`, the resume key) of a multi-stage `CalvinEnv`; the rest
(policy, workers, the resumable JSONL log, videos, report) is the skeleton of vla.eval.protocol.
The chains are the shipped reference chains (vla/sim/calvin/data). The simulator is the real
calvin_env, or any picklable backend factory handed in through the Python API (tests use a fake).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vla.datasets.conventions.calvin import CAMERAS, EMBODIMENT, FPS, IMAGE_SIZES, calvin_spec
from vla.datasets.spec import StoreSpec
from vla.eval.episodes import EpisodeResult, EpisodeSpec, EvalError, completed_stages, derive_seed
from vla.eval.planners import Planner
from vla.eval.protocol import EvalProtocol, PreparedEval, Replan, ResolvedPolicy, SummaryParts, policy_cameras
from vla.eval.report import plot_bars, write_report
from vla.eval.results import ResultsLog
from vla.eval.runner import RunStats
from vla.sim.base import SimError
from vla.sim.calvin import tasks
from vla.sim.calvin.chains import CHAIN_LENGTH, NUM_CHAINS, Chain, evaluation_chains
from vla.sim.calvin.env import EP_LEN, BackendFactory, CalvinEnv, SimulatorFactory
from vla.sim.calvin.instructions import instruction
from vla.statistics import format_rate, wilson_interval

VIDEO_CAMERA = "static"
SELECTION_SETTINGS = ("chains", "chain_ids")  # may change on resume (extend to more chains)
DEFAULT_SIZES = {CAMERAS[k]: v for k, v in IMAGE_SIZES.items()}


@dataclass
class CalvinEvalConfig:
    """One CALVIN evaluation (see the module docstring)."""

    out: Path
    policy: str | Planner = "random"  # "random", a checkpoint directory, or a planner object (Python API)
    chains: int = NUM_CHAINS  # the first N reference chains
    chain_ids: Sequence[int] | None = None  # explicit chains instead (overrides `chains`)
    # NOT the protocol: keep only chains whose first subtask is one of these, each cut before its first
    # subtask outside the set (`filter_chains`); recorded in the settings, so a comparison with a
    # protocol run is refused.
    subtasks: Sequence[str] | None = None
    max_steps: int = EP_LEN  # per subtask
    seed: int = 0  # policy sampling and the random planner
    replan_steps: int | None = None  # actions executed per plan (default: the policy's n_action_steps)
    workers: int = 1
    policy_in_workers: bool = False
    ray: str | None = None  # run on Ray: "auto" (a local instance) or a cluster address (vla.eval.ray_runner)
    videos: int = 0  # MP4s kept, failed chains first (static camera, rendered from saved states)
    video_chains: Sequence[int] | None = None  # chains whose video is always kept
    device: str = "cpu"
    # The simulator: None for calvin_env (PyBullet), else a picklable factory of `CalvinBackend`s that
    # says what it renders (`image_sizes`: camera -> square size) and may `describe()` itself.
    backend: BackendFactory | None = None
    renderer: str = "egl"  # calvin_env's renderer: "egl" | "tiny" (CPU)
    dynamic_horizon: float | None = None
    api_key: str | None = None  # --policy ws://...: the policy server's api key (never recorded)
    resume: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CalvinEnvFactory:
    """Builds the chain environment in each worker (picklable)."""

    backend: BackendFactory
    cameras: tuple[str, ...]
    image_sizes: tuple[tuple[str, int], ...]
    max_steps: int
    # Cut chains (`--subtasks`): all 1000 with the cut ones in their places; None: the reference chains.
    chains: tuple[Chain, ...] | None = None

    def __call__(self, spec: EpisodeSpec | None = None) -> CalvinEnv:
        return CalvinEnv(self.backend, chains=self._all_chains(), cameras=self.cameras,
                         image_sizes=dict(self.image_sizes), max_steps=self.max_steps)  # fmt: skip

    def _all_chains(self) -> list[Chain] | None:
        """The env resets by chain index: every reference chain, the cut ones replacing theirs."""
        if self.chains is None:
            return None
        every = evaluation_chains(NUM_CHAINS)
        for chain in self.chains:
            every[chain.index] = chain
        return every


# --- preparation ---------------------------------------------------------------------------------------


def select_chains(count: int, ids: Sequence[int] | None, subtasks: Sequence[str] | None = None) -> list[Chain]:
    """The reference chains to run: the first `count`, or those of `ids`; with `subtasks`, the filtered
    chains (`filter_chains`) among all 1000 (or among `ids`), the first `count` of them."""
    every = evaluation_chains(NUM_CHAINS)
    if not 1 <= count <= NUM_CHAINS:
        raise EvalError(f"--chains must be in 1..{NUM_CHAINS}, got {count}")
    if ids is not None:
        bad = [i for i in ids if not 0 <= i < NUM_CHAINS]
        if bad:
            raise EvalError(
                f"chain ids {bad} out of range: the evaluation has {NUM_CHAINS} chains (0..{NUM_CHAINS - 1})"
            )
        if not ids:
            raise EvalError("no chains selected")
        every = [every[i] for i in ids]
    if subtasks is None:
        return every if ids is not None else every[:count]
    kept = filter_chains(every, subtasks)
    if not kept:
        raise EvalError(
            f"no chain of the selection starts with one of the subtasks {', '.join(subtasks)}; add subtasks or "
            "select other chains"
        )
    return kept if ids is not None else kept[:count]


def check_subtasks(subtasks: Sequence[str]) -> tuple[str, ...]:
    """The --subtasks names, checked (one error naming every unknown one), without repeats."""
    try:
        return tasks.check_subtasks(subtasks)
    except SimError as e:
        raise EvalError(str(e)) from None


def filter_chains(chains: Sequence[Chain], subtasks: Sequence[str]) -> list[Chain]:
    """NOT the protocol: the chains whose FIRST subtask is in `subtasks`, each cut before its first subtask
    outside the set (in reference order, keeping each chain's index, start state and scene).

    A chain has at most one subtask per category, so a few categories (e.g. sliders, drawer, lights) never
    fill a whole chain of 5; the cut keeps what a policy trained on those subtasks can be asked."""
    allowed = set(check_subtasks(subtasks))
    out = []
    for chain in chains:
        n = next((i for i, name in enumerate(chain.subtasks) if name not in allowed), len(chain.subtasks))
        if n:
            out.append(replace(chain, subtasks=chain.subtasks[:n]))
    return out


class CalvinProtocol(EvalProtocol):
    """CALVIN: the skeleton (vla.eval.protocol) with reference chains, a simulator backend and chain metrics."""

    benchmark = "calvin"
    embodiment = EMBODIMENT
    fps = FPS
    selection = SELECTION_SETTINGS
    unit = "chains"
    bar_unit = "chain"

    config_class = CalvinEvalConfig
    config: CalvinEvalConfig

    @staticmethod
    def print_summary(summary: Mapping[str, Any], console: Any = None) -> None:
        print_summary(summary, console)

    def select(self) -> None:
        if self.config.max_steps < 1:
            raise EvalError(f"--max-steps must be >= 1, got {self.config.max_steps}")
        self.chains = select_chains(self.config.chains, self.config.chain_ids, self.config.subtasks)

    def env_spec(self, policy: ResolvedPolicy) -> StoreSpec:
        self.cameras, self.image_sizes = _cameras(policy.config, policy.data_spec, self.config.backend)
        return calvin_spec({_calvin_key(c): (self.image_sizes[c], self.image_sizes[c], 3) for c in self.cameras})

    def env_factory(self) -> CalvinEnvFactory:
        backend = self.config.backend
        if backend is None:
            sizes = self.image_sizes
            backend = SimulatorFactory(
                self.cameras or ("static",),
                sizes.get("static", IMAGE_SIZES["rgb_static"]),
                sizes.get("gripper", IMAGE_SIZES["rgb_gripper"]),
                self.config.renderer,
            )
            backend.check()  # a missing simulator is one clear error here, not a failed worker later
        chains = tuple(self.chains) if self.config.subtasks is not None else None
        return CalvinEnvFactory(backend, self.cameras, tuple(self.image_sizes.items()), self.config.max_steps, chains)

    def episodes(self) -> list[EpisodeSpec]:
        return [_episode(c, self.config.seed) for c in self.chains]

    def settings(self, policy: ResolvedPolicy, replan: Replan) -> dict[str, Any]:
        config = self.config
        real = config.backend is None
        protocol = "reference (mees/calvin evaluate_policy.py): 1 reset per chain, no reset between subtasks"
        if config.subtasks is not None:
            protocol = (
                "NOT the protocol: chains filtered by --subtasks (first subtask in the set, cut before the "
                "first subtask outside it); " + protocol
            )
        return {
            "benchmark": "calvin",
            "protocol": protocol,
            "subtask_filter": list(check_subtasks(config.subtasks)) if config.subtasks is not None else None,
            "chains": len(self.chains) if config.chain_ids is None else None,
            "chain_ids": list(config.chain_ids) if config.chain_ids is not None else None,
            "chain_source": "get_sequences(1000) of the reference, shipped in vla/sim/calvin/data/eval_chains.json",
            "subtasks_per_chain": CHAIN_LENGTH if config.subtasks is None else "at most 5 (cut by --subtasks)",
            "max_steps_per_subtask": config.max_steps,
            "language": "first instruction of new_playtable_validation.yaml per subtask",
            "success": "the subtask oracle (calvin_env task rules) on get_info() at subtask start vs now; "
            "only the requested subtask counts",
            "gripper": "action[6] > 0 -> open (+1), else close (-1)",
            "replan_steps": replan.setting,
            "dynamic_horizon": config.dynamic_horizon,
            "cameras": list(self.cameras),
            "image_sizes": dict(self.image_sizes),
            "backend": "calvin" if real else _describe(config.backend).get("backend", type(config.backend).__name__),
            "renderer": config.renderer if real else None,
            "run_seed": config.seed,
            "policy": policy.label,
            **config.extra,
        }

    def video_renderer(self, factory: CalvinEnvFactory) -> CalvinVideoRenderer:
        return CalvinVideoRenderer(factory)

    def filmed(self) -> set[str]:
        return {f"calvin/{i}" for i in (self.config.video_chains or ())}

    def start_progress(self, plan: PreparedEval, log: ResultsLog, done_before: int) -> None:
        self._lengths = [completed_length(log.records[e.episode_id]) for e in plan.episodes
                         if e.episode_id in log.records]  # fmt: skip

    def progress(self, result: EpisodeResult, stats: RunStats) -> dict[str, str]:
        self._lengths.append(result.stages_completed)
        sr = chain_success_rates(self._lengths)
        return {"avg_len": f"{sum(sr):.2f}", **{f"sr{i + 1}": f"{v:.0%}" for i, v in enumerate(sr)}}

    def summarize(self, plan: PreparedEval, records: list[dict[str, Any]]) -> SummaryParts:
        lengths = [completed_length(r) for r in records]
        sr = chain_success_rates(lengths)
        per_subtask = subtask_rates(records)
        return SummaryParts(
            preset="reference",
            counts={
                "chains": len(records),
                "chains_planned": len(plan.episodes),
                "episodes": len(records),
                "chain_sr": {str(i + 1): v for i, v in enumerate(sr)},
                # Wilson 95% interval of each position's share of chains
                "chain_sr_ci95": {
                    str(i + 1): list(wilson_interval(sum(1 for n in lengths if n > i), len(lengths)))
                    for i in range(CHAIN_LENGTH)
                },
                "avg_len": sum(sr),
                "length_histogram": {str(n): lengths.count(n) for n in range(CHAIN_LENGTH + 1)},
                "successes": sum(1 for n in lengths if n == CHAIN_LENGTH),
                "success_rate": sr[-1],
                "success_ci95": list(wilson_interval(sum(1 for n in lengths if n == CHAIN_LENGTH), len(lengths))),
                "errors": sum(1 for r in records if r.get("error")),
                # --subtasks cuts chains: the mean length asked is the ceiling of avg_len (5 under the protocol)
                "asked_avg_len": float(np.mean([len(r.get("subtasks") or ()) or CHAIN_LENGTH for r in records]))
                if records
                else 0.0,
            },
            # rows for the generic report table: one per subtask
            tasks=[
                {"task": name, "name": instruction(name) if name else "", "errors": 0, **row}
                for name, row in per_subtask.items()
            ],
            context={"simulator": _describe(plan.factory.backend)},
        )

    def write_report(self, out: Path, summary: Mapping[str, Any]) -> Path:
        return write_calvin_report(out, summary)


def evaluate_calvin(config: CalvinEvalConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a CALVIN evaluation into `config.out`; returns the summary (also summary.json)."""
    return CalvinProtocol(config).run(progress)


def _describe(backend: Any) -> dict[str, Any]:
    """A backend's identity for summary.json (`describe()` where it has one)."""
    return getattr(backend, "describe", dict)()


def _episode(chain: Chain, run_seed: int) -> EpisodeSpec:
    eid = f"calvin/{chain.index}"
    return EpisodeSpec(
        episode_id=eid,
        env_key="calvin",  # one environment for every chain: each chain resets the scene itself
        task="calvin",
        task_id=chain.index,
        init_state_id=chain.index,
        seed=None,
        policy_seed=derive_seed(run_seed, eid),
        meta={"chain": chain.index, "state_id": chain.state_id, "subtasks": list(chain.subtasks)},
    )


def _calvin_key(camera: str) -> str:
    return next(k for k, v in CAMERAS.items() if v == camera)


def _cameras(
    policy_config: Any, data_spec: Any, backend: BackendFactory | None
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Cameras the policy reads and their square sizes: calvin_env's renders, resized to the training
    data's (from its data spec) where known; a given backend renders what it says it renders."""
    cameras = policy_cameras(policy_config, DEFAULT_SIZES)
    if backend is not None:
        # A test backend films its static camera even for a policy that reads none (the image path runs).
        sizes = dict(backend.image_sizes)
        return cameras or ("static",), {c: sizes[c] for c in (cameras or ("static",))}
    sizes = dict(DEFAULT_SIZES)
    for cam in getattr(data_spec, "cameras", ()) or ():
        if cam.name in sizes:
            sizes[cam.name] = cam.height
    return cameras, {c: sizes[c] for c in (cameras or ("static",))}


# --- metrics -------------------------------------------------------------------------------------------


def completed_length(record: Mapping[str, Any]) -> int:
    """Consecutive successful subtasks of a logged chain."""
    return completed_stages(record.get("stages") or [])


def chain_success_rates(lengths: Sequence[int], positions: int = CHAIN_LENGTH) -> list[float]:
    """`chain_sr[i - 1]`: share of chains with at least i consecutive successes, i = 1..positions."""
    if not lengths:
        return [0.0] * positions
    return [sum(1 for n in lengths if n >= i) / len(lengths) for i in range(1, positions + 1)]


def subtask_rates(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per subtask: attempts, successes, rate with its Wilson 95% interval, mean steps (over attempts), as the
    reference's task_info."""
    tries, wins, steps = Counter(), Counter(), Counter()
    for r in records:
        for stage in r.get("stages") or []:
            name = stage.get("name") or ""
            tries[name] += 1
            wins[name] += int(bool(stage.get("success")))
            steps[name] += int(stage.get("steps", 0))
    return {
        name: {
            "trials": tries[name],
            "successes": wins[name],
            "success_rate": wins[name] / tries[name],
            "ci95": list(wilson_interval(wins[name], tries[name])),
            "mean_steps": steps[name] / tries[name],
        }
        for name in sorted(tries, key=lambda n: (-tries[n], n))
    }


# --- videos and report --------------------------------------------------------------------------------


class CalvinVideoRenderer:
    """Renders kept chains from their recorded states with a backend of its own, built on first use."""

    def __init__(self, factory: CalvinEnvFactory):
        self.factory = factory
        self._backend: Any = None

    def render(self, result: EpisodeResult, states: np.ndarray) -> np.ndarray:
        if self._backend is None:
            self._backend = self.factory.backend()
        return np.stack([np.asarray(self._backend.render_state(s)["rgb_static"], np.uint8) for s in states])

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._backend = None


def position_table(summary: Mapping[str, Any]) -> str:
    sr = summary["chain_sr"]
    head = "| " + " | ".join(f"{i}/5" for i in sr) + " | avg. len |"
    rule = "|" + "---|" * (len(sr) + 1)
    row = "| " + " | ".join(f"{v:.1%}" for v in sr.values()) + f" | **{summary['avg_len']:.2f}** |"
    return "\n".join(["## Success by chain position (chains with at least i subtasks in a row)", "", head, rule, row])


def write_calvin_report(out: Path, summary: Mapping[str, Any]) -> Path:
    def plot(s: Mapping[str, Any], path: Path) -> Path:
        sr = s["chain_sr"]
        title = f"CALVIN: {s['chains']} chains, avg. len {s['avg_len']:.2f}"
        return plot_bars(path, [f"{i}/5" for i in sr], list(sr.values()), title, "share of chains")

    headline = (
        f"Policy: `{summary.get('policy', {}).get('source', '')}`; {summary['chains']} chains "
        f"(of {summary['chains_planned']} planned), average length **{summary['avg_len']:.2f}**, "
        f"wall time {summary.get('wall_s', 0):.0f} s. Simulator: `{summary.get('simulator', {})}`."
    )
    if filter_note(summary):
        headline = f"**{filter_note(summary)}**\n\n{headline}"
    subtask_note = "## Per subtask (attempts reached in a chain)"
    return write_report(out, summary, headline=headline, sections=[position_table(summary), subtask_note], plot=plot)


def filter_note(summary: Mapping[str, Any]) -> str:
    """The warning a --subtasks run carries in its report and printout ('' for a protocol run)."""
    kept = (summary.get("settings") or {}).get("subtask_filter")
    if not kept:
        return ""
    return (
        f"NOT the CALVIN protocol: chains filtered to the subtasks {', '.join(kept)} (first subtask in the set, "
        f"cut before the first one outside it); mean length asked {summary.get('asked_avg_len', 0):.2f} of 5."
    )


def print_summary(summary: Mapping[str, Any], console: Any = None) -> None:
    """Success by position, average length, per-subtask table, throughput."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    sr = summary["chain_sr"]
    note = filter_note(summary)
    title = f"CALVIN ({summary['chains']} chains)" + (" - NOT the protocol" if note else "")
    table = Table(*(f"{i}/5" for i in sr), "avg. len", title=title)
    table.add_row(*(f"{v:.1%}" for v in sr.values()), f"{summary['avg_len']:.2f}", style="bold")
    console.print(table)
    if summary["tasks"]:
        sub = Table("subtask", "attempts", "successes", "rate [95% CI]", "mean steps", title="per subtask")
        for row in summary["tasks"]:
            sub.add_row(
                row["task"],
                str(row["trials"]),
                str(row["successes"]),
                format_rate(row["success_rate"], row.get("ci95")),
                f"{row['mean_steps']:.0f}",
            )
        console.print(sub)
    if note:
        console.print(note, markup=False)
    t, run = summary["throughput"], summary["run"]
    console.print(
        f"{t['env_steps_per_s']:.1f} env steps/s, {t['policy_calls_per_s']:.2f} policy calls/s; "
        f"{run['workers']} worker(s), {t['episodes']} chains run now, {run['resumed_episodes']} from before"
    )
