"""One small LeRobot dataset for the error and fuzz tests (recording one takes seconds: copy it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vla.testing.lerobot import write_lerobot_dataset


@pytest.fixture(scope="session")
def small_lerobot(tmp_path_factory) -> Path:
    """3 episodes, one PNG camera (no video to decode), 8x8 frames: read-only, copy before changing."""
    root = tmp_path_factory.mktemp("small_lerobot") / "small"
    return write_lerobot_dataset(
        root, 3, [4, 5, 3], cameras=("front",), image_size=(8, 8), video_cameras=(), fps=10, seed=0
    )
