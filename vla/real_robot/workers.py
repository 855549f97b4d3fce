"""Inference workers: run a stream planner (observation -> (H, A) actions to execute) beside the control loop.

`ThreadedWorker` runs it in its own thread (the async deployment loop); `SyncWorker` runs it inside the
tick (the baseline that blocks); `ScheduledWorker` answers after a given latency on a fake clock, so
tests of dropping and merging are exact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from vla.real_robot.chunks import Chunk
from vla.real_robot.clock import Clock

log = logging.getLogger("vla.real_robot.workers")

Observation = dict[str, Any]
# One arm's newest observation -> the actions to execute (H, A): the policy runtime's PolicyPlanner (which keeps
# the arm's observation history and cuts each chunk to its n_exec actions), a `vla serve` client, a leader arm.
StreamPlanner = Callable[[Observation], np.ndarray]


class Worker(Protocol):
    errors: int

    def busy(self) -> bool: ...
    def submit(self, tick: int, obs: Observation) -> None: ...
    def poll(self) -> list[Chunk]: ...
    def close(self) -> None: ...


def _as_chunk(tick: int, out: Any) -> Chunk:
    a = np.asarray(out, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"planner returned shape {a.shape}, expected (H, A)")
    return Chunk(tick, a)


class SyncWorker:
    plans_in_tick = True

    def __init__(self, planner: StreamPlanner):
        self.planner = planner
        self.errors = 0
        self._done: list[Chunk] = []

    def busy(self) -> bool:
        return False

    def submit(self, tick: int, obs: Observation) -> None:
        try:
            self._done.append(_as_chunk(tick, self.planner(obs)))
        except Exception as e:
            self.errors += 1
            log.warning("inference failed: %s", e)

    def poll(self) -> list[Chunk]:
        out, self._done = self._done, []
        return out

    def close(self) -> None:
        pass


class ThreadedWorker:
    """One request in flight at a time; the loop submits the newest observation whenever it is idle."""

    def __init__(self, planner: StreamPlanner):
        self.planner = planner
        self.errors = 0
        self._lock = threading.Lock()
        self._request: tuple[int, Observation] | None = None
        self._busy = False
        self._done: list[Chunk] = []
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def busy(self) -> bool:
        with self._lock:
            return self._busy

    def submit(self, tick: int, obs: Observation) -> None:
        with self._lock:
            if self._busy:
                return
            self._busy = True
            self._request = (tick, obs)
        self._wake.set()

    def poll(self) -> list[Chunk]:
        with self._lock:
            out, self._done = self._done, []
        return out

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            with self._lock:
                req, self._request = self._request, None
            if req is None:
                continue
            try:
                chunk = _as_chunk(req[0], self.planner(req[1]))
                with self._lock:
                    self._done.append(chunk)
            except Exception as e:  # a failing policy must not take the loop down: it holds instead
                with self._lock:
                    self.errors += 1
                log.warning("inference failed: %s", e)
            with self._lock:
                self._busy = False

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=2.0)


class ScheduledWorker:
    """Fake-clock worker: the planner runs at submit, its chunk is delivered `latency(tick)` seconds later."""

    def __init__(self, planner: StreamPlanner, clock: Clock, latency: float | Callable[[int], float]):
        self.planner = planner
        self.clock = clock
        self.latency = latency if callable(latency) else (lambda _t: float(latency))
        self.errors = 0
        self._pending: tuple[float, Chunk | None] | None = None

    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, tick: int, obs: Observation) -> None:
        if self._pending is not None:
            return
        try:
            chunk: Chunk | None = _as_chunk(tick, self.planner(obs))
        except Exception as e:
            log.warning("inference failed: %s", e)
            chunk = None
        self._pending = (self.clock.now() + self.latency(tick), chunk)

    def poll(self) -> list[Chunk]:
        if self._pending is None or self.clock.now() < self._pending[0]:
            return []
        _, chunk = self._pending
        self._pending = None
        if chunk is None:
            self.errors += 1
            return []
        return [chunk]

    def close(self) -> None:
        pass
