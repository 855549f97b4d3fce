"""The generic evaluation loop: episodes spread over workers, one batched planner, throughput counts.

Benchmark-neutral: a protocol (vla.eval.protocol, filled in by vla.eval.protocols.*) supplies the
episode list, a picklable env factory and the planner; results go to a callback as each episode
finishes (the results log writes them at once, so a killed run loses only unfinished episodes).

Lock-step scheduling: every busy worker answers once per round (a plan request or a finished
episode); the plan requests of a round are stacked into one planner call, and a worker whose
episode ended gets the next episode straight away. With `policy_in_workers` each worker builds its
own planner and runs whole episodes, which avoids a round trip per plan when the policy is cheap.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vla.eval.episodes import EpisodeResult, EpisodeSpec, EvalError
from vla.eval.planners import Planner, PlannerSpec
from vla.eval.worker import LocalWorker, ProcessWorker, Reply, SlotConfig, batch_of

OnResult = Callable[[EpisodeResult, np.ndarray | None, "RunStats"], None]
Worker = LocalWorker | ProcessWorker


@dataclass
class RunStats:
    episodes: int = 0
    successes: int = 0
    env_steps: int = 0  # policy-loop steps (settle steps excluded)
    plans: int = 0  # per-environment plans
    policy_calls: int = 0  # planner invocations (one call plans a whole batch of environments)
    wall_s: float = 0.0
    episode_wall_s: float = 0.0  # summed over episodes: excludes start-up and simulator building
    startup_s: float = 0.0  # until every worker had answered once (processes up, simulators built)
    retried_episodes: int = 0  # Ray: episodes rerun from the start because their actor died

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s else 0.0

    @property
    def policy_calls_per_s(self) -> float:
        return self.policy_calls / self.wall_s if self.wall_s else 0.0

    def to_json(self) -> dict[str, Any]:
        steady = self.wall_s - self.startup_s  # after start-up: what a long evaluation would sustain
        return {
            **asdict(self),
            "success_rate": self.success_rate,
            "env_steps_per_s": round(self.env_steps_per_s, 2),
            "policy_calls_per_s": round(self.policy_calls_per_s, 3),
            "plans_per_s": round(self.plans / self.wall_s, 3) if self.wall_s else 0.0,
            "steady_env_steps_per_s": round(self.env_steps / steady, 2) if steady > 0 else 0.0,
            "steady_policy_calls_per_s": round(self.policy_calls / steady, 3) if steady > 0 else 0.0,
            # one environment's pace while its episodes run (the wall-clock rates include start-up)
            "env_steps_per_episode_s": round(self.env_steps / self.episode_wall_s, 2) if self.episode_wall_s else 0.0,
        }


def run_episodes(
    episodes: Sequence[EpisodeSpec],
    slot_config: SlotConfig,
    planner_spec: PlannerSpec,
    *,
    planner: Planner | None = None,
    workers: int = 1,
    policy_in_workers: bool = False,
    processes: bool | None = None,
    on_result: OnResult | None = None,
    record: Callable[[EpisodeSpec], bool] | None = None,
    ray: str | None = None,
) -> RunStats:
    """Run `episodes` and return the counts; each result goes to `on_result` as it finishes.

    `planner`: an already built central planner (default: built from `planner_spec`, which worker
    processes use when `policy_in_workers`). `processes`: spawn worker processes (default: when
    `workers > 1`; one in-process worker otherwise). `record(spec)`: whether to keep that episode's simulator
    states (handed to `on_result`, e.g. to render a video of it). `ray`: run on Ray instead ("auto": a local
    instance, else a cluster address; vla.eval.ray_runner), with `workers` simulator actors.
    """
    if workers < 1:
        raise EvalError(f"workers must be >= 1, got {workers}")
    stats = RunStats()
    if not episodes:
        return stats
    if ray is not None:  # the one place that chooses the backend
        from vla.eval.ray_runner import run_on_ray

        t0 = time.perf_counter()
        run_on_ray(ray, episodes, slot_config, planner_spec, planner=planner, workers=workers,
                   policy_in_workers=policy_in_workers, stats=stats, on_result=on_result,
                   record=record or (lambda spec: False))  # fmt: skip
        stats.wall_s = time.perf_counter() - t0
        return stats
    n = min(workers, len(episodes))
    central = None if policy_in_workers else (planner or planner_spec.build())
    t0 = time.perf_counter()
    pool: list[Worker] = []
    finished = False
    try:
        _start_workers(pool, n, slot_config, planner_spec if policy_in_workers else None, processes)
        rounds = _Rounds(pool, episodes, central, stats, t0, on_result, record or (lambda spec: False))
        rounds.run()
        finished = True
    finally:
        for w in pool:
            w.close(force=not finished)
    stats.wall_s = time.perf_counter() - t0
    return stats


def _start_workers(
    pool: list[Worker], n: int, slot_config: SlotConfig, planner_spec: PlannerSpec | None, processes: bool | None
) -> None:
    """Fill `pool` with `n` workers (appended one by one, so those already up are closed if one fails)."""
    use_processes = n > 1 if processes is None else processes
    for i in range(n):
        worker = (
            ProcessWorker(slot_config, planner_spec, name=f"vla-eval-{i}")
            if use_processes
            else LocalWorker(slot_config, planner_spec)
        )
        pool.append(worker)


class _Rounds:
    """The lock-step loop (see the module docstring): each busy worker answers once per round."""

    def __init__(
        self,
        pool: list[Worker],
        episodes: Sequence[EpisodeSpec],
        central: Planner | None,
        stats: RunStats,
        t0: float,
        on_result: OnResult | None,
        record: Callable[[EpisodeSpec], bool],
    ):
        self.pool, self.queue, self.central = pool, deque(episodes), central
        self.stats, self.t0, self.on_result, self.record = stats, t0, on_result, record
        self.active: dict[int, EpisodeSpec] = {}  # worker index -> its episode

    def run(self) -> None:
        for i in range(len(self.pool)):
            self._start_next(i)
        while self.active:
            replies: dict[int, Reply] = {i: self.pool[i].recv() for i in list(self.active)}
            if not self.stats.startup_s:
                self.stats.startup_s = time.perf_counter() - self.t0
            planning = [i for i, reply in replies.items() if self._answered(i, reply)]
            if planning:
                self._plan(planning, replies)

    def _start_next(self, i: int) -> None:
        if self.queue:
            spec = self.queue.popleft()
            self.pool[i].send(("start", spec, self.record(spec)))
            self.active[i] = spec
        else:
            self.active.pop(i, None)

    def _answered(self, i: int, reply: Reply) -> bool:
        """Handle worker i's reply; True when it asks for a plan."""
        if reply.kind == "fatal":
            raise EvalError(f"evaluation worker {i} failed:\n{reply.error}")
        if reply.kind == "plan":
            return True
        assert reply.result is not None
        self._count(reply.result)
        if self.on_result is not None:
            self.on_result(reply.result, reply.states, self.stats)
        self._start_next(i)
        return False

    def _count(self, result: EpisodeResult) -> None:
        stats = self.stats
        stats.episodes += 1
        stats.successes += int(result.success)
        stats.env_steps += result.steps
        stats.episode_wall_s += result.wall_s
        stats.plans += result.policy_calls
        if self.central is None:  # each worker planned its own episode one row at a time
            stats.policy_calls += result.policy_calls
        stats.wall_s = time.perf_counter() - self.t0

    def _plan(self, planning: list[int], replies: dict[int, Reply]) -> None:
        """One planner call for every worker waiting on a plan this round."""
        assert self.central is not None
        plan = self.central.plan(batch_of([replies[i] for i in planning], [self.active[i] for i in planning]))
        self.stats.policy_calls += 1
        for row, i in enumerate(planning):
            self.pool[i].send(("act", plan.actions[row], int(plan.n_exec[row])))
