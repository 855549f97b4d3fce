"""Paired comparison of evaluations, and aggregation over training seeds (numpy/scipy only).

An evaluation folder (`episodes.jsonl` + `run.json`, written by `vla.eval.results`) is read into an
`EvalRun`: its settings and one success outcome per pairing key. The key says which episode it was,
independently of the policy: LIBERO (task, initial state, perturbation), CALVIN ("calvin", chain
index, perturbation); `perturbation` is what the episode record says (None when the run has none).

`compare_runs(a, b)` pairs the episodes of A and B on that key (each side one folder per training
seed, seed i of A with seed i of B) and reports, in fractions of 1 (`format_difference` prints points):

- `difference`: mean success of A minus mean success of B over the paired episodes, averaged per seed;
- `ci95`: a percentile bootstrap 95% interval of it. Each replicate resamples the seeds with
  replacement and, inside each drawn seed, its paired episodes with replacement (a cluster bootstrap:
  seed-to-seed variation of training and episode-to-episode variation both count). With one seed
  this is the plain paired bootstrap. It is seeded (`seed`), so a comparison is reproducible;
- `p_mcnemar`: the exact McNemar test: under "A and B succeed equally often", the pairs where exactly
  one succeeded (`discordant` = (A only, B only), pooled over seeds) split 50/50; the p-value is the
  two-sided binomial test of that split (1.0 without discordant pairs).

Runs are compared only under the same protocol (`settings_difference`): anything that changes which
episodes run or how they are scored must agree; what describes the policy under test (its path,
cameras, device), the machine (workers) or the output does not count (`POLICY_SETTINGS`).

`aggregate_seeds(paths)`: one method trained with several seeds, each evaluated under the same
protocol: per-seed success rates, their mean with a Student-t 95% interval across seeds (none for a
single seed), and the pooled rate with its Wilson interval; overall and per task.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla.errors import ComparisonError
from vla.eval.results import EPISODES_FILE, RUN_FILE, SUMMARY_FILE
from vla.statistics import CONFIDENCE, wilson_interval

PairKey = tuple[str, int, str | None]  # (task, initial state or chain index, perturbation)

# Settings that describe the policy under test, the machine or the output, not the protocol: never compared.
POLICY_SETTINGS = frozenset(
    {
        "policy",  # the checkpoint path (the thing being compared)
        "cameras",  # which cameras the policy reads is part of the policy (state-only vs vision)
        "image_settings_from",  # where the image size came from (options, checkpoint data, preset)
        "replan_note",  # prose about the policy's chunk
        "max_steps_source",  # prose; the budget itself (`max_steps`) is compared
        "out",
        "workers",
        "policy_in_workers",
        "device",
        "videos",
        "video_size",
        "video_chains",
        "resume",
        "wall_s",
    }
)
# Image settings matter only when both runs render cameras (a state-only run renders none).
IMAGE_SETTINGS = frozenset({"image_size", "image_orientation", "image_sizes"})
# Settings that only choose the episodes; with `intersect=True` the common episodes are used instead.
SELECTION_SETTINGS = frozenset({"tasks", "init_states", "trials_per_task", "chains", "chain_ids"})
# Seeds a run may take from its training seed: they may differ between the seeds of one side (and in
# an aggregation), never between the paired runs A_i and B_i.
PER_SEED_SETTINGS = frozenset({"run_seed", "env_seed"})


# --- loading ---------------------------------------------------------------------------------------------


@dataclass
class EvalRun:
    """One evaluation folder: its settings and a success outcome per pairing key."""

    path: Path
    settings: dict[str, Any]
    outcomes: dict[PairKey, bool]
    complete: bool | None = None  # summary.json's `complete`; None before the run wrote a summary
    position: int | None = None  # CALVIN: success = at least this many subtasks in a row (None: the whole chain)

    @property
    def benchmark(self) -> str:
        return str(self.settings.get("benchmark", "eval"))

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def successes(self) -> int:
        return sum(self.outcomes.values())

    @property
    def rate(self) -> float:
        return self.successes / self.n if self.n else 0.0

    def tasks(self) -> list[str]:
        """Task names in first-seen order."""
        return list(dict.fromkeys(k[0] for k in self.outcomes))


def load_eval(path: str | Path, *, position: int | None = None) -> EvalRun:
    """Read an evaluation folder (`run.json` and `episodes.jsonl`; `summary.json` when there).

    `position` (CALVIN only): count a chain as a success when it completed at least this many subtasks
    in a row (1..5); by default only a whole chain counts, as the run's own `success`."""
    path = Path(path)
    run_file, log_file = path / RUN_FILE, path / EPISODES_FILE
    for f in (run_file, log_file):
        if not f.is_file():
            raise ComparisonError(f"{f}: missing; is {path} an evaluation folder (vla eval ... --out)?")
    settings = _read_json(run_file)
    if not isinstance(settings, dict):
        raise ComparisonError(f"{run_file}: not a JSON object of settings")
    calvin = settings.get("benchmark") == "calvin"
    if position is not None and not calvin:
        raise ComparisonError(f"{path}: --position applies to CALVIN chains, this is a {settings.get('benchmark')} run")
    if position is not None and not 1 <= position <= 5:
        raise ComparisonError(f"--position must be in 1..5 (subtasks in a row), got {position}")
    outcomes: dict[PairKey, bool] = {}
    where: dict[PairKey, str] = {}
    for n, record in enumerate(_records(log_file), 1):
        try:
            key = pair_key(record, calvin)
            ok = _success(record, position)
        except (KeyError, TypeError, ValueError) as e:
            raise ComparisonError(f"{log_file} line {n}: not an episode record ({e!r} missing or malformed)") from e
        if key in outcomes:
            raise ComparisonError(
                f"{log_file}: episodes {where[key]!r} and {record.get('episode_id')!r} share the pairing key {key}; "
                "their records must differ in task, initial state or perturbation"
            )
        outcomes[key], where[key] = ok, str(record.get("episode_id"))
    complete = None
    if (path / SUMMARY_FILE).is_file():
        complete = bool(_read_json(path / SUMMARY_FILE).get("complete", False))
    return EvalRun(path, settings, outcomes, complete, position)


def pair_key(record: Mapping[str, Any], calvin: bool = False) -> PairKey:
    """The episode's identity across policies: (task, initial state or chain, perturbation)."""
    perturbation = _canonical(record.get("perturbation"))
    if calvin:
        return "calvin", int(record["chain"] if "chain" in record else record["init_state_id"]), perturbation
    return str(record["task"]), int(record["init_state_id"]), perturbation


def _canonical(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _success(record: Mapping[str, Any], position: int | None) -> bool:
    if position is None:
        return bool(record["success"])
    stages = record.get("stages") or []
    done = next((i for i, s in enumerate(stages) if not s.get("success")), len(stages))
    return done >= position


def _records(path: Path) -> Iterable[dict[str, Any]]:
    """Complete JSON lines, first record per episode id (as the results log reads itself)."""
    seen: set[str] = set()
    for line in path.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a torn last line of a killed run
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or record.get("episode_id") in seen:
            continue
        seen.add(record.get("episode_id"))
        yield record


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ComparisonError(f"{path}: unreadable ({e})") from e


def _as_run(run: EvalRun | str | Path, position: int | None = None) -> EvalRun:
    return run if isinstance(run, EvalRun) else load_eval(run, position=position)


# --- settings ----------------------------------------------------------------------------------------------


def settings_difference(
    runs: Sequence[EvalRun | str | Path], *, ignore: Iterable[str] = (), intersect: bool = False
) -> dict[str, tuple[Any, ...]]:
    """Protocol settings that differ between `runs`: {name: (value in run 0, value in run 1, ...)}.

    Not compared: `POLICY_SETTINGS`, names in `ignore`, and with `intersect` the episode selection
    (`SELECTION_SETTINGS`). Image settings are compared only between runs that render cameras."""
    runs = [_as_run(r) for r in runs]
    skip = POLICY_SETTINGS | set(ignore) | (SELECTION_SETTINGS if intersect else frozenset())
    names = list(dict.fromkeys(k for r in runs for k in r.settings))
    with_cameras = [r for r in runs if r.settings.get("cameras", True)]  # CALVIN/old runs without the key: compare
    out: dict[str, tuple[Any, ...]] = {}
    for name in names:
        if name in skip:
            continue
        values = tuple(r.settings.get(name) for r in runs)
        if name in IMAGE_SETTINGS:
            compared = [_image_value(r.settings.get(name), with_cameras) for r in with_cameras]
            if len({json.dumps(v, sort_keys=True) for v in compared}) > 1:
                out[name] = values
        elif len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            out[name] = values
    return out


def _image_value(value: Any, runs: Sequence[EvalRun]) -> Any:
    """Per-camera image settings (CALVIN's `image_sizes`) restricted to the cameras every run renders."""
    if not isinstance(value, dict):
        return value
    common = set.intersection(*(set(r.settings.get("cameras") or value) for r in runs)) if runs else set()
    return {k: v for k, v in sorted(value.items()) if k in common}


def check_same_protocol(
    runs: Sequence[EvalRun], labels: Sequence[str], *, ignore: Iterable[str] = (), intersect: bool = False
) -> None:
    """Raise ComparisonError naming every differing setting and each run's value."""
    diff = settings_difference(runs, ignore=ignore, intersect=intersect)
    if diff:
        parts = [
            f"{name} ({', '.join(f'{lab}: {_short(v)}' for lab, v in zip(labels, values, strict=True))})"
            for name, values in diff.items()
        ]
        raise ComparisonError(
            f"the runs were evaluated under different protocol settings: {'; '.join(parts)}. "
            "Evaluate them with the same settings, or pass --ignore-setting NAME for a difference that is "
            "part of what you compare"
        )


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- paired comparison -------------------------------------------------------------------------------------


@dataclass
class TaskDifference:
    """The comparison restricted to one task's paired episodes."""

    task: str
    difference: float
    ci95: tuple[float, float]
    n: int  # paired episodes (all seeds)
    rate_a: float
    rate_b: float
    discordant: tuple[int, int]
    p_mcnemar: float
    seed_t_ci95: tuple[float, float] | None = None  # Student-t across seed pairs (None: one seed)


@dataclass
class Comparison:
    """A minus B over paired episodes; rates and differences are fractions of 1 (see the module doc)."""

    a: list[str]  # folders of side A, one per training seed
    b: list[str]
    benchmark: str
    difference: float
    ci95: tuple[float, float]
    p_mcnemar: float
    discordant: tuple[int, int]  # (A succeeded and B failed, B succeeded and A failed), pooled over seeds
    n_pairs: int
    n_seeds: int
    rate_a: float
    rate_b: float
    rate_a_ci95: tuple[float, float]  # Wilson, pooled over seeds
    rate_b_ci95: tuple[float, float]
    tasks: list[TaskDifference]
    seed_differences: list[float]  # per seed pair
    # Student-t 95% interval of the mean over seed pairs of their differences (None for one seed): wider than
    # the bootstrap with few seeds, and the one that keeps its 95% when training seeds vary (see docs).
    seed_t_ci95: tuple[float, float] | None
    n_boot: int
    seed: int
    unpaired: tuple[int, int] = (0, 0)  # episodes of A / B left out because the other side lacks them (intersect)
    ignored_settings: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # differing, but ignored on request
    position: int | None = None
    label_a: str = "A"
    label_b: str = "B"
    settings: dict[str, Any] = field(default_factory=dict)  # the protocol both sides ran (A's first run's)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["difference_points"] = format_difference(self)
        return d


def compare_runs(
    a: Sequence[str | Path] | str | Path,
    b: Sequence[str | Path] | str | Path,
    *,
    n_boot: int = 10000,
    seed: int = 0,
    intersect: bool = False,
    ignore_settings: Iterable[str] = (),
    position: int | None = None,
    labels: tuple[str, str] | None = None,
) -> Comparison:
    """Compare A against B on paired episodes (module doc). Each side: one folder, or one per training seed
    (the same number on both sides, seed i paired with seed i).

    Raises ComparisonError when the protocol settings differ (naming each) or when a pair of runs did not
    run the same episodes; `intersect=True` uses the episodes both ran instead (and ignores the settings
    that select episodes). `ignore_settings`: settings allowed to differ (e.g. `dynamic_horizon`)."""
    paths_a, paths_b = _paths(a), _paths(b)
    if not paths_a or not paths_b:
        raise ComparisonError("each side of a comparison needs at least one evaluation folder")
    label_a, label_b = labels or (side_label(paths_a), side_label(paths_b))
    if label_a == label_b and not labels:  # e.g. runs/mode/eval vs runs/dense/eval: name the parents too
        label_a, label_b = side_label(paths_a, parents=1), side_label(paths_b, parents=1)
    if len(paths_a) != len(paths_b):
        raise ComparisonError(
            f"{label_a} has {len(paths_a)} runs and {label_b} has {len(paths_b)}: give one run per training seed "
            "on each side, in the same seed order (seed i of one side is paired with seed i of the other)"
        )
    if n_boot < 1:
        raise ComparisonError(f"n_boot must be >= 1, got {n_boot}")
    runs_a = [load_eval(p, position=position) for p in paths_a]
    runs_b = [load_eval(p, position=position) for p in paths_b]
    ignore = set(ignore_settings)
    # Every run under one protocol, except the seeds a run may take from its training seed...
    all_runs = runs_a + runs_b
    all_labels = [_run_label(label_a, i, len(runs_a)) for i in range(len(runs_a))]
    all_labels += [_run_label(label_b, i, len(runs_b)) for i in range(len(runs_b))]
    check_same_protocol(all_runs, all_labels, ignore=ignore | PER_SEED_SETTINGS, intersect=intersect)
    # ... which must agree between the two runs of each pair.
    for i, (ra, rb) in enumerate(zip(runs_a, runs_b, strict=True)):
        check_same_protocol([ra, rb], [all_labels[i], all_labels[len(runs_a) + i]], ignore=ignore, intersect=intersect)
    ignored = {
        k: v
        for k, v in settings_difference(all_runs).items()
        if k in ignore and not (intersect and k in SELECTION_SETTINGS)
    }

    pairs: list[tuple[list[PairKey], np.ndarray, np.ndarray]] = []  # per seed: keys, A outcomes, B outcomes
    unpaired_a = unpaired_b = 0
    for i, (ra, rb) in enumerate(zip(runs_a, runs_b, strict=True)):
        only_a, only_b = ra.outcomes.keys() - rb.outcomes.keys(), rb.outcomes.keys() - ra.outcomes.keys()
        if (only_a or only_b) and not intersect:
            raise ComparisonError(
                f"{all_labels[i]} and {all_labels[len(runs_a) + i]} did not run the same episodes: "
                f"{len(only_a)} only in {ra.path}{_examples(only_a)}, "
                f"{len(only_b)} only in {rb.path}{_examples(only_b)}; "
                "finish the shorter run (it resumes), or pass --intersect to compare the common episodes only"
            )
        keys = [k for k in ra.outcomes if k in rb.outcomes]
        if not keys:
            raise ComparisonError(f"{ra.path} and {rb.path} have no episode in common")
        unpaired_a, unpaired_b = unpaired_a + len(only_a), unpaired_b + len(only_b)
        pairs.append((keys, np.array([ra.outcomes[k] for k in keys]), np.array([rb.outcomes[k] for k in keys])))

    overall = paired_statistics([(x, y) for _, x, y in pairs], n_boot, np.random.default_rng([seed, 0]))
    tasks = []
    task_names = list(dict.fromkeys(k[0] for keys, _, _ in pairs for k in keys))
    for t, name in enumerate(task_names, 1):
        per_seed = []
        for keys, x, y in pairs:
            mask = np.array([k[0] == name for k in keys])
            if mask.any():
                per_seed.append((x[mask], y[mask]))
        s = paired_statistics(per_seed, n_boot, np.random.default_rng([seed, t]))
        tasks.append(TaskDifference(name, s["difference"], s["ci95"], s["n"], s["rate_a"], s["rate_b"],
                                    s["discordant"], s["p_mcnemar"], s["seed_t_ci95"]))  # fmt: skip
    n_a = sum(int(x.sum()) for _, x, _ in pairs)
    n_b = sum(int(y.sum()) for _, _, y in pairs)
    return Comparison(
        a=[str(p) for p in paths_a],
        b=[str(p) for p in paths_b],
        benchmark=runs_a[0].benchmark,
        difference=overall["difference"],
        ci95=overall["ci95"],
        p_mcnemar=overall["p_mcnemar"],
        discordant=overall["discordant"],
        n_pairs=overall["n"],
        n_seeds=len(pairs),
        rate_a=overall["rate_a"],
        rate_b=overall["rate_b"],
        rate_a_ci95=wilson_interval(n_a, overall["n"]),
        rate_b_ci95=wilson_interval(n_b, overall["n"]),
        tasks=tasks,
        seed_differences=overall["seed_differences"],
        seed_t_ci95=overall["seed_t_ci95"],
        n_boot=n_boot,
        seed=seed,
        unpaired=(unpaired_a, unpaired_b),
        ignored_settings=ignored,
        position=position,
        label_a=label_a,
        label_b=label_b,
        settings={k: v for k, v in runs_a[0].settings.items() if k not in POLICY_SETTINGS},
    )


def paired_statistics(seeds: Sequence[tuple[np.ndarray, np.ndarray]], n_boot: int, rng: np.random.Generator) -> dict:
    """Difference, bootstrap interval, McNemar test and rates of paired outcomes, one (A, B) pair per seed."""
    from scipy.stats import binomtest

    diffs = [x.astype(np.int8) - y.astype(np.int8) for x, y in seeds]  # +1: A only, -1: B only, 0: agree
    seed_differences = [float(d.mean()) for d in diffs]
    a_only = sum(int((d == 1).sum()) for d in diffs)
    b_only = sum(int((d == -1).sum()) for d in diffs)
    n = sum(len(d) for d in diffs)
    p = float(binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return {
        "difference": float(np.mean(seed_differences)),
        "ci95": cluster_bootstrap(diffs, n_boot, rng),
        "p_mcnemar": min(p, 1.0),
        "discordant": (a_only, b_only),
        "n": n,
        "rate_a": sum(int(x.sum()) for x, _ in seeds) / n,
        "rate_b": sum(int(y.sum()) for _, y in seeds) / n,
        "seed_differences": seed_differences,
        "seed_t_ci95": t_interval(seed_differences, low=-1.0),
    }


def cluster_bootstrap(
    diffs: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of the mean paired difference, resampling seeds with
    replacement and, inside each drawn seed, its episodes with replacement.

    The paired differences take three values (-1, 0, +1), so resampling n episodes of a seed is one draw
    of the multinomial of their counts: exact, and cheap for any n."""
    n_seeds = len(diffs)
    drawn = rng.integers(n_seeds, size=(n_boot, n_seeds)) if n_seeds > 1 else np.zeros((n_boot, 1), np.int64)
    means = np.empty(drawn.shape)
    for s, d in enumerate(diffs):
        mask = drawn == s
        shares = [np.mean(d == 1), np.mean(d == 0), np.mean(d == -1)]
        counts = rng.multinomial(len(d), shares, size=int(mask.sum()))
        means[mask] = (counts[:, 0] - counts[:, 2]) / len(d)
    replicates = means.mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def format_difference(c: Comparison | TaskDifference, digits: int = 1, interval: str = "bootstrap") -> str:
    """'D [LO, HI]' in percentage points (A minus B), e.g. '13.3 [-3.3, 30.0]'; `interval`: "bootstrap" (`ci95`)
    or "t" (`seed_t_ci95`, across seed pairs; just 'D' with one seed)."""
    if interval not in ("bootstrap", "t"):
        raise ValueError(f"interval must be 'bootstrap' or 't', got {interval!r}")
    if interval == "t" and c.seed_t_ci95 is None:
        return f"{100 * c.difference:.{digits}f}"
    lo, hi = c.ci95 if interval == "bootstrap" else c.seed_t_ci95
    return f"{100 * c.difference:.{digits}f} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def _paths(side: Sequence[str | Path] | str | Path) -> list[Path]:
    if isinstance(side, (str, Path)):
        return [Path(side)]
    return [Path(p) for p in side]


def side_label(paths: Sequence[Path], parents: int = 0) -> str:
    """A short name for one side: the folder name (with `parents` levels above it), or the seeds' common
    name prefix and their count."""
    names = ["/".join(Path(p).resolve().parts[-1 - parents :]) for p in paths]
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)  # noqa: RUF071 (a name prefix: "mode_s" of mode_s0, mode_s1, ...)
    prefix = re.sub(r"([_\-.=]+(seed|s)?)?$", "", prefix, count=1)
    return f"{prefix or names[0]} ({len(names)} seeds)"


def _run_label(label: str, i: int, n: int) -> str:
    return label if n == 1 else f"{label} seed #{i + 1}"


def _examples(keys: set[PairKey], limit: int = 3) -> str:
    if not keys:
        return ""
    shown = ", ".join("/".join(str(x) for x in k if x is not None) for k in sorted(keys, key=str)[:limit])
    return f" (e.g. {shown})"


# --- seed aggregation --------------------------------------------------------------------------------------


@dataclass
class SeedStats:
    """Success over training seeds for one task (or overall)."""

    task: str
    rates: list[float | None]  # per seed (None: that seed's run has no episode of the task)
    trials: list[int]  # per seed
    mean: float  # mean of the per-seed rates
    ci95: tuple[float, float] | None  # Student-t 95% interval across seeds, clipped to [0, 1]; None for one seed
    pooled_rate: float  # all episodes of all seeds together
    pooled_ci95: tuple[float, float]  # Wilson


@dataclass
class SeedSummary:
    paths: list[str]
    benchmark: str
    overall: SeedStats
    tasks: list[SeedStats]
    note: str  # how to read the interval (one seed: there is none)
    position: int | None = None
    ignored_settings: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def n_seeds(self) -> int:
        return len(self.paths)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def aggregate_seeds(
    paths: Sequence[str | Path], *, position: int | None = None, ignore_settings: Iterable[str] = ()
) -> SeedSummary:
    """One method, one evaluation folder per training seed, all under the same protocol (their own
    `run_seed`/`env_seed` may differ): per-seed rates, mean with a t-interval across seeds, pooled Wilson."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ComparisonError("aggregate needs at least one evaluation folder")
    runs = [load_eval(p, position=position) for p in paths]
    ignore = set(ignore_settings)
    check_same_protocol(runs, [str(p) for p in paths], ignore=ignore | PER_SEED_SETTINGS)
    empty = [str(r.path) for r in runs if not r.n]
    if empty:
        raise ComparisonError(f"no finished episodes in {', '.join(empty)}")
    overall = seed_stats("all tasks", [list(r.outcomes.values()) for r in runs])
    tasks = []
    for name in dict.fromkeys(t for r in runs for t in r.tasks()):
        tasks.append(seed_stats(name, [[ok for k, ok in r.outcomes.items() if k[0] == name] for r in runs]))
    note = (
        "one seed: no interval across seeds (train and evaluate more seeds to see how much training varies)"
        if len(runs) == 1
        else f"mean of {len(runs)} seeds with a Student-t 95% interval across seeds (t with {len(runs) - 1} d.o.f.)"
    )
    ignored = {k: v for k, v in settings_difference(runs).items() if k in ignore}
    return SeedSummary([str(p) for p in paths], runs[0].benchmark, overall, tasks, note, position, ignored)


def t_interval(values: Sequence[float], low: float = 0.0, high: float = 1.0) -> tuple[float, float] | None:
    """Student-t 95% interval of the mean of `values` (one per seed), clipped to [low, high]; None for one value."""
    from scipy.stats import t as student_t

    if len(values) < 2:
        return None
    mean = float(np.mean(values))
    sem = np.std(values, ddof=1) / np.sqrt(len(values))
    half = float(student_t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * sem)
    return max(low, mean - half), min(high, mean + half)


def seed_stats(task: str, outcomes: Sequence[Sequence[bool]]) -> SeedStats:
    """Per-seed rates -> mean, t-interval across seeds (None for one seed), pooled Wilson. A seed without
    outcomes (empty) is left out of the mean."""
    rates = [sum(o) / len(o) if len(o) else None for o in outcomes]
    present = [r for r in rates if r is not None]
    wins, trials = sum(sum(o) for o in outcomes), [len(o) for o in outcomes]
    return SeedStats(task, rates, trials, float(np.mean(present)), t_interval(present), wins / sum(trials),
                     wilson_interval(wins, sum(trials)))  # fmt: skip
