"""A store as a rerun recording: cameras, state and action curves, language, annotation windows.

Entities (all on the `frame` timeline, the store's global frame index, and the `time` timeline,
the frame's timestamp plus the episode's start so episodes follow each other):

- `cameras/<camera>`: the stored (upright) RGB frames;
- `action/<dim>`, `state/<dim>`: one scalar curve per dimension, named by the store's dimension
  names (`dim_<i>` where a store has none); extra low-dimensional keys under `extra/<key>/<i>`;
- `language/task`: the episode's task, logged at its first frame; `language/annotations`: each
  language window of the store, logged at its first frame as "[start, end) text";
- `episode`: the episode index as a scalar, so a jump shows where an episode starts.

Low-dimensional curves go in with `send_columns` (one call per curve), cameras frame by frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vla.datasets.store import Store
from vla.keys import ACTION_KEY, IMAGE_PREFIX, STATE_KEY

APP_ID = "vla"


def dim_names(store: Store, key: str, width: int) -> list[str]:
    dims = {ACTION_KEY: store.spec.action, STATE_KEY: store.spec.state}.get(key, ())
    names = [d.name for d in dims] if len(dims) == width else []
    return names or [f"dim_{i}" for i in range(width)]


def curve_entities(store: Store) -> dict[str, str]:
    """Store key -> entity prefix for the low-dimensional keys the recording shows."""
    out = {}
    for key in store.keys:
        if key.startswith(IMAGE_PREFIX):
            continue
        out[key] = {ACTION_KEY: "action", STATE_KEY: "state"}.get(key, f"extra/{key}")
    return out


def _log_episode(rec, store: Store, index: int, time_offset: float) -> float:
    import rerun as rr

    ep = store.episode(index)
    start = int(store.episode_starts[index])
    n = ep.length
    frames = np.arange(start, start + n)
    stamps = np.asarray(ep.timestamps, np.float64) if ep.timestamps is not None else np.arange(n) / store.fps
    seconds = time_offset + stamps - (stamps[0] if n else 0.0)
    index_cols = [rr.TimeColumn("frame", sequence=frames), rr.TimeColumn("time", duration=seconds)]

    rec.send_columns("episode", indexes=index_cols, columns=rr.Scalars.columns(scalars=np.full(n, float(index))))
    for key, prefix in curve_entities(store).items():
        values = np.asarray(ep.frames[key], np.float64).reshape(n, -1)
        for d, name in enumerate(dim_names(store, key, values.shape[1])):
            path = f"{prefix}/{rr.escape_entity_path_part(name)}"
            rec.send_columns(path, indexes=index_cols, columns=rr.Scalars.columns(scalars=values[:, d]))

    def at(t: int) -> None:
        rec.set_time("frame", sequence=int(frames[t]))
        rec.set_time("time", duration=float(seconds[t]))

    if n:
        at(0)
        rec.log("language/task", rr.TextLog(f"episode {index}: {ep.task or '(no task)'}"))
    for s, e, text in ep.annotations:
        at(min(max(s, 0), n - 1))
        rec.log("language/annotations", rr.TextLog(f"[{s}, {e}) {text}"))
    for cam in store.camera_keys:
        name = rr.escape_entity_path_part(cam.removeprefix(IMAGE_PREFIX))
        for t in range(n):
            at(t)
            rec.log(f"cameras/{name}", rr.Image(ep.frames[cam][t]))
    step = 1.0 / store.fps
    return float(seconds[-1] + step) if n else time_offset


def record_store(
    store: Store, episodes: Sequence[int] | None = None, out: str | Path | None = None, spawn: bool = False
) -> Path | None:
    """Log `episodes` (default: all) of `store` to an .rrd file at `out` (written to a temporary name
    and renamed) or, with `spawn`, to a newly started rerun viewer. Returns the file written."""
    import rerun as rr

    chosen = list(range(store.num_episodes)) if episodes is None else list(episodes)
    for i in chosen:
        if not 0 <= i < store.num_episodes:
            raise IndexError(f"episode {i} out of range 0..{store.num_episodes - 1}")
    rec = rr.RecordingStream(APP_ID, recording_id=f"{store.path.name}")
    tmp = None
    if spawn:
        rec.spawn()
    else:
        if out is None:
            raise ValueError("give an output file or spawn the viewer")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        rec.save(tmp)
    rec.log("store", rr.TextDocument(_describe(store)), static=True)
    offset = 0.0
    for i in chosen:
        offset = _log_episode(rec, store, i, offset)
    rec.flush()
    rec.disconnect()  # closes the file sink: everything is on disk after this
    if tmp is None:
        return None
    os.replace(tmp, out)
    return out


def _describe(store: Store) -> str:
    lines = [
        f"{store.path}: {store.num_episodes} episodes, {store.num_frames} frames, {store.fps:g} fps",
        f"embodiment {store.spec.embodiment}, source {store.spec.source.format}",
        "keys: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in store.keys.items()),
    ]
    return "\n".join(lines)
