"""The CALVIN evaluation protocol: 1000 reference chains of 5 language subtasks, one chain per episode.

Per chain (as the reference `evaluate_policy.py`): one reset to the chain's start state, then per
subtask its validation instruction, a fresh observation history, up to 360 steps, success as soon
as the oracle sees that subtask happen since the subtask began; the scene is not reset between
subtasks and a chain stops at its first failure. Metrics: `chain_sr[i]` = share of chains with at
least i consecutive successes (i = 1..5), average length = their sum (= mean completed subtasks).

A chain is one `EpisodeSpec` (`calvin/<k>`, the resume key) of a multi-stage `CalvinEnv`; workers,
the resumable JSONL log, videos and the report are the generic machinery of vla.eval (runner,
worker, results, report). The chains are the shipped reference chains (vla/sim/calvin/data).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.eval.episodes import EpisodeResult, EpisodeSpec, EvalError, derive_seed
from vla.eval.fit import check_policy_fits
from vla.eval.planners import PlannerSpec, PolicyPlanner, load_data_spec, policy_decides_horizon
from vla.eval.report import VIDEO_DIR, VideoKeeper, plot_bars, write_report
from vla.eval.results import ResultsLog, finish_run, start_run
from vla.eval.runner import RunStats, run_episodes
from vla.eval.worker import SlotConfig
from vla.sim.calvin.chains import CHAIN_LENGTH, NUM_CHAINS, Chain, evaluation_chains
from vla.sim.calvin.conventions import CAMERAS, FPS, IMAGE_SIZES, calvin_spec
from vla.sim.calvin.conventions import EMBODIMENT as CALVIN_EMBODIMENT
from vla.sim.calvin.env import EP_LEN, CalvinEnv, SimulatorFactory
from vla.sim.calvin.fake import FakeBackendFactory, ScriptedPlanner
from vla.sim.calvin.instructions import instruction

BACKENDS = ("calvin", "fake")  # the real simulator; the scripted fake (tests, smoke runs)
VIDEO_CAMERA = "static"
SELECTION_SETTINGS = ("chains", "chain_ids")  # may change on resume (extend to more chains)
DEFAULT_SIZES = {CAMERAS[k]: v for k, v in IMAGE_SIZES.items()}
FAKE_SIZES = {"static": 32, "gripper": 16}


@dataclass
class CalvinEvalConfig:
    """One CALVIN evaluation (see the module docstring)."""

    out: Path
    policy: str = "random"  # "random", a checkpoint directory, or "scripted" (fake backend only)
    chains: int = NUM_CHAINS  # the first N reference chains
    chain_ids: Sequence[int] | None = None  # explicit chains instead (overrides `chains`)
    max_steps: int = EP_LEN  # per subtask
    seed: int = 0  # policy sampling and the random planner
    replan_steps: int | None = None  # actions executed per plan (default: the policy's n_action_steps)
    workers: int = 1
    policy_in_workers: bool = False
    videos: int = 0  # MP4s kept, failed chains first (static camera, rendered from saved states)
    video_chains: Sequence[int] | None = None  # chains whose video is always kept
    device: str = "cpu"
    backend: str = "calvin"  # "calvin" (PyBullet calvin_env) | "fake"
    renderer: str = "egl"  # the real simulator's renderer: "egl" | "tiny" (CPU)
    dynamic_horizon: float | None = None
    resume: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CalvinEnvFactory:
    """Builds the chain environment in each worker (picklable)."""

    backend: str
    cameras: tuple[str, ...]
    image_sizes: tuple[tuple[str, int], ...]
    max_steps: int
    renderer: str = "egl"

    def backend_factory(self) -> SimulatorFactory | FakeBackendFactory:
        sizes = dict(self.image_sizes)
        if self.backend == "fake":
            return FakeBackendFactory(sizes.get("static", 32), sizes.get("gripper", 16))
        return SimulatorFactory(
            self.cameras or ("static",),
            sizes.get("static", IMAGE_SIZES["rgb_static"]),
            sizes.get("gripper", IMAGE_SIZES["rgb_gripper"]),
            self.renderer,
        )

    def __call__(self, spec: EpisodeSpec | None = None) -> CalvinEnv:
        return CalvinEnv(
            self.backend_factory(),
            cameras=self.cameras,
            image_sizes=dict(self.image_sizes),
            max_steps=self.max_steps,
        )


@dataclass
class PreparedCalvin:
    config: CalvinEvalConfig
    chains: list[Chain]
    factory: CalvinEnvFactory
    planner_spec: PlannerSpec
    planner: Any
    obs_keys: tuple[str, ...]
    n_obs: int
    episodes: list[EpisodeSpec]
    settings: dict[str, Any]
    policy_info: dict[str, Any]


# --- preparation ---------------------------------------------------------------------------------------


def select_chains(count: int, ids: Sequence[int] | None) -> list[Chain]:
    every = evaluation_chains(NUM_CHAINS)
    if ids is None:
        if not 1 <= count <= NUM_CHAINS:
            raise EvalError(f"--chains must be in 1..{NUM_CHAINS}, got {count}")
        return every[:count]
    bad = [i for i in ids if not 0 <= i < NUM_CHAINS]
    if bad:
        raise EvalError(f"chain ids {bad} out of range: the evaluation has {NUM_CHAINS} chains (0..{NUM_CHAINS - 1})")
    if not ids:
        raise EvalError("no chains selected")
    return [every[i] for i in ids]


def prepare(config: CalvinEvalConfig) -> PreparedCalvin:
    """Resolve chains, policy, cameras and backend; raise on anything that cannot run."""
    if config.backend not in BACKENDS:
        raise EvalError(f"unknown CALVIN backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
    if config.workers < 1:
        raise EvalError(f"--workers must be >= 1, got {config.workers}")
    if config.max_steps < 1:
        raise EvalError(f"--max-steps must be >= 1, got {config.max_steps}")
    if config.policy == "scripted" and config.backend != "fake":
        raise EvalError("--policy scripted solves the fake backend's scene only; use it with --backend fake")
    if config.policy == "scripted" and config.policy_in_workers:
        raise EvalError("--policy scripted runs in this process; drop --policy-in-workers")
    if config.dynamic_horizon is not None and config.policy in ("random", "scripted"):
        raise EvalError("--dynamic-horizon needs a mixture-of-horizons checkpoint")
    chains = select_chains(config.chains, config.chain_ids)

    policy_config, data_spec, planner = None, None, None
    if config.policy not in ("random", "scripted"):
        path = Path(config.policy)
        if not path.is_dir():
            raise EvalError(f"--policy {config.policy!r}: not a checkpoint directory (or 'random')")
        planner = PlannerSpec(
            config.policy, device=config.device, seed=config.seed, dynamic_horizon=config.dynamic_horizon
        ).build()
        assert isinstance(planner, PolicyPlanner)
        policy_config = planner.policy.config
        embodiment = CALVIN_EMBODIMENT if planner.multi_embodiment else None  # slot-layout policies run as CALVIN's arm
        if embodiment is not None:
            planner.bind_embodiment(embodiment)
        data_spec = load_data_spec(config.policy, embodiment)

    cameras, sizes = _cameras(policy_config, data_spec, config.backend)
    env_spec = calvin_spec({_calvin_key(c): (sizes[c], sizes[c], 3) for c in cameras})
    replan = config.replan_steps
    if policy_config is not None:
        check_policy_fits(env_spec, planner.native_config, data_spec, where=f"in {config.policy}")
        if replan is not None and replan > policy_config.chunk_size:
            raise EvalError(f"--replan-steps {replan} exceeds the policy's chunk of {policy_config.chunk_size} actions")
        planner.replan_steps = replan or planner.replan_steps
        replan = planner.replan_steps
    factory = CalvinEnvFactory(config.backend, cameras, tuple(sizes.items()), config.max_steps, config.renderer)
    backend = factory.backend_factory()
    if isinstance(backend, SimulatorFactory):
        backend.check()  # a missing simulator is one clear error here, not a failed worker later
    low = tuple(d.low if d.low is not None else -1.0 for d in env_spec.action)
    high = tuple(d.high if d.high is not None else 1.0 for d in env_spec.action)
    bound = None if not isinstance(planner, PolicyPlanner) or planner.layout is None else planner.layout.name
    planner_spec = PlannerSpec(
        config.policy, replan or 1, low, high, config.device, config.seed, config.dynamic_horizon, bound
    )
    if config.policy == "random":
        planner = planner_spec.build()
    elif config.policy == "scripted":
        planner = ScriptedPlanner()

    settings = {
        "benchmark": "calvin",
        "protocol": "reference (mees/calvin evaluate_policy.py): 1 reset per chain, no reset between subtasks",
        "chains": len(chains) if config.chain_ids is None else None,
        "chain_ids": list(config.chain_ids) if config.chain_ids is not None else None,
        "chain_source": "get_sequences(1000) of the reference, shipped in vla/sim/calvin/data/eval_chains.json",
        "subtasks_per_chain": CHAIN_LENGTH,
        "max_steps_per_subtask": config.max_steps,
        "language": "first instruction of new_playtable_validation.yaml per subtask",
        "success": "the subtask oracle (calvin_env task rules) on get_info() at subtask start vs now; "
        "only the requested subtask counts",
        "gripper": "action[6] > 0 -> open (+1), else close (-1)",
        "replan_steps": "policy-decided" if policy_decides_horizon(getattr(planner, "policy", None)) else replan,
        "dynamic_horizon": config.dynamic_horizon,
        "cameras": list(cameras),
        "image_sizes": dict(sizes),
        "backend": config.backend,
        "renderer": config.renderer if config.backend == "calvin" else None,
        "run_seed": config.seed,
        "policy": config.policy if config.policy in ("random", "scripted") else str(Path(config.policy).resolve()),
        **config.extra,
    }
    policy_info = {
        "source": settings["policy"],
        "device": config.device,
        "data_spec": data_spec is not None,
        **(planner.describe() if planner is not None else {}),
    }
    obs_keys = tuple(planner.obs_keys) if planner is not None else ()
    n_obs = planner.n_obs if planner is not None else 1
    if config.policy_in_workers:
        planner = None
    episodes = [_episode(c, config.seed) for c in chains]
    return PreparedCalvin(
        config, chains, factory, planner_spec, planner, obs_keys, n_obs, episodes, settings, policy_info
    )


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


def _cameras(policy_config: Any, data_spec: Any, backend: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """Cameras the policy reads (none for random/scripted) and their square sizes: the training
    data's (from its data spec) where known, else CALVIN's renders (the fake's are tiny)."""
    prefix = "observation.images."
    wanted = [k[len(prefix) :] for k in getattr(policy_config, "camera_keys", ()) if k.startswith(prefix)]
    cameras = tuple(c for c in wanted if c in DEFAULT_SIZES)
    sizes = dict(FAKE_SIZES if backend == "fake" else DEFAULT_SIZES)
    for cam in getattr(data_spec, "cameras", ()) or ():
        if cam.name in sizes:
            sizes[cam.name] = cam.height
    if not cameras:
        cameras = ("static",) if backend == "fake" else ()
    return cameras, {c: sizes[c] for c in (cameras or ("static",))}


# --- metrics -------------------------------------------------------------------------------------------


def completed_length(record: Mapping[str, Any]) -> int:
    """Consecutive successful subtasks of a logged chain."""
    n = 0
    for stage in record.get("stages") or []:
        if not stage.get("success"):
            break
        n += 1
    return n


def chain_success_rates(lengths: Sequence[int], positions: int = CHAIN_LENGTH) -> list[float]:
    """`chain_sr[i - 1]`: share of chains with at least i consecutive successes, i = 1..positions."""
    if not lengths:
        return [0.0] * positions
    return [sum(1 for n in lengths if n >= i) / len(lengths) for i in range(1, positions + 1)]


def subtask_rates(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per subtask: attempts, successes, rate, mean steps (over attempts), as the reference's task_info."""
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
            "mean_steps": steps[name] / tries[name],
        }
        for name in sorted(tries, key=lambda n: (-tries[n], n))
    }


# --- running -------------------------------------------------------------------------------------------


class VideoRenderer:
    """Renders kept chains from their recorded states with a backend of its own, built on first use."""

    def __init__(self, factory: CalvinEnvFactory):
        self.factory = factory
        self._backend: Any = None

    def render(self, states: np.ndarray) -> np.ndarray:
        if self._backend is None:
            self._backend = self.factory.backend_factory()()
        return np.stack([np.asarray(self._backend.render_state(s)["rgb_static"], np.uint8) for s in states])

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._backend = None


def evaluate_calvin(config: CalvinEvalConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a CALVIN evaluation into `config.out`; returns the summary (also summary.json)."""
    from tqdm import tqdm

    plan = prepare(config)
    out = Path(config.out)
    log, todo, done_before = start_run(out, plan.settings, plan.episodes, resume=config.resume,
                                       selection=SELECTION_SETTINGS, progress=progress, unit="chains")  # fmt: skip
    chosen = {f"calvin/{i}" for i in (config.video_chains or ())}
    keeper = VideoKeeper(out / VIDEO_DIR, max(config.videos, len(chosen)), FPS)
    renderer = VideoRenderer(plan.factory)
    lengths = [completed_length(log.records[e.episode_id]) for e in plan.episodes if e.episode_id in log.records]
    bar = tqdm(total=len(plan.episodes), initial=done_before, desc="calvin", disable=not progress, unit="chain")

    def on_result(result: EpisodeResult, states: np.ndarray | None, stats: RunStats) -> None:
        log.append(result)
        lengths.append(result.stages_completed)
        wanted = result.episode_id in chosen or (not chosen and keeper.wants(result.success))
        if states is not None and wanted:
            keeper.offer(result, renderer.render(states))
        bar.update(1)
        sr = chain_success_rates(lengths)
        bar.set_postfix(avg_len=f"{sum(sr):.2f}", **{f"sr{i + 1}": f"{v:.0%}" for i, v in enumerate(sr)})

    def record(spec: EpisodeSpec) -> bool:
        return spec.episode_id in chosen if chosen else keeper.limit > 0

    t0 = time.perf_counter()
    try:
        stats = run_episodes(
            todo,
            SlotConfig(plan.factory, plan.n_obs, plan.obs_keys, record_states=keeper.limit > 0),
            plan.planner_spec,
            planner=plan.planner,
            workers=config.workers,
            policy_in_workers=config.policy_in_workers,
            on_result=on_result,
            record=record,
        )
    finally:
        bar.close()
        renderer.close()
    summary = summarize(plan, log, stats, time.perf_counter() - t0, done_before, keeper.files())
    return finish_run(out, summary, write_calvin_report)


def summarize(
    plan: PreparedCalvin, log: ResultsLog, stats: RunStats, wall_s: float, resumed: int, videos: list[str]
) -> dict[str, Any]:
    records = log.results(e.episode_id for e in plan.episodes)
    lengths = [completed_length(r) for r in records]
    sr = chain_success_rates(lengths)
    per_subtask = subtask_rates(records)
    stats.wall_s = wall_s
    backend = plan.factory.backend_factory()
    return {
        "benchmark": "calvin",
        "preset": "reference",
        "complete": len(records) == len(plan.episodes),
        "chains": len(records),
        "chains_planned": len(plan.episodes),
        "episodes": len(records),
        "chain_sr": {str(i + 1): v for i, v in enumerate(sr)},
        "avg_len": sum(sr),
        "length_histogram": {str(n): lengths.count(n) for n in range(CHAIN_LENGTH + 1)},
        "successes": sum(1 for n in lengths if n == CHAIN_LENGTH),
        "success_rate": sr[-1],
        "errors": sum(1 for r in records if r.get("error")),
        "wall_s": round(wall_s, 2),
        "episode_wall_s": round(sum(r["wall_s"] for r in records), 2),
        # rows for the generic report table: one per subtask
        "tasks": [
            {"task": name, "name": instruction(name) if name else "", "errors": 0, **row}
            for name, row in per_subtask.items()
        ],
        "groups": {},
        "settings": plan.settings,
        "simulator": getattr(backend, "describe", dict)(),
        "policy": plan.policy_info,
        "run": {
            "workers": plan.config.workers,
            "policy_in_workers": plan.config.policy_in_workers,
            "resumed_episodes": resumed,
            "dropped_log_lines": log.dropped_lines,
            "duplicate_log_records": log.duplicates,
        },
        "throughput": stats.to_json(),
        "videos": videos,
    }


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
    subtask_note = "## Per subtask (attempts reached in a chain)"
    return write_report(out, summary, headline=headline, sections=[position_table(summary), subtask_note], plot=plot)


def print_summary(summary: Mapping[str, Any], console: Any = None) -> None:
    """Success by position, average length, per-subtask table, throughput."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    sr = summary["chain_sr"]
    table = Table(*(f"{i}/5" for i in sr), "avg. len", title=f"CALVIN ({summary['chains']} chains)")
    table.add_row(*(f"{v:.1%}" for v in sr.values()), f"{summary['avg_len']:.2f}", style="bold")
    console.print(table)
    if summary["tasks"]:
        sub = Table("subtask", "attempts", "successes", "rate", "mean steps", title="per subtask")
        for row in summary["tasks"]:
            sub.add_row(
                row["task"],
                str(row["trials"]),
                str(row["successes"]),
                f"{row['success_rate']:.1%}",
                f"{row['mean_steps']:.0f}",
            )
        console.print(sub)
    t, run = summary["throughput"], summary["run"]
    console.print(
        f"{t['env_steps_per_s']:.1f} env steps/s, {t['policy_calls_per_s']:.2f} policy calls/s; "
        f"{run['workers']} worker(s), {t['episodes']} chains run now, {run['resumed_episodes']} from before"
    )
