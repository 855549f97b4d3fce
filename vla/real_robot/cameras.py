"""Cameras through OpenCV's VideoCapture. A video file plays through the same path at the camera's rate,
so a recorded stream stands in for a live camera in tests and dry runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from vla.errors import VlaError
from vla.keys import camera_key
from vla.real_robot.clock import Clock, RealClock

log = logging.getLogger("vla.real_robot.cameras")


class CameraError(VlaError):
    pass


class Camera(Protocol):
    name: str

    @property
    def key(self) -> str: ...
    def read(self) -> np.ndarray | None: ...
    def close(self) -> None: ...


def parse_camera_arg(arg: str) -> tuple[str, int | str]:
    """`NAME=INDEX_OR_FILE` -> (name, device index or file path)."""
    name, sep, src = arg.partition("=")
    if not sep or not name or not src:
        raise CameraError(f"--camera takes NAME=INDEX_OR_FILE, got {arg!r}")
    return name, int(src) if src.isdigit() else src


class OpenCVCamera:
    """Frames are uint8 RGB HWC (the store's convention), resized to (height, width) when given."""

    def __init__(
        self,
        name: str,
        source: int | str,
        fps: float = 30.0,
        size: tuple[int, int] | None = None,
        clock: Clock | None = None,
        loop_file: bool = False,
    ):
        self.name, self.source, self.fps, self.size = name, source, fps, size
        self.clock = clock or RealClock()
        self.is_file = isinstance(source, str)
        self.loop_file = loop_file
        if self.is_file and not Path(source).exists():
            raise CameraError(f"camera {name!r}: no such video file {source}")
        self.cap = cv2.VideoCapture(source)
        if not self.cap.isOpened():
            raise CameraError(f"camera {name!r}: OpenCV cannot open {source!r}")
        if not self.is_file:
            self.cap.set(cv2.CAP_PROP_FPS, fps)
        self._t0: float | None = None
        self._index = -1  # index of the last decoded frame (files)
        self._frame: np.ndarray | None = None
        self.frames_read = 0

    @property
    def key(self) -> str:
        return camera_key(self.name)

    def frame_size(self) -> tuple[int, int] | None:
        """(height, width) of the frames `read` returns, without consuming one."""
        if self.size is not None:
            return self.size
        h, w = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        return (h, w) if h > 0 and w > 0 else None

    def _convert(self, bgr: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.size is not None and rgb.shape[:2] != self.size:
            rgb = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        return rgb

    def _grab(self) -> bool:
        ok, bgr = self.cap.read()
        if not ok and self.is_file and self.loop_file:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self.cap.read()
        if ok:
            self._frame = self._convert(bgr)
            self.frames_read += 1
        return ok

    def read(self) -> np.ndarray | None:
        if not self.is_file:
            return self._frame if self._grab() else None
        # A file plays in real (or fake) time: the frame shown is the one due now, skipping if we are behind.
        now = self.clock.now()
        if self._t0 is None:
            self._t0 = now
        due = int((now - self._t0) * self.fps + 1e-9)
        while self._index < due:
            if not self._grab():
                return None if self._index < 0 or not self.loop_file else self._frame
            self._index += 1
        return self._frame

    def close(self) -> None:
        self.cap.release()
