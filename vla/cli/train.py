"""`vla train`: train a registered policy on one or more stores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from vla.policies.registry import POLICIES

console = Console()


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs -> config overrides; values are YAML (numbers, lists, null, true...)."""
    from vla.train.config import TrainError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TrainError(f"--set expects KEY=VALUE (e.g. --set width=256), got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def moh_settings(policy: str, horizons: str | None = None) -> dict[str, Any]:
    """The config overrides of `--moh` / `--horizons` (for the policies with a mixture of horizons)."""
    from vla.policies import get_policy
    from vla.policies.config import HorizonFields
    from vla.policies.modules.horizons import DEFAULT_HORIZONS, parse_horizons
    from vla.train.config import TrainError

    config_cls = get_policy(policy)[0]
    if not issubclass(config_cls, HorizonFields):
        raise TrainError(f"--moh: the {policy!r} policy has no mixture of horizons")

    try:
        hs = parse_horizons(horizons) if horizons else DEFAULT_HORIZONS
    except ValueError as e:
        raise TrainError(f"--horizons: {e}") from None
    return config_cls.moh_overrides(hs)


def train(
    data: Annotated[list[Path], typer.Option("--data", help="A store to train on; repeat for a mixture.")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints/, last -> newest checkpoint, metrics.jsonl.")],
    policy: Annotated[str, typer.Option(help=f"Registered policy: {' | '.join(POLICIES.names())}.")] = "mode",
    preset: Annotated[str, typer.Option(help="Config preset of the policy: cpu (small) or paper.")] = "cpu",
    steps: Annotated[int, typer.Option(help="Total optimizer steps (a resumed run continues up to this).")] = 1000,
    batch_size: Annotated[
        int, typer.Option(help="Windows per forward pass and process (global batch: x --grad-accum x processes).")
    ] = 32,
    grad_accum: Annotated[
        int, typer.Option(help="Micro-batches of --batch-size per optimizer step (gradient accumulation).")
    ] = 1,
    weight: Annotated[
        list[float] | None, typer.Option("--weight", help="Sampling weight per --data, in order (default: sizes).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Policy config override KEY=VALUE (YAML value), e.g. --set n_layers=6."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in OUT exactly where its last checkpoint left it.")
    ] = False,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the policy config's).")] = None,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps before the cosine decay.")] = 100,
    grad_clip: Annotated[float, typer.Option(help="Max gradient norm (0: no clipping).")] = 1.0,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the evaluated weights (0: no EMA).")] = 0.999,
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    seed: Annotated[int, typer.Option(help="Seeds data order, initialisation and noise.")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps between metric lines.")] = 10,
    save_every: Annotated[int, typer.Option(help="Steps between checkpoints (and at the end).")] = 500,
    mixed_precision: Annotated[str, typer.Option(help="no | fp16 | bf16 (GPU only).")] = "no",
    cpu: Annotated[bool, typer.Option(help="Train on the CPU even if a GPU is present.")] = False,
    find_unused_parameters: Annotated[
        bool,
        typer.Option(
            help="Several processes: let DDP search each step's graph for unused parameters (for policies "
            "whose branches skip parameters; the built-in MoE layers do not need it)."
        ),
    ] = False,
    image_size: Annotated[int | None, typer.Option(help="Resize cameras to this square size in the loader.")] = None,
    language: Annotated[
        str,
        typer.Option(
            help="Training windows and their text: episode (the episode's task) | all (every frame; "
            "annotation text where a language window covers it: CALVIN play data) | annotations "
            "(only frames inside language windows: CALVIN's language-conditioned training)."
        ),
    ] = "episode",
    moh: Annotated[
        bool,
        typer.Option(
            "--moh",
            help="Mixture of Horizons: predict horizons 3..30 (step 3) in one pass and fuse them "
            "(sets horizons, action_attention=full and chunk_size=max(horizons)).",
        ),
    ] = False,
    horizons: Annotated[
        str | None,
        typer.Option(help="Mixture-of-horizons horizon set, e.g. '3-30:3' or '5,10,20' (implies --moh)."),
    ] = None,
) -> None:
    """Train a policy on one or more stores (mixtures through the sampler); runs under
    `accelerate launch` / `torchrun --nproc_per_node N -m vla train ...` unchanged for several
    processes (GPUs, or CPU with --cpu): each takes its share of the global batch (docs/training.md).

    The data fields of the config (cameras, state and action sizes) come from the stores unless
    set with --set. Checkpoints hold config.json + model.safetensors (EMA weights) and the state
    needed by --resume. Example:

        vla train --policy mode --preset cpu --data outputs/demo/libero.zarr --steps 2000 --out runs/mode
    """
    from vla.train import TrainConfig
    from vla.train import train as run_training

    tc = TrainConfig(
        data=tuple(str(p) for p in data),
        out=str(out),
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        weights=tuple(weight) if weight else None,
        num_workers=num_workers,
        seed=seed,
        lr=lr,
        warmup_steps=warmup_steps,
        grad_clip=grad_clip,
        ema_decay=ema_decay,
        mixed_precision=mixed_precision,
        cpu=cpu,
        find_unused_parameters=find_unused_parameters,
        log_every=log_every,
        save_every=save_every,
        image_size=(image_size, image_size) if image_size else None,
        language=language,
    )
    overrides = parse_overrides(set_ or [])
    if moh or horizons:
        overrides = {**moh_settings(policy, horizons), **overrides}
    result = run_training(policy, tc, preset=preset, overrides=overrides, resume=resume)
    table = Table("", "", title=f"vla train: {policy} ({preset})")
    table.add_row("steps", str(result.steps))
    table.add_row(
        "loss first -> last", f"{result.first_loss or float('nan'):.4f} -> {result.last_loss or float('nan'):.4f}"
    )
    table.add_row("samples/s (last window)", f"{result.samples_per_s:.1f}")
    for k, v in result.parameters.items():
        table.add_row(f"parameters: {k}", f"{v / 1e6:.2f} M")
    table.add_row("checkpoint", str(result.checkpoint))
    table.add_row("time", f"{result.seconds:.0f} s")
    console.print(table)
