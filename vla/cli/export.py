"""`vla export`: a checkpoint specialised so that it holds only the experts that can fire (thin: parse, call
vla.policies.specialise, print). Not `vla data export`, which writes a store as another toolkit's dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", help="Checkpoint directory, or a `vla train --out` run folder.")
    ],
    out: Annotated[Path, typer.Option("--out", help="New checkpoint folder to write (must not exist).")],
    embodiment: Annotated[
        str | None,
        typer.Option(help="HiMoE: the robot to export for (one of the checkpoint's embodiments)."),
    ] = None,
    expert_plan: Annotated[
        bool,
        typer.Option(
            "--expert-plan", help="MoDE: precompute which experts fire at each step of its sampling schedule."
        ),
    ] = False,
) -> None:
    """Export a checkpoint holding only the experts that can fire, with actions equal to the full model's.

    HiMoE (--embodiment NAME): the action-space routers read only the robot's slot mask, so one robot
    always selects the same experts; the others are dropped and other robots are refused.
    MoDE (--expert-plan): the routers read only the noise level, so for the checkpoint's sampling
    schedule each step's experts are known; the plan is stored in config.json, each step's routing
    becomes a table lookup, and the routers and the experts no step uses are dropped.

        vla export runs/himoe --embodiment so101 --out runs/himoe_so101
        vla export runs/mode --expert-plan --out runs/mode_plan
    """
    from rich.console import Console
    from rich.table import Table

    from vla.policies.specialise import export_specialised

    s = export_specialised(run, out, embodiment=embodiment, expert_plan=expert_plan)
    spec = s.specialisation
    table = Table("", "full", "exported", title=f"vla export: {s.source} -> {s.out}")
    for key in ("total", "experts", "routers"):
        change = 1 - s.after[key] / s.before[key] if s.before[key] else 0.0
        table.add_row(f"{key} parameters", f"{s.before[key]:,}", f"{s.after[key]:,} ({-change:+.1%})")
    table.add_row("experts kept", f"{spec['experts_total']}", f"{spec['experts_kept']}")
    if spec["kind"] == "expert_plan":
        what = f"{spec['steps']}-step plan of its sampling schedule"
    else:
        what = f"embodiment {spec['embodiment']}" if spec["embodiment"] else "its one action space"
    table.add_row("exported for", "", what)
    kept = " ".join("{" + ",".join(map(str, k)) + "}" for k in spec["experts_per_layer"])
    table.add_row("experts per layer", "", kept)
    Console().print(table)
