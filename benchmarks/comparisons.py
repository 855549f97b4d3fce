"""The papers' comparisons at the demo budget, paired and over several training seeds.

Every variant trains on the LIBERO demo store (3 libero_object tasks, 60 scripted demos from initial
states 0-39) with the demo's budget (3000 steps, batch 32, lr 3e-4) and one training seed per run, and is
evaluated in the real simulator on the same 30 episodes (tasks 0-2 x held-out initial states 40-49, openpi
protocol, evaluation seed 0). Runs of the two sides with the same training seed see the same batches,
and their episodes are paired on (task, initial state); `vla eval compare` gives the paired difference
with a bootstrap 95% interval (seeds and episodes resampled) and the exact McNemar p-value.

Comparisons (name: variant vs baseline):
- mode_vs_dense: MoDE (4 experts, top-2) vs the dense diffusion transformer whose SwiGLU FFN is twice a
  single expert's width, i.e. equal active parameters (the router's 0.14M aside).
- moh_vs_fixed: MoDE with the Mixture of Horizons (preset `moh_cpu`: horizons 5/10/15) vs the fixed
  10-step chunk, both executing 5 actions per plan; and moh_dynamic_vs_fixed: the same MoH checkpoint with
  dynamic inference (threshold ratio `--ratio`), which executes as many steps as the horizons agree on.
- goal_dropout: MoDE `cpu` with the authors' goal dropout (10% of the goal embedding's elements, the FiLM
  encoders keep the whole goal) vs the preset's (10% of samples lose the whole goal, FiLM included).
- himoe_vs_dense: HiMoE (the cpu preset widened as in benchmarks/himoe.py) vs the same network with every
  MoE layer dense, its MLP sized to the same active parameters.

Everything is reused on a second run (finished checkpoints and episodes; an interrupted training resumes),
so the script can be stopped and started again. Cost on 2 CPU cores: ~10 min of training and ~5 min of
evaluation per fixed-horizon run (MoH ~2x the training, HiMoE about the same); 3 seeds x 2 sides per
comparison. The last line is `NAME_minus_BASELINE: D [LO, HI]` (success difference in points, 95%).

    .venv/bin/python benchmarks/comparisons.py --only mode_vs_dense --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libero_runs import DEFAULT_STORE, ensure_store, evaluate_success, train_run


@dataclass(frozen=True)
class Variant:
    policy: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    dynamic: bool = False  # evaluate with dynamic inference (--ratio)
    trained_as: str | None = None  # reuse another variant's checkpoints


@dataclass(frozen=True)
class Comparison:
    variant: str
    baseline: str
    label: str  # NAME_minus_BASELINE

    @property
    def variants(self) -> tuple[str, str]:
        return self.variant, self.baseline


MODE_DENSE = {"use_moe": False, "ffn_mult": 8}  # one SwiGLU FFN as wide as MoDE's top-2 experts together

VARIANTS: dict[str, Variant] = {
    "mode": Variant("mode", "cpu"),
    "dense": Variant("mode", "cpu", MODE_DENSE),
    "goal_elements": Variant("mode", "cpu", {"goal_dropout_mode": "element"}),
    "moh": Variant("mode", "moh_cpu"),
    "moh_dynamic": Variant("mode", "moh_cpu", dynamic=True, trained_as="moh"),
    "himoe": Variant("himoe", "cpu"),  # overrides filled in by himoe_variants()
    "himoe_dense": Variant("himoe", "cpu"),
}

COMPARISONS: dict[str, list[Comparison]] = {
    "mode_vs_dense": [Comparison("mode", "dense", "mode_minus_dense")],
    "moh_vs_fixed": [
        Comparison("moh", "mode", "moh_minus_fixed"),
        Comparison("moh_dynamic", "mode", "moh_dynamic_minus_fixed"),
    ],
    "himoe_vs_dense": [Comparison("himoe", "himoe_dense", "himoe_minus_dense")],
    "goal_dropout": [Comparison("goal_elements", "mode", "goal_elements_minus_whole_goal")],
}


def himoe_variants() -> dict[str, Variant]:
    """HiMoE and its dense twin at equal active parameters, sized for the store's state/action dims."""
    from himoe import HIMOE, dense_overrides

    from vla.policies.himoe import HiMoEConfig, HiMoEPolicy

    # the LIBERO store's 8-D state and 7-D action, as dense_overrides sizes the dense twin
    cfg = HiMoEConfig.from_preset("cpu", state_dim=8, action_dim=7, camera_keys=(), **HIMOE)
    target = HiMoEPolicy(cfg).parameter_counts()["active"]
    dense = dense_overrides(target)
    return {"himoe": Variant("himoe", "cpu", dict(HIMOE)), "himoe_dense": Variant("himoe", "cpu", dense)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(COMPARISONS), help=f"comparisons to run, from {list(COMPARISONS)}")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (>= 3 for a claimed effect)")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="LIBERO demo store (built when missing)")
    p.add_argument("--out", type=Path, default=Path("outputs/benchmarks/comparisons"), help="runs and evaluations")
    p.add_argument("--steps", type=int, default=3000, help="training steps of every run (the demo's budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ratio", type=float, default=1.3, help="dynamic inference threshold ratio r (MoH)")
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default="0,1,2")
    p.add_argument("--init-states", default="40-49", help="held-out initial states (the demos use 0-39)")
    p.add_argument("--preset", default="openpi", help="evaluation protocol (openpi: 5 actions per plan)")
    p.add_argument("--workers", type=int, default=1, help="simulator processes per evaluation")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    return p.parse_args(argv)


def run_variant(name: str, variant: Variant, seed: int, args: argparse.Namespace, log: dict[str, Any]) -> Path:
    """Train (or reuse) the variant's checkpoint for one seed and evaluate it; the evaluation folder."""
    trained = variant.trained_as or name
    key = f"{trained}_s{seed}"
    ckpt, info = train_run(key, args.out / "train" / key, [args.store], args.steps, policy=variant.policy,
                           preset=variant.preset, overrides=variant.overrides, batch_size=args.batch_size,
                           lr=args.lr, seed=seed)  # fmt: skip
    if info.get("train_s") == info.get("train_s"):  # not NaN: trained in this call
        log.setdefault("train", {})[key] = info
    out = args.out / "eval" / f"{name}_s{seed}"
    row = evaluate_success(f"{name}_s{seed}", ckpt, out, suite=args.suite, tasks=args.tasks,
                           init_states=args.init_states, preset=args.preset, seed=0, workers=args.workers,
                           dynamic=args.ratio if variant.dynamic else None)  # fmt: skip
    log.setdefault("eval", {})[f"{name}_s{seed}"] = row
    return out


# dynamic inference decides its own replanning: the one protocol setting the two sides may differ in
DYNAMIC_SETTINGS = ("replan_steps", "dynamic_horizon")


def compare(comp: Comparison, evals: dict[str, list[Path]]) -> dict[str, Any]:
    from vla.eval.compare import aggregate_seeds, compare_runs

    ignore = DYNAMIC_SETTINGS if any(VARIANTS[v].dynamic for v in comp.variants) else ()
    c = compare_runs(evals[comp.variant], evals[comp.baseline], ignore_settings=ignore,
                     labels=(comp.variant, comp.baseline))  # fmt: skip
    return {
        "label": comp.label,
        "variant": comp.variant,
        "baseline": comp.baseline,
        "comparison": c.to_json(),
        "seeds": {v: aggregate_seeds(evals[v]).to_json()["overall"] for v in comp.variants},
    }


def run(names: Sequence[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the named comparisons (seed by seed, so a partial run already pairs what it has); their results."""
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.store = ensure_store(args.store, seed=0)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = {**VARIANTS}
    if any(n == "himoe_vs_dense" for n in names):
        variants.update(himoe_variants())
    log_path = args.out / "runs.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    evals: dict[str, list[Path]] = {}
    results = []
    for name in names:
        comps = COMPARISONS[name]
        needed = list(dict.fromkeys(v for comp in comps for v in comp.variants))
        for seed in seeds:
            for v in needed:
                evals.setdefault(v, [])
                out = run_variant(v, variants[v], seed, args, log)
                if out not in evals[v]:
                    evals[v].append(out)
                log_path.write_text(json.dumps(log, indent=2, default=float))
        results += [compare(comp, evals) for comp in comps]
    (args.out / "comparisons.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def result_line(result: dict[str, Any]) -> str:
    c = result["comparison"]
    lo, hi = c["ci95"]
    return f"{result['label']}: {100 * c['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per comparison: both sides' mean success over seeds (95% t-interval across seeds), the paired
    difference with its bootstrap 95% interval and, with several seeds, the t-interval over the per-seed
    differences (the bootstrap is too narrow with 3 seeds: docs/statistics.md), McNemar's exact p and the
    number of seeds x paired episodes."""
    lines = [
        "| comparison | variant | baseline | difference (points) [bootstrap 95%] | [t 95% over seeds] "
        "| McNemar p | seeds x episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["comparison"]
        sides = [_seed_cell(r["seeds"][k]) for k in (r["variant"], r["baseline"])]
        lo, hi = c["ci95"]
        diff = f"{100 * c['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        t = c.get("seed_t_ci95")
        t_cell = f"[{100 * t[0]:+.1f}, {100 * t[1]:+.1f}]" if t else "-"
        shape = f"{c['n_seeds']} x {c['n_pairs'] // max(c['n_seeds'], 1)}"
        lines.append(f"| {r['label']} | {sides[0]} | {sides[1]} | {diff} | {t_cell} | {c['p_mcnemar']:.3f} | {shape} |")
    return "\n".join(lines)


def _seed_cell(s: dict[str, Any]) -> str:
    mean, ci = s["mean"], s.get("ci95")
    if ci is None:
        return f"{100 * mean:.1f}%"
    return f"{100 * mean:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def main(names: Sequence[str] | None = None, argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    chosen = list(names) if names else [n for n in args.only.split(",") if n]
    unknown = [n for n in chosen if n not in COMPARISONS]
    if unknown:
        raise SystemExit(f"unknown comparison(s) {unknown}; choose from {list(COMPARISONS)}")
    t0 = time.perf_counter()
    results = run(chosen, args)
    print(markdown_table(results))
    print(f"results: {args.out / 'comparisons.json'} ({time.perf_counter() - t0:.0f} s)")
    for r in results:
        print(result_line(r))
    return results


if __name__ == "__main__":
    main()
