"""Report outputs without a simulator: the table, Markdown + PNG, and which videos are kept."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
from rich.console import Console

from tests.eval.test_results import result
from vla.eval.report import VideoKeeper, summary_table, write_report, write_video

SUMMARY = {
    "benchmark": "libero",
    "preset": "openpi",
    "episodes": 4,
    "success_rate": 0.5,
    "wall_s": 3.0,
    "policy": {"source": "random"},
    "tasks": [
        {
            "task": "s/0",
            "name": "pick_a",
            "trials": 2,
            "successes": 2,
            "success_rate": 1.0,
            "mean_steps": 5,
            "errors": 0,
        },
        {
            "task": "s/1",
            "name": "pick_b",
            "trials": 2,
            "successes": 0,
            "success_rate": 0.0,
            "mean_steps": 9,
            "errors": 1,
        },
    ],
    "groups": {"s": {"trials": 4, "successes": 2, "success_rate": 0.5, "mean_steps": 7, "errors": 1}},
    "settings": {"preset": "openpi", "max_steps": 12},
    "videos": ["videos/failure_s-1-0.mp4"],
}


def test_table_and_markdown_report(tmp_path):
    console = Console(record=True, width=120)
    console.print(summary_table(SUMMARY))
    text = console.export_text()
    assert "pick_a" in text and "100.0%" in text and "50.0%" in text
    report = write_report(tmp_path, SUMMARY).read_text()
    assert "| s/1 | pick_b | 2 | 0 | 0.0% | 9 |" in report
    assert "| **s** | all tasks | 4 | 2 | **50.0%** | 7 |" in report
    assert "![success rate per task](success.png)" in report and "`max_steps`: `12`" in report
    assert "videos/failure_s-1-0.mp4" in report
    png = (tmp_path / "success.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_video_round_trip(tmp_path):
    frames = np.zeros((6, 32, 48, 3), np.uint8)
    frames[:, :, :24, 0] = 255  # left half red: the frame must come back in its orientation
    path = write_video(tmp_path / "v.mp4", frames, fps=20)
    back = iio.imread(path)
    assert back.shape == (6, 32, 48, 3)
    assert back[:, :, :20, 0].mean() > 200 and back[:, :, 28:, 0].mean() < 50


def test_video_keeper_prefers_failures(tmp_path):
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    keeper = VideoKeeper(tmp_path / "videos", limit=2, fps=20)
    assert keeper.offer(result(0, True), frames) and keeper.offer(result(1, True), frames)
    assert not keeper.wants(success=True) and keeper.wants()
    assert keeper.offer(result(2, False), frames)  # evicts the newest success
    assert keeper.offer(result(3, False), frames)  # evicts the last success
    assert keeper.offer(result(4, False), frames) is None  # full of failures
    assert not keeper.wants()
    assert keeper.files() == ["videos/failure_s-1-2.mp4", "videos/failure_s-1-3.mp4"]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["failure_s-1-2.mp4", "failure_s-1-3.mp4"]
    resumed = VideoKeeper(tmp_path / "videos", limit=2, fps=20)
    assert resumed.files() == keeper.files() and not resumed.wants()
    assert VideoKeeper(tmp_path / "none", limit=0, fps=20).offer(result(5, False), frames) is None
