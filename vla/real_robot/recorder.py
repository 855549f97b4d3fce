"""Writes executed episodes (observations, the commands actually sent, language) into a store the trainer reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla.datasets.spec import CameraSpec, DimSpec, SourceInfo, StoreSpec
from vla.datasets.store import Episode, StoreWriter
from vla.keys import STATE_KEY, TASK_KEY
from vla.real_robot.arm import ArmSpec
from vla.real_robot.workers import Observation


def store_spec(arm: ArmSpec, fps: float, cameras: dict[str, tuple[int, int]], source: str = "robot") -> StoreSpec:
    """`cameras`: name -> (height, width) of the frames as recorded."""
    dims = tuple(
        DimSpec(j.name, kind="gripper" if "gripper" in j.name else "joint_pos", unit=j.unit, low=j.low, high=j.high)
        for j in arm.joints
    )
    return StoreSpec(
        fps=fps,
        embodiment=arm.name,
        robot_type=arm.model or arm.name,
        action=dims,
        state=dims,
        cameras=tuple(CameraSpec(name, h, w) for name, (h, w) in cameras.items()),
        source=SourceInfo(format="robot", details={"mode": source, "arm": arm.name}),
    )


class EpisodeRecorder:
    """Collects ticks; `end_episode()` commits one episode. Ticks where nothing was sent are not recorded."""

    def __init__(self, path: str | Path, spec: StoreSpec, overwrite: bool = False):
        self.spec = spec
        self.writer = StoreWriter(path, spec, resume=False, overwrite=overwrite)
        self._frames: dict[str, list[np.ndarray]] = {}
        self._task = ""
        self.episodes = 0

    def add(self, obs: Observation | None, command: np.ndarray | None) -> None:
        if obs is None or command is None:
            return
        self._task = str(obs.get(TASK_KEY, ""))
        self._frames.setdefault(STATE_KEY, []).append(np.asarray(obs[STATE_KEY], dtype=np.float32))
        self._frames.setdefault("action", []).append(np.asarray(command, dtype=np.float32))
        for cam in self.spec.cameras:
            self._frames.setdefault(cam.key, []).append(np.asarray(obs[cam.key], dtype=np.uint8))

    def on_tick(self, tick: int, obs: Observation | None, command: np.ndarray | None) -> None:
        self.add(obs, command)

    def end_episode(self) -> bool:
        """Commit what was collected (False when the episode is empty)."""
        frames, self._frames = self._frames, {}
        if not frames.get("action"):
            return False
        self.writer.add_episode(
            Episode(frames={k: np.stack(v) for k, v in frames.items()}, task=self._task or None, source_id="robot")
        )
        self.episodes += 1
        return True

    def finalize(self) -> Path:
        self.end_episode()
        self.writer.finalize()
        return self.writer.path
