"""The main job at toy scale: every stage runs and leaves a valid artifact."""

from __future__ import annotations

import json

from vla.datasets.store import Store
from vla.datasets.validate import validate_store
from vla.demo import DemoConfig, run_demo


def test_demo_pipeline_end_to_end(tmp_path):
    cfg = DemoConfig(out=tmp_path / "demo", demos_per_task=2, demo_len=20, lerobot_episodes=2,
                     lerobot_episode_len=15, image_size=32, sample_batches=2, batch_size=4)
    res = run_demo(cfg)
    assert [r[0] for r in res.rows] == ["source data", "convert", "validate", "sample mixture"]
    libero = Store(res.artifacts["libero store"])
    assert libero.num_episodes == 4 and len(libero.tasks) == 2
    assert Store(res.artifacts["lerobot store"]).num_episodes == 2
    for key in ("libero store", "lerobot store"):
        assert validate_store(res.artifacts[key]) == []
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["figures"]["windows per embodiment"] and sum(summary["figures"]["windows per embodiment"]) == 8
    assert "| convert |" in (cfg.out / "report.md").read_text()
    # A second run reuses every artifact instead of redoing the work.
    again = run_demo(cfg)
    assert again.artifacts == res.artifacts
