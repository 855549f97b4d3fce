"""Episode execution next to the environment: in this process or in a worker process.

An `EpisodeSlot` owns one environment at a time (rebuilt only when the episode's `env_key`
changes, since building a simulator costs seconds) and runs one episode as a conversation:
`start(spec)` and `act(actions, n)` each answer either a plan request (the last `n_obs`
observations of the keys the planner reads) or the finished episode. It keeps the episode's
observation history and executes each plan's actions itself, so a process boundary is crossed
once per plan, not once per step.

Workers speak that conversation over a pipe (`ProcessWorker`) or by direct calls (`LocalWorker`);
with a planner of their own (policy per worker) they run whole episodes and only report results.

Multi-stage environments (`MultiStageEnv`, e.g. a CALVIN chain of 5 subtasks) run as one episode:
when a stage succeeds and another follows, the env moves on WITHOUT a reset, the language changes,
the observation history restarts from the current frame, the rest of the action chunk is dropped
(counted as discarded) and the step budget starts again; the first failed stage ends the episode.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vla.eval.episodes import EpisodeResult, EpisodeSpec
from vla.eval.planners import PlannerSpec
from vla.policies.runtime import ObservationHistory
from vla.sim.base import SimEnv

EnvFactory = Callable[[EpisodeSpec], SimEnv]  # must be picklable for worker processes


@runtime_checkable
class MultiStageEnv(Protocol):
    """What a `SimEnv` adds to run several stages per episode (see the module docstring).

    `num_stages` is read after `reset`; `task_language`, `max_steps` and `step(...).success` refer
    to the current stage; `next_stage()` advances without resetting and returns the observation."""

    @property
    def num_stages(self) -> int: ...

    @property
    def subtask(self) -> str: ...

    def next_stage(self) -> dict[str, np.ndarray]: ...


@dataclass
class Reply:
    kind: str  # "plan" (needs actions), "done" (episode finished), "fatal" (the worker cannot go on)
    history: dict[str, np.ndarray] | None = None  # "plan": key -> (n_obs, ...)
    language: str = ""
    plan_index: int = 0
    stage: int = 0  # multi-stage episodes: which stage the plan is for
    result: EpisodeResult | None = None  # "done"
    states: np.ndarray | None = None  # "done" with recording: (T, D) simulator states, one per frame
    error: str = ""  # "fatal"


@dataclass(frozen=True)
class SlotConfig:
    env_factory: EnvFactory
    n_obs: int
    obs_keys: tuple[str, ...]
    # Recording keeps the simulator state per step (cheap); the videos worth keeping are rendered
    # from them afterwards, so no episode pays for a camera it does not observe.
    record_states: bool = False


class EpisodeSlot:
    def __init__(self, config: SlotConfig):
        self.config = config
        self.env: SimEnv | None = None
        self.env_key: str | None = None
        self.spec: EpisodeSpec | None = None
        self.record = False
        self.history = ObservationHistory(config.n_obs, config.obs_keys)

    # --- the conversation ---------------------------------------------------------------------
    def start(self, spec: EpisodeSpec, record: bool = False) -> Reply:
        self.spec, self.record = spec, record and self.config.record_states
        self.t0 = time.perf_counter()
        self.steps = self.calls = self.executed = self.discarded = 0
        self.states: list[np.ndarray] = []
        self.language = ""
        self.stage = self.stage_steps = 0
        self.stages: list[dict[str, Any]] | None = None
        try:
            env = self._env_for(spec)
        except Exception as e:  # not an episode failure: no episode of this env could run
            return Reply("fatal", error=f"building the environment for {spec.env_key} failed: {type(e).__name__}: {e}")
        self.t0 = time.perf_counter()  # an episode's wall time excludes building the simulator
        try:
            obs = env.reset(spec.init_state_id)
            self.language = env.task_language  # after reset: a multi-stage env names its first stage then
            if is_multi_stage(env):
                self.stages = []
        except Exception as e:  # openpi's rule: an exception during an episode is a failure
            return self._done(False, e)
        self._restart_history(obs)
        self._keep_state(env)
        return self._plan_request()

    def act(self, actions: np.ndarray, n_exec: int) -> Reply:
        assert self.env is not None and self.spec is not None
        self.calls += 1
        n = int(min(max(n_exec, 1), len(actions)))  # at least one step, or a plan could never end the episode
        # An env that renders on demand draws its cameras only for the frames the next plan reads: the last
        # n_obs of this chunk (earlier ones would leave the history before any plan saw them).
        lazy = getattr(self.env, "renders_on_demand", False)
        for i in range(n):
            seen = not lazy or i >= n - self.config.n_obs
            try:
                result = self.env.step(actions[i]) if seen else self.env.step(actions[i], images=False)
            except Exception as e:
                self.discarded += n - i
                return self._done(False, e)
            self.steps += 1
            self.stage_steps += 1
            self.executed += 1
            if seen:
                self.history.push(result.obs)
            self._keep_state(self.env)
            if result.success or self.stage_steps >= self.env.max_steps:
                self.discarded += n - i - 1
                if result.success and self.stages is not None:
                    return self._stage_done()
                return self._done(result.success)
        return self._plan_request()

    # --- pieces -------------------------------------------------------------------------------------
    def _stage_done(self) -> Reply:
        """A stage succeeded: the episode ends when it was the last, else the next stage starts."""
        env = self.env
        assert env is not None and self.stages is not None
        self._record_stage(True)
        if self.stage + 1 >= env.num_stages:  # type: ignore[attr-defined]
            return self._done(True)
        try:
            obs = env.next_stage()  # type: ignore[attr-defined]
            self.language = env.task_language
        except Exception as e:
            return self._done(False, e)
        self.stage += 1
        self.stage_steps = 0
        self._restart_history(obs)  # the planner starts the new instruction from a fresh history
        return self._plan_request()

    def _record_stage(self, success: bool) -> None:
        if self.stages is None or self.env is None or len(self.stages) > self.stage:
            return
        name = getattr(self.env, "subtask", "")
        self.stages.append(
            {
                "stage": self.stage,
                "name": name,
                "language": self.language,
                "success": success,
                "steps": self.stage_steps,
            }
        )

    def _restart_history(self, obs: dict[str, np.ndarray]) -> None:
        self.history.reset()
        self.history.push(obs)

    def _env_for(self, spec: EpisodeSpec) -> SimEnv:
        if self.env is None or self.env_key != spec.env_key:
            self.close()
            self.env = self.config.env_factory(spec)
            self.env_key = spec.env_key
        return self.env

    def _keep_state(self, env: SimEnv) -> None:
        if self.record:
            state = env.sim_state()
            if state is not None:
                self.states.append(state)

    def _plan_request(self) -> Reply:
        return Reply(
            "plan", history=self.history.stacked(), language=self.language, plan_index=self.calls, stage=self.stage
        )

    def _done(self, success: bool, error: BaseException | None = None) -> Reply:
        spec = self.spec
        assert spec is not None
        if self.stages is not None and not success:
            try:
                self._record_stage(False)
            except Exception:  # an env that broke mid-stage may not name its stage any more
                self.stages.append({"stage": self.stage, "name": "", "language": self.language, "success": False})
        result = EpisodeResult(
            episode_id=spec.episode_id,
            task=spec.task,
            task_id=spec.task_id,
            init_state_id=spec.init_state_id,
            seed=spec.seed,
            policy_seed=spec.policy_seed,
            success=bool(success),
            steps=self.steps,
            policy_calls=self.calls,
            actions_executed=self.executed,
            actions_discarded=self.discarded,
            wall_s=round(time.perf_counter() - self.t0, 4),
            language=self.language,
            error=None if error is None else f"{type(error).__name__}: {error}",
            meta=dict(spec.meta),
            stages=self.stages,
        )
        states = np.stack(self.states) if self.record and self.states else None
        self.states = []
        return Reply("done", result=result, states=states)

    def close(self) -> None:
        env, self.env, self.env_key = self.env, None, None
        if env is not None:
            env.close()


def run_local_episode(slot: EpisodeSlot, planner: Any, spec: EpisodeSpec, record: bool) -> Reply:
    """A whole episode with a planner next to the environment (policy per worker)."""
    reply = slot.start(spec, record)
    while reply.kind == "plan":
        batch = batch_of([reply], [spec])
        plan = planner.plan(batch)
        reply = slot.act(plan.actions[0], int(plan.n_exec[0]))
    return reply


def batch_of(replies: list[Reply], specs: list[EpisodeSpec]) -> dict[str, Any]:
    """Stack plan requests into the planner's batch layout (see vla.eval.planners)."""
    batch: dict[str, Any] = {}
    if replies and replies[0].history:
        for key in replies[0].history:
            batch[key] = np.stack([r.history[key] for r in replies])  # type: ignore[index]
    batch["task"] = [r.language for r in replies]
    batch["episode_id"] = [s.episode_id for s in specs]
    batch["plan_index"] = [r.plan_index for r in replies]
    batch["stage"] = [r.stage for r in replies]  # multi-stage episodes: a new stage restarts the instruction
    batch["policy_seed"] = [s.policy_seed for s in specs]
    return batch


def is_multi_stage(env: Any) -> bool:
    """Whether `env` runs several stages per episode (checked on its class: no property is evaluated)."""
    cls = type(env)
    return all(hasattr(cls, name) for name in ("num_stages", "subtask", "next_stage"))


# --- transports -------------------------------------------------------------------------------------


class LocalWorker:
    """The worker protocol by direct calls, in this process (one worker: no process overhead)."""

    def __init__(self, slot_config: SlotConfig, planner_spec: PlannerSpec | None = None):
        self.slot = EpisodeSlot(slot_config)
        self.planner = planner_spec.build() if planner_spec is not None else None
        self._pending: tuple | None = None

    def send(self, msg: tuple) -> None:
        self._pending = msg

    def recv(self) -> Reply:
        msg, self._pending = self._pending, None
        assert msg is not None, "recv() without a command"
        return _handle(self.slot, self.planner, msg)

    def close(self, force: bool = False) -> None:
        self.slot.close()


class ProcessWorker:
    """The worker protocol over a pipe to a spawned process that owns its environments."""

    def __init__(self, slot_config: SlotConfig, planner_spec: PlannerSpec | None = None, name: str = "vla-eval"):
        ctx = mp.get_context("spawn")  # fork would copy a parent's GL contexts and torch threads
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, slot_config, planner_spec), name=name, daemon=True)
        self.process.start()
        child.close()

    def send(self, msg: tuple) -> None:
        self.conn.send(msg)

    def recv(self) -> Reply:
        while not self.conn.poll(1.0):
            if not self.process.is_alive():
                return Reply("fatal", error=f"worker process exited with code {self.process.exitcode}")
        try:
            return self.conn.recv()
        except EOFError:
            return Reply("fatal", error="worker process closed its pipe")

    def close(self, force: bool = False) -> None:
        """Stop the process: politely after a finished run, at once after an error (it may be mid-episode,
        blocked sending a reply nobody will read)."""
        if self.process.is_alive() and not force:
            try:
                self.conn.send(("close",))
                self.process.join(timeout=30)
            except (BrokenPipeError, OSError):
                pass
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        self.conn.close()


def _handle(slot: EpisodeSlot, planner: Any, msg: tuple) -> Reply:
    if msg[0] == "start":
        _, spec, record = msg
        return run_local_episode(slot, planner, spec, record) if planner is not None else slot.start(spec, record)
    if msg[0] == "act":
        return slot.act(msg[1], msg[2])
    raise ValueError(f"unknown worker command {msg[0]!r}")


def _worker_main(conn: Connection, slot_config: SlotConfig, planner_spec: PlannerSpec | None) -> None:
    if planner_spec is not None and not planner_spec.is_random:
        import torch

        torch.set_num_threads(1)  # workers share the cores: one thread each avoids oversubscription
    slot = EpisodeSlot(slot_config)
    try:
        planner = planner_spec.build() if planner_spec is not None else None
        while True:
            msg = conn.recv()
            if msg[0] == "close":
                break
            conn.send(_handle(slot, planner, msg))
    except (EOFError, KeyboardInterrupt):
        pass  # the parent went away or was interrupted: just stop
    except Exception:
        conn.send(Reply("fatal", error=traceback.format_exc()))
    finally:
        slot.close()
