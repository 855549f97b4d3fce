"""What one evaluation episode is (its spec) and what it produced (its result), benchmark-neutral.

A spec names everything needed to replay the episode: the environment to build (`env_key`, read by
the protocol's env factory), the fixed initial state and the seeds. `episode_id` is unique within
an evaluation and is the resume key: a result with that id in the log means the episode is done.

An episode may have several stages (a CALVIN chain: one language subtask per stage, see
`vla.eval.worker.MultiStageEnv`); its result then lists them in `stages`, and `success` means
every stage succeeded.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vla import ids
from vla.errors import VlaError


class EvalError(VlaError):
    """An evaluation that cannot run as asked (bad selection, results of another run in the folder...)."""


@dataclass(frozen=True)
class EpisodeSpec:
    episode_id: str  # e.g. "libero_object/1/7": unique in an evaluation, the resume key
    env_key: str  # which environment runs it (episodes with the same key share a built env)
    task: str  # the group in per-task tables, e.g. "libero_object/1"
    task_id: int
    init_state_id: int
    seed: int | None = None  # the environment's seed (None: not seeded)
    policy_seed: int = 0  # seeds stochastic planners (random policy) per episode
    meta: dict[str, Any] = field(default_factory=dict)  # protocol extras copied into the result (suite...)


@dataclass
class EpisodeResult:
    episode_id: str
    task: str
    task_id: int
    init_state_id: int
    seed: int | None
    policy_seed: int
    success: bool
    steps: int  # env steps after settling (the step budget counts these)
    policy_calls: int  # plans requested for this episode
    actions_executed: int  # policy actions applied to the env
    actions_discarded: int  # planned actions never executed (success or budget came first)
    wall_s: float
    language: str = ""
    error: str | None = None  # an exception during the episode: it counts as a failure
    meta: dict[str, Any] = field(default_factory=dict)
    # Multi-stage episodes only: per stage run, {"stage", "name", "language", "success", "steps"}.
    stages: list[dict[str, Any]] | None = None

    @property
    def stages_completed(self) -> int:
        """Consecutive successful stages from the first (1 or 0 for a single-stage episode)."""
        return int(self.success) if self.stages is None else completed_stages(self.stages)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        meta = d.pop("meta")
        if d["stages"] is None:  # single-stage logs stay as they were
            del d["stages"]
        return {**meta, **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EpisodeResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names}, meta={k: v for k, v in d.items() if k not in names})


def completed_stages(stages: Sequence[Mapping[str, Any]]) -> int:
    """Consecutive successful stages from the first (a result's or a logged record's `stages`)."""
    return next((i for i, stage in enumerate(stages) if not stage.get("success")), len(stages))


def derive_seed(seed: int, episode_id: str) -> int:
    """A stable per-episode seed (the same for any worker count or order)."""
    return zlib.crc32(f"{seed}/{episode_id}".encode()) & 0x7FFFFFFF


def parse_ids(text: str) -> list[int]:
    """'0-9' / '0,3,5-7' -> ids in the given order, without repeats."""
    return ids.parse_ids(text, EvalError)
