"""`vla data validate`: every problem with a store, one line each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from vla.datasets import slots as slotlib
from vla.datasets.stats import QUANTILES
from vla.datasets.store import INDEX_KEYS, Store, missing_chunks
from vla.errors import DataError

STAT_FIELDS = ("mean", "std", "min", "max", *(f"q{round(q * 100):02d}" for q in QUANTILES))
SCAN_BLOCK = 65_536
META_ARRAYS = (
    "meta/episode_ends",
    "meta/episode_task",
    "meta/annotations/start",
    "meta/annotations/end",
    "meta/annotations/task",
)


def validate_store(path: str | Path, scan_values: bool = True) -> list[str]:
    """Return a list of problems (empty when the store is valid)."""
    try:
        store = Store(path)
    except DataError as e:
        return [str(e)]
    problems: list[str] = [f"spec: {p}" for p in store.spec.problems()]
    meta, n, n_ep = store.meta, store.num_frames, store.num_episodes

    for key, ks in {**store.keys, **{k: None for k in INDEX_KEYS}}.items():
        try:
            arr = store.array(key)
        except DataError:
            problems.append(f"data/{key}: array is missing")
            continue
        if arr.shape[0] != n:
            problems.append(f"data/{key}: {arr.shape[0]} frames, metadata says {n}")
        if ks is not None:
            if tuple(arr.shape[1:]) != tuple(ks.shape):
                problems.append(f"data/{key}: per-frame shape {tuple(arr.shape[1:])}, spec says {tuple(ks.shape)}")
            if str(arr.dtype) != ks.dtype:
                problems.append(f"data/{key}: dtype {arr.dtype}, spec says {ks.dtype}")
            if ks.names and len(ks.shape) == 1 and len(ks.names) != ks.shape[0]:
                problems.append(f"data/{key}: {len(ks.names)} names for {ks.shape[0]} dimensions")

    problems.extend(chunk_problems(store))
    absent = [key for key in META_ARRAYS if not isinstance(store.root.get(key), zarr.Array)]
    if absent:  # the checks below read them: report what is missing instead
        return [*problems, *(f"{key}: array is missing" for key in absent)]
    ends = store.episode_ends
    if len(ends) != n_ep:
        problems.append(f"meta/episode_ends: {len(ends)} entries, metadata says {n_ep} episodes")
    if len(ends) and (np.any(np.diff(np.concatenate([[0], ends])) <= 0) or ends[-1] != n):
        problems.append("meta/episode_ends: must be strictly increasing and end at the frame count (empty episode?)")
    tasks = store.episode_task
    if len(tasks) != n_ep:
        problems.append(f"meta/episode_task: {len(tasks)} entries for {n_ep} episodes")
    if len(tasks) and (tasks.max() >= len(store.tasks) or tasks.min() < -1):
        problems.append("meta/episode_task: task index out of range")
    ann = store.annotations
    if len(ann):
        if np.any(ann[:, 0] >= ann[:, 1]) or ann[:, 0].min() < 0 or ann[:, 1].max() > n:
            problems.append("meta/annotations: a window is empty or outside the data")
        if ann[:, 2].min() < 0 or ann[:, 2].max() >= len(store.tasks):
            problems.append("meta/annotations/task: task index out of range")

    for key, ks in store.keys.items():
        st = store.stats.get(key)
        if st is None:
            problems.append(f"stats/{key}: missing")
            continue
        fields = ("mean", "std", "min", "max") if ks.dtype == "uint8" else STAT_FIELDS
        for f in fields:
            if f not in st:
                problems.append(f"stats/{key}: field {f!r} missing")
            elif not np.all(np.isfinite(np.asarray(st[f], dtype=np.float64))):
                problems.append(f"stats/{key}: field {f!r} is not finite")

    for name, dims_ in (("action", store.spec.action), ("state", store.spec.state)):
        sl = meta["slots"][name]["indices"]
        if dims_:
            problems.extend(f"slots/{name}: {p}" for p in slotlib.check_slots(sl, len(dims_)))
    cams = {c.key for c in store.spec.cameras}
    for key in cams:
        if key not in store.root["data"]:
            problems.append(f"cameras: {key} declared but not stored")

    if scan_values:  # NaN/inf anywhere in low-dimensional data, read block by block
        for key, ks in store.keys.items():
            if ks.dtype.startswith("float"):
                try:
                    arr = store.array(key)
                except DataError:  # already reported as missing above
                    continue
                for s in range(0, n, SCAN_BLOCK):
                    block = np.asarray(arr[s : s + SCAN_BLOCK])
                    if not np.isfinite(block).all():
                        bad = s + int(np.argwhere(~np.isfinite(block))[0][0])
                        problems.append(f"data/{key}: non-finite value at frame {bad}")
                        break
    return problems


def chunk_problems(store: Store) -> list[str]:
    """Every array of the store (data, meta, annotations; image shards down to each frame) must
    have all its chunks: zarr would read a deleted one back as zeros."""
    problems = []
    for name, arr in sorted(store.root.members(max_depth=None)):
        if not isinstance(arr, zarr.Array):
            continue
        try:
            missing = missing_chunks(arr)
        except Exception as e:  # an unreadable listing or shard: say so, keep validating the rest
            problems.append(f"{name}: cannot check its chunks ({type(e).__name__}: {e})")
            continue
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            problems.append(f"{name}: chunk {missing[0]}{more} missing (would read as zeros); re-convert the store")
    return problems
