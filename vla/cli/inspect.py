"""`vla inspect`: look inside a trained policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vla.cli.options import DEVICE_HELP

app = typer.Typer(help="Look inside a trained policy (expert routing, ...).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Look inside a trained policy (expert routing, ...)."""  # keeps `routing` a subcommand


@app.command()
def routing(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory, or a `vla train --out` run folder.")],
    data: Annotated[list[str], typer.Option(help="Store(s) to draw windows from (repeat for a mixture).")],
    out: Annotated[Path | None, typer.Option(help="Report folder (default: CHECKPOINT/routing).")] = None,
    windows: Annotated[int, typer.Option(help="Training windows to route, drawn at random from the stores.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the window draw and of the noise.")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    tree: Annotated[
        bool,
        typer.Option(
            "--tree",
            help="Instead of the usage report: distil each router into a shallow decision tree over readable "
            "inputs and report how often it agrees with the router on held-out episodes.",
        ),
    ] = False,
    depth: Annotated[int, typer.Option(help="--tree: the trees' maximum depth (at least 1).")] = 3,
    holdout: Annotated[
        float, typer.Option(help="--tree: share of the episodes held out to score the trees (0 < F < 1).")
    ] = 0.25,
    state_dims: Annotated[
        str,
        typer.Option(
            help="--tree: observation.state dimensions offered to the trees: 'all' (those every store has), "
            "'none', or indices such as '0,1,2'."
        ),
    ] = "all",
    target: Annotated[
        str, typer.Option(help="--tree: what the trees predict: top1 (the top expert) or topk (the selected set).")
    ] = "top1",
) -> None:
    """Which experts fire, per layer, per embodiment, per task and per noise/time level.

    Runs the policy's action network on windows of the stores at each noise level its sampler uses
    (MoDE: the sigmas; HiMoE: the Euler times) and writes routing.json, routing.md and heatmaps
    routing_{embodiment,task,level}.png. For HiMoE the table's purity column says how cleanly the
    action-space experts separate embodiments (1.0: every window of an embodiment uses one expert).

    With --tree it instead fits, per layer, a decision tree of at most --depth levels that predicts
    the router's choice from the noise level (log_sigma) or flow time (t), the token's position, the
    embodiment, the task, the frame's step in its episode and state dimensions, on windows of some
    episodes, and scores it on windows of the held-out episodes (--holdout). It writes
    tree_<layer>.txt and .png and trees.json, and prints each layer's agreement with its 95% interval
    next to the share a constant guess of the most common expert gets.

        vla inspect routing runs/himoe --data libero.zarr --data so101.zarr
        vla inspect routing runs/mode --data libero.zarr --tree --depth 3
    """
    from rich.console import Console
    from rich.table import Table

    from vla.analysis.routing import (
        collect_routing,
        routing_purity,
        top_experts,
        write_routing_report,
    )
    from vla.policies.policy import Policy
    from vla.policies.pretrained import resolve_checkpoint

    if tree:
        from vla.analysis.routing_tree import check_tree_options

        check_tree_options(depth, holdout, target)  # before the model loads
        dims = _state_dims(state_dims)
    ckpt = resolve_checkpoint(checkpoint)
    policy = Policy.from_pretrained(ckpt, map_location=device)
    if tree:
        _routing_trees(policy, ckpt, data, out or ckpt / "routing", windows, batch_size, seed, depth, holdout,
                       dims, target)  # fmt: skip
        return
    stats = collect_routing(policy, data, windows=windows, batch_size=batch_size, seed=seed)
    files = write_routing_report(stats, out or ckpt / "routing", title=f"{policy.config.name} {ckpt.name}")
    table = Table("layer", "kind", "embodiment", "top experts", "purity", title=f"vla inspect routing: {ckpt}")
    for name, lc in stats.layers.items():
        labels, freq = lc.frequency("embodiment")
        purity = routing_purity(stats.top1[name])["per_embodiment"]
        for g, row in zip(labels, freq, strict=True):
            table.add_row(name, lc.kind, g, top_experts(row), f"{purity[g]:.2f}")
    console = Console()
    console.print(table)
    console.print(f"report: {files['markdown']}  heatmaps: {files['embodiment'].parent}")


def _state_dims(text: str) -> list[int] | None:
    """--state-dims: None for 'all', [] for 'none', else the listed indices."""
    from vla.analysis.routing import RoutingError

    text = text.strip().lower()
    if text == "all":
        return None
    if text in ("none", ""):
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RoutingError(f"--state-dims: {text!r} is not 'all', 'none' or indices such as '0,1,2'") from None


def _routing_trees(
    policy: Any,
    ckpt: Path,
    data: list[str],
    out: Path,
    windows: int,
    batch_size: int,
    seed: int,
    depth: int,
    holdout: float,
    state_dims: list[int] | None,
    target: str,
) -> None:
    from rich.console import Console
    from rich.table import Table

    from vla.analysis.routing_tree import collect_decisions, fit_routing_trees, write_tree_report
    from vla.statistics import format_rate

    decisions = collect_decisions(policy, data, windows=windows, holdout=holdout, batch_size=batch_size, seed=seed,
                                  state_dims=state_dims, progress=True)  # fmt: skip
    trees = fit_routing_trees(decisions, depth=depth, target=target, seed=seed)
    files = write_tree_report(trees, decisions, out, target=target, title=f"{policy.config.name} {ckpt.name}")
    n_train, n_held = int((~decisions.heldout).sum()), int(decisions.heldout.sum())
    table = Table(title=f"vla inspect routing --tree: {ckpt} ({target}; {n_train} training / {n_held} held-out "
                  "windows)")  # fmt: skip
    table.add_column("layer", no_wrap=True)
    table.add_column("inputs used")
    table.add_column("depth")
    table.add_column("agreement [95% CI]", no_wrap=True)
    table.add_column("majority baseline", no_wrap=True)
    for t in trees:
        table.add_row(t.layer, ", ".join(t.used) or "(one leaf)", str(t.depth), format_rate(t.agreement, t.interval),
                      f"{t.majority_rate:.1%} ({t.majority})")  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"trees: {files['json']} (tree_<layer>.txt / .png next to it)")
