"""Small deterministic, structured synthetic LIBERO demonstration files (tests, benchmarks).

Written by the real `LiberoHdf5Writer` (vla.datasets.libero_hdf5), in LIBERO's exact layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla.datasets.libero_hdf5 import LiberoHdf5Writer

STATE_DIM = 47  # synthetic flattened-sim-state width (real ones depend on the scene's objects)


def synthetic_image(camera: str, t: int, length: int, demo: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """A deterministic, structured (H, W, 3) frame: gradients plus a moving square.

    Nothing in it is symmetric under a 180-degree rotation, so a missing or doubled flip shows.
    """
    h, w = size
    rows = np.linspace(0, 255, h, dtype=np.float64)[:, None]
    cols = np.linspace(0, 255, w, dtype=np.float64)[None, :]
    img = np.zeros((h, w, 3), np.uint8)
    if camera == "agentview":
        img[..., 0] = rows.astype(np.uint8)
        img[..., 1] = cols.astype(np.uint8)
        img[..., 2] = (40 * demo + 17 * seed) % 256
    else:  # a wrist view: diagonal stripes whose phase moves with time
        img[..., 0] = ((rows + 2 * cols + 8 * t) % 256).astype(np.uint8)
        img[..., 1] = 255 - rows.astype(np.uint8)
        img[..., 2] = (90 + 30 * demo + 11 * seed) % 256
    side = max(1, min(h, w) // 4)
    frac = t / max(1, length - 1)
    r0, c0 = int(frac * (h - side)), int((1 - frac) * (w - side) * 0.5)
    img[r0 : r0 + side, c0 : c0 + side] = (255, 255, 0) if camera == "agentview" else (0, 0, 255)
    return img


def _steps(x: np.ndarray) -> np.ndarray:
    """Per-frame change (the last repeats), defined for any length including 0 and 1."""
    return np.diff(x, axis=0, append=x[-1:]) if len(x) else x


def synthetic_demo(
    length: int, demo: int, image_size: tuple[int, int], with_images: bool, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(actions, obs, states) of one smooth pick-like motion; values differ per demo and seed."""
    rng = np.random.default_rng((seed, demo))
    t = np.linspace(0.0, 1.0, length)[:, None]
    start = np.array([-0.1, 0.05, 1.05]) + rng.uniform(-0.05, 0.05, 3)
    goal = start + np.array([0.15, -0.1, -0.12]) + rng.uniform(-0.02, 0.02, 3)
    ee_pos = start + t * (goal - start)
    ee_ori = np.array([2.9, 0.1, -0.05]) + 0.1 * np.sin(2 * np.pi * t + rng.uniform(0, 1, 3))
    closed = (t[:, 0] > 0.5).astype(np.float64)
    gripper = np.stack([0.04 * (1 - closed) + 0.001, -0.04 * (1 - closed) - 0.001], axis=1)
    home = np.array([0.0, -0.16, 0.0, -2.44, 0.0, 2.23, 0.79])
    joints = home + 0.2 * np.sin(np.pi * t * np.arange(1, 8) / 4 + demo)
    actions = np.zeros((length, 7))
    actions[:, :3] = np.clip(_steps(ee_pos) * 40, -1, 1)
    actions[:, 3:6] = np.clip(_steps(ee_ori) * 10, -1, 1)
    actions[:, 6] = 2 * closed - 1
    obs = {"gripper_states": gripper, "joint_states": joints, "ee_pos": ee_pos, "ee_ori": ee_ori}
    if with_images:
        for cam in ("agentview", "eye_in_hand"):
            frames = [synthetic_image(cam, i, length, demo, image_size, seed) for i in range(length)]
            obs[f"{cam}_rgb"] = np.stack(frames) if frames else np.zeros((0, *image_size, 3), np.uint8)
    states = np.concatenate([t, joints, gripper, ee_pos, rng.normal(0, 0.01, (length, STATE_DIM - 13))], axis=1)
    return actions, obs, states


def write_libero_hdf5(
    path: str | Path,
    language: str | None,
    num_demos: int,
    demo_len: int | Sequence[int],
    image_size: tuple[int, int] = (128, 128),
    with_images: bool = True,
    seed: int = 0,
    **writer_kw: Any,
) -> Path:
    """Write a LIBERO task file of `num_demos` synthetic demos (`demo_len` frames, or one length each)."""
    lengths = [demo_len] * num_demos if isinstance(demo_len, int) else list(demo_len)
    if len(lengths) != num_demos:
        raise ValueError(f"{len(lengths)} demo lengths for {num_demos} demos")
    with LiberoHdf5Writer(path, language, **writer_kw) as writer:
        for i, n in enumerate(lengths):
            actions, obs, states = synthetic_demo(n, i, image_size, with_images, seed)
            writer.add_demo(actions, obs, states)
    return Path(path)
