"""Cameras for state-only LIBERO demo files, re-rendered from their saved simulator states.

A scripted rollout costs ~15 ms a step without cameras and ~10x that with two software-rendered
cameras; most of that is spent drawing frames of rollouts that are then thrown away (failures) or at
a size the policy does not read. So demos are collected state-only and the kept ones are drawn
afterwards: every demo's `states` row k is the simulator state right after the action that led to
frame k, and `LiberoEnv` renders a live frame from exactly that state, so a re-rendered file equals one
recorded with cameras on (same pixels; see tests/sim/test_rerender.py).

The output is a LIBERO task file like the input plus `obs/<camera>_rgb` arrays (upside down, as LIBERO
stores them; the converter turns them upright) and `env_args` naming the cameras and their size. Files
are written to a temporary name and renamed, so an interrupted run redoes only the unfinished ones.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py

from vla.datasets.conventions.libero import CAMERAS, RAW_ORIENTATION
from vla.sim.base import SimError

RENDERED_ATTR = "vla_rendered_from_states"  # data.attrs: JSON {"cameras": [...], "image_size": N}


@dataclass(frozen=True)
class RenderJob:
    suite: str
    task_id: int
    src: Path  # a state-only `<task>_demo.hdf5`
    dst: Path
    cameras: tuple[str, ...]
    image_size: int


@dataclass
class RenderReport:
    dst: str
    demos: int
    frames: int
    seconds: float
    reused: bool = False


def rendered_with(path: Path) -> dict | None:
    """What a finished output file was rendered with (None: not a re-rendered file)."""
    if not path.exists():
        return None
    with h5py.File(path, "r") as f:
        value = f["data"].attrs.get(RENDERED_ATTR)
    return None if value is None else json.loads(value)


def render_task_file(job: RenderJob) -> RenderReport:
    """Add the cameras to one task file (a finished output with the same cameras and size is kept)."""
    from vla.sim.libero import LiberoEnv

    want = {"cameras": list(job.cameras), "image_size": job.image_size}
    if rendered_with(job.dst) == want:
        with h5py.File(job.dst, "r") as f:
            demos = [f["data"][k] for k in f["data"]]
            return RenderReport(str(job.dst), len(demos), sum(len(d["actions"]) for d in demos), 0.0, reused=True)
    unknown = [c for c in job.cameras if c not in CAMERAS]
    if unknown:
        raise SimError(f"unknown LIBERO camera(s) {unknown}; valid: {', '.join(CAMERAS)}")
    t0 = time.perf_counter()
    partial = job.dst.with_name(job.dst.name + ".partial")
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(job.src, partial)
    env = LiberoEnv(job.suite, job.task_id, cameras=job.cameras, image_size=job.image_size,
                    image_orientation=RAW_ORIENTATION)  # fmt: skip
    frames = demos = 0
    try:
        with h5py.File(partial, "r+") as f:
            data = f["data"]
            for name in data:
                demo = data[name]
                states = demo["states"][()]
                for cam in job.cameras:
                    key = f"obs/{cam}_rgb"
                    if key in demo:
                        del demo[key]
                    demo.create_dataset(key, data=env.render_states(states, cam))
                frames += len(states)
                demos += 1
            args = json.loads(data.attrs["env_args"])
            kwargs = args.setdefault("env_kwargs", {})
            kwargs.update(camera_names=[CAMERAS[c] for c in job.cameras], camera_heights=job.image_size,
                          camera_widths=job.image_size)  # fmt: skip
            data.attrs["env_args"] = json.dumps(args)
            data.attrs[RENDERED_ATTR] = json.dumps(want)
    finally:
        env.close()
    os.replace(partial, job.dst)
    return RenderReport(str(job.dst), demos, frames, time.perf_counter() - t0)


def render_task_files(jobs: Sequence[RenderJob], workers: int = 1) -> list[RenderReport]:
    """Render every job, `workers` task files at a time (separate processes: one GL context each)."""
    if workers <= 1 or len(jobs) <= 1:
        return [render_task_file(j) for j in jobs]
    ctx = mp.get_context("spawn")  # a forked copy of a GL context (or torch threads) is not safe
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
        return list(pool.map(render_task_file, jobs))
