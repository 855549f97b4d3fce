"""Training windows, store mixtures and the mixture sampler, checked against direct store reads."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vla.datasets import slots as slotlib
from vla.datasets.declare import preset
from vla.datasets.sampler import (
    FrameReader,
    MixtureDataset,
    MixtureSampler,
    SamplerError,
    WindowConfig,
    WindowDataset,
    horizon_masks,
)
from vla.datasets.spec import CameraSpec, SourceInfo, StoreSpec
from vla.datasets.store import IMAGE_SHARD_FRAMES, Episode, Store, StoreWriter
from vla.errors import DataError


def make_store(
    path: Path,
    lengths: list[int],
    *,
    action: str = "eef_delta_axis_angle_gripper",
    state: str | None = "joint3_gripper",
    cameras: dict[str, int] | None = None,
    embodiment: str = "toy",
    fps: float = 10,
    tasks: list[str | None] | None = None,
    annotations: list[list[tuple[int, int, str]]] | None = None,
    zero_frames: tuple[int, int] | None = None,
    seed: int = 0,
) -> Store:
    """A store whose action[:, 0] / state[:, 0] hold the global frame index and [:, 1] the episode,
    so a window's rows say where they came from. `zero_frames` (global [a, b)) makes black frames."""
    cameras = {"front": 8} if cameras is None else cameras
    spec = StoreSpec(
        fps=fps,
        embodiment=embodiment,
        robot_type=embodiment,
        action=preset(action),
        state=preset(state) if state else (),
        cameras=tuple(CameraSpec(c, s, s) for c, s in cameras.items()),
        source=SourceInfo("synthetic"),
    )
    rng = np.random.default_rng(seed)
    writer = StoreWriter(path, spec)
    start = 0
    for e, n in enumerate(lengths):
        glob = np.arange(start, start + n, dtype=np.float32)
        act = rng.normal(size=(n, spec.action_dim)).astype(np.float32)
        act[:, 0], act[:, 1] = glob, e
        frames = {"action": act}
        if state:
            st = rng.normal(size=(n, spec.state_dim)).astype(np.float32)
            st[:, 0], st[:, 1] = glob, e
            frames["observation.state"] = st
        for cam in spec.cameras:
            img = rng.integers(1, 256, (n, cam.height, cam.width, 3), dtype=np.uint8)
            if zero_frames:
                a, b = max(zero_frames[0] - start, 0), max(min(zero_frames[1] - start, n), 0)
                img[a:b] = 0
            frames[cam.key] = img
        task = tasks[e] if tasks else f"task {e % 2}"
        ann = annotations[e] if annotations else []
        writer.add_episode(Episode(frames=frames, task=task, annotations=ann))
        start += n
    return writer.finalize()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    # A one-frame episode pads on both sides at once.
    return make_store(tmp_path_factory.mktemp("s") / "a.zarr", [6, 9, 1, 4], seed=3)


@pytest.fixture(scope="module")
def other_store(tmp_path_factory) -> Store:
    # Another robot: 6-D joint-space actions, no state, 30 fps, a differently named, bigger camera.
    return make_store(
        tmp_path_factory.mktemp("s") / "b.zarr",
        [7, 5],
        action="joint5_gripper",
        state=None,
        cameras={"agentview": 12},
        embodiment="arm_b",
        fps=30,
        seed=4,
    )


# --- windows -----------------------------------------------------------------------------------------
def test_window_matches_direct_reads_with_padding(store):
    ds = WindowDataset(store, WindowConfig(n_obs=3, horizons=(2, 4)))
    assert len(ds) == store.num_frames
    action, state = store.array("action")[:], store.array("observation.state")[:]
    images = store.array("observation.images.front")[:]
    for t in range(store.num_frames):
        w = ds[t]
        e = int(np.searchsorted(store.episode_ends, t, side="right"))
        s, end = int(store.episode_starts[e]), int(store.episode_ends[e])
        obs = [max(s, i) for i in range(t - 2, t + 1)]
        act = [min(end - 1, i) for i in range(t, t + 4)]
        np.testing.assert_array_equal(w["observation.state"].numpy(), state[obs])
        np.testing.assert_array_equal(w["observation.images.front"].numpy(), images[obs].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(w["action"].numpy(), action[act])
        assert w["observation_is_pad"].tolist() == [i < s for i in range(t - 2, t + 1)]
        assert w["action_is_pad"].tolist() == [i >= end for i in range(t, t + 4)]
        assert (w["index"], w["episode_index"], w["frame_index"], w["window_index"]) == (t, e, t - s, t)
        assert w["task"] == store.task_of(e) and w["embodiment"] == "toy"
        # Never another episode's data: column 1 holds the episode number.
        assert set(w["action"][:, 1].tolist()) == {e} and set(w["observation.state"][:, 1].tolist()) == {e}
    w = ds[0]
    assert w["observation.images.front"].dtype == torch.uint8 and w["observation.images.front"].is_contiguous()
    assert w["action"].dtype == torch.float32 and w["observation.state"].dtype == torch.float32
    assert w["action_slot_mask"].tolist() == slotlib.slot_mask(store.action_slots).tolist()
    assert w["state_slot_mask"].tolist() == slotlib.slot_mask(store.state_slots).tolist()
    # The one-frame episode (global frame 15) is padding on both sides.
    single = ds[15]
    assert single["observation_is_pad"].tolist() == [True, True, False]
    assert single["action_is_pad"].tolist() == [False, True, True, True]


def test_batches_collate(store):
    ds = WindowDataset(store, WindowConfig(n_obs=2, horizons=(3,)))
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["observation.images.front"].shape == (5, 2, 3, 8, 8)
    assert batch["observation.state"].shape == (5, 2, 4) and batch["action"].shape == (5, 3, 7)
    assert batch["embodiment_id"].dtype == torch.int64 and batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["action_slot_mask"].shape == (5, slotlib.NUM_SLOTS) and len(batch["task"]) == 5


def test_obs_keys_and_action_key_select_arrays(store):
    ds = WindowDataset(store, WindowConfig(obs_keys=["observation.state"], action_key="observation.state"))
    w = ds[3]
    assert "observation.images.front" not in w and ds.image_keys == ()
    state = store.array("observation.state")[:]
    np.testing.assert_array_equal(w["action"].numpy(), state[[3, 4, 5, 5, 5, 5, 5, 5, 5, 5]])
    assert w["action_slot_mask"].tolist() == slotlib.slot_mask(store.state_slots).tolist()  # the chunk's slots


def test_horizon_masks_are_prefixes():
    pad = torch.tensor([[False, False, False, True, True]])
    masks = horizon_masks((2, 5), pad)
    assert masks[2].tolist() == [[True, True, False, False, False]]
    assert masks[5].tolist() == [[True, True, True, False, False]]


def test_config_is_validated():
    assert WindowConfig(horizons=[3, 6]).horizons == (3, 6) and WindowConfig(horizons=[3, 6]).chunk == 6
    with pytest.raises(SamplerError, match="positive"):
        WindowConfig(n_obs=0)
    with pytest.raises(SamplerError, match="language"):
        WindowConfig(language="sometimes")


def test_missing_key_is_a_clear_error(store):
    with pytest.raises(SamplerError, match=r"observation\.images\.wrist"):
        WindowDataset(store, WindowConfig(obs_keys=("observation.images.wrist",)))
    with pytest.raises(IndexError):
        WindowDataset(store).raw(store.num_frames)


def test_language_modes(tmp_path):
    store = make_store(
        tmp_path / "lang.zarr",
        [6, 5, 3],
        tasks=["stack", None, None],
        # Episode 0: a task and an annotation; episode 1: two overlapping annotations, no task.
        annotations=[[(1, 3, "grasp")], [(0, 2, "open the drawer"), (1, 4, "lift the block")], []],
    )
    texts = {m: [w["task"] for w in WindowDataset(store, WindowConfig(language=m))] for m in ("episode", "all")}
    assert texts["episode"] == ["stack"] * 6 + ["open the drawer"] * 2 + ["lift the block"] * 2 + [""] * 4
    assert texts["all"] == ["stack", "grasp", "grasp", "stack", "stack", "stack", *texts["episode"][6:]]
    assert WindowConfig().language == "episode"
    only = WindowDataset(store, WindowConfig(language="annotations", horizons=(3,)))
    got = [(w["index"], w["task"], w["window_index"]) for w in only]
    assert got == [
        (1, "grasp", 0),
        (2, "grasp", 1),
        (6, "open the drawer", 2),
        (7, "open the drawer", 3),
        (7, "lift the block", 4),  # one window per (annotation, frame): frame 7 twice
        (8, "lift the block", 5),
        (9, "lift the block", 6),
    ]
    # Annotation windows still pad at the episode end and never leave the episode.
    assert only[6]["action_is_pad"].tolist() == [False, False, True]
    assert only[6]["action"][:, 1].tolist() == [1.0, 1.0, 1.0]
    no_ann = make_store(tmp_path / "none.zarr", [3])
    assert len(WindowDataset(no_ann, WindowConfig(language="annotations"))) == 0


def test_pickled_dataset_reads_the_same(store):
    # What a spawned DataLoader worker gets: no open handles, reopened lazily.
    ds = WindowDataset(store, WindowConfig(n_obs=2))
    before = ds[7]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._store is None and clone._readers == {}
    after = clone[7]
    for k, v in before.items():
        assert torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k]


# --- reading frames -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_store(tmp_path_factory) -> Store:
    # Three shards; frames 64..127 all black: the second shard is written all the same (nothing is left out).
    per = IMAGE_SHARD_FRAMES
    return make_store(
        tmp_path_factory.mktemp("s") / "long.zarr", [70, 2 * per + 5 - 70], state=None, zero_frames=(per - 3, 2 * per)
    )


def test_frame_reader_matches_zarr_across_shards_and_empty_chunks(long_store):
    key = "observation.images.front"
    expected = long_store.array(key)[:]
    assert (long_store.path / "data" / key / "c" / "1").exists()  # the all-black shard is written too
    reader = FrameReader(long_store.path, key, (8, 8, 3))
    assert reader.layout is not None  # the fast path is in use
    for start, n in [(0, 1), (60, 10), (62, 70), (127, 3), (len(expected) - 2, 2)]:
        out = np.empty((n, 8, 8, 3), np.uint8)
        reader.read(start, out)
        np.testing.assert_array_equal(out, expected[start : start + n])
    slow = FrameReader(long_store.path, key, (8, 8, 3))
    slow.layout = None  # the generic zarr path gives the same frames
    out = np.empty((10, 8, 8, 3), np.uint8)
    slow.read(60, out)
    np.testing.assert_array_equal(out, expected[60:70])


def test_corrupt_shard_index_is_reported(tmp_path):
    store = make_store(tmp_path / "c.zarr", [5], state=None)
    shard = store.path / "data" / "observation.images.front" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum"):
        WindowDataset(store)[0]


# --- mixtures ----------------------------------------------------------------------------------------
CAMS = [None, {"agentview": "front"}]


def test_mixture_needs_slots_and_sizes_to_agree(store, other_store):
    parts = [WindowDataset(store), WindowDataset(other_store)]
    with pytest.raises(SamplerError, match="slots=True"):
        MixtureDataset(parts, image_size=(8, 8), camera_maps=CAMS)
    with pytest.raises(SamplerError, match="image_size"):
        MixtureDataset(parts, slots=True, camera_maps=CAMS)
    with pytest.raises(SamplerError, match="n_obs"):
        MixtureDataset([WindowDataset(store), WindowDataset(store, WindowConfig(n_obs=2))])
    with pytest.raises(SamplerError, match="camera_maps"):
        MixtureDataset(parts, slots=True, camera_maps=[None])
    # Without a rename the stores share no camera: the mixture emits none.
    assert MixtureDataset(parts, slots=True).image_keys == ()


def test_two_cameras_renamed_to_one_is_an_error(tmp_path):
    s = make_store(tmp_path / "two.zarr", [3], cameras={"a": 8, "b": 8})
    with pytest.raises(SamplerError, match="two cameras"):
        MixtureDataset([WindowDataset(s)], camera_maps=[{"a": "front", "b": "front"}])


def test_mixture_slots_masks_and_native_round_trip(store, other_store):
    cfg = WindowConfig(n_obs=2, horizons=(3,))
    parts = [WindowDataset(store, cfg), WindowDataset(other_store, cfg)]
    mix = MixtureDataset(parts, slots=True, image_size=(10, 10), camera_maps=CAMS)
    assert mix.embodiments == ["arm_b", "toy"] and mix.image_keys == ("observation.images.front",)
    assert len(mix) == len(parts[0]) + len(parts[1])
    for i in range(len(mix)):
        k, local = mix.locate(i)
        d, item = parts[k], mix[i]
        native = d.raw(local)
        assert item["source_index"] == k and item["window_index"] == local
        assert item["embodiment_id"] == mix.embodiments.index(d.embodiment)
        assert item["action"].shape == (3, slotlib.NUM_SLOTS)
        assert item["observation.state"].shape == (2, slotlib.NUM_SLOTS)
        assert item["observation.images.front"].shape == (2, 3, 10, 10)
        assert item["observation.images.front"].dtype == torch.uint8
        assert item["action_slot_mask"].tolist() == slotlib.slot_mask(d.action_slots).tolist()
        np.testing.assert_array_equal(slotlib.from_slots(item["action"].numpy(), d.action_slots), native["action"])
        assert torch.all(item["action"][:, ~item["action_slot_mask"]] == 0)
        if d.state_slots:
            state = slotlib.from_slots(item["observation.state"].numpy(), d.state_slots)
            np.testing.assert_array_equal(state, native["observation.state"])
        else:  # a store without state: zeros and an empty mask
            assert not item["state_slot_mask"].any() and not item["observation.state"].any()
        assert torch.all(item["observation.state"][:, ~item["state_slot_mask"]] == 0)
    # Joint-space and end-effector robots occupy different slots.
    assert mix[0]["action_slot_mask"][:8].sum() == 7 and mix[len(parts[0])]["action_slot_mask"][8:14].all()
    batch = next(iter(DataLoader(mix, batch_size=len(mix))))
    assert batch["action"].shape == (len(mix), 3, slotlib.NUM_SLOTS)
    assert sorted(set(batch["embodiment_id"].tolist())) == [0, 1]


def test_mixture_without_slots_keeps_native_layout(store, tmp_path):
    twin = make_store(tmp_path / "twin.zarr", [4, 4], cameras={"front": 16}, embodiment="toy2", seed=9)
    mix = MixtureDataset([WindowDataset(store), WindowDataset(twin)], image_size=(8, 8))
    item = mix[len(mix) - 1]
    assert item["action"].shape == (10, 7) and item["observation.images.front"].shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(item["action"].numpy(), WindowDataset(twin).raw(7)["action"])


@pytest.fixture(scope="module")
def mixture(store, other_store) -> MixtureDataset:
    parts = [WindowDataset(store), WindowDataset(other_store)]
    return MixtureDataset(parts, slots=True, image_size=(8, 8), camera_maps=CAMS)


def test_sampler_weights_and_determinism(mixture):
    sampler = MixtureSampler(mixture, weights=[0.8, 0.2], num_samples=100, seed=1)
    assert len(sampler) == 100 and sampler.counts().tolist() == [80, 20]
    assert Counter(mixture.locate(i)[0] for i in sampler) == {0: 80, 1: 20}
    again = MixtureSampler(mixture, weights=[0.8, 0.2], num_samples=100, seed=1)
    assert list(sampler) == list(again)
    assert list(sampler) != list(MixtureSampler(mixture, weights=[0.8, 0.2], num_samples=100, seed=2))
    sampler.set_epoch(1)
    assert list(sampler) != list(again) and list(sampler) == list(sampler)
    # Without replacement while possible: store 0 has 20 windows, 80 draws = 4 full passes.
    local = Counter(mixture.locate(i)[1] for i in sampler if mixture.locate(i)[0] == 0)
    assert set(local.values()) == {4} and len(local) == 20
    local = Counter(mixture.locate(i)[1] for i in sampler if mixture.locate(i)[0] == 1)
    assert set(local.values()) == {1, 2} and len(local) == 12  # 20 draws of 12 windows: one pass + 8


def test_weights_hold_within_every_rank_and_batch(mixture):
    # Shuffled quota: each rank's share and each batch follow the weights up to sampling noise.
    ranks = [MixtureSampler(mixture, weights=[1, 3], num_samples=4000, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sampler in ranks:
        stores = np.asarray([mixture.locate(i)[0] for i in sampler])
        assert abs(stores.mean() - 0.75) < 0.03  # 2000 draws: std ~0.01
        batch_means = stores[: 2000 // 50 * 50].reshape(-1, 50).mean(1)
        assert batch_means.min() > 0.5 and batch_means.max() < 0.95


def test_default_weights_follow_sizes_and_bad_weights(mixture):
    assert MixtureSampler(mixture).counts().tolist() == [20, 12]
    with pytest.raises(SamplerError, match="weight"):
        MixtureSampler(mixture, weights=[1.0])
    with pytest.raises(SamplerError, match="weight"):
        MixtureSampler(mixture, weights=[-1.0, 2.0])
    with pytest.raises(SamplerError, match="rank"):
        MixtureSampler(mixture, rank=2, world_size=2)


def test_distributed_ranks_are_disjoint_and_cover_the_epoch(mixture):
    ranks = [MixtureSampler(mixture, num_samples=30, seed=5, rank=r, world_size=3) for r in range(3)]
    assert sorted(i for s in ranks for i in s) == sorted(ranks[0].epoch_indices().tolist())
    assert all(len(list(s)) == len(s) == 10 for s in ranks)
    uneven = [MixtureSampler(mixture, num_samples=31, seed=5, rank=r, world_size=2) for r in range(2)]
    assert [len(list(s)) for s in uneven] == [16, 16]  # wrapped around: equal lengths for DDP


def _epoch(mixture: MixtureDataset, seed: int) -> list[dict]:
    sampler = MixtureSampler(mixture, weights=[1, 1], num_samples=len(mixture), seed=seed)
    loader = DataLoader(mixture, batch_size=4, sampler=sampler, num_workers=2, persistent_workers=False)
    return list(loader)


def test_workers_yield_the_sampler_list_exactly_and_deterministically(mixture):
    sampler = MixtureSampler(mixture, weights=[1, 1], num_samples=len(mixture), seed=7)
    expected = Counter(mixture.locate(i) for i in sampler)
    run = _epoch(mixture, seed=7)
    seen = Counter()
    for batch in run:
        seen.update(zip(batch["source_index"].tolist(), batch["window_index"].tolist(), strict=True))
    assert seen == expected and sum(seen.values()) == len(mixture)
    # Each item is what the main process reads for that window.
    first = mixture[next(iter(sampler))]
    assert torch.equal(run[0]["observation.images.front"][0], first["observation.images.front"])
    assert torch.equal(run[0]["action"][0], first["action"])
    same = _epoch(mixture, seed=7)
    for a, b in zip(run, same, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
    other = _epoch(mixture, seed=8)
    assert any(not torch.equal(a["action"], b["action"]) for a, b in zip(run, other, strict=True))
