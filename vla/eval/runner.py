"""The generic evaluation loop: episodes spread over workers, one batched planner, throughput counts.

Benchmark-neutral: a protocol (vla.eval.protocols.libero, later CALVIN) supplies the episode list, a picklable
env factory and the planner; results go to a callback as each episode finishes (the results log
writes them at once, so a killed run loses only unfinished episodes).

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
) -> RunStats:
    """Run `episodes` and return the counts; each result goes to `on_result` as it finishes.

    `planner`: an already built central planner (default: built from `planner_spec`, which worker
    processes use when `policy_in_workers`). `processes`: spawn worker processes (default: when
    `workers > 1`; one in-process worker otherwise). `record(spec)`: whether to keep that episode's simulator
    states (handed to `on_result`, e.g. to render a video of it).
    """
    if workers < 1:
        raise EvalError(f"workers must be >= 1, got {workers}")
    stats = RunStats()
    queue = deque(episodes)
    if not queue:
        return stats
    n = min(workers, len(queue))
    use_processes = n > 1 if processes is None else processes
    worker_planner = planner_spec if policy_in_workers else None
    central = None if policy_in_workers else (planner or planner_spec.build())
    want = record or (lambda spec: False)
    t0 = time.perf_counter()
    pool: list[LocalWorker | ProcessWorker] = []
    finished = False
    try:
        for i in range(n):
            pool.append(
                ProcessWorker(slot_config, worker_planner, name=f"vla-eval-{i}")
                if use_processes
                else LocalWorker(slot_config, worker_planner)
            )
        active: dict[int, EpisodeSpec] = {}

        def start_next(i: int) -> None:
            if queue:
                spec = queue.popleft()
                pool[i].send(("start", spec, want(spec)))
                active[i] = spec
            else:
                active.pop(i, None)

        for i in range(n):
            start_next(i)
        while active:
            replies: dict[int, Reply] = {i: pool[i].recv() for i in list(active)}
            if not stats.startup_s:
                stats.startup_s = time.perf_counter() - t0
            planning: list[int] = []
            for i, reply in replies.items():
                if reply.kind == "fatal":
                    raise EvalError(f"evaluation worker {i} failed:\n{reply.error}")
                if reply.kind == "plan":
                    planning.append(i)
                    continue
                result = reply.result
                assert result is not None
                stats.episodes += 1
                stats.successes += int(result.success)
                stats.env_steps += result.steps
                stats.episode_wall_s += result.wall_s
                stats.plans += result.policy_calls
                if central is None:  # each worker planned its own episode one row at a time
                    stats.policy_calls += result.policy_calls
                stats.wall_s = time.perf_counter() - t0
                if on_result is not None:
                    on_result(result, reply.states, stats)
                start_next(i)
            if planning:
                assert central is not None
                plan = central.plan(batch_of([replies[i] for i in planning], [active[i] for i in planning]))
                stats.policy_calls += 1
                for row, i in enumerate(planning):
                    pool[i].send(("act", plan.actions[row], int(plan.n_exec[row])))
        finished = True
    finally:
        for w in pool:
            w.close(force=not finished)
    stats.wall_s = time.perf_counter() - t0
    return stats
