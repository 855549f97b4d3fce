"""Merge-then-compress (`vla compress`) measured against the full policy, side by side in one process.

Compresses RUN (or reuses an earlier compression with the same settings in --out) and measures, for the full
and the compressed checkpoint:
- expert parameters (and the expert weights' bytes, sparse positions included);
- memory: the weights' bytes, and the peak increase of the process's resident memory from loading the
  checkpoint through one batch-1 prediction (sampled every millisecond; with --device cuda the peak of
  torch's CUDA allocations instead);
- batch-1 latency of `predict_chunk` (the evaluation path, no expert cache): the median over --repeats
  interleaved rounds after a warm-up, and the largest action change against the full model (same noise);
- with --eval, LIBERO success of both in the simulator on the same episodes (benchmarks/libero_runs.py) and
  the paired difference compressed minus full with its bootstrap 95% interval (`vla eval compare`).

The last line is `expert_param_reduction: X%`, or with --eval `compressed_minus_full: D [LO, HI]` (points).

    .venv/bin/python benchmarks/compress.py runs/demo/train --data outputs/demo/stores/libero.zarr --merge 2 --eval
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/expert_caching.py

import psutil
import torch

from vla.analysis.compress import REPORT_FILE, CompressSettings, compress_policy, write_compressed
from vla.analysis.windows import collate, embodiment_remap, policy_windows
from vla.policies.modules.moe import moe_layers
from vla.policies.policy import Policy
from vla.policies.pretrained import resolve_checkpoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="checkpoint directory or `vla train --out` run folder")
    p.add_argument("--data", action="append", required=True, help="store(s) to measure routing on (repeatable)")
    p.add_argument("--merge", type=int, default=2, help="K: experts kept per MoE layer")
    p.add_argument("--rank", type=int, default=None, help="R: rank of the merged projections (default: dense)")
    p.add_argument("--sparsity", type=float, default=0.0, help="S: share of entries kept as a sparse residual")
    p.add_argument("--windows", type=int, default=256, help="calibration windows")
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/compress"), help="checkpoints, evaluations")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for CUDA memory and latency")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on shared cores)")
    p.add_argument("--repeats", type=int, default=20, help="timed batch-1 predictions per model")
    p.add_argument("--eval", action="store_true", help="also evaluate both in LIBERO and compare them (paired)")
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default="0,1,2")
    p.add_argument("--init-states", default="40-49", help="held-out initial states (the demos use 0-39)")
    p.add_argument("--preset", default="openpi", help="evaluation protocol")
    p.add_argument("--max-steps", type=int, default=None, help="episode step budget (default: the protocol's)")
    p.add_argument("--workers", type=int, default=1, help="simulator processes per evaluation")
    return p.parse_args()


def compressed_checkpoint(ckpt: Path, args: argparse.Namespace) -> Path:
    """The compressed checkpoint for these settings: reused when compress.json says it was made from `ckpt` so."""
    settings = CompressSettings(args.merge, args.rank, args.sparsity, args.windows)
    name = f"{ckpt.parent.parent.name if ckpt.parent.name == 'checkpoints' else ckpt.name}_k{args.merge}"
    name += (f"_r{args.rank}" if args.rank else "") + (f"_s{args.sparsity:g}" if args.sparsity else "")
    out = args.out / name
    if (out / REPORT_FILE).exists():
        report = json.loads((out / REPORT_FILE).read_text())
        if report["source"] == str(ckpt) and report["settings"] == dataclasses.asdict(settings):
            print(f"reusing {out}", flush=True)
            return out
        raise SystemExit(f"{out} holds another compression ({report['settings']} of {report['source']}); remove it")
    policy = Policy.from_pretrained(ckpt, map_location=args.device)
    t0 = time.perf_counter()
    merged, report = compress_policy(policy, args.data, settings, source=str(ckpt))
    args.out.mkdir(parents=True, exist_ok=True)
    write_compressed(merged, report, ckpt, out)
    print(f"compressed in {time.perf_counter() - t0:.1f} s -> {out}", flush=True)
    return out


def expert_bytes(policy: Policy) -> tuple[int, int]:
    """(expert parameters, bytes of the experts' parameters and buffers: sparse positions included)."""
    params = nbytes = 0
    for layer in moe_layers(policy):
        params += sum(p.numel() for p in layer.experts.parameters())
        nbytes += sum(t.numel() * t.element_size() for t in (*layer.experts.parameters(), *layer.experts.buffers()))
    return params, nbytes


def weight_bytes(policy: Policy) -> int:
    return sum(t.numel() * t.element_size() for t in (*policy.parameters(), *policy.buffers()))


class PeakRSS:
    """Largest resident set size seen while the block runs, sampled in a thread."""

    def __init__(self, every_s: float = 0.001):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRSS:
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def one_window(policy: Policy, stores: list[str]) -> dict[str, Any]:
    ds = policy_windows(policy, stores)
    batch = collate([ds[0]], embodiment_remap(policy, ds.embodiments))
    return {k: v for k, v in batch.items() if k != "action"}  # what a robot gives: observations and the task


def load_and_predict(path: Path, batch: dict[str, Any], noise: torch.Tensor, device: str) -> tuple[Policy, int]:
    """The loaded policy and the peak memory increase (bytes) from before loading through one prediction."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        policy = Policy.from_pretrained(path, map_location=device).eval()
        policy.predict_chunk(batch, noise=noise)
        torch.cuda.synchronize()
        return policy, torch.cuda.max_memory_allocated() - before
    with PeakRSS() as rss:
        policy = Policy.from_pretrained(path, map_location=device).eval()
        policy.predict_chunk(batch, noise=noise)
    return policy, rss.peak - rss.start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    ckpt = resolve_checkpoint(args.run)
    small = compressed_checkpoint(ckpt, args)
    report = json.loads((small / REPORT_FILE).read_text())
    # memory first, compressed then full, each from a clean start (the smaller one cannot reuse the larger's
    # pages); a throw-away prediction first pays the one-time costs (language encoder, kernels) for both
    probe = Policy.from_pretrained(ckpt, map_location=args.device).eval()
    batch = one_window(probe, args.data)
    cfg = probe.config
    noise = torch.randn(1, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(0)).to(args.device)
    probe.predict_chunk(batch, noise=noise)
    del probe
    models, peaks = {}, {}
    for name, path in (("compressed", small), ("full", ckpt)):
        models[name], peaks[name] = load_and_predict(path, batch, noise, args.device)

    def predict(name: str) -> torch.Tensor:
        out = models[name].predict_chunk(batch, noise=noise)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    outputs = {name: predict(name) for name in models}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):  # interleaved: load from other processes hits both alike
        for name in models:
            t = time.perf_counter()
            predict(name)
            times[name].append(time.perf_counter() - t)
    scale = outputs["full"].abs().max().item()
    change = (outputs["compressed"] - outputs["full"]).abs().max().item() / max(scale, 1e-12)

    print()
    print(f"{ckpt} -> {small}: merge K={args.merge}, rank {args.rank}, sparsity {args.sparsity}, "
          f"{report['calibration']['windows']} calibration windows; batch 1 on {args.device}, "
          f"{args.threads} thread(s), {args.repeats} timed rounds")  # fmt: skip
    head = f"{'model':<12}{'expert params':>15}{'expert MiB':>12}{'weights MiB':>13}{'peak +MiB':>11}{'median ms':>11}"
    print(head)
    print("-" * len(head))
    for name, policy in models.items():
        params, nb = expert_bytes(policy)
        print(f"{name:<12}{params:>15,}{nb / 2**20:>12.2f}{weight_bytes(policy) / 2**20:>13.2f}"
              f"{peaks[name] / 2**20:>11.1f}{1e3 * statistics.median(times[name]):>11.1f}")  # fmt: skip
    print(f"largest action change, compressed vs full (same noise): {change:.3f} of the largest |action|")
    for layer in report["layers"]:
        groups = "skipped: " + layer["skipped"] if layer["skipped"] else str(layer["groups"])
        print(f"  {layer['name']}: use {[round(f, 2) for f in layer['frequency']]} -> {groups}")
    reduction = 100 * report["expert_param_reduction"]
    if not args.eval:
        print(f"expert_param_reduction: {reduction:.1f}%")
        return

    from libero_runs import evaluate_success

    from vla.eval.compare import compare_runs, format_difference

    models.clear()  # free the weights before the simulators start
    evals = {}
    for name, path in (("full", ckpt), ("compressed", small)):
        evals[name] = args.out / "eval" / f"{small.name}_{name}"
        evaluate_success(name, path, evals[name], suite=args.suite, tasks=args.tasks, init_states=args.init_states,
                         preset=args.preset, seed=0, max_steps=args.max_steps, workers=args.workers)  # fmt: skip
    c = compare_runs(evals["compressed"], evals["full"], labels=("compressed", "full"))
    print(f"success: compressed {100 * c.rate_a:.1f}% vs full {100 * c.rate_b:.1f}% over {c.n_pairs} paired episodes, "
          f"McNemar p {c.p_mcnemar:.3f}; expert parameters {reduction:.1f}% fewer")  # fmt: skip
    print(f"compressed_minus_full: {format_difference(c)}")


if __name__ == "__main__":
    main()
