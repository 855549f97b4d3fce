"""`vla eval`: closed-loop evaluation in simulators (LIBERO, CALVIN); paired comparison and seed aggregation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vla.cli.options import DEVICE_HELP, PerturbOption, PerturbSeedOption

RayOption = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="auto|ADDRESS",
        help="Run on Ray: 'auto' starts a local instance, an address (e.g. 10.0.0.1:6379) joins a cluster. "
        "--workers simulator actors; the policy runs in one actor per GPU (else one on CPU). See docs/ray.md.",
    ),
]

POLICY_HELP = (
    "Checkpoint directory, 'random', lerobot:DIR (a LeRobot policy saved with its processors) or "
    "ws://HOST:PORT (an openpi-style policy server, e.g. `vla serve`)."
)

app = typer.Typer(help="Evaluate a policy in a simulator with a published protocol.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Evaluate a policy in a simulator with a published protocol."""  # keeps `libero` a subcommand


@app.command()
def libero(
    suite: Annotated[str, typer.Option(help="LIBERO suite: libero_spatial|object|goal|10|90.")],
    out: Annotated[Path, typer.Option(help="Results folder: episodes.jsonl, summary.json, report.md, videos/.")],
    policy: Annotated[str, typer.Option(help=POLICY_HELP)],
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
    ray: RayOption = None,
    replan_steps: Annotated[int | None, typer.Option(help="Actions executed per plan (default: preset's).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Step budget for every task (default: preset's).")] = None,
    seed: Annotated[int, typer.Option(help="The run's seed (policy sampling; env seed under 'libero').")] = 0,
    image_size: Annotated[int | None, typer.Option(help="Render size (default: checkpoint data, else preset).")] = None,
    videos: Annotated[int, typer.Option(help="MP4 videos to keep, failures first (renders agentview).")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    dynamic_horizon: Annotated[
        float | None,
        typer.Option(
            "--dynamic-horizon",
            metavar="RATIO",
            help="Mixture-of-horizons checkpoints: dynamic inference, executing steps while the horizons' "
            "disagreement stays below RATIO x that of the first steps (the paper sweeps 1.1-1.4).",
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="VLA_SERVE_TOKEN", help="--policy ws://...: the server's api key.")
    ] = None,
    perturb: PerturbOption = None,
    perturb_seed: PerturbSeedOption = 0,
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
        ray=ray,
        videos=videos,
        device=device,
        dynamic_horizon=dynamic_horizon,
        api_key=api_key,
        perturb=perturb,
        perturb_seed=perturb_seed,
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
        str,
        typer.Option(
            help="Checkpoint directory (trained on a CALVIN store); " + POLICY_HELP[len("Checkpoint directory, ") :]
        ),
    ],
    chains: Annotated[
        int,
        typer.Option(
            help="Evaluate the first N of the 1000 reference chains (5 subtasks each); the reference order is "
            "shuffled, so the first N are a random subsample of the protocol."
        ),
    ] = 1000,
    chain_ids: Annotated[
        str | None, typer.Option(help="Explicit chain ids instead, e.g. '0-9' or '3,17'; overrides --chains.")
    ] = None,
    subtasks: Annotated[
        str | None,
        typer.Option(
            help="NOT the protocol (recorded in the settings; `vla eval compare` refuses to pair it with a protocol "
            "run): only chains whose first subtask is one of these comma-separated names, each cut before its first "
            "subtask outside them, e.g. 'open_drawer,turn_on_led'. --chains N then takes the first N such chains."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Worker processes, each owning one simulator.")] = 1,
    policy_in_workers: Annotated[
        bool, typer.Option(help="Each worker loads its own policy instead of one batched policy here.")
    ] = False,
    ray: RayOption = None,
    replan_steps: Annotated[
        int | None, typer.Option(help="Actions executed per plan (default: the policy's n_action_steps).")
    ] = None,
    max_steps: Annotated[int, typer.Option(help="Step budget per subtask (the protocol's is 360).")] = 360,
    seed: Annotated[int, typer.Option(help="The run's seed (policy sampling, random policy).")] = 0,
    videos: Annotated[int, typer.Option(help="MP4 videos of chains to keep, failed chains first (static camera).")] = 0,
    video_chains: Annotated[str | None, typer.Option(help="Chain ids whose video is always kept, e.g. '0,5'.")] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    renderer: Annotated[str, typer.Option(help="Simulator renderer: egl (GPU, as the dataset) | tiny (CPU).")] = "egl",
    dynamic_horizon: Annotated[
        float | None,
        typer.Option(
            "--dynamic-horizon", metavar="RATIO", help="Mixture-of-horizons checkpoints: dynamic inference ratio."
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="VLA_SERVE_TOKEN", help="--policy ws://...: the server's api key.")
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
        subtasks=subtasks.split(",") if subtasks is not None else None,
        max_steps=max_steps,
        seed=seed,
        replan_steps=replan_steps,
        workers=workers,
        policy_in_workers=policy_in_workers,
        ray=ray,
        videos=videos,
        video_chains=parse_ids(video_chains) if video_chains else None,
        device=device,
        renderer=renderer,
        dynamic_horizon=dynamic_horizon,
        api_key=api_key,
        resume=resume,
    )
    summary = protocol(config).run(progress)
    protocol.print_summary(summary)
    typer.echo(f"average length {summary['avg_len']:.2f} over {summary['chains']} chains; {out}/summary.json")


def _side(text: str) -> list[Path]:
    """'DIR' or 'DIR1,DIR2,DIR3' (one evaluation folder per training seed)."""
    return [Path(p) for p in text.split(",") if p]


@app.command()
def compare(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Evaluation folders: the baseline first, then each run to compare with it. "
            "Several training seeds of one run: comma-separated folders, e.g. a_s0,a_s1,a_s2 (same count per run).",
            show_default=False,
            metavar="EVAL_DIR[,EVAL_DIR...]",
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Write compare.md, compare.json and compare.png here.")] = None,
    name: Annotated[
        list[str] | None, typer.Option(help="A name per run, in order (default: the folder names).")
    ] = None,
    intersect: Annotated[
        bool, typer.Option(help="Compare only the episodes both runs have (else runs must have run the same ones).")
    ] = False,
    ignore_setting: Annotated[
        list[str] | None,
        typer.Option(
            help="A protocol setting allowed to differ because it is part of what you compare, "
            "e.g. dynamic_horizon (repeatable)."
        ),
    ] = None,
    position: Annotated[
        int | None,
        typer.Option(help="CALVIN: a chain succeeds with at least N subtasks in a row (default: all 5)."),
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 10000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap (results are reproducible).")] = 0,
) -> None:
    """Paired comparison of evaluations: each run against the baseline (the first), on the same episodes.

    Episodes are paired on (task, initial state, perturbation); CALVIN on the chain.

    Prints RUN − BASELINE in percentage points with a bootstrap 95% interval (seeds, then episodes, resampled), the exact McNemar p-value (discordant pairs), per-task rows; with --out a Markdown report, JSON and a plot.

    Refuses runs evaluated under different protocol settings (naming each), or whose episodes differ. See docs/statistics.md.
    """  # noqa: E501 (typer shows each paragraph as written)
    from rich.console import Console

    from vla.errors import ComparisonError
    from vla.eval.compare import compare_runs, side_label
    from vla.eval.compare_report import comparison_table, task_table, write_comparison

    sides = [_side(r) for r in runs]
    if len(sides) < 2:
        raise ComparisonError("compare needs at least two runs: the baseline, then one or more to compare with it")
    names = list(name or [])
    if names and len(names) != len(sides):
        raise ComparisonError(f"--name given {len(names)} times for {len(sides)} runs; name every run or none")
    labels = names or [side_label(s) for s in sides]
    comparisons = [
        compare_runs(sides[i], sides[0], n_boot=n_boot, seed=seed, intersect=intersect,
                     ignore_settings=ignore_setting or (), position=position, labels=(labels[i], labels[0]))
        for i in range(1, len(sides))
    ]  # fmt: skip
    console = Console()
    console.print(comparison_table(comparisons))
    for c in comparisons:
        if len(c.tasks) > 1:
            console.print(task_table(c))
    if out is not None:
        files = write_comparison(out, comparisons)
        typer.echo(f"wrote {files['md']}, {files['json'].name}, {files['plot'].name}")


@app.command()
def aggregate(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Evaluation folders of one method, one per training seed.", show_default=False, metavar="EVAL_DIR"
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Write aggregate.md and aggregate.json here.")] = None,
    ignore_setting: Annotated[
        list[str] | None, typer.Option(help="A protocol setting allowed to differ between the runs (repeatable).")
    ] = None,
    position: Annotated[
        int | None,
        typer.Option(help="CALVIN: a chain succeeds with at least N subtasks in a row (default: all 5)."),
    ] = None,
) -> None:
    """Success over training seeds: per-seed rates, their mean with a Student-t 95% interval across seeds, and the pooled rate with its Wilson interval, overall and per task.

    Every folder must have been evaluated under the same protocol settings. See docs/statistics.md.
    """  # noqa: E501 (typer shows each paragraph as written)
    from rich.console import Console

    from vla.eval.compare import aggregate_seeds
    from vla.eval.compare_report import aggregate_table, write_aggregate

    summary = aggregate_seeds(runs, position=position, ignore_settings=ignore_setting or ())
    Console().print(aggregate_table(summary))
    if out is not None:
        files = write_aggregate(out, summary)
        typer.echo(f"wrote {files['md']}, {files['json'].name}")
