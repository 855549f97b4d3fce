"""Conversion speed with 1 and 2 reading processes (`vla data convert --workers N`) on a LeRobot video dataset.

Writes (or reuses, with --data-dir) a LeRobot v3 dataset with lerobot's own writer: two 128x128 video
cameras in lerobot's default AV1 encoding, 8-D state, 7-D action. Each worker count converts it into
a fresh store (best of --repeats, since other processes on a shared machine only ever slow a run
down); the stores are checked to be bit-identical. Two rates per run: over the whole call, and
steady: the episode loop from the first episode written (the reading processes have started then:
a spawned process imports lerobot and torch once, seconds on an idle machine, a minute on a busy
one) to the last (then come the statistics over a bounded sample of frames, a fixed cost).

    python benchmarks/convert_parallel.py [--episodes 16] [--workers 1,2] [--data-dir DIR]

The last line is `convert_speedup_2v1: <steady frames/s with the most workers / with 1>`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder's banner is not benchmark output


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the reading processes, once joined)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    import numpy as np

    import vla  # noqa: F401  (offline defaults)
    from vla.datasets.convert.base import convert
    from vla.datasets.store import INDEX_KEYS
    from vla.testing.lerobot import write_lerobot_dataset

    work = args.data_dir or Path(tempfile.mkdtemp(prefix="vla-convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"lerobot_{args.episodes}ep"
    if not (src / "meta" / "info.json").exists():
        shutil.rmtree(src, ignore_errors=True)
        t = time.perf_counter()
        write_lerobot_dataset(src, args.episodes, range(80, 121), cameras=("front", "wrist"), image_size=(128, 128),
                              fps=30, seed=0, repo_id="bench/convert", extra_features=False)  # fmt: skip
        print(f"wrote {src} in {time.perf_counter() - t:.0f} s")
    counts = [int(w) for w in args.workers.split(",")]
    rates, totals, stores = {}, {}, {}
    for n in counts:
        best = best_total = 0.0
        for r in range(args.repeats):
            dst = work / f"store_w{n}.zarr"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.rmtree(dst.with_name(dst.name + ".partial"), ignore_errors=True)
            t, cpu = time.perf_counter(), cpu_seconds()
            summary = convert("lerobot", src, dst, progress=False, workers=n)
            seconds, cpu = time.perf_counter() - t, cpu_seconds() - cpu
            best, best_total = max(best, summary.steady_frames_per_second), max(best_total, summary.frames / seconds)
            print(
                f"  {n} worker(s), run {r + 1}: {summary.frames} frames in {seconds:.1f} s (start-up "
                f"{summary.startup_s:.1f} s), steady {summary.steady_frames_per_second:.0f} frames/s; "
                f"CPU {cpu:.1f} s in all processes",
                flush=True,
            )
        rates[n], totals[n], stores[n] = best, best_total, summary.store
    first = stores[counts[0]]
    for n in counts[1:]:
        assert stores[n].meta == first.meta
        for key in (*first.keys, *INDEX_KEYS):
            assert np.array_equal(stores[n].array(key)[:], first.array(key)[:]), key
    print(f"\n{'workers':>7} {'frames/s (whole call)':>22} {'steady frames/s':>16}")
    for n, rate in rates.items():
        print(f"{n:>7} {totals[n]:>22.0f} {rate:>16.0f}")
    print(f"stores bit-identical; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end")
    if args.data_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"convert_speedup_{counts[-1]}v{counts[0]}: {rates[counts[-1]] / rates[counts[0]]:.2f}")


if __name__ == "__main__":
    main()
