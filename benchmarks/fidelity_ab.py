"""Short offline A/B of the switches that follow the authors' code (docs/fidelity.md) at the cpu size.

Each variant is a suite's base preset plus some of the authors' switches; it trains for `--steps` steps
(batch 32, AdamW lr 3e-4) on the training episodes of the LIBERO demo store and is scored on windows of
held-out episodes (every fifth episode): the mean squared error of the sampled chunk (the config's
sampler, fixed initial noise) against the recorded actions, in normalised units. Every variant of one
seed sees the same batches, the same held-out windows and the same initial noise, so differences come
from the switch (and from the different random draws inside the model). No simulator: a proxy for
success, cheap enough to compare many switches; the closed-loop comparison is benchmarks/comparisons.py.

Suites (`--suite`): `mode` (MoDE `cpu`: items 1-3), `himoe` (HiMoE `cpu`: GeGLU dense layers, item 4),
`moh` (MoDE `moh_cpu`: the balance term per horizon segment, item 6).

    .venv/bin/python benchmarks/fidelity_ab.py --suite mode --steps 300 --seeds 0,1
The last line is `authors_minus_base_action_mse: D` (mean over seeds; negative: the authors' way is better).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from libero_runs import DEFAULT_STORE, ensure_store

# suite -> (policy, base preset, variants); "AUTHORS" stands for every switch of the policy's AUTHORS
# that the suite is about (the MoDE suite leaves the horizon-mixture switch to `moh`)
SUITES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "mode": (
        "mode",
        "cpu",
        {
            "cpu": {},
            "residual_norm": {"ffn_norm": "residual"},
            "token_routing": {"route_sampling": "token"},
            "goal_elements": {"goal_dropout_mode": "element"},
            "noise_linear": {"noise_embedding": "linear"},
            "expert_bias_dropout": {"expert_bias": True, "expert_out_bias": False, "expert_dropout": 0.1},
            "authors": "AUTHORS",
        },
    ),
    "himoe": ("himoe", "cpu", {"cpu": {}, "authors": {"dense_kind": "geglu"}}),
    "moh": ("mode", "moh_cpu", {"moh_cpu": {}, "authors": {"moh_balance": "segments"}}),
}


def run_variant(
    suite: str, name: str, overrides: dict[str, Any], store: str, steps: int, seed: int, eval_windows: int
) -> dict:
    from vla.policies import get_policy, make_policy
    from vla.train.data import build_training_data

    policy_name, preset, _ = SUITES[suite]
    config_cls = get_policy(policy_name)[0]
    data = build_training_data(config_cls, config_cls.presets[preset], [store])
    ds = data.mixture.datasets[0]
    episodes = ds._episode[ds._anchor]  # the episode of every window (benchmark-only peek)
    held = np.flatnonzero(episodes % 5 == 4)
    train = np.flatnonzero(episodes % 5 != 4)
    g = np.random.default_rng(seed)
    eval_idx = np.sort(g.choice(held, size=min(eval_windows, len(held)), replace=False))
    contract = {k: getattr(data.config, k) for k in ("camera_keys", "state_dim", "action_dim")}
    stats = {k: dict(v) for k, v in ds.stats.items()}
    torch.manual_seed(seed)
    policy = make_policy(policy_name, preset, stats, **contract, **overrides)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.05)
    batches = np.random.default_rng(1000 + seed).choice(train, size=(steps, 32))
    collate = torch.utils.data.default_collate
    t0 = time.perf_counter()
    policy.train()
    losses = []
    for step in range(steps):
        batch = collate([data.mixture[int(i)] for i in batches[step]])
        loss, _ = policy(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    train_s = time.perf_counter() - t0
    policy.eval()
    trained = policy.config
    mse = {"action_mse": held_out_mse(policy, data.mixture, eval_idx, seed)}
    if suite == "mode":  # CALVIN's 5 steps down to sigma 0.001 (ours) and to 1.0 (the authors')
        for label, sampling in (("mse_5_to_0001", {"num_sampling_steps": 5}),
                                ("mse_5_to_1", {"num_sampling_steps": 5, "sampling_sigma_min": 1.0})):  # fmt: skip
            policy.config = trained.replace(**sampling)
            mse[label] = held_out_mse(policy, data.mixture, eval_idx, seed)
        policy.config = trained
    out = {
        "suite": suite,
        "variant": name,
        "seed": seed,
        "steps": steps,
        "train_s": round(train_s, 1),
        "last_loss": float(np.mean(losses[-20:])),
        **mse,
        "eval_windows": len(eval_idx),
    }
    print(json.dumps(out), flush=True)
    return out


def held_out_mse(policy: Any, mixture: Any, eval_idx: np.ndarray, seed: int) -> float:
    """Mean squared error of sampled chunks against the recorded actions, normalised units, valid steps."""
    collate = torch.utils.data.default_collate
    se, n = 0.0, 0
    noise_gen = torch.Generator().manual_seed(10_000 + seed)
    for start in range(0, len(eval_idx), 64):
        batch = collate([mixture[int(i)] for i in eval_idx[start : start + 64]])
        shape = (len(batch["action"]), policy.config.chunk_size, policy.config.action_dim)
        noise = torch.randn(shape, generator=noise_gen)
        pred = policy.predict_chunk(batch, noise=noise)
        valid = ~batch["action_is_pad"]
        err = (policy.normalize("action", pred) - policy.normalize("action", batch["action"].float())).pow(2)
        se += float(err.mean(-1)[valid].sum())
        n += int(valid.sum())
    return se / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), default="mode")
    ap.add_argument("--store", type=Path, default=DEFAULT_STORE, help="LIBERO demo store (built when missing)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--eval-windows", type=int, default=256)
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--out", default=None, help="append one JSON line per run here (runs already there are reused)")
    args = ap.parse_args()
    args.store = str(ensure_store(args.store, seed=0))
    _, base, variants = SUITES[args.suite]
    from vla.policies.mode.configuration_mode import AUTHORS  # "AUTHORS" is used by the MoDE suite only

    names = args.only.split(",") if args.only else list(variants)
    done: dict[tuple[str, int], dict] = {}
    if args.out and Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            r = json.loads(line)
            if r["steps"] == args.steps and r.get("suite", "mode") == args.suite:
                done[(r["variant"], r["seed"])] = r
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            if (name, seed) in done:
                results.append(done[(name, seed)])
                continue
            ov = variants[name]
            ov = {k: v for k, v in AUTHORS.items() if not k.startswith("moh_")} if ov == "AUTHORS" else ov
            r = run_variant(args.suite, name, ov, args.store, args.steps, seed, args.eval_windows)
            results.append(r)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
    print(f"{'variant':<22} {'action_mse (per seed)':<34} mean     last_loss  5 steps to 0.001 / to 1.0")
    mean = {}
    for name in names:
        rs = [r for r in results if r["variant"] == name]
        mean[name] = float(np.mean([r["action_mse"] for r in rs]))
        per = ", ".join(f"{r['action_mse']:.4f}" for r in rs)
        calvin = "  ".join(
            f"{np.mean([r[k] for r in rs]):.4f}" if all(k in r for r in rs) else "-"
            for k in ("mse_5_to_0001", "mse_5_to_1")
        )
        print(f"{name:<22} {per:<34} {mean[name]:.4f}   {np.mean([r['last_loss'] for r in rs]):.4f}     {calvin}")
    if "authors" in mean and base in mean:
        print(f"authors_minus_base_action_mse: {mean['authors'] - mean[base]:.4f}")


if __name__ == "__main__":
    main()
