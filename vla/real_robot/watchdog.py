"""Stops the arm when the control loop stalls: the loop kicks it every tick; a missed deadline trips it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from vla.real_robot.clock import Clock

log = logging.getLogger("vla.real_robot.watchdog")


class Watchdog:
    def __init__(self, clock: Clock, timeout_s: float, on_stall: Callable[[], None]):
        self.clock = clock
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self.tripped = False
        self._last = clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        self._last = self.clock.now()

    def check(self) -> bool:
        """Trip (once) when the last kick is older than the timeout. Returns whether it is tripped."""
        if not self.tripped and self.clock.now() - self._last > self.timeout_s:
            self.tripped = True
            log.error("watchdog: control loop stalled for > %.3f s, stopping the arm", self.timeout_s)
            try:
                self.on_stall()
            except Exception:  # the stop must not kill the watchdog; the loop reports the state
                log.exception("watchdog: stopping the arm failed")
        return self.tripped

    def start(self) -> None:
        """Poll in a thread (real time); fake-clock tests call `check()` themselves."""

        def run() -> None:
            while not self._stop.wait(self.timeout_s / 4):
                self.check()

        self._thread = threading.Thread(target=run, name="watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
