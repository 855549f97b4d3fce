"""`vla train` on a converted CALVIN store: language windows or play data, two cameras of different
sizes, relative actions, and the MoDE CALVIN preset (5 sampling steps)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.train.helpers import TINY
from vla.datasets.convert.base import convert
from vla.datasets.sampler import WindowConfig, WindowDataset
from vla.policies.mode import MoDEConfig
from vla.policies.policy import Policy
from vla.testing.calvin_data import write_calvin_split
from vla.train import TrainConfig, train
from vla.train.config import TrainError

SEGMENTS = [(0, 29), (40, 69)]
ANNOTATIONS = [(3, 14, "open the drawer", "open_drawer"), (45, 60, "lift the red block", "lift_red_block_table")]


@pytest.fixture(scope="module")
def calvin_store(tmp_path_factory):
    split = write_calvin_split(tmp_path_factory.mktemp("calvin") / "training", SEGMENTS, ANNOTATIONS,
                               image_sizes=(40, 24))  # fmt: skip
    return convert("calvin", split.parent, tmp_path_factory.mktemp("out") / "calvin.zarr", progress=False).store


def test_calvin_preset_is_the_papers_recipe():
    paper = MoDEConfig.from_preset("calvin")
    assert paper.num_sampling_steps == 5 and paper.chunk_size == paper.n_action_steps == 10
    assert paper.width == MoDEConfig().width  # paper scale
    small = MoDEConfig.from_preset("calvin_cpu")
    assert small.num_sampling_steps == 5 and small.width == MoDEConfig.from_preset("cpu").width


@pytest.mark.parametrize("language", ["annotations", "all"])
def test_trains_on_language_windows_or_play_data_with_both_cameras(calvin_store, tmp_path, language):
    out = tmp_path / "run"
    tc = TrainConfig(data=(str(calvin_store.path),), out=str(out), steps=3, batch_size=4, warmup_steps=1,
                     progress=False, language=language)  # fmt: skip
    result = train(
        "mode", tc, preset="calvin_cpu", overrides={k: v for k, v in TINY.items() if k != "num_sampling_steps"}
    )
    assert result.steps == 3
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["camera_keys"] == ["observation.images.gripper", "observation.images.static"]
    assert config["num_sampling_steps"] == 5 and config["action_dim"] == 7 and config["state_dim"] == 15
    policy = Policy.from_pretrained(out / "last")
    window = WindowConfig(n_obs=1, horizons=(10,), obs_keys=(*policy.config.camera_keys, "observation.state"),
                          language=language)  # fmt: skip
    ds = WindowDataset(calvin_store, window)
    if language == "annotations":  # only frames inside the two language windows anchor training windows
        assert len(ds) == (14 - 3 + 1) + (60 - 45 + 1)
        assert {ds[i]["task"] for i in range(len(ds))} == {"open the drawer", "lift the red block"}
    else:
        assert len(ds) == calvin_store.num_frames and "" in {ds[i]["task"] for i in range(len(ds))}
    item = ds[0]
    batch = {k: (v.unsqueeze(0) if isinstance(v, torch.Tensor) else [v]) for k, v in item.items()
             if k in (*policy.config.camera_keys, "observation.state", "task")}  # fmt: skip
    assert batch["observation.images.static"].shape[-1] != batch["observation.images.gripper"].shape[-1]
    chunk = policy.predict_chunk(batch)
    assert chunk.shape == (1, 10, 7) and torch.isfinite(chunk).all()


def test_unknown_language_mode_is_refused(calvin_store, tmp_path):
    with pytest.raises(TrainError, match="language 'lang' not in"):
        TrainConfig(data=(str(calvin_store.path),), out=str(tmp_path), language="lang")
