"""Evaluation throughput on Ray: env steps/s of the LIBERO protocol with 1 and 2 simulator actors.

Runs the real LIBERO simulator (the protocol's cameras, rendered every step) with the random policy in
one policy actor, on a local Ray instance with as many CPUs as this machine, and reports the steady
rate (after every simulator is built) of each run. The random policy costs nothing, so the figure is
what the simulators and Ray's messaging sustain; with a real policy the policy actor batches the
actors' requests.

Usage: python benchmarks/ray_eval.py [--suite libero_object] [--task 1] [--episodes 4] [--max-steps 80]
The last line is `ray_actor_speedup_2v1: <steady env steps/s with 2 actors / with 1>`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import ray
from rich.console import Console
from rich.table import Table

import vla  # noqa: F401  (offline and LIBERO defaults before the simulator loads)
from vla.eval.protocols.libero import LiberoEvalConfig, evaluate_libero


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task", type=int, default=1)
    p.add_argument("--episodes", type=int, default=4, help="initial states 0..N-1, the same for each run")
    p.add_argument("--max-steps", type=int, default=80, help="step budget per episode (random: never succeeds)")
    p.add_argument("--actors", default="1,2", help="simulator actor counts to compare")
    args = p.parse_args()
    counts = [int(n) for n in args.actors.split(",")]
    load = os.getloadavg()[0]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=max(os.cpu_count() or 1, *counts), include_dashboard=False, logging_level="WARNING")
    rows = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in counts:
                config = LiberoEvalConfig(
                    suite=args.suite,
                    out=Path(tmp) / f"actors{n}",
                    tasks=[args.task],
                    init_states=list(range(args.episodes)),
                    max_steps=args.max_steps,
                    workers=n,
                    ray="auto",
                )
                rows[n] = evaluate_libero(config, progress=False)["throughput"]
    finally:
        ray.shutdown()
    table = Table("actors", "episodes", "env steps", "start-up (s)", "wall (s)", "steps/s", "steady steps/s")
    for n, t in rows.items():
        table.add_row(str(n), str(t["episodes"]), str(t["env_steps"]), f"{t['startup_s']:.1f}", f"{t['wall_s']:.1f}",
                      f"{t['env_steps_per_s']:.1f}", f"{t['steady_env_steps_per_s']:.1f}")  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"{args.suite} task {args.task}; {os.cpu_count()} CPUs, load average {load:.2f} at start")
    base, top = rows[counts[0]], rows[counts[-1]]
    speedup = top["steady_env_steps_per_s"] / base["steady_env_steps_per_s"]
    print(f"ray_actor_speedup_{counts[-1]}v{counts[0]}: {speedup:.2f}")


if __name__ == "__main__":
    main()
