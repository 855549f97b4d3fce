"""Shared steps of the benchmarks that train on the LIBERO demo tasks and evaluate in the simulator:
build the demo store when missing, train a registered policy (reused/resumed on a second run), and
evaluate on held-out initial states with per-episode counts. Imported by the benchmark scripts."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_STORE = Path("outputs/demo/stores/libero.zarr")  # relative to the repository root, as `make demo` writes


def ensure_store(store: Path, seed: int) -> Path:
    """The LIBERO demo store, built with vla.demo's stages (scripted demos + conversion) when missing."""
    if store.exists():
        return store
    from vla.demo import DemoConfig, DemoResult, stage_convert, stage_demos

    root = store.parent.parent if store.parent.name == "stores" else store.parent
    cfg = DemoConfig(out=root, seed=seed, progress=False)
    res = DemoResult()
    print(stage_demos(cfg, res), flush=True)
    print(stage_convert(cfg, res), flush=True)
    built = Path(res.artifacts["store"])
    if built != store:
        raise SystemExit(f"built {built}; pass --store {built}")
    return built


def train_run(
    name: str,
    run: Path,
    stores: Sequence[Path | str],
    steps: int,
    *,
    policy: str = "mode",
    preset: str = "cpu",
    overrides: dict[str, Any] | None = None,
    batch_size: int = 32,
    lr: float = 3e-4,
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse a finished run in `run`, or resume an interrupted one); the checkpoint and
    {train_s, samples_per_s, first_loss, last_loss} (NaN times when reused)."""
    from vla.policies.pretrained import latest_checkpoint
    from vla.train import TrainConfig, train

    last = latest_checkpoint(run)
    if last is not None and int(last.name.split("_")[1]) >= steps:
        print(f"[{name}] reusing {last}", flush=True)
        return run / "last", {"train_s": float("nan"), "samples_per_s": float("nan")}
    tc = TrainConfig(
        data=tuple(str(s) for s in stores),
        out=str(run),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=min(100, steps),
        seed=seed,
        save_every=max(steps // 2, 1),
        log_every=max(min(50, steps // 10), 1),
        progress=False,
    )
    t0 = time.perf_counter()
    result = train(policy, tc, preset=preset, overrides=overrides or {}, resume=last is not None)
    seconds = time.perf_counter() - t0
    print(
        f"[{name}] trained {result.steps} steps in {seconds:.0f} s ({result.samples_per_s:.0f} samples/s), "
        f"loss {result.first_loss:.3f} -> {result.last_loss:.3f}",
        flush=True,
    )
    info = {"train_s": seconds, "samples_per_s": result.samples_per_s, "first_loss": result.first_loss,
            "last_loss": result.last_loss}  # fmt: skip
    return run / "last", info


def evaluate_success(
    name: str,
    ckpt: Path,
    out: Path,
    *,
    suite: str,
    tasks: str,
    init_states: str,
    preset: str = "openpi",
    seed: int = 0,
    max_steps: int | None = None,
    dynamic: float | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """LIBERO closed-loop evaluation (finished episodes in `out` are reused) and per-call counts."""
    from vla.eval.episodes import parse_ids
    from vla.eval.protocols.libero import LiberoEvalConfig, evaluate_libero

    t0 = time.perf_counter()
    summary = evaluate_libero(
        LiberoEvalConfig(
            suite=suite,
            out=out,
            policy=str(ckpt),
            tasks=parse_ids(tasks),
            preset=preset,
            init_states=parse_ids(init_states),
            seed=seed,
            max_steps=max_steps,
            dynamic_horizon=dynamic,
            workers=workers,
        ),
        progress=False,
    )
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line.strip()]
    calls = sum(r["policy_calls"] for r in records)
    executed = sum(r["actions_executed"] for r in records)
    planned = sum(r["actions_executed"] + r["actions_discarded"] for r in records)
    row = {
        "variant": name,
        "success_rate": summary["success_rate"],
        "episodes": summary["episodes"],
        "calls_per_episode": calls / max(len(records), 1),
        "actions_per_call": executed / max(calls, 1),
        "planned_per_call": planned / max(calls, 1),  # incl. the actions a success or the budget cut off
        "wall_s_per_episode": statistics.fmean(r["wall_s"] for r in records) if records else 0.0,
        "eval_s": time.perf_counter() - t0,
    }
    print(f"[{name}] {json.dumps(row)}", flush=True)
    return row
