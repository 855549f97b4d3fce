"""`vla sim`: simulator tasks and scripted demonstrations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from vla.cli.options import PerturbOption, PerturbSeedOption

if TYPE_CHECKING:
    from vla.sim.scripted import TaskReport

app = typer.Typer(help="Simulator tasks (LIBERO) and scripted demonstrations.", no_args_is_help=True)
console = Console()


@app.command()
def tasks(suite: Annotated[str, typer.Argument(help="LIBERO suite, e.g. libero_object.")]) -> None:
    """List a LIBERO suite's tasks: id, name and language."""
    from vla.sim.libero import suite_tasks

    table = Table("id", "task name", "language", title=suite)
    for t in suite_tasks(suite):
        table.add_row(str(t.task_id), t.name, t.language)
    console.print(table)


@app.command()
def demos(
    out: Annotated[Path, typer.Option(help="Output folder: one <task_name>_demo.hdf5 (+ .json) per task.")],
    suite: Annotated[str, typer.Option(help="LIBERO suite.")] = "libero_object",
    task_ids: Annotated[str, typer.Option("--tasks", help="Task ids, e.g. '0,1' or '0-9'.")] = "0-9",
    episodes: Annotated[int, typer.Option(help="Successful demos wanted per task.")] = 10,
    max_attempts: Annotated[
        int | None, typer.Option(help="Expert rollouts allowed per task (default: 2 x episodes).")
    ] = None,
    init_states: Annotated[
        str, typer.Option(help="Initial-state ids to cycle through, e.g. '0-39' (hold the rest out for evaluation).")
    ] = "0-49",
    images: Annotated[bool, typer.Option(help="Render and store agentview + eye_in_hand frames (~10x slower).")] = True,
    image_size: Annotated[int, typer.Option(help="Square camera resolution.")] = 128,
    seed: Annotated[int, typer.Option(help="Seeds the expert's per-episode variation.")] = 0,
    max_steps: Annotated[int | None, typer.Option(help="Step budget per episode (default: the suite's).")] = None,
    perturb: PerturbOption = None,
    perturb_seed: PerturbSeedOption = 0,
) -> None:
    """Scripted pick-and-place demonstrations in LIBERO's dataset layout; only successes are kept.

    The table gives the expert's success rate with a Wilson 95% interval; with --episodes N
    --max-attempts N --init-states of N ids each state is tried exactly once (a feasibility check).
    """
    from vla.progress import progress_bar
    from vla.sim.perturb import parse_perturbation
    from vla.sim.scripted import collect_task, parse_ids

    perturbation = parse_perturbation(perturb, perturb_seed) if perturb else None

    ids = parse_ids(task_ids)
    init_ids = parse_ids(init_states)
    reports = []

    for task_id in ids:
        bar = progress_bar(episodes, f"{suite} task {task_id}", unit="demo")

        def tick(report: TaskReport, episode: object, bar=bar) -> None:
            bar.update(report.successes - bar.n)
            bar.set_postfix(ok=f"{report.successes}/{report.attempts}")

        with bar:
            reports.append(
                collect_task(
                    suite,
                    task_id,
                    out,
                    episodes,
                    init_state_ids=init_ids,
                    max_attempts=max_attempts,
                    images=images,
                    image_size=image_size,
                    seed=seed,
                    max_steps=max_steps,
                    perturbation=perturbation,
                    on_episode=tick,
                )
            )
            if reports[-1].skipped:
                bar.set_postfix(skipped=reports[-1].skipped[:60])
    console.print(results_table(suite, reports))
    if not any(r.successes for r in reports):
        raise typer.Exit(1)


def results_table(suite: str, reports: list[TaskReport]) -> Table:
    """The expert's success per task, a total over the attempted tasks, and why any task was skipped."""
    columns = ("task", "name", "demos", "attempts", "success", "mean steps", "time", "note")
    table = Table(*columns, title=f"scripted expert: {suite}")
    table.columns[1].overflow = table.columns[7].overflow = "fold"  # long task names stay readable
    for r in reports:
        if r.skipped:
            table.add_row(str(r.task_id), r.task_name, "-", "-", "skipped", "", "", r.skipped)
            continue
        steps = f"{sum(r.steps) / len(r.steps):.0f}" if r.steps else ""
        failed = f"failed on init states {r.failed_init_state_ids}" if r.failed_init_state_ids else ""
        table.add_row(
            str(r.task_id),
            r.task_name,
            str(r.successes),
            str(r.attempts),
            _rate(r.successes, r.attempts),
            steps,
            f"{r.seconds:.0f} s",
            failed,
        )
    tried = [r for r in reports if not r.skipped]
    attempts, successes = sum(r.attempts for r in tried), sum(r.successes for r in tried)
    skipped = len(reports) - len(tried)
    table.add_section()
    table.add_row(
        "all",
        f"{_tasks(len(tried))} attempted" + (f", {skipped} skipped" if skipped else ""),
        str(successes),
        str(attempts),
        _rate(successes, attempts) if attempts else "-",
        "",
        f"{sum(r.seconds for r in tried):.0f} s",
        "",
    )
    return table


def _rate(successes: int, attempts: int) -> str:
    from vla.statistics import wilson_interval

    lo, hi = wilson_interval(successes, attempts)
    return f"{successes / attempts:.0%} [{lo:.0%}, {hi:.0%}]"


def _tasks(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"


@app.command(name="calvin-setup")
def calvin_setup(
    path: Annotated[
        Path, typer.Argument(help="A git clone of mees/calvin_env (or of mees/calvin, with calvin_env in it).")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the pip command and what it would install; install nothing.")
    ] = False,
    constraints: Annotated[
        Path | None, typer.Option(help="Where to write the constraints file (default: a new temporary folder).")
    ] = None,
) -> None:
    """Install CALVIN's simulator from a source checkout into this Python environment, editable, without
    up- or downgrading anything already installed (torch, numpy, ...)."""
    from vla.sim.calvin.setup import run_setup

    def say(line: str) -> None:
        # paths and pip arguments are not rich markup; soft_wrap keeps the pip command copyable
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    run_setup(path, dry_run=dry_run, constraints=constraints, say=say)
