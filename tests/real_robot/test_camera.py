from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vla.real_robot.cameras import CameraError, OpenCVCamera, parse_camera_arg
from vla.real_robot.clock import FakeClock


def _video(path: Path, n: int = 12, fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 24))
    for i in range(n):
        writer.write(np.full((24, 32, 3), i * 20, dtype=np.uint8))  # frame i has brightness 20 i
    writer.release()
    return path


def test_video_file_plays_at_the_camera_rate(tmp_path: Path) -> None:
    clock = FakeClock()
    cam = OpenCVCamera("front", str(_video(tmp_path / "v.avi")), fps=10.0, clock=clock)
    assert cam.key == "observation.images.front" and cam.frame_size() == (24, 32)
    seen = []
    for _ in range(5):
        frame = cam.read()
        assert frame is not None and frame.shape == (24, 32, 3) and frame.dtype == np.uint8
        seen.append(round(float(frame.mean()) / 20))
        clock.advance(0.05)  # reading at 20 Hz from a 10 Hz camera: each frame is seen twice
    assert seen == [0, 0, 1, 1, 2]
    clock.advance(0.5)  # behind: frames in between are skipped, not queued
    assert round(float(cam.read().mean()) / 20) == 7
    clock.advance(10.0)
    assert cam.read() is None  # the file ended
    cam.close()


def test_resize_and_bad_sources(tmp_path: Path) -> None:
    cam = OpenCVCamera("w", str(_video(tmp_path / "v.avi")), size=(16, 16), clock=FakeClock())
    assert cam.read().shape == (16, 16, 3)
    with pytest.raises(CameraError, match="no such video"):
        OpenCVCamera("x", str(tmp_path / "none.avi"))
    assert parse_camera_arg("front=0") == ("front", 0)
    assert parse_camera_arg("wrist=videos/a.mp4") == ("wrist", "videos/a.mp4")
    with pytest.raises(CameraError):
        parse_camera_arg("front")
