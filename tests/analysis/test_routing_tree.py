"""`vla inspect routing --tree`: each router distilled into a shallow decision tree over readable inputs,
scored against the router on windows of held-out episodes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.datasets.store_helpers import small_spec
from tests.train.helpers import write_reach_store
from vla.analysis.routing import RoutingError
from vla.analysis.routing_tree import (
    collect_decisions,
    decision_labels,
    fit_routing_trees,
    fit_tree,
    split_episodes,
    write_tree_report,
)
from vla.analysis.windows import collate, embodiment_remap, policy_windows
from vla.cli import app
from vla.datasets.sampler import SamplerError
from vla.datasets.store import Episode, StoreWriter
from vla.errors import DataError
from vla.policies.policy import Policy
from vla.policies.pretrained import resolve_checkpoint


def _level_sensitive_mode(run) -> Policy:
    """The fixture's MoDE with large router output weights: a router trained for 4 steps barely tells the
    noise levels apart, this one picks different experts at different levels (still from the level alone)."""
    policy = Policy.from_pretrained(resolve_checkpoint(run))
    g = torch.Generator().manual_seed(0)
    for block in policy.transformer.blocks:
        last = block.ffn.router.mlp[-1]
        with torch.no_grad():
            last.weight.copy_(3 * torch.randn(last.weight.shape, generator=g))
    return policy


def _top1_per_level(policy: Policy, stores) -> dict[str, np.ndarray]:
    """The router's top-1 expert at each sampler level, read on one window: the rule the trees should find."""
    mixture = policy_windows(policy, stores)
    batch = collate([mixture[0]], embodiment_remap(policy, mixture.embodiments))
    levels, _ = policy.routing_levels()
    out: dict[str, list[int]] = {}
    for level in levels:
        for rec in policy.inspect_routing(batch, torch.full((1,), float(level))):
            out.setdefault(rec.layer, []).append(int(rec.weights[0, 0].argmax()))
    return {k: np.array(v) for k, v in out.items()}


def test_noise_router_tree_agrees_fully_and_reads_only_the_noise_level(two_embodiment_run):
    root, stores = two_embodiment_run
    policy = _level_sensitive_mode(root / "run")
    truth = _top1_per_level(policy, stores)
    assert any(len(set(v)) > 1 for v in truth.values())  # the rule is not a constant
    decisions = collect_decisions(policy, stores, windows=24, holdout=0.25, batch_size=12)
    assert decisions.level_name == "sigma" and len(decisions.levels) == 4
    for layer, rule in truth.items():
        _, names, units = decisions.layer_data(layer)
        assert names[0] == "log_sigma" and "token" not in names  # one decision per sequence
        np.testing.assert_array_equal(units["top1"], rule[units["step"]])  # recorded = the router's choice
    trees = fit_routing_trees(decisions, depth=2)  # 4 levels: 2 splits tell them apart
    assert [t.layer for t in trees] == ["block0.ffn", "block1.ffn"]
    for t in trees:
        assert t.agreement == 1.0 and t.interval[1] == 1.0 and 0.8 < t.interval[0] < 1.0
        assert set(t.used) <= {"log_sigma"}
        assert t.n_heldout == 6 * 4  # held-out windows x levels
        if len(set(truth[t.layer])) > 1:
            assert t.used == ["log_sigma"] and t.majority_rate < 1.0


def test_tree_recovers_a_known_rule_and_a_too_shallow_one_cannot():
    rng = np.random.default_rng(0)
    n = 600
    log_sigma, state, noise = rng.uniform(-5, 5, n), rng.uniform(-1, 1, n), rng.normal(size=n)
    y = np.where(log_sigma > 1.0, "e0", np.where(state > 0.2, "e1", "e2"))
    x = np.stack([log_sigma, state, noise], axis=1)
    heldout = np.arange(n) >= 450
    names = ["log_sigma", "observation.state[0]", "unrelated"]
    fit = fit_tree(x, y, heldout, names, depth=2)
    assert fit["agreement"] >= 0.97 and fit["used"] == ["log_sigma", "observation.state[0]"]
    assert 0.8 < fit["model"].tree_.threshold[0] < 1.2  # the root splits where the rule does
    assert "log_sigma >  " in fit["text"] and "class: e1" in fit["text"]
    shallow = fit_tree(x, y, heldout, names, depth=1)
    assert shallow["agreement"] < 0.9 and shallow["majority_rate"] < shallow["agreement"]


def test_heldout_windows_come_from_unseen_episodes(two_embodiment_run):
    root, stores = two_embodiment_run
    policy = Policy.from_pretrained(resolve_checkpoint(root / "run"))
    decisions = collect_decisions(policy, stores, windows=40, holdout=0.25, seed=3)
    held = {ep for ep, h in zip(decisions.episodes, decisions.heldout, strict=True) if h}
    train = {ep for ep, h in zip(decisions.episodes, decisions.heldout, strict=True) if not h}
    assert held and train and not held & train
    assert len(held) == 2  # a quarter of the 8 episodes (4 per store)
    mixture = policy_windows(policy, stores)
    tr, ho, episodes = split_episodes(mixture, 0.5, windows=10_000, seed=1)
    assert len(tr) + len(ho) == len(mixture)  # every window drawn when more are asked for
    assert {episodes[i] for i in tr}.isdisjoint({episodes[i] for i in ho})
    assert len({episodes[i] for i in ho}) == 4
    for i in (0, 17, len(mixture) - 1):  # the episode each window is filed under is the one it reads
        assert episodes[i] == (mixture.datasets[int(mixture[i]["source_index"])].path, int(mixture[i]["episode_index"]))


def test_cli_writes_tree_text_png_and_json(two_embodiment_run, tmp_path):
    root, stores = two_embodiment_run
    out = tmp_path / "trees"
    args = ["inspect", "routing", str(root / "run"), "--data", stores[0], "--data", stores[1], "--tree"]
    opts = ["--depth", "2", "--windows", "16", "--state-dims", "0,1", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *opts])
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output and "block1.ffn" in result.output and "majority" in result.output
    summary = json.loads((out / "trees.json").read_text())
    assert summary["target"] == "top1" and summary["level_name"] == "sigma"
    assert summary["windows"] == {"train": 12, "heldout": 4}
    for layer in ("block0.ffn", "block1.ffn"):
        entry = summary["layers"][layer]
        assert set(entry) >= {"agreement", "interval95", "majority", "inputs_used", "depth", "units"}
        assert "observation.state[1]" in entry["inputs"] and "observation.state[2]" not in entry["inputs"]
        assert entry["depth"] <= 2
        text = (out / entry["text"]).read_text()
        assert "agreement with the router on held-out episodes" in text and "class: e" in text
        assert (out / entry["png"]).stat().st_size > 1000
    assert not list(out.glob("*.tmp"))  # written through temporary files, renamed


def test_himoe_action_space_trees_read_the_embodiment(himoe_run, tmp_path):
    run, stores = himoe_run
    policy = Policy.from_pretrained(resolve_checkpoint(run))
    decisions = collect_decisions(policy, stores, windows=16, state_dims=[])
    trees = {t.layer: t for t in fit_routing_trees(decisions, depth=2)}
    kinds = sorted(t.kind for t in trees.values())
    assert kinds == ["action_space", "action_space", "token"]
    for t in trees.values():
        assert t.inputs[:2] == ["t", "token"]  # per-token routers: the token's position is an input
        assert not any(name.startswith("observation.state") for name in t.inputs)
        if t.kind == "action_space":  # reads only the robot's slot mask: the embodiment decides
            assert t.agreement == 1.0 and set(t.used) <= {"embodiment=toy", "embodiment=toy_b"}
    token = next(name for name, t in trees.items() if t.kind == "token")
    _, _, units = decisions.layer_data(token)
    sets = decision_labels(units, "topk", decisions.layers[token].n_experts)
    assert {s.count("+") for s in sets} == {policy.config.hb_top_k - 1}
    files = write_tree_report(fit_routing_trees(decisions, depth=1, target="topk"), decisions, tmp_path, "topk")
    assert json.loads(files["json"].read_text())["target"] == "topk"


def test_bad_input_fails_clearly(two_embodiment_run, tmp_path):
    root, stores = two_embodiment_run
    run = str(root / "run")
    for opts, match in ((["--depth", "0"], "--depth must be at least 1"), (["--holdout", "1"], "--holdout"),
                        (["--state-dims", "a,b"], "--state-dims")):  # fmt: skip
        result = CliRunner().invoke(app, ["inspect", "routing", run, "--data", stores[0], "--tree", *opts])
        assert isinstance(result.exception, RoutingError) and match in str(result.exception), result.output
    policy = Policy.from_pretrained(resolve_checkpoint(run))
    with pytest.raises(DataError, match=r"eef.zarr \[observation.state\]: has 4 dimensions; --state-dims .* \[9\]"):
        collect_decisions(policy, stores, windows=8, state_dims=[0, 9])
    spec = dataclasses.replace(small_spec(cameras=()), state=())
    writer = StoreWriter(tmp_path / "no_state.zarr", spec)
    for i in range(2):
        writer.add_episode(Episode(frames={"action": np.zeros((20, spec.action_dim), np.float32)}, task="t",
                                   source_id=str(i)))  # fmt: skip
    no_state = writer.finalize()
    with pytest.raises(SamplerError, match=r"no_state.zarr: the window needs key 'observation.state'"):
        collect_decisions(policy, [str(no_state.path)], windows=8)
    one = write_reach_store(tmp_path / "one.zarr", episodes=1, length=20)
    with pytest.raises(RoutingError, match="one episode only"):
        collect_decisions(policy, [str(one.path)], windows=8)
    with pytest.raises(RoutingError, match="--depth must be at least 1"):
        fit_tree(np.zeros((4, 1)), np.array(["e0"] * 4), np.array([0, 0, 1, 1], bool), ["t"], depth=0)
