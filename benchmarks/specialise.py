"""Full vs specialised checkpoint (`vla export`), side by side in one process, batch 1 through the policy runtime.

Exports RUN into a temporary folder (HiMoE: for --embodiment; MoDE: its per-step expert plan), loads both
checkpoints through `PolicyPlanner` (what `vla eval`, `vla deploy` and `vla serve` run) and reports for each:
parameters, weight bytes, the peak memory allocated during one batch-1 plan (CPU: from torch's memory
profiler; CUDA: max_memory_allocated), the batch-1 latency (median over --repeats plans, after warm-up),
and the largest |action difference| between the two on the same observation and initial noise.

Usage: python benchmarks/specialise.py RUN [--embodiment NAME] [--repeats 20] [--threads 1] [--device cpu]
The last line is `specialised_latency_ratio: <full median latency / specialised median latency>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# passive OpenMP waiting keeps timings about the model on a shared machine (set before torch loads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from vla.keys import STATE_KEY, TASK_KEY
from vla.policies.pretrained import resolve_checkpoint
from vla.policies.runtime import PolicyPlanner
from vla.policies.specialise import export_specialised


def observation(planner: PolicyPlanner, seed: int, task: str) -> dict[str, Any]:
    """One robot's observation history (batch 1) in the store's layout: random images, random native state."""
    cfg = planner.native_config
    rng = np.random.default_rng(seed)
    h, w = cfg.image_size
    frames: dict[str, Any] = {k: rng.integers(0, 256, (1, cfg.n_obs, h, w, 3), np.uint8) for k in cfg.camera_keys}
    if cfg.state_dim is not None:
        frames[STATE_KEY] = rng.normal(size=(1, cfg.n_obs, cfg.state_dim)).astype(np.float32)
    frames[TASK_KEY] = [task]
    return frames


def plan(planner: PolicyPlanner, frames: dict[str, Any], seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)  # the initial noise: the same for both models
    return planner.plan(frames).actions


def weight_bytes(planner: PolicyPlanner) -> int:
    tensors = [*planner.policy.parameters(), *planner.policy.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_bytes(planner: PolicyPlanner, frames: dict[str, Any]) -> float:
    """Peak bytes allocated during one plan beyond what was allocated before it (NaN when not measurable)."""
    device = planner.policy.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        plan(planner, frames)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    try:  # torch's memory profiler: a timeline of every CPU allocation and free (a private API: guarded)
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
            plan(planner, frames)
        _, sizes = MemoryProfileTimeline(p._memory_profile())._coalesce_timeline("cpu")
        live = np.asarray(sizes, dtype=np.float64).sum(axis=1)
        return float(live.max() - live[0]) if live.size else float("nan")
    except Exception as e:  # a benchmark figure, not a reason to stop
        print(f"(peak allocation not measurable here: {type(e).__name__}: {e})")
        return float("nan")


def latencies(planners: dict[str, PolicyPlanner], frames: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Batch-1 plan times per planner, the planners interleaved so that a busy machine slows both alike."""
    for planner in planners.values():
        for _ in range(2):  # warm-up: language embedding cache, kernels
            plan(planner, frames)
    times: dict[str, list[float]] = {name: [] for name in planners}
    for _ in range(repeats):
        for name, planner in planners.items():
            device = planner.policy.device
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            plan(planner, frames)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="checkpoint directory or training run folder (HiMoE or MoDE)")
    ap.add_argument("--embodiment", default=None, help="HiMoE: the robot to specialise for")
    ap.add_argument("--repeats", type=int, default=20, help="timed batch-1 plans per model")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--task", default="", help="instruction given to both models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    checkpoint = resolve_checkpoint(args.run)
    full = PolicyPlanner.load(checkpoint, args.device, embodiment=args.embodiment)
    is_mode = full.policy.config.name == "mode"
    with tempfile.TemporaryDirectory() as tmp:
        summary = export_specialised(
            checkpoint, Path(tmp) / "specialised", embodiment=None if is_mode else args.embodiment, expert_plan=is_mode
        )
        special = PolicyPlanner.load(summary.out, args.device, embodiment=args.embodiment)
    spec = summary.specialisation
    diffs = []
    for seed in range(3):  # three observations, each with its own initial noise, the same for both models
        obs = observation(full, seed, args.task)
        diffs.append(float(np.abs(plan(full, obs, seed) - plan(special, obs, seed)).max()))
    frames = observation(full, 0, args.task)
    planners = {"full": full, "specialised": special}
    all_times = latencies(planners, frames, args.repeats)
    rows = {}
    for name, planner in planners.items():
        times = all_times[name]
        q1, med, q3 = np.percentile(times, [25, 50, 75])
        rows[name] = {
            "parameters": sum(p.numel() for p in planner.policy.parameters()),
            "weights_mb": weight_bytes(planner) / 2**20,
            "peak_alloc_mb": peak_bytes(planner, frames) / 2**20,
            "latency_ms": (1e3 * med, 1e3 * q1, 1e3 * q3, statistics.mean(times) * 1e3),
        }
    print(f"checkpoint: {summary.source} ({summary.policy}), device {args.device}, threads {args.threads}")
    what = f"embodiment {spec.get('embodiment')}" if spec["kind"] == "embodiment" else f"{spec['steps']}-step plan"
    print(f"specialised for: {what}; experts kept {spec['experts_kept']}/{spec['experts_total']}: "
          f"{spec['experts_per_layer']}")  # fmt: skip
    print(f"{'':12} {'parameters':>12} {'weights MB':>11} {'peak alloc MB':>14} {'latency ms (median [IQR])':>28}")
    for name, r in rows.items():
        med, q1, q3, _ = r["latency_ms"]
        print(f"{name:12} {r['parameters']:>12,} {r['weights_mb']:>11.2f} {r['peak_alloc_mb']:>14.2f} "
              f"{med:>12.2f} [{q1:.2f}, {q3:.2f}]")  # fmt: skip
    f, s = rows["full"], rows["specialised"]
    print(f"parameter_ratio: {s['parameters'] / f['parameters']:.4f}")
    print(f"weights_saved_mb: {f['weights_mb'] - s['weights_mb']:.2f}")
    print(f"max_abs_action_diff: {max(diffs):.3g} (3 observations, same initial noise)")
    print(f"specialised_latency_ratio: {f['latency_ms'][0] / s['latency_ms'][0]:.3f}")


if __name__ == "__main__":
    main()
