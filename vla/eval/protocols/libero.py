"""The LIBERO evaluation protocol: presets, episode selection, env settings, summary.

Four published protocols are named presets: `openpi` (recent VLA papers, the default), `libero`
(the original benchmark), `mode` (the MoDE paper's code) and `himoe` (the HiMoE-VLA code: openpi's
protocol executing 10 actions per plan); `PRESETS` lists what each sets.
Every setting ends up in summary.json; explicit options override a preset and are recorded as
such. Per episode: reset, set fixed initial state k, settle steps (not counted), then the policy
until the task's own success check holds or the step budget is spent; an exception counts as a
failure.

What the checkpoint's training data says wins over a preset where they could disagree: image size
and orientation follow the data spec saved with the checkpoint (the 180-degree flip belongs to the
data, not to LIBERO). The skeleton (policy, fit check, re-planning, workers, results log, resume,
videos, report) is vla.eval.protocol's; only LIBERO specifics live here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from vla.datasets.conventions.libero import CAMERAS, EMBODIMENT, FPS, libero_spec
from vla.datasets.spec import StoreSpec
from vla.eval.episodes import EpisodeResult, EpisodeSpec, EvalError, derive_seed
from vla.eval.planners import Planner
from vla.eval.protocol import EvalProtocol, PreparedEval, Replan, ResolvedPolicy, SummaryParts, policy_cameras
from vla.eval.report import summary_table
from vla.eval.results import ResultsLog, group_rates
from vla.eval.runner import RunStats
from vla.sim.base import SimError
from vla.sim.libero import (
    MAX_STEPS,
    SUITES,
    LiberoEnv,
    LiberoTask,
    get_task,
    init_states,
    select_gl_backend,
    suite_tasks,
)
from vla.sim.perturb import Perturbation, parse_perturbation
from vla.statistics import wilson_interval

VIDEO_CAMERA = "agentview"
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


# HiMoE-VLA's own LIBERO evaluation is openpi's in every setting but one: 10 actions executed per plan.
PRESETS["himoe"] = replace(PRESETS["openpi"], name="himoe", replan_steps=10, notes=PRESETS["openpi"].notes)


def get_preset(name: str) -> LiberoPreset:
    if name not in PRESETS:
        raise EvalError(f"unknown LIBERO protocol preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass
class LiberoEvalConfig:
    """One LIBERO evaluation; None means "the preset's value" (or the checkpoint's data spec's)."""

    suite: str
    out: Path
    policy: str | Planner = "random"  # "random", a checkpoint directory, or a planner object (Python API)
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
    ray: str | None = None  # run on Ray: "auto" (a local instance) or a cluster address (vla.eval.ray_runner)
    videos: int = 0  # MP4s kept, failures first (the agentview camera, rendered from saved states)
    video_size: int | None = None  # default: the env's image size, at most 128
    device: str = "cpu"
    dynamic_horizon: float | None = None  # MoH policies: dynamic inference with this threshold ratio
    api_key: str | None = None  # --policy ws://...: the policy server's api key (never recorded)
    perturb: str | None = None  # perturbed layouts, e.g. "objects=0.05" (vla.sim.perturb)
    perturb_seed: int = 0  # which displacement directions (the same for every run, so runs pair up)
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
    perturbation: Perturbation | None = None

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
            perturbation=self.perturbation,
        )


class LiberoProtocol(EvalProtocol):
    """LIBERO: the skeleton (vla.eval.protocol) with presets, task x init-state episodes and suite metrics."""

    benchmark = "libero"
    embodiment = EMBODIMENT
    fps = FPS
    selection = SELECTION_SETTINGS

    config_class = LiberoEvalConfig
    config: LiberoEvalConfig

    @staticmethod
    def print_summary(summary: Mapping[str, Any], console: Any = None) -> None:
        print_summary(summary, console)

    def select(self) -> None:
        config = self.config
        self.preset = get_preset(config.preset)
        all_tasks = suite_tasks(config.suite)  # raises for an unknown suite, listing the valid ones
        self.tasks = [get_task(config.suite, i) for i in config.tasks] if config.tasks is not None else all_tasks
        if not self.tasks:
            raise EvalError("no tasks selected")
        n_states = min(len(init_states(t)) for t in self.tasks)
        self.init_state_ids = select_init_states(self.preset, config.trials_per_task, config.init_states, n_states)
        self.max_steps = config.max_steps or self.preset.max_steps[config.suite]
        self.env_seed = {"fixed": self.preset.env_seed, "run": config.seed, "none": None}[self.preset.seed_mode]
        self.perturbation = None
        if config.perturb is not None:
            try:
                self.perturbation = parse_perturbation(config.perturb, config.perturb_seed)
            except SimError as e:
                raise EvalError(str(e)) from None

    def env_spec(self, policy: ResolvedPolicy) -> StoreSpec:
        self.cameras = policy_cameras(policy.config, CAMERAS)
        self.image_size, self.orientation, self.image_source = _image_settings(
            self.config, self.preset, policy.data_spec, policy.config
        )
        return libero_spec(self.cameras, (self.image_size, self.image_size), self.orientation)

    def default_replan(self) -> tuple[int | None, str]:
        return self.preset.replan_steps, f"preset {self.preset.name}"

    def env_factory(self) -> LiberoEnvFactory:
        if self.cameras:
            select_gl_backend()  # probe once here; worker processes inherit the choice
        p = self.preset
        return LiberoEnvFactory(
            self.config.suite, self.cameras, self.image_size, self.orientation, p.settle_steps, p.settle_action,
            self.max_steps, self.perturbation,
        )  # fmt: skip

    def episodes(self) -> list[EpisodeSpec]:
        episodes = make_episodes(self.config.suite, self.tasks, self.init_state_ids, self.env_seed, self.config.seed)
        if self.perturbation is not None:  # per episode too, so comparisons pair on (task, state, perturbation)
            for e in episodes:
                e.meta["perturbation"] = self.perturbation.to_json()
        return episodes

    def settings(self, policy: ResolvedPolicy, replan: Replan) -> dict[str, Any]:
        config, preset = self.config, self.preset
        return {
            "benchmark": "libero",
            "preset": preset.name,
            "suite": config.suite,
            "tasks": [t.task_id for t in self.tasks],
            "init_states": self.init_state_ids,
            "trials_per_task": len(self.init_state_ids),
            "env_seed": self.env_seed,
            "seed_mode": preset.seed_mode,
            "run_seed": config.seed,
            "settle_steps": preset.settle_steps,
            "settle_action": list(preset.settle_action),
            "max_steps": self.max_steps,
            "max_steps_source": "--max-steps" if config.max_steps else f"preset {preset.name}",
            "replan_steps": replan.setting,
            "dynamic_horizon": config.dynamic_horizon,
            "replan_note": replan.note,
            "cameras": list(self.cameras),
            "image_size": self.image_size,
            "image_orientation": self.orientation,
            "image_settings_from": self.image_source,
            "protocol_image_size": preset.image_size,
            "protocol_policy_image_size": preset.policy_image_size,
            "protocol_state": preset.state,
            "success": "the env's own check (AND of the BDDL goal predicates) at any step; an exception is a failure",
            "policy": policy.label,
            # Only perturbed runs name it: settings of earlier unperturbed runs stay as they were (resume).
            **({"perturbation": self.perturbation.to_json()} if self.perturbation is not None else {}),
            **config.extra,
        }

    def video_renderer(self, factory: LiberoEnvFactory) -> LiberoVideoRenderer:
        return LiberoVideoRenderer(factory, self.config.video_size or min(factory.image_size, 128))

    @property
    def progress_label(self) -> str:
        return self.config.suite

    def start_progress(self, plan: PreparedEval, log: ResultsLog, done_before: int) -> None:
        self._done_before = done_before
        self._ok_before = sum(1 for e in plan.episodes if log.records.get(e.episode_id, {}).get("success"))

    def progress(self, result: EpisodeResult, stats: RunStats) -> dict[str, str]:
        successes = self._ok_before + stats.successes
        return {
            "success": f"{successes / (self._done_before + stats.episodes):.0%}",
            "steps_s": f"{stats.env_steps_per_s:.0f}",
            "calls_s": f"{stats.policy_calls_per_s:.1f}",
        }

    def summarize(self, plan: PreparedEval, records: list[dict[str, Any]]) -> SummaryParts:
        per_task = group_rates(records, "task")
        names = {f"{t.suite}/{t.task_id}": t for t in self.tasks}
        task_rows = [
            {"task": key, "suite": t.suite, "task_id": t.task_id, "name": t.name, "language": t.language,
             **per_task[key]}
            for key, t in names.items()
            if key in per_task
        ]  # fmt: skip
        successes = sum(r["success"] for r in records)
        return SummaryParts(
            preset=self.preset.name,
            head={"suite": self.config.suite},
            counts={
                "episodes": len(records),
                "episodes_planned": len(plan.episodes),
                "successes": successes,
                "success_rate": successes / len(records) if records else 0.0,
                "success_ci95": list(wilson_interval(successes, len(records))),
            },
            tasks=task_rows,
            groups=group_rates(records, "suite"),
            context={"preset_settings": asdict(self.preset)},
        )


def prepare(config: LiberoEvalConfig) -> PreparedEval:
    """Everything resolved and checked before any episode runs; raises on anything that cannot run."""
    return LiberoProtocol(config).prepare()


def evaluate_libero(config: LiberoEvalConfig, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a LIBERO evaluation into `config.out`; returns the summary (also summary.json).

    `progress`: a progress bar with the running success rate and throughput (stderr)."""
    return LiberoProtocol(config).run(progress)


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


class LiberoVideoRenderer:
    """Renders kept episodes from their per-step simulator states with one camera env per task,
    built only when a video is wanted (most episodes never pay for rendering)."""

    def __init__(self, factory: LiberoEnvFactory, size: int):
        self.factory, self.size = factory, size
        self._env: LiberoEnv | None = None
        self._task: int | None = None

    def render(self, result: EpisodeResult, states: np.ndarray) -> np.ndarray:
        task_id = result.task_id
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
