"""Mixture of Horizons on the end-to-end LIBERO demo tasks: fixed horizon vs MoH vs MoH + dynamic inference.

Same store, same training budget (steps, batch, lr, seed), same evaluation episodes and seeds:
1. train a state-only CPU MoDE with the fixed 10-step chunk, and the same MoDE with a mixture of
   horizons (3..30 step 3, chunk 30, full attention among each horizon's action tokens);
2. evaluate in LIBERO (openpi protocol: 5 actions executed per plan) on held-out initial states:
   fixed, MoH (5 per plan as well), MoH + dynamic inference (the horizons' consensus picks 5-15);
3. report success rate, policy calls per episode, actions executed per call, wall time per episode,
   and the per-call cost of the mixture (one chunk, batch 1, timed on the same observation).

The target (issue 6): MoH at least as successful as fixed, and dynamic inference >= 2x the actions
per call of fixed with at most 2 points of success lost. The last line is
`actions_per_call_ratio: <dynamic / fixed>`.

The store is outputs/demo/stores/libero.zarr by default (what `make demo` writes); when it is
missing it is built with vla.demo's stages (scripted demos + conversion). Everything is reused on a
second run (trained checkpoints, finished evaluation episodes), so an interrupted run continues.

Cost: MoH trains on 3 + 165 tokens per sample instead of 3 + 10 (about 13x the fixed model's step
time on a CPU), so the defaults (500 steps, 15 episodes per variant: init states 40-44) are sized
to finish in ~40 min on 2 shared CPU cores; `--steps 3000 --init-states 40-49` is the demo's budget
(the fixed model reaches ~60% there).

    .venv/bin/python benchmarks/mixture_of_horizons.py --steps 500 --out outputs/benchmarks/moh
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from libero_runs import DEFAULT_STORE, ensure_store, evaluate_success, train_run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="LIBERO demo store (built when missing)")
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/moh"), help="runs and evaluations go here")
    p.add_argument("--steps", type=int, default=500, help="training steps of each model (the same budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--horizons", default="3-30:3", help="MoH horizon set, e.g. '3-30:3'")
    p.add_argument("--ratio", type=float, default=1.3, help="dynamic inference threshold ratio r")
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default="0,1,2")
    p.add_argument("--init-states", default="40-44", help="held-out initial states (the demos use 0-39)")
    p.add_argument("--preset", default="openpi", help="evaluation protocol (openpi: 5 actions per plan)")
    p.add_argument("--max-steps", type=int, default=None, help="episode step budget (default: the preset's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    p.add_argument("--timing-calls", type=int, default=20, help="chunks timed for the per-call cost")
    return p.parse_args()


def train_model(name: str, args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[Path, float]:
    ckpt, info = train_run(name, args.out / f"train_{name}", [args.store], args.steps, overrides=overrides,
                           batch_size=args.batch_size, lr=args.lr, seed=args.seed)  # fmt: skip
    return ckpt, info["train_s"]


def evaluate(name: str, ckpt: Path, args: argparse.Namespace, dynamic: float | None) -> dict[str, Any]:
    return evaluate_success(name, ckpt, args.out / f"eval_{name}", suite=args.suite, tasks=args.tasks,
                            init_states=args.init_states, preset=args.preset, seed=args.seed,
                            max_steps=args.max_steps, dynamic=dynamic)  # fmt: skip


def time_calls(ckpt: Path, n: int, dynamic: float | None = None) -> float:
    """Median seconds of one plan (batch 1) on a fixed state observation."""
    from vla.policies.policy import Policy

    policy = Policy.from_pretrained(ckpt).eval()
    if dynamic is not None:
        policy.set_dynamic_horizon(dynamic)
    cfg = policy.config
    obs = {"observation.state": torch.zeros(1, cfg.n_obs, cfg.state_dim), "task": ["pick up the object"]}
    times = []
    with torch.no_grad():
        for i in range(n + 2):
            t0 = time.perf_counter()
            policy.predict_plan(obs)
            if i >= 2:  # the first calls load the language encoder and warm up
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from vla.policies.mode import MoDEConfig
    from vla.policies.modules.horizons import parse_horizons

    t_all = time.perf_counter()
    args.store = ensure_store(args.store, args.seed)
    horizons = parse_horizons(args.horizons)
    fixed_ckpt, fixed_train_s = train_model("fixed", args, {})
    moh_ckpt, moh_train_s = train_model("moh", args, MoDEConfig.moh_overrides(horizons))
    rows = [
        evaluate("fixed", fixed_ckpt, args, None),
        evaluate("moh", moh_ckpt, args, None),
        evaluate(f"moh_dynamic_r{args.ratio:g}", moh_ckpt, args, args.ratio),
    ]
    call_fixed = time_calls(fixed_ckpt, args.timing_calls)
    call_moh = time_calls(moh_ckpt, args.timing_calls)
    call_dyn = time_calls(moh_ckpt, args.timing_calls, args.ratio)
    for row, t in zip(rows, (call_fixed, call_moh, call_dyn), strict=True):
        row["ms_per_call"] = 1000 * t
    fixed, moh, dyn = rows
    ratio = dyn["actions_per_call"] / max(fixed["actions_per_call"], 1e-9)
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "horizons": list(horizons),
        "train_s": {"fixed": fixed_train_s, "moh": moh_train_s},
        "rows": rows,
        "mixture_call_overhead": call_moh / call_fixed - 1,
        "dynamic_call_overhead": call_dyn / call_fixed - 1,
        "success_moh_minus_fixed": moh["success_rate"] - fixed["success_rate"],
        "success_dynamic_minus_fixed": dyn["success_rate"] - fixed["success_rate"],
        "actions_per_call_ratio": ratio,
        "targets": {
            "moh_at_least_fixed": moh["success_rate"] >= fixed["success_rate"],
            "dynamic_2x_actions_per_call": ratio >= 2.0,
            "dynamic_loses_at_most_2_points": dyn["success_rate"] >= fixed["success_rate"] - 0.02,
        },
        "total_s": time.perf_counter() - t_all,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    header = f"{'variant':<18} {'success':>8} {'calls/ep':>9} {'act/call':>9} {'s/ep':>7} {'ms/call':>8}"
    print(header)
    for r in rows:
        print(
            f"{r['variant']:<18} {r['success_rate']:>8.1%} {r['calls_per_episode']:>9.1f} "
            f"{r['actions_per_call']:>9.2f} {r['wall_s_per_episode']:>7.1f} {r['ms_per_call']:>8.1f}"
        )
    print(
        f"mixture per-call overhead vs fixed: {result['mixture_call_overhead']:+.0%} "
        f"(with dynamic inference {result['dynamic_call_overhead']:+.0%}); targets: {result['targets']}"
    )
    print(f"results: {args.out / 'results.json'} ({result['total_s']:.0f} s)")
    print(f"actions_per_call_ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
