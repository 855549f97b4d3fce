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


def _pair(value: Any, what: str) -> tuple[float, float] | None:
    """'0.9,0.95', [0.9, 0.95] or None -> a pair of floats."""
    from vla.train.config import TrainError

    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        a, b = (float(x) for x in parts)
    except (TypeError, ValueError):
        raise TrainError(f"{what}: expected two numbers like 0.9,0.95, got {value!r}") from None
    return a, b


def _square(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)  # type: ignore[return-value]


def train(
    ctx: typer.Context,
    data: Annotated[
        list[Path] | None, typer.Option("--data", help="A store to train on; repeat for a mixture.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder: checkpoints/, last -> newest checkpoint, metrics.jsonl.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML file of settings: any training field below (steps, lr, betas, weight_decay, min_lr_ratio, "
            "keep_checkpoints, ...) and policy, preset, overrides, moh, horizons. Flags given here win.",
        ),
    ] = None,
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
    betas: Annotated[
        str | None, typer.Option(help="AdamW betas, e.g. 0.9,0.95 (default: the policy config's).")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="AdamW weight decay (default: the policy config's).")
    ] = None,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps before the cosine decay.")] = 100,
    min_lr_ratio: Annotated[float, typer.Option(help="The cosine decays to lr x this ratio.")] = 0.0,
    grad_clip: Annotated[float, typer.Option(help="Max gradient norm (0: no clipping).")] = 1.0,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the evaluated weights (0: no EMA).")] = 0.999,
    num_workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    seed: Annotated[int, typer.Option(help="Seeds data order, initialisation and noise.")] = 0,
    log_every: Annotated[int, typer.Option(help="Steps between metric lines.")] = 10,
    save_every: Annotated[int, typer.Option(help="Steps between checkpoints (and at the end).")] = 500,
    keep_checkpoints: Annotated[int, typer.Option(help="Checkpoints kept; older step_* folders are deleted.")] = 2,
    mixed_precision: Annotated[str, typer.Option(help="no | fp16 | bf16 (GPU only).")] = "no",
    cpu: Annotated[bool, typer.Option(help="Train on the CPU even if a GPU is present.")] = False,
    find_unused_parameters: Annotated[
        bool,
        typer.Option(
            help="Several processes: let DDP search each step's graph for unused parameters (for policies "
            "whose branches skip parameters; the built-in MoE layers do not need it)."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress (periodic lines when not a terminal).")] = True,
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
    needed by --resume. Settings can come from a YAML file (--config run.yaml); flags given on the
    command line override it. Example:

        vla train --policy mode --preset cpu --data outputs/demo/libero.zarr --steps 2000 --out runs/mode
    """
    from vla.train import TrainConfig
    from vla.train import train as run_training
    from vla.train.config import TrainError, read_train_file

    file = read_train_file(config) if config else {}

    def pick(param: str, value: Any, key: str | None = None) -> Any:
        """The flag's value when given on the command line, else the file's, else the flag's default."""
        key = key or param
        # By name: typer's Context may come from its own copy of click, with its own ParameterSource enum.
        explicit = getattr(ctx.get_parameter_source(param), "name", None) in ("COMMANDLINE", "ENVIRONMENT")
        return file[key] if key in file and not explicit else value

    data_paths = pick("data", data)
    out_dir = pick("out", out)
    if not data_paths or out_dir is None:
        missing = "--data" if not data_paths else "--out"
        raise TrainError(f"{missing} is required (on the command line or as {missing[2:]}: in --config)")
    weights = pick("weight", weight, "weights")
    fields = {
        "steps": steps, "batch_size": batch_size, "num_workers": num_workers, "seed": seed, "lr": lr,
        "weight_decay": weight_decay, "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio,
        "grad_clip": grad_clip, "ema_decay": ema_decay, "mixed_precision": mixed_precision, "cpu": cpu,
        "log_every": log_every, "save_every": save_every, "keep_checkpoints": keep_checkpoints,
        "progress": progress, "language": language, "grad_accum": grad_accum,
        "find_unused_parameters": find_unused_parameters,
    }  # fmt: skip
    settings = {name: pick(name, value) for name, value in fields.items()}
    tc = TrainConfig(
        data=tuple(str(p) for p in ([data_paths] if isinstance(data_paths, str | Path) else data_paths)),
        out=str(out_dir),
        weights=tuple(weights) if weights else None,
        betas=_pair(pick("betas", betas), "betas"),
        image_size=_square(pick("image_size", image_size)),
        **settings,
    )
    policy, preset = pick("policy", policy), pick("preset", preset)
    overrides = {**(file.get("overrides") or {}), **parse_overrides(set_ or [])}
    moh, horizons = pick("moh", moh), pick("horizons", horizons)
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
