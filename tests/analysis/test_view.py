"""`vla data view`: the recording is written and rerun's own reader finds every entity and frame."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets.convert.base import convert
from vla.datasets.store import Store
from vla.testing.calvin_data import write_calvin_split


def read_rows(path: Path) -> Counter:
    """Rows per entity path, read back with rerun's RRD reader."""
    from rerun.chunk import RrdReader

    rows: Counter = Counter()
    for chunk in RrdReader(path).stream():
        rows[chunk.entity_path] += chunk.num_rows
    return rows


SEGMENTS = [(0, 6), (7, 13)]  # two episodes of 7 frames, a language window in each


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    tmp = tmp_path_factory.mktemp("calvin")
    annotations = [(0, 3, "open the drawer", "open_drawer"), (8, 12, "push the block left", "push_left")]
    src = write_calvin_split(tmp / "training", SEGMENTS, annotations, image_sizes=(16, 8))
    return convert("calvin", src, tmp / "calvin.zarr", progress=False).store


def test_every_episode_reads_back(store, tmp_path):
    out = tmp_path / "rec.rrd"
    result = CliRunner().invoke(app, ["data", "view", str(store.path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and not (tmp_path / "rec.rrd.partial").exists()
    rows = read_rows(out)
    n = store.num_frames
    assert n == 14 and store.annotations.shape[0] == 2
    for cam in ("static", "gripper"):
        assert rows[f"/cameras/{cam}"] == n
    action_dims = [d.name for d in store.spec.action]
    assert len(action_dims) == 7
    for name in action_dims:
        assert rows[f"/action/{name}"] == n
    assert sum(v for k, v in rows.items() if k.startswith("/state/")) == n * len(store.spec.state)
    assert sum(v for k, v in rows.items() if k.startswith("/extra/")) > 0  # scene_obs, absolute actions
    assert rows["/language/task"] == 2 and rows["/language/annotations"] == 2
    assert rows["/episode"] == n


def test_one_episode(store, tmp_path):
    out = tmp_path / "one.rrd"
    result = CliRunner().invoke(app, ["data", "view", str(store.path), "--episode", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert rows["/cameras/static"] == 7 and rows["/language/annotations"] == 1
    bad = CliRunner().invoke(app, ["data", "view", str(store.path), "--episode", "5", "--out", str(out)])
    assert bad.exit_code != 0 and "out of range" in bad.output
