"""Errors that name the file, the key and the problem, so a user knows what to fix."""

from __future__ import annotations

from pathlib import Path


class VlaError(Exception):
    """Base class: every error the toolkit raises on bad input derives from it."""


class DataError(VlaError):
    """Bad input data: names the file, the key inside it, and what is wrong."""

    def __init__(self, path: str | Path, key: str | None, problem: str):
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}" + (f" [{key}]" if key else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # rebuilt from its three parts: raised in a conversion worker, re-raised here
        return (type(self), (self.path, self.key, self.problem))


class PolicyError(VlaError):
    """A policy config, checkpoint or input that cannot work: says what and how to fix it."""


class ComparisonError(VlaError):
    """Evaluations that cannot be compared or aggregated: other protocol settings, other episodes, missing files."""
