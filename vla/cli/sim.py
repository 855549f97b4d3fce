"""`vla sim`: simulator tasks and scripted demonstrations."""

from __future__ import annotations

import json
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
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder. LIBERO: one <task_name>_demo.hdf5 (+ .json) per task. CALVIN: a dataset in "
            "CALVIN's split layout (training/, validation/, demos.json, summary.json)."
        ),
    ],
    benchmark: Annotated[str, typer.Option(help="libero | calvin (the real calvin_env simulator).")] = "libero",
    subtasks: Annotated[
        str | None,
        typer.Option(
            help="CALVIN: comma-separated subtasks, e.g. 'open_drawer,turn_on_led' (default: every scripted one: "
            "sliders, drawer, LED, lightbulb)."
        ),
    ] = None,
    validation: Annotated[float, typer.Option(help="CALVIN: share of each subtask's demos put in validation/.")] = 0.1,
    static_size: Annotated[
        int, typer.Option(help="CALVIN: static camera size (CALVIN's: 200; smaller only for CPU training).")
    ] = 200,
    gripper_size: Annotated[
        int, typer.Option(help="CALVIN: gripper camera size (CALVIN's: 84; smaller only for CPU training).")
    ] = 84,
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
    """Scripted demonstrations in the benchmark's own dataset layout; only successes are kept.

    LIBERO: pick-and-place tasks, one LIBERO task file each. CALVIN (--benchmark calvin): the sliders,
    drawer, LED and lightbulb subtasks in the real simulator, from the evaluation chains' start states,
    judged by the evaluation's oracle, written as CALVIN's split folders (`vla data convert --from calvin`).

    The table gives the expert's success rate with a Wilson 95% interval; with --episodes N
    --max-attempts N --init-states of N ids each state is tried exactly once (a feasibility check).
    """
    if benchmark == "calvin":
        calvin_demos(out, subtasks, episodes, max_attempts, seed, validation, static_size, gripper_size, max_steps)
        return
    if benchmark != "libero":
        raise typer.BadParameter(f"unknown benchmark {benchmark!r}; choose libero or calvin", param_hint="--benchmark")
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


def calvin_demos(
    out: Path,
    subtasks: str | None,
    episodes: int,
    max_attempts: int | None,
    seed: int,
    validation: float,
    static_size: int,
    gripper_size: int,
    max_steps: int | None,
) -> None:
    """`vla sim demos --benchmark calvin`: collect, write summary.json (rates with Wilson intervals), print."""
    from vla.files import atomic_write_text
    from vla.progress import progress_bar
    from vla.sim.calvin.env import EP_LEN
    from vla.sim.calvin_demos import DemoConfig, collect_demos
    from vla.sim.experts.calvin_scripted import SCRIPTED

    names = subtasks.split(",") if subtasks is not None else list(SCRIPTED)
    config = DemoConfig(out=out, subtasks=names, episodes=episodes, max_attempts=max_attempts, seed=seed,
                        validation=validation, static_size=static_size, gripper_size=gripper_size,
                        max_steps=max_steps or EP_LEN)  # fmt: skip
    bar = progress_bar(episodes * len(names), "calvin demos", unit="demo")

    def tick(report: object, attempt: object) -> None:
        bar.update(int(getattr(attempt, "success", False)))
        bar.set_postfix(subtask=getattr(report, "subtask", ""), ok=f"{report.successes}/{report.attempts}")

    with bar:
        run = collect_demos(config, on_attempt=tick)
    summary = calvin_demo_summary(run)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    console.print(calvin_table(summary))
    console.print(f"{out}: {summary['demos']} demos ({summary['frames']} frames); convert with "
                  f"`vla data convert --from calvin {out} STORE`", markup=False)  # fmt: skip


def calvin_demo_summary(run: object) -> dict:
    """The expert's success per subtask (Wilson 95% intervals), from a demo run's attempts."""
    from vla.statistics import wilson_interval

    rows = []
    for r in run.reports():
        rows.append({
            "subtask": r.subtask,
            "attempts": r.attempts,
            "successes": r.successes,
            "success_rate": r.successes / r.attempts if r.attempts else 0.0,
            "ci95": list(wilson_interval(r.successes, r.attempts)),
            "mean_steps": sum(r.steps) / len(r.steps) if r.steps else None,
            "seconds": round(r.seconds, 1),
            "failed_state_ids": r.failed_state_ids,
        })  # fmt: skip
    kept = [a for a in run.attempts if a.success]
    attempts, successes = sum(r["attempts"] for r in rows), sum(r["successes"] for r in rows)
    return {
        "benchmark": "calvin",
        "settings": run.settings,
        "subtasks": rows,
        "total": {
            "attempts": attempts,
            "successes": successes,
            "ci95": list(wilson_interval(successes, attempts)),
        },
        "demos": len(kept),
        "frames": sum(a.frames[1] - a.frames[0] + 1 for a in kept),
        "splits": {s: sum(1 for a in kept if a.split == s) for s in ("training", "validation")},
        "reused": run.reused,
    }


def calvin_table(summary: dict) -> Table:
    from vla.statistics import format_rate

    table = Table("subtask", "demos", "attempts", "success [95% CI]", "mean steps", "time",
                  title="scripted expert: CALVIN (real simulator, oracle-judged)")  # fmt: skip
    for r in summary["subtasks"]:
        steps = f"{r['mean_steps']:.0f}" if r["mean_steps"] else ""
        rate = format_rate(r["success_rate"], r["ci95"])
        table.add_row(r["subtask"], str(r["successes"]), str(r["attempts"]), rate, steps, f"{r['seconds']:.0f} s")
    t = summary["total"]
    table.add_section()
    rate = format_rate(t["successes"] / t["attempts"] if t["attempts"] else 0.0, t["ci95"])
    table.add_row("all", str(t["successes"]), str(t["attempts"]), rate, "", "")
    return table


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
