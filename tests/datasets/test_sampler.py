from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.datasets.store_helpers import small_spec, toy_episode, write_toy_store
from vla.datasets import slots as slotlib
from vla.datasets.sampler import (
    MixtureDataset,
    MixtureSampler,
    SamplerError,
    WindowConfig,
    WindowDataset,
    horizon_masks,
)
from vla.datasets.store import StoreWriter


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_toy_store(tmp_path_factory.mktemp("s") / "a.zarr", [6, 9, 4], seed=3)


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    # Another robot: joint-space actions of a different size, another fps, bigger images.
    return write_toy_store(
        tmp_path_factory.mktemp("s") / "b.zarr",
        [7, 5],
        seed=4,
        action="joint6_gripper",
        state="joint6_gripper",
        embodiment="arm_b",
        fps=30,
        image=24,
    )


def test_window_matches_direct_reads_with_padding(store):
    ds = WindowDataset(store, WindowConfig(n_obs=3, horizons=(4,)))
    assert len(ds) == store.num_frames
    action = store.array("action")[:]
    state = store.array("observation.state")[:]
    images = store.array("observation.images.front")[:]
    ends = store.episode_ends
    starts = store.episode_starts
    for t in range(store.num_frames):
        w = ds[t]
        e = int(np.searchsorted(ends, t, side="right"))
        s, end = int(starts[e]), int(ends[e])
        obs = [max(s, i) for i in range(t - 2, t + 1)]
        act = [min(end - 1, i) for i in range(t, t + 4)]
        np.testing.assert_array_equal(w["observation.state"].numpy(), state[obs])
        np.testing.assert_array_equal(w["observation.images.front"].numpy(), images[obs].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(w["action"].numpy(), action[act])
        assert w["observation_is_pad"].tolist() == [i < s for i in range(t - 2, t + 1)]
        assert w["action_is_pad"].tolist() == [i >= end for i in range(t, t + 4)]
        assert int(w["episode_index"]) == e and int(w["frame_index"]) == t - s
        assert w["task"] == store.task_of(e)
    assert ds[0]["observation.images.front"].dtype == torch.uint8


def test_horizon_masks_are_prefixes():
    pad = torch.tensor([False, False, False, True, True])
    masks = horizon_masks((2, 5), pad)
    assert masks[2].tolist() == [True, True, False, False, False]
    assert masks[5].tolist() == [True, True, True, False, False]


def _annotated_store(path):
    spec = small_spec()
    rng = np.random.default_rng(0)
    w = StoreWriter(path, spec)
    ep = toy_episode(0, 10, spec, rng)
    ep.task = None
    ep.annotations = [(2, 5, "open the drawer"), (7, 9, "lift the block")]
    w.add_episode(ep)
    w.add_episode(toy_episode(1, 4, spec, rng))
    return w.finalize()


def test_language_modes(tmp_path):
    store = _annotated_store(tmp_path / "ann.zarr")
    every = WindowDataset(store, WindowConfig(language="all"))
    texts = [every[i]["task"] for i in range(len(every))]
    assert texts[:10] == [
        "",
        "",
        "open the drawer",
        "open the drawer",
        "open the drawer",
        "",
        "",
        "lift the block",
        "lift the block",
        "",
    ]
    assert texts[10:] == ["task 1"] * 4
    only = WindowDataset(store, WindowConfig(language="annotations"))
    assert len(only) == 5
    assert [int(only[i]["index"]) for i in range(5)] == [2, 3, 4, 7, 8]
    assert [only[i]["task"] for i in range(5)] == ["open the drawer"] * 3 + ["lift the block"] * 2


def test_missing_key_is_a_clear_error(store):
    with pytest.raises(SamplerError, match=r"observation\.images\.wrist"):
        WindowDataset(store, WindowConfig(obs_keys=("observation.images.wrist",)))


def test_mixture_needs_slots_for_different_action_sizes(store, other_store):
    parts = [WindowDataset(store), WindowDataset(other_store)]
    with pytest.raises(SamplerError, match="slots=True"):
        MixtureDataset(parts, image_size=(16, 16))
    with pytest.raises(SamplerError, match="image_size"):
        MixtureDataset(parts, slots=True)


def test_mixture_slots_masks_and_native_round_trip(store, other_store):
    parts = [WindowDataset(store, WindowConfig(horizons=(3,))), WindowDataset(other_store, WindowConfig(horizons=(3,)))]
    mix = MixtureDataset(parts, slots=True, image_size=(16, 16))
    assert mix.embodiments == ["arm_b", "toy"]
    for i in (0, len(parts[0]) + 2):
        k, local = mix.locate(i)
        item = mix[i]
        d = parts[k]
        assert item["action"].shape == (3, slotlib.NUM_SLOTS)
        assert item["observation.images.front"].shape == (1, 3, 16, 16)
        assert int(item["embodiment_id"]) == mix.embodiments.index(d.embodiment)
        idx = d.store.action_slots
        assert item["action_slot_mask"].numpy().tolist() == slotlib.slot_mask(idx).tolist()
        native = d.raw(local)["action"]
        np.testing.assert_array_equal(slotlib.from_slots(item["action"].numpy(), idx), native)
        assert torch.all(item["action"][:, ~item["action_slot_mask"]] == 0)
    batch = next(iter(DataLoader(mix, batch_size=8, shuffle=True)))
    assert batch["action"].shape == (8, 3, slotlib.NUM_SLOTS)


def test_sampler_weights_and_determinism(store, other_store):
    mix = MixtureDataset([WindowDataset(store), WindowDataset(other_store)], slots=True, image_size=(16, 16))
    sampler = MixtureSampler(mix, weights=[0.8, 0.2], num_samples=100, seed=1)
    counts = Counter(mix.locate(i)[0] for i in sampler)
    assert counts == {0: 80, 1: 20}
    assert list(sampler) == list(MixtureSampler(mix, weights=[0.8, 0.2], num_samples=100, seed=1))
    assert list(sampler) != list(MixtureSampler(mix, weights=[0.8, 0.2], num_samples=100, seed=2))
    sampler.set_epoch(1)
    assert list(sampler) != list(MixtureSampler(mix, weights=[0.8, 0.2], num_samples=100, seed=1))
    # Without replacement while possible: store 0 has 19 windows, 80 draws = 4 full passes + 4.
    local = Counter(mix.locate(i)[1] for i in sampler if mix.locate(i)[0] == 0)
    assert set(local.values()) <= {4, 5} and len(local) == 19


def test_distributed_ranks_are_disjoint_and_cover_the_epoch(store, other_store):
    mix = MixtureDataset([WindowDataset(store), WindowDataset(other_store)], slots=True, image_size=(16, 16))
    ranks = [MixtureSampler(mix, num_samples=30, seed=5, rank=r, world_size=3) for r in range(3)]
    got = sorted(i for s in ranks for i in s)
    assert got == sorted(ranks[0].epoch_indices().tolist())
    assert all(len(list(s)) == 10 for s in ranks)


def test_workers_yield_each_window_exactly_once(store, other_store):
    mix = MixtureDataset([WindowDataset(store), WindowDataset(other_store)], slots=True, image_size=(16, 16))
    sampler = MixtureSampler(mix, num_samples=len(mix), seed=7)
    expected = Counter(list(sampler))
    loader = DataLoader(mix, batch_size=4, sampler=sampler, num_workers=2)
    seen = Counter()
    for batch in loader:
        seen.update((int(s), int(i)) for s, i in zip(batch["source_index"], batch["index"], strict=True))
    expected_ids = Counter()
    for g, n in expected.items():
        k, local = mix.locate(g)
        expected_ids[(k, int(mix.datasets[k].raw(local)["index"]))] += n
    assert seen == expected_ids
    assert sum(seen.values()) == len(mix) and max(seen.values()) == 1


def test_bad_weights(store):
    mix = MixtureDataset([WindowDataset(store)])
    with pytest.raises(SamplerError, match="weight"):
        MixtureSampler(mix, weights=[1.0, 2.0])
