"""The evaluation loop on Ray: simulator actors, policy actors, results streamed to the driver.

The same conversation as the process backend (vla.eval.worker: `EpisodeSlot` answers a plan request
or a finished episode), carried by Ray actors instead of pipes:

- one `EnvActor` per worker, each owning its simulator (1 CPU each);
- one `PolicyActor` per GPU when the policy runs on a GPU and the cluster has GPUs, else one on CPU.
  Plan requests that arrive while a policy actor is busy are stacked into its next call, so env
  actors are batched without waiting for each other (no lock-step rounds);
- the driver routes replies, hands out episodes and calls `on_result` as each episode finishes (the
  results log appends it at once: resume and dedupe are the log's, unchanged).

An env actor that dies mid-episode (node lost, OOM, `ray.kill`) loses that episode's simulator state,
so the episode cannot continue where it was: it goes back to the front of the queue, runs again from
its reset on another actor (episodes are seeded, so the rerun is the same episode) and the dead actor
is replaced. An episode counts only when its "done" reply reaches the driver, once per episode id.
Policy actors keep no per-episode state: Ray restarts them and retries the plan call itself.

Ray is imported only here, and only when `--ray` is given.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from vla.eval.episodes import EpisodeSpec, EvalError
from vla.eval.planners import Planner, PlannerSpec
from vla.eval.worker import EpisodeSlot, Reply, SlotConfig, _handle, batch_of

MAX_REPLACEMENTS = 3  # per env actor slot: a simulator that keeps dying is an error, not bad luck
MAX_BATCH = 64  # plan requests per policy call


class EnvActor:
    """One simulator (and, with policy_in_workers, its own planner): the worker protocol as actor calls."""

    def __init__(self, slot_config: SlotConfig, planner_spec: PlannerSpec | None):
        if planner_spec is not None and not planner_spec.is_random:
            import torch

            torch.set_num_threads(1)  # actors share the node's cores
        self.slot = EpisodeSlot(slot_config)
        self.planner = planner_spec.build() if planner_spec is not None else None

    def call(self, msg: tuple) -> Reply:
        return _handle(self.slot, self.planner, msg)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.slot.close()


class PolicyActor:
    """A planner in its own actor: built from the spec on the actor's device, or a planner object shipped in."""

    def __init__(self, planner_spec: PlannerSpec, planner: Planner | None):
        self.planner = planner if planner is not None else planner_spec.build()

    def plan(self, batch: dict[str, Any]) -> Any:
        return self.planner.plan(batch)


def connect(address: str, workers: int) -> bool:
    """Join the cluster at `address`, or start a local instance for "auto"; True when we started it.

    A Ray instance already running in this process (tests, notebooks) is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    common = {"include_dashboard": False, "log_to_driver": True, "logging_level": "WARNING"}
    if address == "auto":
        # "auto" is a private instance on this machine (never a lookup of some other cluster): enough
        # logical CPUs for every env actor, since simulators can share cores when asked to.
        ray.init(num_cpus=max(os.cpu_count() or 1, workers), **common)
    else:
        ray.init(address=address, **common)
    return True


def run_on_ray(
    address: str,
    episodes: Sequence[EpisodeSpec],
    slot_config: SlotConfig,
    planner_spec: PlannerSpec,
    *,
    planner: Planner | None,
    workers: int,
    policy_in_workers: bool,
    stats: Any,
    on_result: Callable[..., None] | None,
    record: Callable[[EpisodeSpec], bool],
) -> None:
    """Run `episodes` on Ray, filling `stats` (a RunStats) as results arrive."""
    import ray

    started = connect(address, workers)
    loop = None
    try:
        _check_resources(workers)
        loop = _Loop(episodes, slot_config, planner_spec, planner, workers, policy_in_workers, stats, on_result, record)
        loop.run()
    finally:
        if loop is not None:
            loop.close()
        if started:
            ray.shutdown()


def _check_resources(workers: int) -> None:
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    if workers > cpus:
        raise EvalError(
            f"--workers {workers} asks for {workers} simulator actors (1 CPU each) but the Ray cluster has "
            f"{cpus:g} CPUs; use fewer workers or add nodes"
        )


def _policy_placement(planner_spec: PlannerSpec) -> tuple[int, dict[str, Any]]:
    """(number of policy actors, their Ray options): one per GPU for a GPU policy, else one on CPU.

    The CPU actor reserves no CPU: env actors wait on it while it plans, so the cores are not shared at once."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if planner_spec.device.startswith("cuda") and gpus > 0:
        return gpus, {"num_gpus": 1, "num_cpus": 0}
    return 1, {"num_cpus": 0}


class _Loop:
    """The driver: env actor replies -> results or plan requests -> policy actors -> actions back."""

    def __init__(
        self,
        episodes: Sequence[EpisodeSpec],
        slot_config: SlotConfig,
        planner_spec: PlannerSpec,
        planner: Planner | None,
        workers: int,
        policy_in_workers: bool,
        stats: Any,
        on_result: Callable[..., None] | None,
        record: Callable[[EpisodeSpec], bool],
    ):
        import ray

        from vla.policies.runtime import PolicyPlanner

        self.ray = ray
        self.queue: deque[EpisodeSpec] = deque(episodes)
        self.slot_config, self.planner_spec = slot_config, planner_spec
        self.own_planner = planner_spec if policy_in_workers else None
        self.stats, self.on_result, self.record = stats, on_result, record
        self.t0 = time.perf_counter()
        self.done: set[str] = set()
        self.answered: set[int] = set()  # env actors that have answered once (start-up is over when all have)
        self.replaced = [0] * min(workers, len(episodes))  # per slot; also tags replies of an actor's life
        self.envs: list[Any] = [self._env_actor() for _ in self.replaced]
        self.active: dict[int, EpisodeSpec] = {}  # env actor index -> its episode
        self.pending: dict[Any, int] = {}  # env call ref -> env actor index
        self.policies: list[Any] = []
        if not policy_in_workers:
            # A checkpoint is loaded again inside each policy actor (on its device); another planner object
            # (tests, scripted baselines) is shipped as it is.
            rebuilt = planner is None or isinstance(planner, PolicyPlanner) or planner_spec.is_random
            shipped = None if rebuilt else planner
            count, options = _policy_placement(planner_spec)
            actor = ray.remote(max_restarts=2, max_task_retries=2, **options)(PolicyActor)
            self.policies = [actor.remote(planner_spec, shipped) for _ in range(count)]
        self.idle_policies: list[int] = list(range(len(self.policies)))
        self.waiting: deque[tuple[int, Reply]] = deque()  # plan requests not yet sent to a policy actor
        # plan call ref -> (policy actor, [(env actor, its life)]): a plan for a replaced actor is dropped
        self.plans: dict[Any, tuple[int, list[tuple[int, int]]]] = {}

    def _env_actor(self) -> Any:
        return self.ray.remote(num_cpus=1, max_restarts=0)(EnvActor).remote(self.slot_config, self.own_planner)

    # --- the loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        for i in range(len(self.envs)):
            self._start_next(i)
        while self.pending or self.plans:
            ready, _ = self.ray.wait([*self.pending, *self.plans], num_returns=1)
            more, _ = self.ray.wait([*self.pending, *self.plans], num_returns=len(self.pending) + len(self.plans),
                                    timeout=0)  # fmt: skip
            for ref in dict.fromkeys([*ready, *more]):
                if ref in self.pending:
                    self._env_replied(ref)
                else:
                    self._planned(ref)
            self._dispatch_plans()

    def _start_next(self, i: int) -> None:
        while self.queue and self.queue[0].episode_id in self.done:
            self.queue.popleft()  # a retried episode that finished after all
        if self.queue:
            spec = self.queue.popleft()
            self.active[i] = spec
            self._send(i, ("start", spec, self.record(spec)))
        else:
            self.active.pop(i, None)

    def _send(self, i: int, msg: tuple) -> None:
        self.pending[self.envs[i].call.remote(msg)] = i

    def _env_replied(self, ref: Any) -> None:
        i = self.pending.pop(ref)
        try:
            reply: Reply = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._replace(i)
            return
        self.answered.add(i)
        if not self.stats.startup_s and len(self.answered) == len(self.envs):  # every simulator is up
            self.stats.startup_s = time.perf_counter() - self.t0
        if reply.kind == "fatal":
            raise EvalError(f"evaluation actor {i} failed:\n{reply.error}")
        if reply.kind == "plan":
            self.waiting.append((i, reply))
            return
        assert reply.result is not None
        if reply.result.episode_id not in self.done:
            self.done.add(reply.result.episode_id)
            self._count(reply)
        self._start_next(i)

    def _replace(self, i: int) -> None:
        """Env actor i died: its episode goes back to the front of the queue, a new actor takes its place."""
        spec = self.active.pop(i, None)
        self.replaced[i] += 1
        if self.replaced[i] > MAX_REPLACEMENTS:
            raise EvalError(
                f"evaluation actor {i} died {self.replaced[i]} times"
                + (f" (last in episode {spec.episode_id})" if spec else "")
                + "; see the Ray logs (ray logs / /tmp/ray/session_latest/logs)"
            )
        if spec is not None and spec.episode_id not in self.done:
            self.queue.appendleft(spec)
            self.stats.retried_episodes += 1
        self.waiting = deque((j, r) for j, r in self.waiting if j != i)
        self.envs[i] = self._env_actor()
        self._start_next(i)

    def _count(self, reply: Reply) -> None:
        result, stats = reply.result, self.stats
        assert result is not None
        stats.episodes += 1
        stats.successes += int(result.success)
        stats.env_steps += result.steps
        stats.episode_wall_s += result.wall_s
        stats.plans += result.policy_calls
        if not self.policies:  # each actor planned its own episode one row at a time
            stats.policy_calls += result.policy_calls
        stats.wall_s = time.perf_counter() - self.t0
        if self.on_result is not None:
            self.on_result(result, reply.states, stats)

    def _dispatch_plans(self) -> None:
        while self.waiting and self.idle_policies:
            rows = [self.waiting.popleft() for _ in range(min(MAX_BATCH, len(self.waiting)))]
            p = self.idle_policies.pop(0)
            batch = batch_of([r for _, r in rows], [self.active[i] for i, _ in rows])
            self.plans[self.policies[p].plan.remote(batch)] = (p, [(i, self.replaced[i]) for i, _ in rows])

    def _planned(self, ref: Any) -> None:
        p, rows = self.plans.pop(ref)
        self.idle_policies.append(p)
        plan = self.ray.get(ref)  # a planner error is the run's error, as in the process backend
        self.stats.policy_calls += 1
        for row, (i, life) in enumerate(rows):
            if life == self.replaced[i]:  # else the actor died (and was replaced) while its plan was computed
                self._send(i, ("act", plan.actions[row], int(plan.n_exec[row])))

    def close(self) -> None:
        for actor in [*self.envs, *self.policies]:
            self.ray.kill(actor)
