"""Small synthetic stores for tests that need a store but not a particular source format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla.datasets.declare import preset
from vla.datasets.spec import CameraSpec, SourceInfo, StoreSpec
from vla.datasets.store import Episode, Store, StoreWriter


def small_spec(
    image: int = 16,
    cameras: tuple[str, ...] = ("front",),
    action: str = "eef_delta_axis_angle_gripper",
    state: str = "joint3_gripper",
    embodiment: str = "toy",
    fps: float = 10,
) -> StoreSpec:
    return StoreSpec(
        fps=fps,
        embodiment=embodiment,
        robot_type="toy_arm",
        action=preset(action),
        state=preset(state),
        cameras=tuple(CameraSpec(c, image, image) for c in cameras),
        source=SourceInfo("synthetic"),
    )


def toy_episode(i: int, length: int, spec: StoreSpec, rng: np.random.Generator) -> Episode:
    frames = {
        "action": rng.normal(size=(length, spec.action_dim)).astype(np.float32),
        "observation.state": rng.normal(size=(length, spec.state_dim)).astype(np.float32),
    }
    for cam in spec.cameras:
        frames[cam.key] = rng.integers(0, 256, (length, cam.height, cam.width, 3), dtype=np.uint8)
    return Episode(frames=frames, task=f"task {i % 2}", source_id=f"ep{i}")


def write_toy_store(path: Path, lengths: list[int], seed: int = 0, **spec_kw) -> Store:
    spec = small_spec(**spec_kw)
    rng = np.random.default_rng(seed)
    w = StoreWriter(path, spec)
    for i, n in enumerate(lengths):
        w.add_episode(toy_episode(i, n, spec, rng))
    return w.finalize()
