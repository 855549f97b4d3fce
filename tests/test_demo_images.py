"""`vla demo --images` at toy scale: cameras rendered from the saved demo states, trained on, evaluated."""

from __future__ import annotations

import h5py
import pytest

from vla.datasets.store import Store
from vla.demo import DemoConfig, run_demo, stages
from vla.policies.policy import Policy


def test_images_add_a_render_stage_and_state_only_keeps_its_stages(tmp_path):
    plain = [name for name, _ in stages(DemoConfig(out=tmp_path))]
    assert plain == ["scripted demos", "convert", "train", "evaluate"]
    assert [name for name, _ in stages(DemoConfig(out=tmp_path, images=True))] == [
        "scripted demos",
        "render cameras",
        "convert",
        "train",
        "evaluate",
    ]


@pytest.mark.slow
def test_image_demo_end_to_end(tmp_path):
    cfg = DemoConfig(
        out=tmp_path / "demo",
        tasks=(1,),
        demos_per_task=1,
        demo_init_states=(0, 1),
        eval_init_states=(40,),
        images=True,
        image_size=32,
        train_steps=4,
        batch_size=4,
        policy_overrides={"width": 32, "n_heads": 2, "n_layers": 1, "num_sampling_steps": 2, "image_size": (32, 32)},
        eval_max_steps=6,
        videos=0,
        progress=False,
    )
    res = run_demo(cfg)
    assert [r[0] for r in res.rows] == ["scripted demos", "render cameras", "convert", "train", "evaluate"]
    assert set(res.figures["stage cpu seconds"]) == {r[0] for r in res.rows}
    (state_only,) = (tmp_path / "demo" / "source" / "libero").glob("*.hdf5")
    with h5py.File(state_only) as f:  # collected without cameras; the cameras were drawn afterwards
        assert not any(k.endswith("_rgb") for k in f["data/demo_0/obs"])
    store = Store(res.artifacts["store"])
    assert store.camera_keys == ["observation.images.agentview", "observation.images.eye_in_hand"]
    assert store.keys["observation.images.agentview"].shape == (32, 32, 3)
    policy = Policy.from_pretrained(res.artifacts["checkpoint"])
    assert len(policy.config.camera_keys) == 2 and policy.config.state_dim == 8
    assert res.figures["episodes"] == 1
    again = run_demo(cfg)  # resumable: every stage reuses what the first run left
    assert again.rows[1][1].endswith("(1 reused), 1 process(es)") and again.rows[3][1].startswith("reused")
