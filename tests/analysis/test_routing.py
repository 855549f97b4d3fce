"""`vla inspect routing`: expert selection counts per layer, embodiment, task and noise level."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.analysis.conftest import MOE
from tests.train.helpers import TINY, write_reach_store
from vla.analysis.routing import RoutingError, collect_routing, routing_purity
from vla.analysis.windows import WindowsError
from vla.cli import app
from vla.errors import PolicyError
from vla.policies.policy import Policy
from vla.policies.pretrained import resolve_checkpoint
from vla.train import TrainConfig, train


def test_counts_cover_every_layer_group_and_level(two_embodiment_run):
    root, stores = two_embodiment_run
    policy = Policy.from_pretrained(resolve_checkpoint(root / "run"))
    stats = collect_routing(policy, stores, windows=24, batch_size=10, seed=1)
    assert set(stats.layers) == {"block0.ffn", "block1.ffn"}
    assert stats.level_name == "sigma" and len(stats.levels) == MOE["num_sampling_steps"]
    for lc in stats.layers.values():
        assert lc.kind == "noise" and lc.n_experts == 4
        labels, freq = lc.frequency("embodiment")
        assert labels == ["toy", "toy_b"]
        # every routing unit selects exactly top_k experts
        np.testing.assert_allclose(freq.sum(1), MOE["top_k"])
        assert sum(lc.units["level"].values()) == 24 * len(stats.levels)
        assert lc.frequency("task")[0] == ["reach the goal"]
    # the noise router sees only the noise level: one level routes every window the same way
    for lc in stats.layers.values():
        _, by_level = lc.frequency("level")
        assert set(np.unique(by_level)) <= {0.0, 1.0}


def test_purity_measures_how_cleanly_embodiments_separate():
    clean = routing_purity({"a": np.array([10, 0, 0]), "b": np.array([0, 0, 7])})
    assert clean["mean"] == 1.0 and clean["distinct_majority"]
    mixed = routing_purity({"a": np.array([5, 5, 0]), "b": np.array([6, 4, 0])})
    assert mixed["mean"] == pytest.approx(0.55) and not mixed["distinct_majority"]


def test_cli_writes_table_json_and_heatmaps(two_embodiment_run, tmp_path):
    root, stores = two_embodiment_run
    out = tmp_path / "report"
    args = ["inspect", "routing", str(root / "run"), "--data", stores[0], "--data", stores[1]]
    result = CliRunner().invoke(app, [*args, "--windows", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "block0.ffn" in result.output and "toy_b" in result.output
    report = json.loads((out / "routing.json").read_text())
    assert set(report["layers"]["block1.ffn"]) >= {"embodiment", "task", "level", "purity"}
    for grouping in ("embodiment", "task", "level"):
        assert (out / f"routing_{grouping}.png").stat().st_size > 1000
    assert "| block0.ffn | noise | toy |" in (out / "routing.md").read_text()


def test_unfit_inputs_fail_clearly(two_embodiment_run, tmp_path):
    root, stores = two_embodiment_run
    policy = Policy.from_pretrained(resolve_checkpoint(root / "run"))
    other = write_reach_store(tmp_path / "c.zarr", episodes=2, length=20, action="joint5_gripper", embodiment="toy_c")
    with pytest.raises(WindowsError, match=r"toy_c.*not in the checkpoint"):
        collect_routing(policy, [stores[0], str(other.path)], windows=4)
    with pytest.raises(PolicyError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path)
    dense = write_reach_store(tmp_path / "d.zarr", episodes=2, length=20)
    tc = TrainConfig(data=(str(dense.path),), out=str(tmp_path / "dense"), steps=1, batch_size=4, warmup_steps=1,
                     progress=False)  # fmt: skip
    train("mode", tc, preset="cpu", overrides={**TINY, "use_moe": False})
    with pytest.raises(PolicyError, match="no experts"):
        collect_routing(Policy.from_pretrained(resolve_checkpoint(tmp_path / "dense")), [str(dense.path)], windows=4)


def test_himoe_routing_has_action_space_and_token_layers(himoe_run):
    run, stores = himoe_run
    stats = collect_routing(Policy.from_pretrained(resolve_checkpoint(run)), stores, windows=16)
    kinds = {name: lc.kind for name, lc in stats.layers.items()}
    assert sorted(kinds.values()) == ["action_space", "action_space", "token"]
    assert stats.level_name == "t" and len(stats.levels) == 3
    for lc in stats.layers.values():
        labels, freq = lc.frequency("embodiment")
        assert labels == ["toy", "toy_b"]
        top_k = 1 if lc.kind == "action_space" else 2  # the cpu preset's hb_top_k
        np.testing.assert_allclose(freq.sum(1), top_k)
    report = stats.to_json()["layers"]
    for name, kind in kinds.items():
        purity = report[name]["purity"]["mean"]
        if kind == "action_space":  # a router reading only the slot mask routes each robot one way
            assert purity == 1.0
        else:
            assert 0 < purity <= 1


def test_expert_similarity_is_the_correlation_of_router_probabilities():
    from vla.analysis.routing import LayerCounts

    lc = LayerCounts("noise", 4)
    with pytest.raises(RoutingError, match="no router probabilities"):
        lc.similarity()
    # experts 0 and 1 rise and fall together, 2 opposite to them, 3 never changes
    lc.add_probs(np.array([[0.3, 0.3, 0.15, 0.25], [0.2, 0.2, 0.35, 0.25]]))
    lc.add_probs(np.array([[0.35, 0.35, 0.05, 0.25]]))
    sim = lc.similarity()
    np.testing.assert_allclose(sim[0], [1.0, 1.0, -1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    np.testing.assert_allclose(sim, sim.T)
