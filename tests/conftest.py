"""Test-wide settings: offline, deterministic, small thread counts (CI has 2 cores)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import vla  # noqa: F401  (applies the toolkit's offline/LIBERO defaults before anything else loads)
