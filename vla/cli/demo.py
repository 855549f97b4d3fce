"""`vla demo`: the main job end to end (see vla/demo.py for the stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option(help="Folder for every artifact and the report.")] = Path("outputs/demo"),
    tasks: Annotated[str, typer.Option(help="libero_object task ids to learn, e.g. '0,1,2' or '0-9'.")] = "0,1,2",
    demos_per_task: Annotated[int, typer.Option(help="Successful scripted demonstrations per task.")] = 20,
    train_steps: Annotated[int, typer.Option(help="Optimizer steps of the MoDE policy (CPU preset).")] = 3000,
    images: Annotated[
        bool,
        typer.Option(
            help="Vision-language demo: MoDE on the agentview and wrist cameras (64 px, rendered afterwards from "
            "the demos' saved states) + instruction + state; estimated at about 30 minutes on 2 free cores "
            "(docs/vision_demo.md)."
        ),
    ] = False,
    workers: Annotated[
        int | None, typer.Option(help="Processes for rendering and evaluation (default: 1; 2 with --images).")
    ] = None,
    videos: Annotated[int, typer.Option(help="Evaluation videos to keep (failures first).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed for the expert, training and evaluation.")] = 0,
) -> None:
    """Run the main job end to end: scripted LIBERO demonstrations -> store -> train MoDE ->
    evaluate in LIBERO on held-out initial states -> report (OUT/report.md).

    Stages reuse what an earlier run left in OUT, so an interrupted run continues. The default
    takes about 14 minutes on 2 free CPU cores (about 23 when they are busy). Each stage prints its
    wall and CPU seconds (the report's figures keep both).
    """
    from vla._env import apply_offline_defaults

    apply_offline_defaults()  # the demo builds everything locally; it must never wait on the network
    from vla.demo import DemoConfig, run_demo
    from vla.eval.episodes import parse_ids

    run_demo(
        DemoConfig(
            out=out,
            tasks=tuple(parse_ids(tasks)),
            demos_per_task=demos_per_task,
            train_steps=train_steps,
            images=images,
            workers=workers if workers is not None else (2 if images else 1),
            videos=videos,
            seed=seed,
        )
    )
