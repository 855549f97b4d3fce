"""One progress display for every long job (conversion, training, evaluation).

On a terminal it is tqdm's bar. Anywhere else (a log file, CI, a pipe, `nohup`) a bar is a stream of
carriage returns that logs keep as one endless line, so there it prints a plain line every
`VLA_PROGRESS_SECONDS` seconds (default 30) and one when the job ends:

    train: 400/1000 (40%), 3.2/s, 2m05s elapsed, ~3m08s left, loss=0.0412 samples_s=102
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

DEFAULT_SECONDS = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("VLA_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class LineProgress:
    """tqdm's small interface (update, set_postfix, close, write, context manager) as periodic lines."""

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        initial: int = 0,
        unit: str = "it",
        every: float | None = None,
        file: TextIO | None = None,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = initial
        self.every = _interval() if every is None else every
        self.file = file
        self.postfix: dict[str, Any] = {}
        self.start = self.last = time.monotonic()
        self.closed = False

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._print()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def write(self, message: str) -> None:
        print(message, file=self.file or sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.n}/{self.total}" if self.total else f"{self.n}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{_duration((self.total - self.n) / rate)} left")
        line = f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)
        if self.postfix:
            line += ", " + " ".join(f"{k}={v}" for k, v in self.postfix.items())
        return line

    def _print(self) -> None:
        self.last = time.monotonic()
        self.write(self.line())


class _Silent(LineProgress):
    def _print(self) -> None:
        pass

    def write(self, message: str) -> None:
        pass


def progress_bar(
    total: int | None, desc: str = "", *, initial: int = 0, unit: str = "it", disable: bool = False
) -> Any:
    """A tqdm bar on a terminal, periodic `LineProgress` lines elsewhere, nothing when `disable`."""
    if disable:
        return _Silent(total, desc, initial, unit)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
    return LineProgress(total, desc, initial, unit)
