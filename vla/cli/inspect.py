"""`vla inspect`: look inside a trained policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
) -> None:
    """Which experts fire, per layer, per embodiment, per task and per noise/time level.

    Runs the policy's action network on windows of the stores at each noise level its sampler uses
    (MoDE: the sigmas; HiMoE: the Euler times) and writes routing.json, routing.md and heatmaps
    routing_{embodiment,task,level}.png. For HiMoE the table's purity column says how cleanly the
    action-space experts separate embodiments (1.0: every window of an embodiment uses one expert).

        vla inspect routing runs/himoe --data libero.zarr --data so101.zarr
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

    ckpt = resolve_checkpoint(checkpoint)
    policy = Policy.from_pretrained(ckpt, map_location=device)
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
