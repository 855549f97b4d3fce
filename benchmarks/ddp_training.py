"""Data-parallel training on this machine's CPU: samples/s with 2 processes vs 1 (same global batch),
and the two ways of letting DDP cope with experts that get no token on a rank.

Runs (torchrun --standalone, gloo, `--cpu`, one OpenMP thread per process, on a synthetic reach store
written next to the outputs):
1. `1 proc`: MoDE, cpu preset, global batch G in one process;
2. `2 proc zero-path`: the same with 2 processes x G/2, idle experts run on zero rows (the default);
3. `2 proc find-unused`: 2 processes x G/2, idle experts skipped and DDP's find_unused_parameters on;
4./5. the same two options for HiMoE (whose token-routed HB-MoE leaves experts idle more often).
Each run trains `--steps` steps; samples/s is the mean of its logged windows after the first (warm-up).
On a shared machine these figures move with the other jobs: compare runs of one invocation only.

The second-last line is `zero_path_over_find_unused: <samples/s ratio, MoDE and HiMoE averaged>`, the
last line `ddp_speedup_2proc: <samples/s of 2 processes / 1 process, MoDE>`.

Measured (2 CPU cores shared with other jobs, load average ~12, 30 steps, global batch 32):
MoDE 1 process 54.6, 2 processes 66.8 samples/s (speedup 1.22); zero-path vs find-unused MoDE 66.8 vs
64.6, HiMoE 168.3 vs 104.9 samples/s (ratio 1.32 averaged).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ddp_training.py --steps 30 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(spec: dict) -> None:
    """One process of a run (started by torchrun, or directly for 1 process)."""
    from vla.train import TrainConfig, train

    train(spec["policy"], TrainConfig(**spec["train"]), preset="cpu", overrides=spec.get("overrides", {}))


def run(store: Path, out: Path, policy: str, processes: int, global_batch: int, steps: int, find_unused: bool) -> float:
    spec = {
        "policy": policy,
        "train": {
            "data": [str(store)], "out": str(out), "steps": steps, "batch_size": global_batch // processes,
            "warmup_steps": 2, "log_every": max(steps // 6, 1), "save_every": 10 * steps, "progress": False,
            "cpu": True, "ema_decay": 0.999, "find_unused_parameters": find_unused,
        },
    }  # fmt: skip
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    subprocess.run([*launcher, __file__, "--worker", json.dumps(spec)], env=env, check=True, cwd=REPO)
    windows = [json.loads(line)["samples_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sum(windows[1:]) / len(windows[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32, help="global batch (split between the processes)")
    ap.add_argument("--out", type=Path, default=None, help="where runs go (default: a temporary folder)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    sys.path.insert(0, str(REPO))
    from tests.train.helpers import write_reach_store

    root = args.out or Path(tempfile.mkdtemp(prefix="ddp_bench_"))
    store = root / "reach.zarr"
    if not store.exists():
        write_reach_store(store, episodes=12, length=30)
    rows = {}
    for name, policy, procs, unused in [
        ("mode 1 proc", "mode", 1, False),
        ("mode 2 proc zero-path", "mode", 2, False),
        ("mode 2 proc find-unused", "mode", 2, True),
        ("himoe 2 proc zero-path", "himoe", 2, False),
        ("himoe 2 proc find-unused", "himoe", 2, True),
    ]:
        out = root / name.replace(" ", "_")
        rows[name] = run(store, out, policy, procs, args.batch, args.steps, unused)
        print(f"{name:28s} {rows[name]:8.1f} samples/s", flush=True)
    print(f"\n{'(global batch ' + str(args.batch) + ')':28s} {'zero-path':>10s} {'find-unused':>12s}")
    for policy in ("mode", "himoe"):
        zero, unused = rows[f"{policy} 2 proc zero-path"], rows[f"{policy} 2 proc find-unused"]
        print(f"{policy + ' 2 proc samples/s':28s} {zero:10.1f} {unused:12.1f}")
    ratio = sum(rows[f"{p} 2 proc zero-path"] / rows[f"{p} 2 proc find-unused"] for p in ("mode", "himoe")) / 2
    print(f"zero_path_over_find_unused: {ratio:.3f}")
    print(f"ddp_speedup_2proc: {rows['mode 2 proc zero-path'] / rows['mode 1 proc']:.3f}")


if __name__ == "__main__":
    main()
