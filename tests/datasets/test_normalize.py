"""Normalisers: every mode invertible on numpy and torch, safe on constant dimensions, saved as JSON,
and per-embodiment normalisation of the slot layout with padded slots kept at 0."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.datasets import slots as slotlib
from vla.datasets.declare import preset
from vla.datasets.normalize import MODES, MultiNormalizer, Normalizer, merge_stats
from vla.datasets.sampler import MixtureDataset, WindowConfig, WindowDataset
from vla.datasets.spec import SourceInfo, StoreSpec
from vla.datasets.stats import lowdim_stats
from vla.datasets.store import Episode, Store, StoreWriter


def make_store(path: Path, lengths: list[int], action: str, embodiment: str, state: str | None, seed: int) -> Store:
    """A camera-less store with actions of different scales per dimension (so modes differ)."""
    spec = StoreSpec(
        fps=10,
        embodiment=embodiment,
        robot_type=embodiment,
        action=preset(action),
        state=preset(state) if state else (),
        source=SourceInfo("synthetic"),
    )
    rng = np.random.default_rng(seed)
    writer = StoreWriter(path, spec)
    for n in lengths:
        scale = np.arange(1, spec.action_dim + 1, dtype=np.float32)
        frames = {"action": (rng.normal(size=(n, spec.action_dim)) * scale + seed).astype(np.float32)}
        if state:
            frames["observation.state"] = rng.normal(size=(n, spec.state_dim)).astype(np.float32) * 3
        writer.add_episode(Episode(frames=frames, task="t"))
    return writer.finalize()


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Store]:
    root = tmp_path_factory.mktemp("n")
    return {
        "eef": make_store(root / "eef.zarr", [30, 20], "eef_delta_axis_angle_gripper", "eef_arm", "joint3_gripper", 0),
        "joint": make_store(root / "joint.zarr", [25], "joint5_gripper", "joint_arm", None, 1),
        "eef2": make_store(root / "eef2.zarr", [15], "eef_delta_axis_angle_gripper", "eef_arm", "joint3_gripper", 2),
    }


@pytest.fixture(scope="module")
def stats(stores):
    return stores["eef"].stats


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("clip", [False, True])
def test_round_trip_numpy_and_torch(stats, mode, clip):
    norm = Normalizer.from_stats(stats, {"action": mode}, clip=clip)
    x = np.random.default_rng(0).normal(size=(5, 3, 7)).astype(np.float32)
    if clip:  # clipping is lossless inside [q01, q99]
        x = np.clip(x, stats["action"]["q01"], stats["action"]["q99"]).astype(np.float32)
    y = norm.normalize("action", x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(norm.unnormalize("action", y), x, atol=1e-5)
    yt = norm.normalize("action", torch.from_numpy(x))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize("action", yt).numpy(), x, atol=1e-5)
    x64 = x.astype(np.float64)  # float64 stays float64
    assert norm.normalize("action", torch.from_numpy(x64)).dtype == torch.float64
    np.testing.assert_allclose(norm.unnormalize("action", norm.normalize("action", x64)), x64, atol=1e-5)
    if mode == "identity":
        np.testing.assert_array_equal(y, x)


def test_modes_map_to_their_ranges(stats):
    st = stats["action"]
    for mode, (lo, hi) in {"quantile": ("q01", "q99"), "min_max": ("min", "max")}.items():
        norm = Normalizer.from_stats(stats, {"action": mode})
        ends = np.asarray([st[lo], st[hi]], np.float32)
        np.testing.assert_allclose(norm.normalize("action", ends), [[-1] * 7, [1] * 7], atol=1e-5)
    norm = Normalizer.from_stats(stats, {"action": "mean_std"})
    np.testing.assert_allclose(norm.normalize("action", np.asarray([st["mean"]], np.float32)), [[0] * 7], atol=1e-5)


def test_mean_std_normalises_the_store_data(stores):
    data = stores["eef"].array("action")[:]
    y = Normalizer.from_stats(stores["eef"].stats, {"action": "mean_std"}).normalize("action", data)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-4)


def test_constant_dimensions_are_safe_and_invertible():
    stats = {"a": {"mean": [1.0, 2.0], "std": [0.0, 1.0], "min": [1.0, 0.0], "max": [1.0, 4.0]}}
    stats["a"] |= {"q01": stats["a"]["min"], "q99": stats["a"]["max"]}
    x = np.asarray([[1.0, 3.0], [5.0, -1.0]], np.float32)
    for mode in MODES:
        n = Normalizer.from_stats(stats, {"a": mode})
        y = n.normalize("a", x)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(n.unnormalize("a", y), x, atol=1e-6)
    np.testing.assert_allclose(Normalizer.from_stats(stats, {"a": "mean_std"}).normalize("a", x[0]), [0.0, 1.0])


def test_clip_applies_to_quantile_only():
    stats = {"a": {"mean": [0.0], "std": [1.0], "q01": [-1.0], "q99": [1.0]}}
    x = np.asarray([[5.0], [-7.0], [0.5]], np.float32)
    clipped = Normalizer.from_stats(stats, {"a": "quantile"}, clip=True)
    np.testing.assert_allclose(clipped.normalize("a", x), [[1.0], [-1.0], [0.5]])
    np.testing.assert_allclose(clipped.normalize("a", torch.from_numpy(x)).numpy(), [[1.0], [-1.0], [0.5]])
    np.testing.assert_allclose(Normalizer.from_stats(stats, {"a": "quantile"}).normalize("a", x), x)
    # mean_std is never clamped to [-1, 1] (that would destroy the data), even with clip=True.
    np.testing.assert_allclose(Normalizer.from_stats(stats, {"a": "mean_std"}, clip=True).normalize("a", x), x)


def test_integer_inputs_are_normalised_in_float():
    n = Normalizer.from_stats({"a": {"mean": [0.5], "std": [2.0]}}, {"a": "mean_std"})
    np.testing.assert_allclose(n.normalize("a", np.asarray([[3]])), [[1.25]])
    torch.testing.assert_close(n.normalize("a", torch.tensor([[3]])), torch.tensor([[1.25]]))


def test_state_dict_is_json_and_round_trips(stats):
    n = Normalizer.from_stats(stats, {"action": "quantile", "observation.state": "mean_std"}, clip=True)
    m = Normalizer.from_state_dict(json.loads(json.dumps(n.state_dict())))
    x = torch.randn(3, 2, 4)
    assert torch.equal(n.normalize("observation.state", x), m.normalize("observation.state", x))
    a = torch.randn(3, 7) * 5
    assert torch.equal(n.normalize("action", a), m.normalize("action", a)) and m.norms["action"].clip
    as_tensors = {
        k: {**v, "offset": torch.tensor(v["offset"]), "scale": torch.tensor(v["scale"])}
        for k, v in n.state_dict().items()
    }
    assert torch.equal(Normalizer.from_state_dict(as_tensors).normalize("action", a), n.normalize("action", a))


def test_batches_and_unknown_keys(stats):
    n = Normalizer.from_stats(stats, {"action": "mean_std"})
    batch = {
        "action": torch.randn(2, 10, 7),
        "task": ["a", "b"],
        "observation.images.front": torch.zeros(2, 1, 3, 4, 4),
    }
    out = n.normalize_batch(batch)
    assert out["task"] is batch["task"] and out["observation.images.front"] is batch["observation.images.front"]
    torch.testing.assert_close(n.unnormalize_batch(out)["action"], batch["action"])
    assert "action" in n and "observation.state" not in n


def test_clear_errors(stats):
    with pytest.raises(KeyError, match="no statistics"):
        Normalizer.from_stats(stats, {"observation.images.side": "mean_std"})
    with pytest.raises(KeyError, match="q01"):
        Normalizer.from_stats({"a": {"mean": [0.0], "std": [1.0]}}, {"a": "quantile"})
    with pytest.raises(ValueError, match="unknown normalisation mode"):
        Normalizer.from_stats(stats, {"action": "zscore"})
    with pytest.raises(ValueError, match="last axis"):
        Normalizer.from_stats(stats, {"action": "mean_std"}).normalize("action", np.zeros((2, 5)))


# --- several embodiments -----------------------------------------------------------------------------
def test_merge_stats_pools_exactly(stores):
    a, b = stores["eef"], stores["eef2"]
    merged = merge_stats([a.stats["action"], b.stats["action"]])
    data = np.concatenate([a.array("action")[:], b.array("action")[:]])
    direct = lowdim_stats(data, len(data))
    for name in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(merged[name], direct[name], rtol=1e-5, atol=1e-5)
    assert merged["count"] == len(data)
    with pytest.raises(ValueError, match="different sizes"):
        merge_stats([a.stats["action"], stores["joint"].stats["action"]])


def test_multi_normalizer_matches_per_embodiment_and_keeps_padding_zero(stores):
    # On the slot layout each row gets its own embodiment's Normalizer, as on its native layout.
    modes = {"action": "quantile", "observation.state": "mean_std"}
    parts = [WindowDataset(stores[k], WindowConfig(horizons=(4,))) for k in ("eef", "joint", "eef2")]
    mix = MixtureDataset(parts, slots=True)
    multi = MultiNormalizer.from_mixture(mix, modes)
    assert multi.names == mix.embodiments == ["eef_arm", "joint_arm"]
    batch = next(iter(torch.utils.data.DataLoader(mix, batch_size=len(mix), shuffle=True)))
    ids = batch["embodiment_id"]
    y = multi.normalize("action", batch["action"], ids)
    pooled = merge_stats([stores["eef"].stats["action"], stores["eef2"].stats["action"]])
    own = {
        0: Normalizer.from_stats({"action": pooled}, {"action": "quantile"}),
        1: Normalizer.from_stats(stores["joint"].stats, {"action": "quantile"}),
    }
    for e, d in ((0, parts[0]), (1, parts[1])):
        rows = ids == e
        native = slotlib.from_slots(batch["action"][rows].numpy(), d.action_slots)
        expected = own[e].normalize("action", native)
        np.testing.assert_allclose(slotlib.from_slots(y[rows].numpy(), d.action_slots), expected, atol=1e-5)
    mask = batch["action_slot_mask"][:, None, :]
    assert torch.all(y[~mask.expand_as(y)] == 0)
    torch.testing.assert_close(multi.unnormalize("action", y, ids), batch["action"])
    # A prediction in a padded slot never reaches the robot: unnormalize zeroes it.
    noisy = y + 0.5 * ~mask
    torch.testing.assert_close(multi.unnormalize("action", noisy, ids), batch["action"])
    # The joint robot has no state: its state rows stay all zero.
    s = multi.normalize("observation.state", batch["observation.state"], ids)
    assert torch.all(s[ids == 1] == 0) and s[ids == 0].abs().sum() > 0
    torch.testing.assert_close(multi.unnormalize("observation.state", s, ids), batch["observation.state"])


def test_multi_normalizer_names_numpy_state_dict(stores):
    parts = [WindowDataset(stores[k]) for k in ("eef", "joint")]
    multi = MultiNormalizer.from_datasets(parts, {"action": "mean_std"})
    x = slotlib.to_slots(np.random.default_rng(1).normal(size=(2, 3, 6)).astype(np.float32), parts[1].action_slots)
    by_id = multi.normalize("action", x, np.asarray([1, 1]))
    np.testing.assert_allclose(multi.normalize("action", x, ["joint_arm", "joint_arm"]), by_id)
    np.testing.assert_allclose(multi.normalize("action", x[0], "joint_arm"), by_id[0])  # unbatched, one name
    np.testing.assert_allclose(multi.unnormalize("action", by_id, [1, 1]), x, atol=1e-5)
    again = MultiNormalizer.from_state_dict(json.loads(json.dumps(multi.state_dict())))
    assert again.names == multi.names
    np.testing.assert_array_equal(again.normalize("action", x, [1, 1]), by_id)
    with pytest.raises(KeyError, match="unknown embodiment"):
        multi.normalize("action", x, "so101")
    with pytest.raises(ValueError, match="embodiment ids"):
        multi.normalize("action", x)
    with pytest.raises(ValueError, match="24-slot"):
        multi.normalize("action", x[..., :6], [1, 1])
    with pytest.raises(ValueError, match="slot-layout keys"):
        MultiNormalizer.from_datasets(parts, {"observation.images.front": "mean_std"})
    single = MultiNormalizer.from_datasets(parts[:1], {"action": "mean_std"})
    assert single.normalize("action", torch.zeros(2, slotlib.NUM_SLOTS)).shape == (2, slotlib.NUM_SLOTS)


def test_both_normalisers_take_embodiment_ids(stores):
    """One call shape for a caller that does not know which normaliser it holds; a single-embodiment
    normaliser has nothing to choose and ignores the ids."""
    parts = [WindowDataset(stores[k]) for k in ("eef", "joint")]
    single = Normalizer.from_stats(parts[0].stats, {"action": "mean_std"})
    x = torch.randn(2, 3, len(parts[0].stats["action"]["mean"]))
    ids = torch.zeros(2, dtype=torch.long)
    assert torch.equal(single.normalize("action", x, ids), single.normalize("action", x))
    assert torch.equal(single.unnormalize("action", x, ids), single.unnormalize("action", x))
    multi = MultiNormalizer.from_datasets(parts, {"action": "mean_std"})
    assert "action" in multi and "observation.state" not in multi
