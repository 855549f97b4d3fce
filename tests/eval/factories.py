"""Env factories for the runner tests; a light module, since spawned workers import it to unpickle them."""

from __future__ import annotations

from typing import Any

from vla.sim.base import SimError


class BrokenFactory:
    """An env factory whose simulator cannot be built."""

    def __call__(self, spec: Any) -> Any:
        raise SimError("no OpenGL here")
