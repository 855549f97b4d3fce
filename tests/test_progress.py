"""Progress in non-interactive logs: periodic plain lines, never carriage-return streams."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from vla.progress import LineProgress, progress_bar
from vla.testing.libero_hdf5 import write_libero_hdf5

REPO = Path(__file__).resolve().parents[1]


def test_lines_every_interval_and_at_the_end():
    out = io.StringIO()
    bar = LineProgress(10, "train", unit="step", every=0.0, file=out)
    with bar:
        for _ in range(3):
            bar.update(1)
            bar.set_postfix(loss="0.5000")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "\r" not in out.getvalue()  # one per update (interval 0), one at close
    assert lines[-1].startswith("train: 3/10 (30%)") and "step/s" in lines[-1] and "loss=0.5000" in lines[-1]
    quiet = io.StringIO()
    slow = LineProgress(10, "x", every=3600.0, file=quiet)
    slow.update(5)
    assert quiet.getvalue() == ""  # nothing between intervals
    slow.close()
    slow.close()
    assert quiet.getvalue().splitlines() == [quiet.getvalue().splitlines()[0]] and "5/10" in quiet.getvalue()


def test_not_a_terminal_gets_lines():
    assert isinstance(progress_bar(5, "x"), LineProgress)  # pytest's stderr is not a terminal


def test_a_conversion_logged_to_a_pipe(tmp_path):
    src = write_libero_hdf5(tmp_path / "open_the_drawer_demo.hdf5", "open the drawer", 3, [4, 5, 3], (8, 8))
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLA_PROGRESS_SECONDS": "0"}
    cmd = [sys.executable, "-m", "vla", "data", "convert", "--from", "libero", str(src), str(tmp_path / "s.zarr")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\r" not in done.stderr
    assert "convert libero: 3/3 (100%)" in done.stderr and "ep/s" in done.stderr
