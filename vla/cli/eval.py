"""`vla eval`: closed-loop evaluation in simulators (LIBERO; CALVIN later)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Evaluate a policy in a simulator with a published protocol.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Evaluate a policy in a simulator with a published protocol."""  # keeps `libero` a subcommand


@app.command()
def libero(
    suite: Annotated[str, typer.Option(help="LIBERO suite: libero_spatial|object|goal|10|90.")],
    out: Annotated[Path, typer.Option(help="Results folder: episodes.jsonl, summary.json, report.md, videos/.")],
    policy: Annotated[str, typer.Option(help="Checkpoint directory, or 'random'.")] = "random",
    tasks: Annotated[str | None, typer.Option(help="Task ids, e.g. '0,3' or '0-4' (default: all).")] = None,
    preset: Annotated[str, typer.Option(help="Protocol preset: openpi | libero | mode.")] = "openpi",
    trials_per_task: Annotated[
        int | None, typer.Option(help="Initial states 0..N-1 per task (default: the preset's).")
    ] = None,
    init_states: Annotated[
        str | None, typer.Option(help="Explicit initial-state ids, e.g. '40-49' (held out); overrides trials.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes, each owning its environments.")] = 1,
    policy_in_workers: Annotated[
        bool, typer.Option(help="Each worker loads its own policy instead of one batched policy here.")
    ] = False,
    replan_steps: Annotated[int | None, typer.Option(help="Actions executed per plan (default: preset's).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Step budget for every task (default: preset's).")] = None,
    seed: Annotated[int, typer.Option(help="The run's seed (policy sampling; env seed under 'libero').")] = 0,
    image_size: Annotated[int | None, typer.Option(help="Render size (default: checkpoint data, else preset).")] = None,
    videos: Annotated[int, typer.Option(help="MP4 videos to keep, failures first (renders agentview).")] = 0,
    device: Annotated[str, typer.Option(help="Torch device of the policy.")] = "cpu",
    dynamic_horizon: Annotated[
        float | None,
        typer.Option(
            "--dynamic-horizon",
            metavar="RATIO",
            help="Mixture-of-horizons checkpoints: dynamic inference, executing steps while the horizons' "
            "disagreement stays below RATIO x that of the first steps (the paper sweeps 1.1-1.4).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out (else start over).")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with the running success rate.")] = True,
) -> None:
    """Evaluate a policy on LIBERO tasks: per-episode JSONL as episodes finish, then summary and report."""
    from vla.eval.episodes import parse_ids
    from vla.eval.libero import LiberoEvalConfig, evaluate_libero, print_summary

    config = LiberoEvalConfig(
        suite=suite,
        out=out,
        policy=policy,
        tasks=parse_ids(tasks) if tasks else None,
        preset=preset,
        trials_per_task=trials_per_task,
        init_states=parse_ids(init_states) if init_states else None,
        seed=seed,
        replan_steps=replan_steps,
        max_steps=max_steps,
        image_size=image_size,
        workers=workers,
        policy_in_workers=policy_in_workers,
        videos=videos,
        device=device,
        dynamic_horizon=dynamic_horizon,
        resume=resume,
    )
    summary = evaluate_libero(config, progress=progress)
    print_summary(summary)
    typer.echo(f"success rate {summary['success_rate']:.1%} over {summary['episodes']} episodes; {out}/summary.json")
