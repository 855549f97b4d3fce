"""`vla compress`: merge experts by routing, align and average them, compress them low-rank plus sparse."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tests.analysis.conftest import MOE
from tests.datasets.store_helpers import small_spec
from tests.train.helpers import TINY, write_reach_store
from vla.analysis.compress import (
    CompressError,
    CompressSettings,
    align_units,
    compress_policy,
    group_experts,
    merge_group,
    permuted_weights,
    write_compressed,
)
from vla.analysis.windows import collate, policy_windows
from vla.cli import app
from vla.datasets.sampler import SamplerError
from vla.datasets.store import Episode, StoreWriter
from vla.errors import PolicyError
from vla.policies.mode import MoDEConfig, MoDEPolicy
from vla.policies.modules.moe import LowRankSparseLinear, SwiGLU, compressed_size, moe_layers
from vla.policies.policy import Policy
from vla.policies.pretrained import resolve_checkpoint
from vla.train import TrainConfig, train

DIM, HIDDEN = MOE["width"], 4 * MOE["width"]  # the cpu preset's ffn_mult 4
WIDE = {"COLUMNS": "250"}  # the summary table on one line per layer


def _batch(policy: Policy, stores: list[str], n: int = 3) -> dict:
    ds = policy_windows(policy, stores)
    return collate([ds[i] for i in range(n)], None)


def _actions(policy: Policy, batch: dict, seed: int = 0) -> torch.Tensor:
    cfg = policy.config
    noise = torch.randn(3, cfg.chunk_size, cfg.action_dim, generator=torch.Generator().manual_seed(seed))
    return policy.eval().predict_chunk(batch, noise=noise)


@pytest.fixture(scope="module")
def mode_run(two_embodiment_run):
    root, stores = two_embodiment_run
    ckpt = resolve_checkpoint(root / "run")
    return ckpt, Policy.from_pretrained(ckpt), list(stores)


# --- the pieces ------------------------------------------------------------------------------------------------


def test_grouping_keeps_the_most_used_and_joins_the_most_similar():
    freq = np.array([0.1, 0.9, 0.0, 0.6])
    sim = np.eye(4)
    sim[0, 3] = sim[3, 0] = 0.8
    sim[2, 1] = sim[1, 2] = 0.5
    assert group_experts(freq, sim, 2) == [[1, 2], [3, 0]]  # ordered by dominant index, dominant first
    assert group_experts(freq, sim, 4) == [[0], [1], [2], [3]]  # K = N: every expert where it was
    assert group_experts(freq, sim, 1) == [[1, 3, 0, 2]]


def test_alignment_undoes_a_permutation_of_hidden_units():
    torch.manual_seed(0)
    a = SwiGLU(8, 16, bias=True)
    perm = torch.randperm(16)
    b = SwiGLU(8, 16, bias=True)
    b.load_state_dict(permuted_weights(a, perm))
    x = torch.randn(5, 8)
    torch.testing.assert_close(b(x), a(x))  # the same function, other unit order
    found = align_units(a, b)
    assert torch.equal(perm[found], torch.arange(16))
    merged = merge_group([a, b], [0.3, 0.7])  # aligned first, so the average is `a` itself
    for name, value in a.state_dict().items():
        torch.testing.assert_close(merged[name], value)
    unused = merge_group([a, b], [0.0, 0.0])  # no routing seen: equal weights
    torch.testing.assert_close(unused["w_in.weight"], a.w_in.weight.detach())


def test_low_rank_sparse_linear_fits_stores_and_reloads(tmp_path):
    torch.manual_seed(0)
    w, bias = torch.randn(12, 6), torch.randn(12)
    full = LowRankSparseLinear(6, 12, rank=6, nnz=0, bias=True)  # full rank: exact up to rounding
    full.set_dense(w, bias)
    x = torch.randn(4, 3, 6)
    torch.testing.assert_close(full(x), torch.nn.functional.linear(x, w, bias), atol=1e-5, rtol=1e-5)
    nnz, params = compressed_size(6, 12, 2, 0.25)
    assert (nnz, params) == (18, 2 * 18 + 18)
    part = LowRankSparseLinear(6, 12, rank=2, nnz=nnz)
    part.set_dense(w)
    residual = w - part.u.detach() @ part.v.detach()
    kept = residual.flatten()[part.index.long()]
    assert torch.equal(kept, part.values.detach())
    assert kept.abs().min() >= residual.abs().flatten().sort().values[-nnz]  # the largest entries
    torch.testing.assert_close(part(x), torch.nn.functional.linear(x, part.weight.detach()), atol=1e-5, rtol=1e-5)
    assert (w - part.weight).norm() < residual.norm()  # the sparse part helps
    sparse_only = LowRankSparseLinear(6, 12, rank=0, nnz=72)  # every entry: the weight itself
    sparse_only.set_dense(w)
    torch.testing.assert_close(sparse_only(x), torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)
    save_file(part.state_dict(), str(tmp_path / "w.safetensors"))
    again = LowRankSparseLinear(6, 12, rank=2, nnz=nnz)
    again.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    torch.testing.assert_close(again(x), part(x))


def test_config_refuses_a_map_that_does_not_fit():
    cfg = MoDEConfig.from_preset("cpu", state_dim=4, camera_keys=(), **MOE)
    with pytest.raises(PolicyError, match="expert_map has 1 entries for 2 MoE layers"):
        MoDEPolicy(cfg.replace(expert_map=((0, 0, 1, 1),)))
    with pytest.raises(PolicyError, match=r"expert_map\[1\]"):
        MoDEPolicy(cfg.replace(expert_map=((0, 0, 1, 1), (0, 2, 2, 2))))  # merged expert 1 unused
    with pytest.raises(PolicyError, match="need expert_map"):
        cfg.replace(expert_rank=4)
    with pytest.raises(PolicyError, match="expert_sparsity"):
        cfg.replace(expert_map=((0, 0, 1, 1), ()), expert_sparsity=1.5)


# --- MoDE ----------------------------------------------------------------------------------------------------------


def test_merge_with_k_equal_n_is_exact(mode_run, tmp_path):
    ckpt, policy, stores = mode_run
    merged, report = compress_policy(policy, stores, CompressSettings(merge=4, windows=16), progress=False)
    assert all(p.groups == [[0], [1], [2], [3]] for p in report.layers)
    assert report.reduction == 0.0
    out = write_compressed(merged, report, ckpt, tmp_path / "k4")
    loaded = Policy.from_pretrained(out)
    assert loaded.config.expert_map == ((0, 1, 2, 3), (0, 1, 2, 3))
    batch = _batch(policy, stores)
    assert torch.equal(_actions(loaded, batch), _actions(policy, batch))


def test_cli_compresses_mode_to_a_checkpoint_that_loads_and_predicts(mode_run, tmp_path):
    ckpt, policy, stores = mode_run
    out = tmp_path / "k2"
    args = ["compress", str(ckpt), "--data", stores[0], "--data", stores[1], "--merge", "2", "--rank", "8"]
    result = CliRunner().invoke(app, [*args, "--sparsity", "0.05", "--windows", "16", "--out", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "block0.ffn" in result.output and "total" in result.output and "4 -> 2" in result.output
    files = {p.name for p in out.iterdir()}
    assert files >= {"config.json", "model.safetensors", "normalization.json", "embodiments.json", "data_spec.json",
                     "data.json", "compress.json"}  # fmt: skip
    assert not (tmp_path / "k2.partial").exists()
    report = json.loads((out / "compress.json").read_text())
    assert report["settings"] == {"merge": 2, "rank": 8, "sparsity": 0.05, "windows": 16, "batch_size": 32, "seed": 0}
    layer = report["layers"][0]
    assert len(layer["frequency"]) == 4 and np.isclose(sum(layer["frequency"]), MOE["top_k"])
    assert np.allclose(np.diag(layer["similarity"]), 1.0)
    assert sorted(e for g in layer["groups"] for e in g) == [0, 1, 2, 3] and len(layer["groups"]) == 2

    loaded = Policy.from_pretrained(out)
    per_layer_before = 4 * (DIM * 2 * HIDDEN + HIDDEN * DIM)
    proj_in, proj_out = compressed_size(DIM, 2 * HIDDEN, 8, 0.05)[1], compressed_size(HIDDEN, DIM, 8, 0.05)[1]
    per_layer_after = 2 * (proj_in + proj_out)
    assert report["expert_params_before"] == MOE["n_layers"] * per_layer_before
    assert report["expert_params_after"] == MOE["n_layers"] * per_layer_after
    assert loaded.parameter_counts()["experts"] == report["expert_params_after"]
    assert policy.parameter_counts()["total"] - loaded.parameter_counts()["total"] == MOE["n_layers"] * (
        per_layer_before - per_layer_after
    )
    batch = _batch(policy, stores)
    actions = _actions(loaded, batch)
    assert actions.shape == (3, loaded.config.chunk_size, loaded.config.action_dim) and torch.isfinite(actions).all()
    # the expert cache fuses compressed experts too (their dense weight), with the same result
    loaded.cache_experts()
    torch.testing.assert_close(_actions(loaded, batch), actions, atol=1e-5, rtol=1e-4)


def test_merged_experts_follow_the_router(mode_run):
    """Every router output runs its group's merged expert; two outputs in one group run it once, gates added."""
    _, policy, stores = mode_run
    merged, _ = compress_policy(policy, stores, CompressSettings(merge=1, windows=8), progress=False)
    layer = moe_layers(merged)[0]
    assert layer.n_experts == 4 and layer.n_stored == 1 and layer.expert_map.tolist() == [0, 0, 0, 0]
    experts, gates = layer.stored_choice(torch.tensor([2, 0]), torch.tensor([0.7, 0.3]))
    assert experts == (0,) and torch.allclose(gates, torch.tensor([1.0]))
    x = torch.randn(2, 5, DIM)
    y, _ = layer.eval()(x, torch.randn(2, DIM))
    torch.testing.assert_close(y, layer.experts[0](x))  # renormalised gates sum to 1 on the one expert


def test_mixture_of_horizons_mode_compresses(two_embodiment_run, tmp_path):
    _, stores = two_embodiment_run
    tc = TrainConfig(data=(stores[0],), out=str(tmp_path / "moh"), steps=2, batch_size=8, warmup_steps=1,
                     progress=False)  # fmt: skip
    train("mode", tc, preset="moh_cpu", overrides={**MOE})
    ckpt = resolve_checkpoint(tmp_path / "moh")
    policy = Policy.from_pretrained(ckpt)
    merged, report = compress_policy(policy, [stores[0]], CompressSettings(merge=2, rank=4, windows=8), progress=False)
    out = write_compressed(merged, report, ckpt, tmp_path / "moh_k2")
    loaded = Policy.from_pretrained(out)
    assert loaded.config.horizons == policy.config.horizons
    assert report.reduction > 0.5
    actions = _actions(loaded, _batch(policy, [stores[0]]))
    assert actions.shape == (3, loaded.config.chunk_size, loaded.config.action_dim)


# --- HiMoE ----------------------------------------------------------------------------------------------------------


def test_himoe_merges_token_layers_and_keeps_action_space_layers(two_embodiment_run, tmp_path):
    _, stores = two_embodiment_run
    tc = TrainConfig(data=stores, out=str(tmp_path / "himoe"), steps=2, batch_size=8, warmup_steps=1,
                     progress=False)  # fmt: skip
    train("himoe", tc, preset="cpu", overrides={"width": 32, "n_heads": 2, "layer_pattern": "ahda", "num_steps": 3})
    ckpt = resolve_checkpoint(tmp_path / "himoe")
    out = tmp_path / "himoe_k2"
    args = ["compress", str(ckpt), "--data", stores[0], "--data", stores[1], "--merge", "2", "--windows", "8"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "skipped: action-space experts serve different robots" in result.output
    report = json.loads((out / "compress.json").read_text())
    kinds = {p["name"]: (p["kind"], p["skipped"] is None, len(p["groups"])) for p in report["layers"]}
    assert kinds == {
        "block0.action_space": ("action_space", False, 0),
        "block1.hb": ("token", True, 2),
        "block3.action_space": ("action_space", False, 0),
    }
    policy, loaded = Policy.from_pretrained(ckpt), Policy.from_pretrained(out)
    assert loaded.config.expert_map[0] == () and len(loaded.config.expert_map[1]) == 8
    hb_before = 8 * 3 * 32 * 32  # the cpu preset's 8 HB experts of hidden 32 at width 32
    assert policy.parameter_counts()["experts"] - loaded.parameter_counts()["experts"] == hb_before * 6 // 8
    batch = _batch(policy, stores)
    chunks = loaded.eval().predict_native(batch)
    assert [c.shape for c in chunks] == [c.shape for c in policy.eval().predict_native(batch)]


# --- bad input ---------------------------------------------------------------------------------------------------


def test_bad_requests_fail_with_one_clear_error(mode_run, tmp_path):
    ckpt, policy, stores = mode_run
    cases = [
        (CompressSettings(merge=5), r"--merge 5: the layers have at most 4 experts"),
        (CompressSettings(merge=0), r"--merge 0: keep at least 1"),
        (CompressSettings(merge=2, rank=0), r"--rank 0: must be >= 1"),
        (CompressSettings(merge=2, rank=DIM), r"not fewer than"),
        (CompressSettings(merge=2, sparsity=1.0), r"--sparsity 1.0"),
    ]
    for settings, message in cases:
        with pytest.raises(CompressError, match=message):
            compress_policy(policy, stores, settings, progress=False)
    merged, report = compress_policy(policy, stores, CompressSettings(merge=2, windows=4), progress=False)
    with pytest.raises(CompressError, match="merged already"):
        compress_policy(merged, stores, CompressSettings(merge=1), progress=False)
    out = write_compressed(merged, report, ckpt, tmp_path / "once")
    with pytest.raises(CompressError, match="exists; choose another --out"):
        write_compressed(merged, report, ckpt, out)
    # through the CLI: one line, no traceback
    result = CliRunner().invoke(app, ["compress", str(ckpt), "--data", stores[0], "--merge", "9",
                                      "--out", str(tmp_path / "x")])  # fmt: skip
    assert result.exit_code != 0 and not (tmp_path / "x").exists()
    assert isinstance(result.exception, CompressError)


def test_store_without_the_policys_keys_is_named(mode_run, tmp_path):
    _, policy, _ = mode_run
    spec = dataclasses.replace(small_spec(cameras=("front",)), state=())
    w = StoreWriter(tmp_path / "images.zarr", spec)
    rng = np.random.default_rng(0)
    frames = {"action": rng.normal(size=(20, spec.action_dim)).astype(np.float32),
              "observation.images.front": rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)}  # fmt: skip
    w.add_episode(Episode(frames=frames, task="look", source_id="0"))
    store = w.finalize()
    with pytest.raises(SamplerError, match=r"images.zarr: the window needs key 'observation.state'"):
        compress_policy(policy, [str(store.path)], CompressSettings(merge=2), progress=False)


def test_a_policy_without_experts_is_refused(tmp_path):
    store = write_reach_store(tmp_path / "d.zarr", episodes=2, length=20)
    tc = TrainConfig(data=(str(store.path),), out=str(tmp_path / "dense"), steps=1, batch_size=4, warmup_steps=1,
                     progress=False)  # fmt: skip
    train("mode", tc, preset="cpu", overrides={**TINY, "use_moe": False})
    dense = Policy.from_pretrained(resolve_checkpoint(tmp_path / "dense"))
    with pytest.raises(CompressError, match="no mixture-of-experts layers"):
        compress_policy(dense, [str(store.path)], CompressSettings(merge=1), progress=False)
