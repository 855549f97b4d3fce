"""Human-facing outputs of `vla eval compare` and `vla eval aggregate`: rich tables, and with `--out`
compare.md / compare.json / compare.png (aggregate.md / aggregate.json). Differences are in percentage
points, rates in percent, each with its 95% interval."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from vla.eval.compare import Comparison, SeedStats, SeedSummary, format_difference
from vla.files import atomic_save_figure, atomic_write_text
from vla.statistics import format_rate

COMPARE_MD, COMPARE_JSON, COMPARE_PLOT = "compare.md", "compare.json", "compare.png"
AGGREGATE_MD, AGGREGATE_JSON = "aggregate.md", "aggregate.json"
# The settings compare.md names (compare.json has them all).
KEY_SETTINGS = ("benchmark", "preset", "suite", "tasks", "init_states", "chain_ids", "chains", "max_steps",
                "max_steps_per_subtask", "replan_steps", "perturbation")  # fmt: skip

MEANING = (
    "Difference: success of the first run minus the second, in percentage points, over episodes paired on "
    "(task, initial state, perturbation), averaged per training seed. Interval: bootstrap 95% (seeds, then "
    "episodes within a seed, resampled with replacement). p: exact McNemar test on the pairs where exactly "
    "one run succeeded."
)
MEANING_T = (
    "With several seeds, 't across seeds' is the Student-t 95% interval of the per-seed differences: wider than "
    "the bootstrap with few seeds, and the one that keeps its 95% coverage when training seeds differ."
)


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 0.001 else f"{p:.1e}"


def _seeds(comparisons: Sequence[Comparison]) -> bool:
    """Whether any comparison has several seeds (then the t-interval across seeds is shown too)."""
    return any(c.n_seeds > 1 for c in comparisons)


def _title(c: Comparison) -> str:
    return f"{c.label_a} − {c.label_b}"


# --- comparison --------------------------------------------------------------------------------------------


def comparison_table(comparisons: Sequence[Comparison]) -> Table:
    """One column per comparison (A − B; narrow enough for a terminal), one row per figure."""
    table = Table("", title="paired comparison", caption="rates in %, difference in points, 95% intervals")
    for c in comparisons:
        table.add_column(_title(c), no_wrap=True)
    rows = [
        ("pairs (seeds)", lambda c: f"{c.n_pairs} ({c.n_seeds})"),
        ("A", lambda c: format_rate(c.rate_a, c.rate_a_ci95)),
        ("B", lambda c: format_rate(c.rate_b, c.rate_b_ci95)),
        ("A − B", format_difference),
        *([("A − B, t over seeds", lambda c: format_difference(c, interval="t"))] if _seeds(comparisons) else []),
        ("A only / B only", lambda c: f"{c.discordant[0]} / {c.discordant[1]}"),
        ("McNemar p", lambda c: _p(c.p_mcnemar)),
    ]
    for name, cell in rows:
        table.add_row(name, *(cell(c) for c in comparisons), style="bold" if name == "A − B" else None)
    return table


def task_table(c: Comparison) -> Table:
    table = Table(title=f"per task: {_title(c)}")
    table.add_column("task", overflow="fold")
    for head in ("pairs", "A", "B", "A − B [CI]", "A/B only", "p"):
        table.add_column(head, no_wrap=True)
    for t in c.tasks:
        table.add_row(t.task, str(t.n), f"{t.rate_a:.1%}", f"{t.rate_b:.1%}", format_difference(t),
                      f"{t.discordant[0]}/{t.discordant[1]}", _p(t.p_mcnemar))  # fmt: skip
    return table


def comparison_markdown(comparisons: Sequence[Comparison], plot: str | None = COMPARE_PLOT) -> str:
    lines = ["# Paired comparison", "", MEANING, ""]
    seeds = _seeds(comparisons)
    if seeds:
        lines += [MEANING_T, ""]
    t_head, t_rule = (" A − B, t across seeds |", "---|") if seeds else ("", "")
    lines += ["| comparison | pairs | seeds | rate A [95% CI] | rate B [95% CI] | A − B, points [95% CI] |"
              f"{t_head} A only / B only | McNemar p |", "|---|---|---|---|---|---|" + t_rule + "---|---|"]  # fmt: skip
    for c in comparisons:
        t_cell = f" {format_difference(c, interval='t')} |" if seeds else ""
        lines.append(
            f"| {_title(c)} | {c.n_pairs} | {c.n_seeds} | {format_rate(c.rate_a, c.rate_a_ci95)} | "
            f"{format_rate(c.rate_b, c.rate_b_ci95)} | **{format_difference(c)}** |{t_cell} "
            f"{c.discordant[0]} / {c.discordant[1]} | {_p(c.p_mcnemar)} |"
        )
    if plot:
        lines += ["", f"![difference per task]({plot})"]
    for c in comparisons:
        lines += ["", f"## {_title(c)}", "", f"- A: {', '.join(f'`{p}`' for p in c.a)}",
                  f"- B: {', '.join(f'`{p}`' for p in c.b)}",
                  f"- bootstrap: {c.n_boot} replicates, seed {c.seed}"]  # fmt: skip
        if c.n_seeds > 1:
            lines.append(f"- per seed pair, points: {', '.join(f'{100 * d:.1f}' for d in c.seed_differences)}")
        if any(c.unpaired):
            lines.append(f"- left out (not run by the other side): {c.unpaired[0]} of A, {c.unpaired[1]} of B")
        if c.position is not None:
            lines.append(f"- success: at least {c.position} subtasks in a row")
        for name, values in c.ignored_settings.items():
            lines.append(f"- setting `{name}` differs (ignored on request): {', '.join(map(str, values))}")
        protocol = ", ".join(f"`{k}`: {json.dumps(v)}" for k, v in c.settings.items() if k in KEY_SETTINGS)
        if protocol:
            lines.append(f"- protocol: {protocol} (all settings in compare.json)")
        t_head, t_rule = (" t across seeds |", "---|") if c.n_seeds > 1 else ("", "")
        lines += ["", f"| task | pairs | rate A | rate B | A − B, points [95% CI] |{t_head} A only / B only | "
                  "McNemar p |", "|---|---|---|---|---|" + t_rule + "---|---|"]  # fmt: skip
        for t in c.tasks:
            t_cell = f" {format_difference(t, interval='t')} |" if c.n_seeds > 1 else ""
            lines.append(
                f"| {t.task} | {t.n} | {t.rate_a:.1%} | {t.rate_b:.1%} | {format_difference(t)} |{t_cell} "
                f"{t.discordant[0]} / {t.discordant[1]} | {_p(t.p_mcnemar)} |"
            )
    return "\n".join(lines) + "\n"


def plot_differences(comparisons: Sequence[Comparison], path: str | Path) -> Path:
    """Per comparison a panel: each task's difference (points) with its 95% interval, and the overall one."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    n_rows = max(len(c.tasks) + 1 for c in comparisons)
    fig, axes = plt.subplots(1, len(comparisons), figsize=(4.5 * len(comparisons), 0.35 * n_rows + 1.6),
                             squeeze=False, sharex=True)  # fmt: skip
    for ax, c in zip(axes[0], comparisons, strict=True):
        rows = [*c.tasks, c]
        names = [t.task for t in c.tasks] + ["overall"]
        y = list(range(len(rows)))[::-1]
        d = [100 * r.difference for r in rows]
        err = [[100 * (r.difference - r.ci95[0]) for r in rows], [100 * (r.ci95[1] - r.difference) for r in rows]]
        colors = ["tab:blue"] * len(c.tasks) + ["tab:red"]
        for yi, di, lo, hi, col in zip(y, d, err[0], err[1], colors, strict=True):
            ax.errorbar(di, yi, xerr=[[lo], [hi]], fmt="o", color=col, capsize=3)
        ax.axvline(0, color="0.5", linewidth=0.8)
        ax.set_yticks(y, names, fontsize=7)
        ax.set_xlabel("difference, points (95% CI)")
        ax.set_title(f"{_title(c)}\n{format_difference(c)}, p={_p(c.p_mcnemar)}", fontsize=8)
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=120)


def write_comparison(out: str | Path, comparisons: Sequence[Comparison]) -> dict[str, Path]:
    """compare.json, compare.png and compare.md (which shows the plot) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / COMPARE_JSON, "plot": out / COMPARE_PLOT, "md": out / COMPARE_MD}
    atomic_write_text(files["json"], json.dumps({"comparisons": [c.to_json() for c in comparisons]}, indent=2))
    plot_differences(comparisons, files["plot"])
    atomic_write_text(files["md"], comparison_markdown(comparisons, COMPARE_PLOT))
    return files


# --- seed aggregation ---------------------------------------------------------------------------------------


def _mean(s: SeedStats) -> str:
    return format_rate(s.mean, s.ci95) + ("" if s.ci95 else " (1 seed)")


def aggregate_table(summary: SeedSummary) -> Table:
    seeds = [f"seed #{i + 1}" for i in range(summary.n_seeds)]
    table = Table("task", *seeds, "mean [95% t-CI]", "pooled [95% Wilson]", "episodes",
                  title=f"{summary.benchmark}: {summary.n_seeds} seed(s)", caption=summary.note)  # fmt: skip
    for s in [*summary.tasks, summary.overall]:
        table.add_row(
            s.task,
            *_per_seed(s),
            _mean(s),
            format_rate(s.pooled_rate, s.pooled_ci95),
            str(sum(s.trials)),
            style="bold" if s is summary.overall else None,
        )
    return table


def _per_seed(s: SeedStats) -> list[str]:
    return [f"{r:.1%}" if r is not None else "-" for r in s.rates]


def aggregate_markdown(summary: SeedSummary) -> str:
    seeds = [f"seed #{i + 1}" for i in range(summary.n_seeds)]
    lines = [f"# {summary.benchmark}: {summary.n_seeds} training seed(s)", "", summary.note + ".", ""]
    lines += [f"- seed #{i + 1}: `{p}`" for i, p in enumerate(summary.paths)]
    lines += ["", "| task | " + " | ".join(seeds) + " | mean [95% t-CI] | pooled [95% Wilson] | episodes |",
              "|---|" + "---|" * (len(seeds) + 3)]  # fmt: skip
    for s in [*summary.tasks, summary.overall]:
        bold = "**" if s is summary.overall else ""
        cells = " | ".join(_per_seed(s))
        lines.append(f"| {bold}{s.task}{bold} | {cells} | {bold}{_mean(s)}{bold} | "
                     f"{format_rate(s.pooled_rate, s.pooled_ci95)} | {sum(s.trials)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_aggregate(out: str | Path, summary: SeedSummary) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / AGGREGATE_JSON, "md": out / AGGREGATE_MD}
    atomic_write_text(files["json"], json.dumps(summary.to_json(), indent=2))
    atomic_write_text(files["md"], aggregate_markdown(summary))
    return files
