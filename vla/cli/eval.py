"""`vla eval`: closed-loop evaluation in simulators (LIBERO, CALVIN)."""

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
    preset: Annotated[
        str, typer.Option(help="Protocol preset: openpi | libero | mode | himoe (openpi, 10 actions per plan).")
    ] = "openpi",
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
    from vla.eval.protocols import PROTOCOLS

    protocol = PROTOCOLS.load("libero")
    config = protocol.config_class(
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
    summary = protocol(config).run(progress)
    protocol.print_summary(summary)
    typer.echo(f"success rate {summary['success_rate']:.1%} over {summary['episodes']} episodes; {out}/summary.json")


@app.command()
def calvin(
    out: Annotated[
        Path,
        typer.Option(help="Results folder: episodes.jsonl (one line per chain), summary.json, report.md, videos/."),
    ],
    policy: Annotated[
        str, typer.Option(help="Checkpoint directory (trained on a CALVIN store), or 'random'.")
    ] = "random",
    chains: Annotated[
        int, typer.Option(help="Evaluate the first N of the 1000 reference chains (5 subtasks each).")
    ] = 1000,
    chain_ids: Annotated[
        str | None, typer.Option(help="Explicit chain ids instead, e.g. '0-9' or '3,17'; overrides --chains.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes, each owning one simulator.")] = 1,
    policy_in_workers: Annotated[
        bool, typer.Option(help="Each worker loads its own policy instead of one batched policy here.")
    ] = False,
    replan_steps: Annotated[
        int | None, typer.Option(help="Actions executed per plan (default: the policy's n_action_steps).")
    ] = None,
    max_steps: Annotated[int, typer.Option(help="Step budget per subtask (the protocol's is 360).")] = 360,
    seed: Annotated[int, typer.Option(help="The run's seed (policy sampling, random policy).")] = 0,
    videos: Annotated[int, typer.Option(help="MP4 videos of chains to keep, failed chains first (static camera).")] = 0,
    video_chains: Annotated[str | None, typer.Option(help="Chain ids whose video is always kept, e.g. '0,5'.")] = None,
    device: Annotated[str, typer.Option(help="Torch device of the policy.")] = "cpu",
    renderer: Annotated[str, typer.Option(help="Simulator renderer: egl (GPU, as the dataset) | tiny (CPU).")] = "egl",
    dynamic_horizon: Annotated[
        float | None,
        typer.Option(
            "--dynamic-horizon", metavar="RATIO", help="Mixture-of-horizons checkpoints: dynamic inference ratio."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out (else start over).")] = True,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with the running rates.")] = True,
) -> None:
    """Evaluate a policy on CALVIN's long-horizon chains (the reference protocol, environment D).

    Each chain starts from its reference scene and asks for 5 language subtasks in a row, 360 steps each.

    The scene is not reset between subtasks; a chain stops at its first failure.

    Reports the share of chains with at least 1..5 successes in a row and the average completed length.

    Needs the CALVIN simulator: `vla sim calvin-setup PATH`. A killed run resumes from episodes.jsonl.
    """
    from vla.eval.episodes import parse_ids
    from vla.eval.protocols import PROTOCOLS

    protocol = PROTOCOLS.load("calvin")
    config = protocol.config_class(
        out=out,
        policy=policy,
        chains=chains,
        chain_ids=parse_ids(chain_ids) if chain_ids else None,
        max_steps=max_steps,
        seed=seed,
        replan_steps=replan_steps,
        workers=workers,
        policy_in_workers=policy_in_workers,
        videos=videos,
        video_chains=parse_ids(video_chains) if video_chains else None,
        device=device,
        renderer=renderer,
        dynamic_horizon=dynamic_horizon,
        resume=resume,
    )
    summary = protocol(config).run(progress)
    protocol.print_summary(summary)
    typer.echo(f"average length {summary['avg_len']:.2f} over {summary['chains']} chains; {out}/summary.json")
