"""Evaluation harnesses: runner (workers, resume, results), benchmark protocols, reports.

Generic, benchmark-neutral pieces:
- `episodes`: `EpisodeSpec` / `EpisodeResult`, the resume key (`episode_id`), `parse_ids`;
- `planners`: the `Planner` interface (chunk + actions to execute per row), `PolicyPlanner`,
  `RandomPlanner`, `PlannerSpec` (picklable recipe for worker processes);
- `worker`: one episode at a time next to its environment, in this process or a spawned one;
- `runner`: `run_episodes` (lock-step rounds, plans batched across workers, throughput counts);
- `results`: the resumable `episodes.jsonl` log, `run.json` settings check, per-group rates;
- `report`: rich table, Markdown report + PNG plot, MP4 videos (failures first);
- `fit`: policy vs environment checks before the first episode;
- `compare`: paired comparison of evaluation folders (bootstrap interval, exact McNemar) and aggregation
  over training seeds (`vla eval compare`, `vla eval aggregate`; `compare_report` renders them);
- `protocol`: the skeleton every benchmark fills in (policy, fit check, re-planning, the run, summary).
Protocols (`protocols.PROTOCOLS`): `libero` (presets openpi / libero / mode, `evaluate_libero`);
`calvin` (the reference's 1000 chains of 5 subtasks as multi-stage episodes, `evaluate_calvin`).
"""
