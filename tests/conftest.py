"""Test-wide settings: offline (HF_HUB_OFFLINE and friends), deterministic, one intra-op thread.

CI has 2 cores shared with simulator and DataLoader processes: with more than one OpenMP thread,
spin-waits for a busy core make the many small ops of these tests up to 10x slower and the timing
of subprocess tests unpredictable, so every test (and every subprocess it starts) runs one thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never touch the network (what vla._env.apply_offline_defaults sets; `import vla` alone does not).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

import vla  # noqa: F401  (applies the toolkit's LIBERO and rendering defaults before anything else loads)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)
    yield
