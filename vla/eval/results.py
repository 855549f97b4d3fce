"""The evaluation folder: the per-episode JSONL log (append-only, resumable), the run's settings,
and the per-task / per-group success summary.

Resuming: a run killed mid-way leaves complete lines for finished episodes and at most one torn
line at the end. Opening the log drops the torn tail (so new lines do not glue onto it), keeps the
first record of each episode id, and the caller runs only the episodes not in it. Each line is one
`write` of a complete JSON object plus newline, flushed and fsynced before the next episode counts.
`run.json` holds the settings the log was produced with; resuming with different settings is
refused instead of silently mixing two evaluations.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vla.eval.episodes import EpisodeResult, EpisodeSpec, EvalError
from vla.files import atomic_write_text
from vla.statistics import wilson_interval

EPISODES_FILE = "episodes.jsonl"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"


class ResultsLog:
    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.path = self.dir / EPISODES_FILE
        self.records: dict[str, dict[str, Any]] = {}
        self.dropped_lines = 0  # torn or unreadable lines found on opening
        self.duplicates = 0  # records whose episode id was already logged (ignored)

    # --- opening -----------------------------------------------------------------------------------
    def open(self, settings: Mapping[str, Any], resume: bool = True, selection: Iterable[str] = ()) -> ResultsLog:
        """Create or reopen the folder; `settings` must match those of an existing log (see module doc).

        `selection`: settings that only choose which episodes run (tasks, initial states); they may
        differ on resume, so an evaluation can be extended to more episodes without redoing any."""
        self.dir.mkdir(parents=True, exist_ok=True)
        run_file = self.dir / RUN_FILE
        settings = json.loads(json.dumps(settings))  # compare what JSON would hold
        if self.path.exists() and resume:
            if run_file.exists():
                old = json.loads(run_file.read_text())
                keys = {*old, *settings} - set(selection)
                diff = sorted(k for k in keys if old.get(k) != settings.get(k))
                if diff:
                    raise EvalError(
                        f"{self.dir} holds results of an evaluation with other settings (differ: {', '.join(diff)}); "
                        "use another --out, or --no-resume to start over"
                    )
            self._load()
        else:
            self.path.unlink(missing_ok=True)
            (self.dir / SUMMARY_FILE).unlink(missing_ok=True)
        atomic_write_text(run_file, json.dumps(settings, indent=2))
        return self

    def _load(self) -> None:
        data = self.path.read_bytes()
        good_end = 0  # byte offset just past the last complete, readable line
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                self.dropped_lines += 1  # the torn last line of a killed run
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                self.dropped_lines += 1
                good_end += len(line)  # a complete but unreadable line: skip it, keep what follows
                continue
            good_end += len(line)
            if record.get("episode_id") in self.records:
                self.duplicates += 1
            else:
                self.records[record["episode_id"]] = record
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)

    # --- writing -------------------------------------------------------------------------------------
    def append(self, result: EpisodeResult) -> bool:
        """Log a finished episode; False (and nothing written) if its id is already logged."""
        record = result.to_json()
        if record["episode_id"] in self.records:
            self.duplicates += 1
            return False
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records[record["episode_id"]] = record
        return True

    def done_ids(self) -> set[str]:
        return set(self.records)

    def results(self, episode_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Logged records, in `episode_ids` order when given (ids not logged are skipped)."""
        if episode_ids is None:
            return list(self.records.values())
        return [self.records[i] for i in episode_ids if i in self.records]


def group_rates(records: Iterable[Mapping[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Per-group trials, successes, success rate with its Wilson 95% interval, mean steps (all / successful),
    errors."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[str(r[key])].append(r)
    out = {}
    for name, rows in groups.items():
        ok = [r for r in rows if r["success"]]
        out[name] = {
            "trials": len(rows),
            "successes": len(ok),
            "success_rate": len(ok) / len(rows),
            "ci95": list(wilson_interval(len(ok), len(rows))),
            "mean_steps": sum(r["steps"] for r in rows) / len(rows),
            "mean_steps_success": sum(r["steps"] for r in ok) / len(ok) if ok else None,
            "errors": sum(1 for r in rows if r.get("error")),
            "wall_s": round(sum(r["wall_s"] for r in rows), 2),
        }
    return out


def write_summary(out_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    path = Path(out_dir) / SUMMARY_FILE
    atomic_write_text(path, json.dumps(summary, indent=2))
    return path


def start_run(
    out: Path,
    settings: Mapping[str, Any],
    episodes: Iterable[EpisodeSpec],
    *,
    resume: bool,
    selection: Iterable[str],
    progress: bool,
    unit: str = "episodes",
) -> tuple[ResultsLog, list[EpisodeSpec], int]:
    """Open (or resume) a protocol's results log: (log, episodes still to run, episodes already done).

    Starting over also removes the old run's videos: they belong to its log."""
    from vla.eval.report import VIDEO_DIR

    episodes = list(episodes)
    log = ResultsLog(out).open(settings, resume=resume, selection=selection)
    todo = [e for e in episodes if e.episode_id not in log.records]
    done_before = len(episodes) - len(todo)
    if not resume:
        for p in (out / VIDEO_DIR).glob("*.mp4"):
            p.unlink()
    if done_before and progress:
        from tqdm import tqdm

        tqdm.write(f"resuming: {done_before} of {len(episodes)} {unit} already in {log.path}")
    return log, todo, done_before


def finish_run(out: Path, summary: dict[str, Any], report: Any) -> dict[str, Any]:
    """summary.json, then the report (which links it), then summary.json again with the report's path."""
    write_summary(out, summary)
    summary["report"] = str(report(out, summary))
    write_summary(out, summary)
    return summary
