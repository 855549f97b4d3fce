"""Synthetic evaluation folders written with the results log itself (`vla.eval.results`): known outcomes per
(task, initial state) under LIBERO-like settings, for testing comparisons and seed aggregation without a
simulator."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vla.eval.episodes import EpisodeResult, derive_seed
from vla.eval.results import ResultsLog, group_rates, write_summary
from vla.statistics import wilson_interval

SUITE = "libero_object"


def libero_settings(tasks: list[int], init_states: list[int], **overrides: Any) -> dict[str, Any]:
    """What the LIBERO protocol records for a state-only checkpoint under the openpi preset."""
    settings: dict[str, Any] = {
        "benchmark": "libero",
        "preset": "openpi",
        "suite": SUITE,
        "tasks": tasks,
        "init_states": init_states,
        "trials_per_task": len(init_states),
        "env_seed": 7,
        "seed_mode": "fixed",
        "run_seed": 0,
        "settle_steps": 10,
        "max_steps": 280,
        "max_steps_source": "preset openpi",
        "replan_steps": 5,
        "dynamic_horizon": None,
        "replan_note": "",
        "cameras": [],
        "image_size": 256,
        "image_orientation": "upright",
        "image_settings_from": "preset",
        "policy": "/checkpoints/policy",
    }
    return {**settings, **overrides}


def write_libero_run(
    out: Path,
    outcomes: Mapping[tuple[int, int], bool],
    *,
    perturbation: Any = None,
    summary: bool = True,
    **settings: Any,
) -> Path:
    """An evaluation folder with one episode per (task id, initial state) -> success; `settings` override
    `libero_settings`. `perturbation` (when given) is recorded per episode and in the settings."""
    tasks = sorted({t for t, _ in outcomes})
    states = sorted({k for _, k in outcomes})
    extra = {"perturbation": perturbation} if perturbation is not None else {}
    run_settings = {**libero_settings(tasks, states), **extra, **settings}
    log = ResultsLog(out).open(run_settings, resume=False)
    for (task_id, init), ok in outcomes.items():
        task = f"{SUITE}/{task_id}"
        eid = f"{task}/{init}"
        log.append(
            EpisodeResult(
                episode_id=eid,
                task=task,
                task_id=task_id,
                init_state_id=init,
                seed=7,
                policy_seed=derive_seed(run_settings["run_seed"], eid),
                success=bool(ok),
                steps=40 if ok else run_settings["max_steps"],
                policy_calls=10,
                actions_executed=50,
                actions_discarded=0,
                wall_s=0.1,
                meta={"suite": SUITE, **extra},
            )
        )
    if summary:
        records = log.results()
        wins = sum(r["success"] for r in records)
        write_summary(
            out,
            {
                "benchmark": "libero",
                "preset": run_settings["preset"],
                "complete": True,
                "episodes": len(records),
                "successes": wins,
                "success_rate": wins / len(records),
                "success_ci95": list(wilson_interval(wins, len(records))),
                "tasks": list(group_rates(records, "task").values()),
                "groups": group_rates(records, "suite"),
                "settings": run_settings,
            },
        )
    return out
