"""The main job at toy scale in the real simulator: every stage runs and leaves a valid artifact."""

from __future__ import annotations

import json

import pytest

from vla.datasets.store import Store
from vla.datasets.validate import validate_store
from vla.demo import DemoConfig, run_demo
from vla.policies.policy import Policy


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    cfg = DemoConfig(
        out=tmp_path / "demo",
        tasks=(1,),
        demos_per_task=2,
        demo_init_states=(0, 1, 2, 3),
        eval_init_states=(40, 41),
        train_steps=6,
        batch_size=8,
        policy_overrides={"width": 32, "n_heads": 2, "n_layers": 1, "num_sampling_steps": 2},
        eval_max_steps=15,
        videos=1,
        progress=False,
    )
    res = run_demo(cfg)
    assert [r[0] for r in res.rows] == ["scripted demos", "convert", "train", "evaluate"]
    store = Store(res.artifacts["store"])
    assert store.num_episodes == 2 and store.tasks == ["pick up the cream cheese and place it in the basket"]
    assert validate_store(store.path) == []
    policy = Policy.from_pretrained(res.artifacts["checkpoint"])
    assert policy.config.state_dim == 8 and policy.config.action_dim == 7 and policy.config.camera_keys == ()
    eval_dir = tmp_path / "demo" / "eval"
    episodes = [json.loads(line) for line in (eval_dir / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["init_state_id"] for e in episodes) == [40, 41]
    assert all(e["steps"] <= 15 and e["policy_calls"] >= 1 for e in episodes)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["figures"]["episodes"] == 2 and 0.0 <= summary["figures"]["success rate"] <= 1.0
    assert len(list((eval_dir / "videos").glob("*.mp4"))) == 1
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| evaluate |" in report and "held-out" in report and (tmp_path / "demo" / "train" / "loss.png").is_file()
    # A second run reuses every artifact instead of redoing the work.
    again = run_demo(cfg)
    assert again.artifacts == res.artifacts and again.rows[2][1].startswith("reused")
