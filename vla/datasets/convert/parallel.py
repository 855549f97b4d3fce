"""Episodes read in worker processes, handed back in order: the reading side of `convert --workers N`.

Decoding (video, HDF5, PNG frames) is what a conversion spends its time on, so each worker process
builds its own converter once and reads the episodes it is given (`converter.episodes(start=i)`
skips to episode i without reading what comes before). The driver keeps writing episodes in source
order through the one `StoreWriter`, so the store is bit-identical to a serial conversion and the
journal, resume and statistics are unchanged.

Memory stays bounded: each worker holds the episode it reads, and at most `ahead` finished episodes
wait in the driver for their turn. Workers are spawned (never forked from a process that may run
threads: zarr's event loop, blosc, video decoders).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from vla.datasets.declare import Declaration
from vla.datasets.store import Episode

_converter: Any = None  # the worker process's own converter


def _start_worker(fmt: str, src: Path, declaration: Declaration) -> None:
    global _converter
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers share the cores: one decoding thread each
    from vla.datasets.convert import CONVERTERS

    _converter = CONVERTERS.load(fmt)(src, declaration)


def _read(index: int) -> Episode:
    episodes = _converter.episodes(start=index)
    try:
        return next(episodes)
    finally:
        episodes.close()  # release the source file the generator holds open


def parallel_episodes(
    fmt: str, src: Path, declaration: Declaration, start: int, total: int, workers: int, ahead: int | None = None
) -> Iterator[Episode]:
    """Episodes `start..total-1` in order, read by `workers` spawned processes (`ahead` in flight, default 2x)."""
    ahead = ahead or 2 * workers
    pool = ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_start_worker, initargs=(fmt, src, declaration)
    )
    pending: deque[Future[Episode]] = deque()
    next_index = start
    try:
        while next_index < total or pending:
            while next_index < total and len(pending) < ahead:
                pending.append(pool.submit(_read, next_index))
                next_index += 1
            yield pending.popleft().result()  # a worker's DataError is re-raised here, unchanged
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
