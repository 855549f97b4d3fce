"""Offline action error per embodiment, in native layouts, normalised by the demonstrations' variance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla.analysis.action_error import offline_action_error
from vla.datasets.store import Store
from vla.policies.policy import Policy
from vla.policies.pretrained import resolve_checkpoint


@pytest.fixture()
def policy(two_embodiment_run):
    root, _ = two_embodiment_run
    return Policy.from_pretrained(resolve_checkpoint(root / "run"))


def test_a_trained_policy_gets_a_finite_error_per_embodiment(policy, two_embodiment_run):
    _, stores = two_embodiment_run
    errors = offline_action_error(policy, stores, stride=7, batch_size=16)
    assert set(errors) == {"toy", "toy_b"}
    assert len(errors["toy"].per_dim) == 7 and len(errors["toy_b"].per_dim) == 6  # native layouts
    for e in errors.values():
        assert e.windows > 0 and np.isfinite(e.nmse) and e.nmse > 0


def test_perfect_predictions_score_zero_and_the_mean_scores_about_one(policy, two_embodiment_run, monkeypatch):
    _, stores = two_embodiment_run
    monkeypatch.setattr(policy, "predict_chunk", lambda batch: batch["action"].clone())
    assert all(e.nmse == 0 and e.nmse_first == 0 for e in offline_action_error(policy, stores, stride=3).values())
    means = {}
    for path in stores:
        store = Store(path)
        means[store.spec.embodiment] = (store.action_slots, np.asarray(store.stats["action"]["mean"], np.float32))

    def mean_chunk(batch):
        out = torch.zeros_like(batch["action"])
        for row, name in enumerate(batch["embodiment"]):
            slots, mean = means[name]
            out[row, :, list(slots)] = torch.from_numpy(mean)
        return out

    monkeypatch.setattr(policy, "predict_chunk", mean_chunk)
    for e in offline_action_error(policy, stores, stride=1).values():
        # every frame is the first step of exactly one window: the store's own variance, so 1
        assert e.nmse_first == pytest.approx(1.0, abs=0.02)
