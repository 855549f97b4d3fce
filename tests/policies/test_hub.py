"""Checkpoints through huggingface_hub's PyTorchModelHubMixin: local directories, repo ids from a local
Hugging Face cache (never the network), and checkpoints written before the mixin."""

from __future__ import annotations

import shutil

import pytest
import torch
from huggingface_hub import PyTorchModelHubMixin

from vla.errors import PolicyError
from vla.policies import make_policy
from vla.policies.policy import Policy
from vla.policies.pretrained import save_pretrained as write_checkpoint_files

STATS = {"action": {"min": [-2.0] * 7, "max": [3.0] * 7}, "observation.state": {"mean": [0.5] * 8, "std": [2.0] * 8}}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def policy() -> Policy:
    torch.manual_seed(0)
    return make_policy("mode", "cpu", STATS, camera_keys=(), state_dim=8, action_dim=7)


def assert_same(a: Policy, b: Policy) -> None:
    assert type(a) is type(b) and a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.normalizer.state_dict() == b.normalizer.state_dict()


def test_save_and_load_a_directory(policy, tmp_path):
    assert isinstance(policy, PyTorchModelHubMixin)
    out = policy.save_pretrained(tmp_path / "ckpt")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "normalization.json"} <= names
    assert names - {"config.json", "model.safetensors", "normalization.json"} == {"README.md"}  # the model card
    assert_same(policy, Policy.from_pretrained(out))
    assert_same(policy, type(policy).from_pretrained(str(out), map_location="cpu"))


def test_ema_weights_are_what_is_saved(policy, tmp_path):
    other = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in policy.state_dict().items()}
    loaded = Policy.from_pretrained(policy.save_pretrained(tmp_path / "ema", state_dict=other))
    assert all(torch.equal(v, other[k]) for k, v in loaded.state_dict().items())


def test_checkpoints_written_before_the_mixin_still_load(policy, tmp_path):
    old = write_checkpoint_files(policy, tmp_path / "old")  # the writer the trainer used all along: no README
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "model.safetensors", "normalization.json"]
    assert_same(policy, Policy.from_pretrained(old))


def cached_repo(policy: Policy, cache, repo_id: str = "vla-test/tiny-mode"):
    """A Hugging Face cache holding one snapshot of a repo, laid out as hf_hub_download leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    policy.save_pretrained(repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo_id


def test_a_repo_id_resolves_from_the_local_cache(policy, tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # the tests run offline: nothing below may touch the network
    repo_id = cached_repo(policy, tmp_path / "hub")
    assert_same(policy, Policy.from_pretrained(repo_id, cache_dir=tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # what HF_HUB_CACHE=... sets
    assert_same(policy, Policy.from_pretrained(repo_id))


def test_unresolvable_names_fail_clearly(tmp_path):
    with pytest.raises(PolicyError, match="Hugging Face cache"):
        Policy.from_pretrained("vla-test/not-cached", cache_dir=tmp_path / "empty")
    with pytest.raises(PolicyError, match="not a Hub repo id"):
        Policy.from_pretrained(str(tmp_path / "missing" / "dir" / "ckpt"))
    shutil.rmtree(tmp_path, ignore_errors=True)
