from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.datasets.store_helpers import write_toy_store
from vla.datasets import slots as slotlib
from vla.datasets.declare import preset
from vla.datasets.normalize import MODES, MultiNormalizer, Normalizer


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    return write_toy_store(tmp_path_factory.mktemp("n") / "s.zarr", [30, 20]).stats


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_numpy_and_torch(stats, mode):
    norm = Normalizer.from_stats(stats, {"action": mode})
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    y = norm.normalize("action", x)
    np.testing.assert_allclose(norm.unnormalize("action", y), x, atol=1e-5)
    yt = norm.normalize("action", torch.from_numpy(x))
    np.testing.assert_allclose(yt.numpy(), y, atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize("action", yt).numpy(), x, atol=1e-5)


def test_modes_map_to_their_ranges(stats):
    st = stats["action"]
    norm = Normalizer.from_stats(stats, {"action": "quantile"})
    np.testing.assert_allclose(
        norm.normalize("action", np.asarray([st["q01"], st["q99"]], np.float32)), [[-1] * 7, [1] * 7], atol=1e-5
    )
    norm = Normalizer.from_stats(stats, {"action": "min_max"})
    np.testing.assert_allclose(
        norm.normalize("action", np.asarray([st["min"], st["max"]], np.float32)), [[-1] * 7, [1] * 7], atol=1e-5
    )
    norm = Normalizer.from_stats(stats, {"action": "mean_std"})
    np.testing.assert_allclose(norm.normalize("action", np.asarray([st["mean"]], np.float32)), [[0] * 7], atol=1e-5)


def test_constant_dimension_and_clip():
    stats = {"a": {"mean": [1.0, 2.0], "std": [0.0, 1.0], "q01": [1.0, 0.0], "q99": [1.0, 4.0]}}
    n = Normalizer.from_stats(stats, {"a": "mean_std"})
    np.testing.assert_allclose(n.normalize("a", np.asarray([1.0, 3.0])), [0.0, 1.0])
    clipped = Normalizer.from_stats(stats, {"a": "quantile"}, clip=True)
    assert clipped.normalize("a", np.asarray([5.0, 100.0]))[1] == 1.0


def test_state_dict_round_trip(stats):
    n = Normalizer.from_stats(stats, {"action": "quantile", "observation.state": "mean_std"})
    m = Normalizer.from_state_dict(n.state_dict())
    x = torch.randn(3, 4)
    assert torch.equal(n.normalize("observation.state", x), m.normalize("observation.state", x))


def test_missing_stats_is_a_clear_error(stats):
    with pytest.raises(KeyError, match="no statistics"):
        Normalizer.from_stats(stats, {"observation.images.side": "mean_std"})


def test_multi_normalizer_keeps_padded_slots_zero(stats):
    a = Normalizer.from_stats(stats, {"action": "mean_std"})
    b = Normalizer.from_state_dict({"action": {"mode": "mean_std", "offset": [1.0] * 4, "scale": [2.0] * 4}})
    slots_a = slotlib.assign_slots(preset("eef_delta_axis_angle_gripper"))
    slots_b = (8, 9, 10, 11)
    multi = MultiNormalizer([a, b], {"action": [slots_a, slots_b]})
    native_b = torch.randn(2, 5, 4)
    x = torch.from_numpy(slotlib.to_slots(native_b.numpy(), slots_b))
    ids = torch.tensor([1, 1])
    y = multi.normalize("action", x, ids)
    np.testing.assert_allclose(slotlib.from_slots(y.numpy(), slots_b), ((native_b - 1) / 2).numpy(), atol=1e-6)
    assert torch.all(y[..., [s for s in range(24) if s not in slots_b]] == 0)
    np.testing.assert_allclose(multi.unnormalize("action", y, ids).numpy(), x.numpy(), atol=1e-6)
    again = MultiNormalizer.from_state_dict(multi.state_dict())
    assert torch.equal(again.normalize("action", x, ids), y)
