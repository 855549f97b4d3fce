"""The evaluation protocol skeleton every benchmark fills in (vla.eval.protocols.libero, .calvin).

What is the same for every benchmark lives here: resolving the policy (a checkpoint, "random", or a
planner object handed in through the Python API), binding a multi-embodiment policy to the
benchmark's robot, the training data's spec, the fit check, the re-plan interval, the picklable
planner recipe for worker processes, the policy's entry in summary.json, and the run itself (results
log and resume, videos, progress bar, workers, summary, report).

A benchmark subclasses `EvalProtocol` and fills in only what differs: its options and episode
selection, the spec of what its environment observes, the env factory, its settings, the video
renderer, the progress numbers and its metrics. A new benchmark is one protocol file plus its env,
and one line in `vla.eval.protocols.PROTOCOLS`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from vla.datasets.spec import StoreSpec
from vla.errors import PolicyError
from vla.eval.episodes import EpisodeResult, EpisodeSpec, EvalError
from vla.eval.fit import check_policy_fits
from vla.eval.planners import PlannerSpec
from vla.eval.report import VIDEO_DIR, VideoKeeper, write_report
from vla.eval.results import ResultsLog, finish_run, start_run
from vla.eval.runner import RunStats, run_episodes
from vla.eval.worker import SlotConfig
from vla.keys import camera_name
from vla.policies.foreign import is_foreign
from vla.policies.runtime import PolicyPlanner, policy_decides_horizon
from vla.progress import progress_bar

RANDOM = "random"  # the --policy value of the random smoke-test planner


@dataclass
class ResolvedPolicy:
    """The policy an evaluation runs, before any environment setting is decided."""

    label: str  # "random", the checkpoint's absolute path, or a given planner's type (settings' `policy`)
    planner: Any = None  # PolicyPlanner or a given planner; None for "random" (built from the planner spec)
    config: Any = None  # the checkpoint policy's config (None otherwise)
    data_spec: StoreSpec | None = None  # the training data's spec saved with the checkpoint

    @property
    def checkpoint(self) -> bool:
        return self.config is not None


@dataclass
class PreparedEval:
    """Everything resolved and checked before any episode runs (see `EvalProtocol.prepare`)."""

    protocol: EvalProtocol  # the benchmark part, holding its own resolved selection (tasks, chains...)
    factory: Callable[[EpisodeSpec], Any]  # picklable env factory
    planner_spec: PlannerSpec
    planner: Any  # the central planner (None with policy_in_workers)
    obs_keys: tuple[str, ...]
    n_obs: int
    episodes: list[EpisodeSpec]
    settings: dict[str, Any]  # what results depend on: run.json, and summary.json's `settings`
    policy_info: dict[str, Any]

    @property
    def config(self) -> Any:
        return self.protocol.config


@dataclass
class Replan:
    """The re-plan interval an evaluation runs with; `setting` is what summary.json records."""

    steps: int | None  # actions executed per plan (None: the policy's own n_action_steps)
    setting: int | str | None
    note: str = ""  # why it differs from what was asked


@dataclass
class SummaryParts:
    """A benchmark's part of summary.json, placed around the common fields (key order is kept stable)."""

    preset: str
    head: dict[str, Any] = field(default_factory=dict)  # right after `preset` (e.g. the suite)
    counts: dict[str, Any] = field(default_factory=dict)  # after `complete`: episodes, rates, metrics
    tasks: list[dict[str, Any]] = field(default_factory=list)  # rows of the generic report table
    groups: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)  # after `settings` (preset settings, simulator)


class VideoRenderer(Protocol):
    """Draws a kept episode from its recorded simulator states (episodes run without a renderer)."""

    def render(self, result: EpisodeResult, states: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 frames."""
        ...

    def close(self) -> None: ...


class EvalProtocol(ABC):
    """One benchmark's protocol over one config (see the module docstring)."""

    config_class: ClassVar[type]  # the benchmark's options (a dataclass)
    benchmark: ClassVar[str]  # summary.json's `benchmark`
    embodiment: ClassVar[str]  # the benchmark robot, bound for multi-embodiment (slot-layout) policies
    fps: ClassVar[float]  # video frame rate
    selection: ClassVar[tuple[str, ...]] = ()  # settings that only select episodes (may change on resume)
    unit: ClassVar[str] = "episodes"  # what episodes are called in messages
    bar_unit: ClassVar[str] = "ep"

    def __init__(self, config: Any):
        self.config = config

    # --- what a benchmark fills in ------------------------------------------------------------------
    @abstractmethod
    def select(self) -> None:
        """Check the benchmark's options and choose what to run (tasks, states, chains); raise EvalError."""

    @abstractmethod
    def env_spec(self, policy: ResolvedPolicy) -> StoreSpec:
        """What the environment will observe for this policy (decides cameras and image settings)."""

    def default_replan(self) -> tuple[int | None, str]:
        """(actions per plan when not given, who says so); None: the policy's own n_action_steps."""
        return None, ""

    @abstractmethod
    def env_factory(self) -> Callable[[EpisodeSpec], Any]:
        """The picklable env factory (called after `env_spec`); may check the simulator is installed."""

    @abstractmethod
    def episodes(self) -> list[EpisodeSpec]: ...

    @abstractmethod
    def settings(self, policy: ResolvedPolicy, replan: Replan) -> dict[str, Any]:
        """Everything results depend on (run.json and summary.json's `settings`); ends with config.extra."""

    @abstractmethod
    def video_renderer(self, factory: Any) -> VideoRenderer: ...

    def filmed(self) -> set[str]:
        """Episode ids whose video is always kept (instead of failures first)."""
        return set()

    @abstractmethod
    def start_progress(self, plan: PreparedEval, log: ResultsLog, done_before: int) -> None:
        """Remember what the progress numbers start from (episodes logged before a resume)."""

    @abstractmethod
    def progress(self, result: EpisodeResult, stats: RunStats) -> dict[str, str]:
        """The progress bar's numbers after `result`."""

    @abstractmethod
    def summarize(self, plan: PreparedEval, records: list[dict[str, Any]]) -> SummaryParts: ...

    def write_report(self, out: Path, summary: Mapping[str, Any]) -> Path:
        return write_report(out, summary)

    @staticmethod
    def print_summary(summary: Mapping[str, Any], console: Any = None) -> None:
        """The summary on the terminal (rich tables)."""
        raise NotImplementedError

    @property
    def progress_label(self) -> str:
        return self.benchmark

    # --- preparation: every check before the first episode ------------------------------------------
    def prepare(self) -> PreparedEval:
        """Resolve the selection, policy and env settings; raise on anything that cannot run."""
        config = self.config
        self.select()
        if config.workers < 1:
            raise EvalError(f"--workers must be >= 1, got {config.workers}")
        policy = self.resolve_policy()
        env_spec = self.env_spec(policy)
        replan = self._replan(policy, env_spec)
        factory = self.env_factory()
        low = tuple(d.low if d.low is not None else -1.0 for d in env_spec.action)
        high = tuple(d.high if d.high is not None else 1.0 for d in env_spec.action)
        layout = getattr(policy.planner, "layout", None)
        planner_spec = PlannerSpec(
            config.policy if isinstance(config.policy, str) else policy.label,
            replan.steps or 1,
            low,
            high,
            config.device,
            config.seed,
            config.dynamic_horizon,
            None if layout is None else layout.name,
            getattr(config, "api_key", None),
        )
        planner = policy.planner if policy.planner is not None else planner_spec.build()
        settings = self.settings(policy, replan)
        policy_info = {
            "source": settings["policy"],
            "device": config.device,
            "data_spec": policy.data_spec is not None,
            **planner.describe(),
        }
        return PreparedEval(
            self,
            factory,
            planner_spec,
            None if config.policy_in_workers else planner,  # workers build their own from planner_spec
            tuple(planner.obs_keys),
            planner.n_obs,
            self.episodes(),
            settings,
            policy_info,
        )

    def resolve_policy(self) -> ResolvedPolicy:
        """The checkpoint (loaded, bound to this benchmark's robot), "random", or a given planner object."""
        config = self.config
        given = config.policy
        if not isinstance(given, str):  # a planner object (tests, scripted baselines): runs in this process
            if config.policy_in_workers:
                raise EvalError("a planner object runs in this process; drop policy_in_workers")
            if config.dynamic_horizon is not None:
                raise EvalError("--dynamic-horizon needs a mixture-of-horizons checkpoint")
            return ResolvedPolicy(given.describe().get("type", type(given).__name__), planner=given)
        if given == RANDOM:
            if config.dynamic_horizon is not None:
                raise EvalError("--dynamic-horizon needs a mixture-of-horizons checkpoint, not the random policy")
            return ResolvedPolicy(RANDOM)
        if is_foreign(given):  # lerobot:DIR, ws://HOST:PORT: their own loaders, no data spec
            if config.dynamic_horizon is not None:
                raise EvalError("--dynamic-horizon needs a mixture-of-horizons checkpoint of ours")
            spec = PlannerSpec(given, device=config.device, seed=config.seed, api_key=getattr(config, "api_key", None))
            try:
                planner = spec.build()
            except PolicyError as e:
                raise EvalError(str(e)) from None
            return ResolvedPolicy(given, planner, planner.native_config)
        if not Path(given).is_dir():
            raise EvalError(f"--policy {given!r}: not a checkpoint directory (or 'random')")
        # Checkpoint code (and torch) loads here, in the driver: worker processes import this module for
        # their environment factory and never need it.
        from vla.policies.pretrained import load_data_spec

        spec = PlannerSpec(given, device=config.device, seed=config.seed, dynamic_horizon=config.dynamic_horizon)
        planner = spec.build()
        assert isinstance(planner, PolicyPlanner)
        embodiment = self.embodiment if planner.multi_embodiment else None  # slot-layout policies run as our arm
        if embodiment is not None:
            planner.bind_embodiment(embodiment)
        data_spec = load_data_spec(given, embodiment)
        return ResolvedPolicy(str(Path(given).resolve()), planner, planner.policy.config, data_spec)

    def _replan(self, policy: ResolvedPolicy, env_spec: StoreSpec) -> Replan:
        """Fit check, then the re-plan interval: the option, else the benchmark's default, else the policy's."""
        asked = self.config.replan_steps
        default, source = self.default_replan()
        steps, note = asked or default, ""
        planner = policy.planner
        if policy.checkpoint:
            check_policy_fits(env_spec, planner.native_config, policy.data_spec, where=f"in {self.config.policy}")
            chunk = policy.config.chunk_size
            if steps is not None and steps > chunk:
                if asked:
                    raise EvalError(f"--replan-steps {steps} exceeds the policy's chunk of {chunk} actions")
                # The default interval cannot be honoured by a shorter chunk: execute the whole chunk, and say so.
                note = f"{source} re-plans every {steps} steps; clipped to the policy's chunk"
                steps = chunk
            planner.replan_steps = steps or planner.replan_steps
            steps = planner.replan_steps
        decided = policy_decides_horizon(getattr(planner, "policy", None))
        return Replan(steps, "policy-decided" if decided else steps, note)

    # --- running -------------------------------------------------------------------------------------
    def run(self, progress: bool = True) -> dict[str, Any]:
        """Run (or resume) the evaluation into `config.out`; returns the summary (also summary.json).

        `progress`: a progress bar with the running rates and throughput (stderr)."""
        config = self.config
        plan = self.prepare()
        out = Path(config.out)
        log, todo, done_before = start_run(out, plan.settings, plan.episodes, resume=config.resume,
                                           selection=self.selection, progress=progress,
                                           unit=self.unit)  # fmt: skip
        filmed = self.filmed()
        keeper = VideoKeeper(out / VIDEO_DIR, max(config.videos, len(filmed)), self.fps)
        renderer = self.video_renderer(plan.factory)
        self.start_progress(plan, log, done_before)
        bar = progress_bar(len(plan.episodes), self.progress_label, initial=done_before, unit=self.bar_unit,
                           disable=not progress)  # fmt: skip

        def on_result(result: EpisodeResult, states: np.ndarray | None, stats: RunStats) -> None:
            log.append(result)
            wanted = result.episode_id in filmed or (not filmed and keeper.wants(result.success))
            if states is not None and wanted:
                keeper.offer(result, renderer.render(result, states))
            bar.update(1)
            bar.set_postfix(**self.progress(result, stats))

        def record(spec: EpisodeSpec) -> bool:
            return spec.episode_id in filmed if filmed else keeper.limit > 0

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
                ray=getattr(config, "ray", None),
            )
        finally:
            bar.close()
            renderer.close()
        summary = self.summary(plan, log, stats, time.perf_counter() - t0, done_before, keeper.files())
        return finish_run(out, summary, self.write_report)

    def summary(
        self, plan: PreparedEval, log: ResultsLog, stats: RunStats, wall_s: float, resumed: int, videos: list[str]
    ) -> dict[str, Any]:
        """summary.json: the benchmark's metrics around the fields every protocol shares."""
        records = log.results(e.episode_id for e in plan.episodes)
        parts = self.summarize(plan, records)
        stats.wall_s = wall_s
        return {
            "benchmark": self.benchmark,
            "preset": parts.preset,
            **parts.head,
            "complete": len(records) == len(plan.episodes),
            **parts.counts,
            "wall_s": round(wall_s, 2),
            "episode_wall_s": round(sum(r["wall_s"] for r in records), 2),
            "tasks": parts.tasks,
            "groups": parts.groups,
            "settings": plan.settings,
            **parts.context,
            "policy": plan.policy_info,
            "run": {
                "workers": self.config.workers,
                "policy_in_workers": self.config.policy_in_workers,
                "backend": "ray" if getattr(self.config, "ray", None) else "processes",
                "resumed_episodes": resumed,
                "dropped_log_lines": log.dropped_lines,
                "duplicate_log_records": log.duplicates,
            },
            "throughput": stats.to_json(),
            "videos": videos,
        }


def policy_cameras(policy_config: Any, available: Iterable[str]) -> tuple[str, ...]:
    """The benchmark's cameras a policy reads, in the policy's order (unknown ones are left to the fit check)."""
    names = [camera_name(k) for k in getattr(policy_config, "camera_keys", ())]
    return tuple(c for c in names if c is not None and c in set(available))
