"""Human-facing outputs of an evaluation: the rich summary table, a Markdown report with a success
plot (PNG), and MP4 videos of chosen episodes (failures first).

Works on the summary dict a protocol writes (`tasks`: list of rows with `task`, `name`,
`trials`, `successes`, `success_rate`; `groups`: per-suite rows; `settings`), so any benchmark
that fills those gets the same report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from vla.eval.episodes import EpisodeResult
from vla.statistics import format_rate

REPORT_FILE = "report.md"
PLOT_FILE = "success.png"
VIDEO_DIR = "videos"


# --- tables ---------------------------------------------------------------------------------------


def summary_table(summary: Mapping[str, Any]) -> Table:
    """Per-task rows, then one row per group (suite) and the overall line."""
    title = f"{summary.get('benchmark', 'eval')} ({summary.get('preset', '')})"
    table = Table("task", "name", "trials", "success", "rate [95% CI]", "mean steps", "errors", title=title)
    for row in summary["tasks"]:
        table.add_row(
            row["task"],
            row.get("name", ""),
            str(row["trials"]),
            str(row["successes"]),
            format_rate(row["success_rate"], row.get("ci95")),
            f"{row['mean_steps']:.0f}",
            str(row["errors"]),
        )
    table.add_section()
    for name, row in summary.get("groups", {}).items():
        table.add_row(
            name,
            "(all tasks)",
            str(row["trials"]),
            str(row["successes"]),
            format_rate(row["success_rate"], row.get("ci95")),
            f"{row['mean_steps']:.0f}",
            str(row["errors"]),
            style="bold",
        )
    return table


def markdown_table(summary: Mapping[str, Any]) -> str:
    head = "| task | name | trials | successes | success rate [95% CI] | mean steps |"
    lines = [head, "|---|---|---|---|---|---|"]
    for row in summary["tasks"]:
        lines.append(
            f"| {row['task']} | {row.get('name', '')} | {row['trials']} | {row['successes']} | "
            f"{format_rate(row['success_rate'], row.get('ci95'))} | {row['mean_steps']:.0f} |"
        )
    for name, row in summary.get("groups", {}).items():
        lines.append(
            f"| **{name}** | all tasks | {row['trials']} | {row['successes']} | "
            f"**{format_rate(row['success_rate'], row.get('ci95'))}** | {row['mean_steps']:.0f} |"
        )
    return "\n".join(lines)


# --- report -----------------------------------------------------------------------------------------


def plot_success(summary: Mapping[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless: never try to open a window
    import matplotlib.pyplot as plt

    rows = summary["tasks"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(rows) + 2), 3.2))
    rates = [r["success_rate"] for r in rows]
    # Error bars: each task's Wilson 95% interval (asymmetric around the rate).
    errors = [[rate - r.get("ci95", (rate, rate))[0] for r, rate in zip(rows, rates, strict=True)],
              [r.get("ci95", (rate, rate))[1] - rate for r, rate in zip(rows, rates, strict=True)]]  # fmt: skip
    ax.bar([r["task"] for r in rows], rates, yerr=errors, capsize=3, color="tab:blue", ecolor="0.3")
    for name, row in summary.get("groups", {}).items():
        label = f"{name}: {format_rate(row['success_rate'], row.get('ci95'))}"
        ax.axhline(row["success_rate"], color="tab:red", linestyle="--", label=label)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(f"{summary.get('benchmark', 'eval')} ({summary.get('preset', '')})")
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    if summary.get("groups"):
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_bars(
    path: str | Path, labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, ymax: float = 1.05
) -> Path:
    """A plain bar chart with the values written on the bars (e.g. CALVIN's success by chain position)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(labels) + 2), 3.2))
    bars = ax.bar(list(labels), list(values), color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.1%}" if ymax <= 1.05 else f"{v:.2f}" for v in values], fontsize=7)
    ax.set_ylim(0, ymax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_report(
    out_dir: str | Path,
    summary: Mapping[str, Any],
    *,
    headline: str | None = None,
    sections: Sequence[str] = (),
    plot: Callable[[Mapping[str, Any], Path], Path] = plot_success,
) -> Path:
    """report.md: settings, the success table, the plot and links to the saved videos.

    A protocol may replace the headline sentence and the plot, and add Markdown `sections` (placed
    before the per-task table), e.g. CALVIN's success by chain position."""
    out = Path(out_dir)
    plot_path = plot(summary, out / PLOT_FILE)
    settings = summary.get("settings", {})
    default_headline = (
        f"Policy: `{summary.get('policy', {}).get('source', '')}`; "
        f"{summary.get('episodes', 0)} episodes, success rate "
        f"{format_rate(summary.get('success_rate', 0), summary.get('success_ci95'))} (95% interval), "
        f"wall time {summary.get('wall_s', 0):.0f} s."
    )
    lines = [
        f"# {summary.get('benchmark', 'eval')} evaluation ({summary.get('preset', '')} protocol)",
        "",
        headline or default_headline,
        "",
    ]
    if sections:  # the protocol's own tables lead, with the plot; the per-task table follows
        lines += [*(line for section in sections for line in (section, "")), f"![success plot]({plot_path.name})", ""]
        lines += [markdown_table(summary), ""]
    else:
        lines += [markdown_table(summary), "", f"![success rate per task]({plot_path.name})", ""]
    lines += ["## Settings", "", *(f"- `{k}`: {_fmt(v)}" for k, v in settings.items())]
    videos = summary.get("videos") or []
    if videos:
        lines += ["", "## Videos", "", *(f"- [{Path(v).name}]({v})" for v in videos)]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(v: Any) -> str:
    return f"`{v}`" if not isinstance(v, str) else v


# --- videos -----------------------------------------------------------------------------------------


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """(T, H, W, 3) uint8 frames -> H.264 MP4 (imageio's ffmpeg)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size=2: H.264 needs even sizes; the default 16 would rescale small renders.
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=2, quality=7) as writer:
        for frame in frames:
            writer.append_data(np.ascontiguousarray(frame))
    return path


class VideoKeeper:
    """Keeps at most `limit` episode videos, failures first: a failure replaces a kept success once
    the budget is full. Knows the videos already in the folder, so a resumed run continues the count."""

    def __init__(self, directory: str | Path, limit: int, fps: float):
        self.dir, self.limit, self.fps = Path(directory), limit, fps
        self.kept: dict[str, bool] = {}  # file name -> success
        if self.dir.exists():
            for p in sorted(self.dir.glob("*.mp4")):
                self.kept[p.name] = p.name.startswith("success_")

    def wants(self, success: bool | None = None) -> bool:
        """Whether a video might be kept (`success` unknown before the episode runs)."""
        if self.limit <= 0:
            return False
        if len(self.kept) < self.limit:
            return True
        return success is not True and any(self.kept.values())  # a failure could evict a success

    def offer(self, result: EpisodeResult, frames: np.ndarray | None) -> Path | None:
        if frames is None or not len(frames) or not self.wants(result.success):
            return None
        if len(self.kept) >= self.limit:  # full: only a failure gets here; drop the newest success
            victim = next(n for n, ok in reversed(self.kept.items()) if ok)
            (self.dir / victim).unlink(missing_ok=True)
            del self.kept[victim]
        name = f"{'success' if result.success else 'failure'}_{_safe(result.episode_id)}.mp4"
        write_video(self.dir / name, frames, self.fps)
        self.kept[name] = result.success
        return self.dir / name

    def files(self) -> list[str]:
        """Kept videos relative to the evaluation folder, failures first."""
        names = sorted(self.kept, key=lambda n: (self.kept[n], n))
        return [f"{self.dir.name}/{n}" for n in names]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
