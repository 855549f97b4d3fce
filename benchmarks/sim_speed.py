"""LIBERO simulation speed through `LiberoEnv`: with two cameras and without any, in one run.

For each mode it times building the environment, resetting to fixed initial states (the soft reset
`LiberoEnv` uses, with its 10 settle steps, which are rendered too when cameras are on) and
stepping with a fixed, smooth action sequence that moves the arm and opens/closes the gripper so
contacts happen as in real episodes. Each observation is converted to the store's keys (state
vector, upright frames), so the numbers are what a policy evaluation or demo collection pays.

Usage: python benchmarks/sim_speed.py [--suite libero_object] [--task 0] [--steps 150] [--image-size 128]
The last line is `camera_overhead: <steps/s without cameras / steps/s with cameras>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

import vla  # noqa: F401  (offline and LIBERO defaults before the simulator loads)
from vla.datasets.conventions.libero import CAMERAS
from vla.sim.libero import LiberoEnv, suite_tasks


@dataclass
class Timing:
    mode: str
    build_s: float
    reset_s: float  # median over the resets
    steps_per_s: float


def actions(n: int) -> np.ndarray:
    """A smooth, bounded action sequence: the arm sweeps around and the gripper toggles every 40 steps."""
    t = np.arange(n)[:, None]
    out = np.zeros((n, 7))
    out[:, :3] = 0.6 * np.sin(2 * np.pi * t / np.array([60.0, 80.0, 50.0]))
    out[:, 3:6] = 0.1 * np.sin(2 * np.pi * t / np.array([70.0, 90.0, 110.0]))
    out[:, 6] = np.where((t[:, 0] // 40) % 2 == 0, -1.0, 1.0)
    return out


def measure(suite: str, task: int, cameras: tuple[str, ...], image_size: int, steps: int, resets: int) -> Timing:
    t0 = time.perf_counter()
    env = LiberoEnv(suite, task, cameras=cameras, image_size=image_size)
    build = time.perf_counter() - t0
    try:
        reset_times = []
        for i in range(resets):
            t0 = time.perf_counter()
            env.reset(i)
            reset_times.append(time.perf_counter() - t0)
        plan = actions(steps)
        env.step(plan[0])  # first step outside the clock (lazy allocations)
        t0 = time.perf_counter()
        for a in plan[1:]:
            env.step(a)
        rate = (steps - 1) / (time.perf_counter() - t0)
    finally:
        env.close()
    mode = f"{len(cameras)} x {image_size}x{image_size} cameras" if cameras else "no cameras"
    return Timing(mode, build, statistics.median(reset_times), rate)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--steps", type=int, default=150, help="timed steps per mode")
    p.add_argument("--resets", type=int, default=3, help="timed resets per mode")
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args()
    load = os.getloadavg()[0]
    suite_tasks(args.suite)  # import LIBERO and load the suite outside the timings: a one-off cost per process
    timings = [
        measure(args.suite, args.task, (), args.image_size, args.steps, args.resets),
        measure(args.suite, args.task, tuple(CAMERAS), args.image_size, args.steps, args.resets),
    ]
    table = Table("mode", "build (s)", "reset (s)", "steps/s", "ms/step", title=f"{args.suite} task {args.task}")
    for t in timings:
        table.add_row(
            t.mode, f"{t.build_s:.2f}", f"{t.reset_s:.3f}", f"{t.steps_per_s:.1f}", f"{1e3 / t.steps_per_s:.1f}"
        )
    console = Console()
    console.print(table)
    gl = os.environ.get("MUJOCO_GL")
    console.print(
        f"MUJOCO_GL={gl}, {os.cpu_count()} CPUs, load average {load:.2f} at start (shared machines are noisy)"
    )
    print(f"camera_overhead: {timings[0].steps_per_s / timings[1].steps_per_s:.2f}")


if __name__ == "__main__":
    main()
