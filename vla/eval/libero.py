"""The LIBERO evaluation protocol: presets, episode selection, env settings, summary.

Three published protocols are named presets (see shared/reference/benchmarks.md):
`openpi` (recent VLA papers, the default), `libero` (the original benchmark) and `mode` (the MoDE
paper's code). Every setting ends up in summary.json; explicit options override a preset and are
recorded as such. Per episode: reset, set fixed initial state k, settle steps (not counted), then
the policy until the task's own success check holds or the step budget is spent; an exception
counts as a failure.

What the checkpoint's training data says wins over a preset where they could disagree: image size
and orientation follow the data spec saved with the checkpoint (the 180-degree flip belongs to the
data, not to LIBERO). The generic machinery (workers, results log, resume, report) is in
vla.eval.runner / results / report; only LIBERO specifics live here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.eval.episodes import EpisodeResult, EpisodeSpec, EvalError, derive_seed
from vla.eval.fit import check_policy_fits
from vla.eval.planners import PlannerSpec, PolicyPlanner, load_data_spec, policy_decides_horizon
from vla.eval.report import VIDEO_DIR, VideoKeeper, summary_table, write_report
from vla.eval.results import ResultsLog, finish_run, group_rates, start_run
from vla.eval.runner import RunStats, run_episodes
from vla.eval.worker import SlotConfig
from vla.sim.libero import (
    CAMERAS,
    EMBODIMENT,
    MAX_STEPS,
    SUITES,
    LiberoEnv,
    LiberoTask,
    get_task,
    init_states,
    libero_spec,
    select_gl_backend,
    suite_tasks,
)

VIDEO_CAMERA = "agentview"
FPS = 20.0
ZERO_ACTION = (0.0,) * 7
OPEN_GRIPPER = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
# Settings that only select episodes: a resumed run may change them (extend to more init states...).
SELECTION_SETTINGS = ("tasks", "init_states", "trials_per_task")


@dataclass(frozen=True)
class LiberoPreset:
    name: str
    trials_per_task: int  # init states 0..trials-1, in order
    seed_mode: str  # "fixed": env seeded with `env_seed` once per task; "run": the run's --seed; "none"
    env_seed: int | None
    settle_steps: int
    settle_action: tuple[float, ...]
    max_steps: Mapping[str, int]  # step budget per suite
    image_size: int  # render size (the policy resizes to its own input size)
    policy_image_size: int  # what the protocol feeds its policy (recorded; our policies resize themselves)
    flip_images: bool  # rotate renders 180 degrees (the env's "upright") when no data spec decides
    state: str  # the protocol's proprioception convention (recorded; the policy's data decides the keys)
    replan_steps: int  # actions executed per plan
    notes: str = ""


PRESETS: dict[str, LiberoPreset] = {
    "openpi": LiberoPreset(
        "openpi",
        50,
        "fixed",
        7,
        10,
        OPEN_GRIPPER,
        dict(MAX_STEPS),
        256,
        224,
        True,
        "8-D eef pos + axis-angle + 2 gripper joints (observation.state)",
        5,
        "seed 7 once per task (OpenVLA: global 7, env 0)",
    ),
    "libero": LiberoPreset(
        "libero",
        20,
        "run",
        None,
        5,
        ZERO_ACTION,
        dict.fromkeys(SUITES, 600),
        128,
        128,
        False,
        "9-D: 7 joints + 2 gripper joints (observation.joint_state + observation.gripper_state)",
        1,
    ),
    "mode": LiberoPreset(
        "mode",
        20,
        "none",
        None,
        5,
        ZERO_ACTION,
        dict.fromkeys(SUITES, 520),
        224,
        224,
        False,
        "9-D joints (observation.joint_state + observation.gripper_state)",
        10,
    ),
}


def get_preset(name: str) -> LiberoPreset:
    if name not in PRESETS:
        raise EvalError(f"unknown LIBERO protocol preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class LiberoEvalConfig:
    """One LIBERO evaluation; None means "the preset's value" (or the checkpoint's data spec's)."""

    suite: str
    out: Path
    policy: str = "random"  # "random" or a checkpoint directory
    tasks: Sequence[int] | None = None  # default: every task of the suite
    preset: str = "openpi"
    trials_per_task: int | None = None  # init states 0..N-1
    init_states: Sequence[int] | None = None  # explicit ids (e.g. held-out 40..49); overrides trials
    seed: int = 0  # the run's seed: env seed under `libero`, policy sampling, random planner
    replan_steps: int | None = None  # actions executed per plan
    max_steps: int | None = None  # one step budget for every task (default: the preset's per suite)
    image_size: int | None = None
    image_orientation: str | None = None  # "upright" | "rotated_180"
    workers: int = 1
    policy_in_workers: bool = False  # each worker loads its own policy (default: one batched policy)
    videos: int = 0  # MP4s kept, failures first (the agentview camera, rendered from saved states)
    video_size: int | None = None  # default: the env's image size, at most 128
    device: str = "cpu"
    dynamic_horizon: float | None = None  # MoH policies: dynamic inference with this threshold ratio
    resume: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recorded as-is (e.g. who launched it)


@dataclass(frozen=True)
class LiberoEnvFactory:
    """Builds the environment of an episode (picklable: worker processes get a copy)."""

    suite: str
    cameras: tuple[str, ...]
    image_size: int
    image_orientation: str
    settle_steps: int
    settle_action: tuple[float, ...]
    max_steps: int

    def __call__(self, spec: EpisodeSpec) -> LiberoEnv:
        return LiberoEnv(
            self.suite,
            spec.task_id,
            cameras=self.cameras,
            image_size=self.image_size,
            image_orientation=self.image_orientation,
            settle_steps=self.settle_steps,
            settle_action=self.settle_action,
            max_steps=self.max_steps,
            seed=spec.seed,
        )


@dataclass
class PreparedEval:
    """Everything resolved and checked before any episode runs (see `prepare`)."""

    config: LiberoEvalConfig
    preset: LiberoPreset
    tasks: list[LiberoTask]
    init_state_ids: list[int]
    factory: LiberoEnvFactory
    planner_spec: PlannerSpec
    planner: Any  # the central planner (None with policy_in_workers)
    obs_keys: tuple[str, ...]
    n_obs: int
    episodes: list[EpisodeSpec]
    settings: dict[str, Any]  # what results depend on: run.json, and summary.json's `settings`
    policy_info: dict[str, Any]


# --- preparation: every check before the first episode ------------------------------------------------


def prepare(config: LiberoEvalConfig) -> PreparedEval:
    """Resolve the preset, tasks, init states, policy and env settings; raise on anything that cannot run."""
    preset = get_preset(config.preset)
    all_tasks = suite_tasks(config.suite)  # raises for an unknown suite, listing the valid ones
    tasks = [get_task(config.suite, i) for i in config.tasks] if config.tasks is not None else all_tasks
    if not tasks:
        raise EvalError("no tasks selected")
    n_states = min(len(init_states(t)) for t in tasks)
    init_ids = select_init_states(preset, config.trials_per_task, config.init_states, n_states)
    if config.workers < 1:
        raise EvalError(f"--workers must be >= 1, got {config.workers}")
    if config.dynamic_horizon is not None and config.policy == "random":
        raise EvalError("--dynamic-horizon needs a mixture-of-horizons checkpoint, not the random policy")

    policy_config, data_spec, planner = None, None, None
    if config.policy != "random":
        planner = _load_policy_planner(config)
        policy_config = planner.policy.config
        embodiment = EMBODIMENT if planner.multi_embodiment else None  # slot-layout policies run as LIBERO's arm
        if embodiment is not None:
            planner.bind_embodiment(embodiment)
        data_spec = load_data_spec(config.policy, embodiment)
    replan = config.replan_steps or preset.replan_steps

    cameras = _cameras(policy_config)
    image_size, orientation, decided_by = _image_settings(config, preset, data_spec, policy_config)
    max_steps = config.max_steps or preset.max_steps[config.suite]
    env_spec = libero_spec(cameras, (image_size, image_size), orientation)  # no simulator needed to check
    replan_note = ""
    if policy_config is not None:
        check_policy_fits(env_spec, planner.native_config, data_spec, where=f"in {config.policy}")
        if replan > policy_config.chunk_size:
            if config.replan_steps:
                raise EvalError(
                    f"--replan-steps {replan} exceeds the policy's chunk of {policy_config.chunk_size} actions"
                )
            # The preset's interval cannot be honoured by a shorter chunk: execute the whole chunk, and say so.
            replan_note = f"preset {preset.name} re-plans every {replan} steps; clipped to the policy's chunk"
            replan = policy_config.chunk_size
        planner.replan_steps = replan
    if cameras:
        select_gl_backend()  # probe once here; worker processes inherit the choice

    factory = LiberoEnvFactory(
        config.suite,
        cameras,
        image_size,
        orientation,
        preset.settle_steps,
        preset.settle_action,
        max_steps,
    )
    low = [d.low if d.low is not None else -1.0 for d in env_spec.action]
    high = [d.high if d.high is not None else 1.0 for d in env_spec.action]
    planner_spec = PlannerSpec(
        config.policy,
        replan,
        tuple(low),
        tuple(high),
        config.device,
        config.seed,
        config.dynamic_horizon,
        None if planner is None or planner.layout is None else planner.layout.name,
    )
    if config.policy == "random":
        planner = planner_spec.build()
    env_seed = {"fixed": preset.env_seed, "run": config.seed, "none": None}[preset.seed_mode]
    settings = {
        "benchmark": "libero",
        "preset": preset.name,
        "suite": config.suite,
        "tasks": [t.task_id for t in tasks],
        "init_states": init_ids,
        "trials_per_task": len(init_ids),
        "env_seed": env_seed,
        "seed_mode": preset.seed_mode,
        "run_seed": config.seed,
        "settle_steps": preset.settle_steps,
        "settle_action": list(preset.settle_action),
        "max_steps": max_steps,
        "max_steps_source": "--max-steps" if config.max_steps else f"preset {preset.name}",
        "replan_steps": "policy-decided" if policy_decides_horizon(getattr(planner, "policy", None)) else replan,
        "dynamic_horizon": config.dynamic_horizon,
        "replan_note": replan_note,
        "cameras": list(cameras),
        "image_size": image_size,
        "image_orientation": orientation,
        "image_settings_from": decided_by,
        "protocol_image_size": preset.image_size,
        "protocol_policy_image_size": preset.policy_image_size,
        "protocol_state": preset.state,
        "success": "the env's own check (AND of the BDDL goal predicates) at any step; an exception is a failure",
        "policy": config.policy if config.policy == "random" else str(Path(config.policy).resolve()),
        **config.extra,
    }
    policy_info = {
        "source": settings["policy"],
        "device": config.device,
        "data_spec": data_spec is not None,
        **(planner.describe() if planner is not None else {}),
    }
    obs_keys = planner.obs_keys if planner is not None else ()
    n_obs = planner.n_obs if planner is not None else 1
    if config.policy_in_workers:
        planner = None  # workers build their own from planner_spec; keep none in this process
    episodes = make_episodes(config.suite, tasks, init_ids, env_seed, config.seed)
    return PreparedEval(
        config,
        preset,
        tasks,
        init_ids,
        factory,
        planner_spec,
        planner,
        tuple(obs_keys),
        n_obs,
        episodes,
        settings,
        policy_info,
    )


def make_episodes(
    suite: str, tasks: Sequence[LiberoTask], init_ids: Sequence[int], env_seed: int | None, run_seed: int
) -> list[EpisodeSpec]:
    """Task-major order, so a worker mostly stays on one task and rarely rebuilds its simulator."""
    return [
        EpisodeSpec(
            episode_id=f"{suite}/{t.task_id}/{k}",
            env_key=f"{suite}/{t.task_id}",
            task=f"{suite}/{t.task_id}",
            task_id=t.task_id,
            init_state_id=k,
            seed=env_seed,
            policy_seed=derive_seed(run_seed, f"{suite}/{t.task_id}/{k}"),
            meta={"suite": suite, "task_name": t.name},
        )
        for t in tasks
        for k in init_ids
    ]


def select_init_states(
    preset: LiberoPreset, trials: int | None, explicit: Sequence[int] | None, available: int
) -> list[int]:
    ids = list(explicit) if explicit is not None else list(range(trials or preset.trials_per_task))
    if not ids:
        raise EvalError("no initial states selected")
    bad = [i for i in ids if not 0 <= i < available]
    if bad:
        raise EvalError(f"initial state ids {bad} out of range: tasks have {available} (0..{available - 1})")
    return ids


def _load_policy_planner(config: LiberoEvalConfig) -> PolicyPlanner:
    path = Path(config.policy)
    if not path.is_dir():
        raise EvalError(f"--policy {config.policy!r}: not a checkpoint directory (or 'random')")
    planner = PlannerSpec(
        config.policy, device=config.device, seed=config.seed, dynamic_horizon=config.dynamic_horizon
    ).build()
    assert isinstance(planner, PolicyPlanner)
    return planner


def _cameras(policy_config: Any) -> tuple[str, ...]:
    """LIBERO cameras to render: those the policy reads (unknown ones are reported by the fit check).
    Videos do not add one: they are rendered afterwards from saved states (see `VideoRenderer`)."""
    prefix = "observation.images."
    wanted = [k[len(prefix) :] for k in getattr(policy_config, "camera_keys", ()) if k.startswith(prefix)]
    return tuple(c for c in wanted if c in CAMERAS)


class VideoRenderer:
    """Renders kept episodes from their per-step simulator states with one camera env per task,
    built only when a video is wanted (most episodes never pay for rendering)."""

    def __init__(self, factory: LiberoEnvFactory, size: int):
        self.factory, self.size = factory, size
        self._env: LiberoEnv | None = None
        self._task: int | None = None

    def render(self, task_id: int, states: np.ndarray) -> np.ndarray:
        if self._env is None or self._task != task_id:
            self.close()
            f = self.factory
            self._env = LiberoEnv(
                f.suite, task_id, cameras=(VIDEO_CAMERA,), image_size=self.size, max_steps=f.max_steps
            )
            self._task = task_id
        return self._env.render_states(states, VIDEO_CAMERA)  # upright: videos are for people

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = self._task = None


def _image_settings(
    config: LiberoEvalConfig, preset: LiberoPreset, data_spec: Any, policy_config: Any
) -> tuple[int, str, str]:
    """(size, orientation, what decided them): explicit option > the training data's cameras > preset."""
    cams = {c.key: c for c in (data_spec.cameras if data_spec is not None else ())}
    used = [cams[k] for k in getattr(policy_config, "camera_keys", ()) if k in cams]
    size, orientation, source = preset.image_size, "upright" if preset.flip_images else "rotated_180", "preset"
    if used:
        size, orientation, source = used[0].height, used[0].orientation, "checkpoint data_spec.json"
    if config.image_size is not None:
        size, source = config.image_size, "options"
    if config.image_orientation is not None:
        orientation, source = config.image_orientation, "options"
    return size, orientation, source


# --- running --------------------------------------------------------------------------------------------


def evaluate_libero(config: LiberoEvalConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a LIBERO evaluation into `config.out`; returns the summary (also summary.json).

    `progress`: a progress bar with the running success rate and throughput (stderr)."""
    from tqdm import tqdm

    plan = prepare(config)
    out = Path(config.out)
    log, todo, done_before = start_run(out, plan.settings, plan.episodes, resume=config.resume,
                                       selection=SELECTION_SETTINGS, progress=progress)  # fmt: skip
    keeper = VideoKeeper(out / VIDEO_DIR, config.videos, FPS)
    ok_before = sum(1 for e in plan.episodes if log.records.get(e.episode_id, {}).get("success"))
    renderer = VideoRenderer(plan.factory, config.video_size or min(plan.factory.image_size, 128))
    bar = tqdm(total=len(plan.episodes), initial=done_before, desc=config.suite, disable=not progress, unit="ep")

    def on_result(result: EpisodeResult, states: np.ndarray | None, stats: RunStats) -> None:
        log.append(result)
        if states is not None and keeper.wants(result.success):
            keeper.offer(result, renderer.render(result.task_id, states))
        successes = ok_before + stats.successes
        bar.update(1)
        bar.set_postfix(
            success=f"{successes / (done_before + stats.episodes):.0%}",
            steps_s=f"{stats.env_steps_per_s:.0f}",
            calls_s=f"{stats.policy_calls_per_s:.1f}",
        )

    t0 = time.perf_counter()
    try:
        stats = run_episodes(
            todo,
            SlotConfig(plan.factory, plan.n_obs, plan.obs_keys, record_states=config.videos > 0),
            plan.planner_spec,
            planner=plan.planner,
            workers=config.workers,
            policy_in_workers=config.policy_in_workers,
            on_result=on_result,
            record=lambda spec: keeper.limit > 0,
        )
    finally:
        bar.close()
        renderer.close()
    summary = summarize(plan, log, stats, time.perf_counter() - t0, done_before, keeper.files())
    return finish_run(out, summary, write_report)


def print_summary(summary: Mapping[str, Any], console: Any = None) -> None:
    """The per-task table and the throughput line."""
    from rich.console import Console

    console = console or Console()
    console.print(summary_table(summary))
    t, run = summary["throughput"], summary["run"]
    console.print(
        f"{t['env_steps_per_s']:.1f} env steps/s, {t['policy_calls_per_s']:.2f} policy calls/s "
        f"({t['plans_per_s']:.2f} plans/s); after start-up {t['steady_env_steps_per_s']:.1f} steps/s, "
        f"{t['steady_policy_calls_per_s']:.2f} calls/s; {run['workers']} worker(s), "
        f"{t['episodes']} episodes run now, {run['resumed_episodes']} from before"
    )


def summarize(
    plan: PreparedEval, log: ResultsLog, stats: RunStats, wall_s: float, resumed: int, videos: list[str]
) -> dict[str, Any]:
    records = log.results(e.episode_id for e in plan.episodes)
    per_task = group_rates(records, "task")
    names = {f"{t.suite}/{t.task_id}": t for t in plan.tasks}
    task_rows = [
        {"task": key, "suite": t.suite, "task_id": t.task_id, "name": t.name, "language": t.language, **per_task[key]}
        for key, t in names.items()
        if key in per_task
    ]
    successes = sum(r["success"] for r in records)
    stats.wall_s = wall_s
    return {
        "benchmark": "libero",
        "preset": plan.preset.name,
        "suite": plan.config.suite,
        "complete": len(records) == len(plan.episodes),
        "episodes": len(records),
        "episodes_planned": len(plan.episodes),
        "successes": successes,
        "success_rate": successes / len(records) if records else 0.0,
        "wall_s": round(wall_s, 2),
        "episode_wall_s": round(sum(r["wall_s"] for r in records), 2),
        "tasks": task_rows,
        "groups": group_rates(records, "suite"),
        "settings": plan.settings,
        "preset_settings": asdict(plan.preset),
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
