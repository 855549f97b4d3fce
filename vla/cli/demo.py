"""`vla demo`: the main job end to end (see vla/demo.py for the stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option(help="Folder for every artifact and the report.")] = Path("outputs/demo"),
    demos_per_task: Annotated[int, typer.Option(help="Demonstrations per LIBERO task.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for data generation and sampling.")] = 0,
) -> None:
    """Run the main job end to end: source data -> stores -> validation -> training windows -> report.

    Stages that already produced their artifact in OUT are reused, so an interrupted run continues.
    """
    from vla.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, demos_per_task=demos_per_task, seed=seed))
