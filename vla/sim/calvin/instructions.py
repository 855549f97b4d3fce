"""The instruction each CALVIN subtask is given: the first sentence of the reference validation
annotations (shipped as data/instructions.json)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from vla.sim.base import SimError
from vla.sim.calvin.tasks import SUBTASKS

DATA_FILE = "instructions.json"


@lru_cache(maxsize=1)
def instructions() -> dict[str, str]:
    """Subtask name -> instruction, for all 34 subtasks."""
    try:
        data = json.loads(resources.files("vla.sim.calvin").joinpath("data", DATA_FILE).read_text())["instructions"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SimError(f"vla/sim/calvin/data/{DATA_FILE}: unreadable ({e}); reinstall vla") from None
    missing = [t for t in SUBTASKS if t not in data]
    if missing:
        raise SimError(f"vla/sim/calvin/data/{DATA_FILE}: no instruction for {', '.join(missing)}")
    return {t: str(data[t]) for t in SUBTASKS}


def instruction(subtask: str) -> str:
    table = instructions()
    if subtask not in table:
        raise SimError(f"unknown CALVIN subtask {subtask!r}; known: {', '.join(table)}")
    return table[subtask]
