"""Foreign policies through our protocols: a LeRobot policy directory (`--policy lerobot:DIR`) and an
openpi-style websocket server (`--policy ws://HOST:PORT`, here our own `vla serve`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.eval.helpers import SUITE, TASK, save_checkpoint
from vla.cli import app
from vla.eval.episodes import EvalError
from vla.eval.protocols.calvin import CalvinEvalConfig, evaluate_calvin
from vla.policies.foreign import build_foreign
from vla.real_robot.deploy import load_policy_planner
from vla.real_robot.server.server import PolicyServer
from vla.sim.base import SimError
from vla.testing.calvin_fake import FakeBackendFactory
from vla.testing.lerobot_policy import write_tiny_act

AGENTVIEW = "observation.images.agentview"
TOKEN = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def libero_act(tmp_path_factory) -> Path:
    return write_tiny_act(tmp_path_factory.mktemp("act") / "policy", 8, 7, {AGENTVIEW: (24, 24)})


def _libero(policy: str, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["eval", "libero", "--suite", SUITE, "--tasks", str(TASK), "--init-states", "0-1", "--max-steps", "8",
            "--image-size", "32", "--policy", policy, "--out", str(out), "--no-progress", *extra]  # fmt: skip
    return CliRunner().invoke(app, args)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_lerobot_policy_runs_through_vla_eval_libero(libero_act: Path, tmp_path: Path) -> None:
    done = _libero(f"lerobot:{libero_act}", tmp_path / "eval", "--replan-steps", "4")
    assert done.exit_code == 0, done.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["policy"]["type"] == "lerobot/act"
    assert summary["settings"]["cameras"] == ["agentview"]
    rows = _records(tmp_path / "eval")
    assert all(r["error"] is None and r["steps"] == 8 and r["policy_calls"] == 2 for r in rows), rows


def test_a_lerobot_policy_runs_through_the_calvin_protocol(tmp_path: Path) -> None:
    policy = write_tiny_act(tmp_path / "act", 15, 7, {"observation.images.static": (16, 16)}, chunk=3)
    summary = evaluate_calvin(
        CalvinEvalConfig(
            out=tmp_path / "eval",
            policy=f"lerobot:{policy}",
            backend=FakeBackendFactory(),
            chain_ids=[0, 1],
            max_steps=6,
        ),
        progress=False,
    )
    assert summary["chains"] == 2 and summary["settings"]["cameras"] == ["static"]
    rows = _records(tmp_path / "eval")
    assert all(r["error"] is None and r["steps"] == 6 and r["policy_calls"] == 2 for r in rows), rows


def test_a_lerobot_policy_that_reads_other_features_fails_before_any_episode(tmp_path: Path) -> None:
    policy = write_tiny_act(tmp_path / "act", 9, 7, {"observation.images.front": (16, 16)})
    with pytest.raises(SimError) as err:
        evaluate_calvin(CalvinEvalConfig(out=tmp_path / "eval", policy=f"lerobot:{policy}",
                                         backend=FakeBackendFactory(), chain_ids=[0]), progress=False)  # fmt: skip
    message = str(err.value)
    assert (
        "missing 'observation.images.front'" in message and "'observation.state' has per-frame shape (15,)" in message
    )
    assert not (tmp_path / "eval" / "episodes.jsonl").exists()
    with pytest.raises(EvalError, match=r"policy_preprocessor\.json"):
        (policy / "policy_preprocessor.json").unlink()
        evaluate_calvin(CalvinEvalConfig(out=tmp_path / "e2", policy=f"lerobot:{policy}",
                                         backend=FakeBackendFactory(), chain_ids=[0]), progress=False)  # fmt: skip


def test_the_lerobot_planner_resizes_images_and_returns_the_action_layout(libero_act: Path) -> None:
    planner = build_foreign(f"lerobot:{libero_act}", replan_steps=3)
    assert planner.obs_keys == (AGENTVIEW, "observation.state") and planner.n_obs == 1
    rng = np.random.default_rng(0)
    batch = {AGENTVIEW: rng.integers(0, 255, (2, 1, 40, 30, 3), dtype=np.uint8),
             "observation.state": np.zeros((2, 1, 8), np.float32), "task": ["a", "b"]}  # fmt: skip
    plan = planner.plan(batch)
    assert plan.actions.shape == (2, 4, 7) and plan.n_exec.tolist() == [3, 3] and np.all(np.isfinite(plan.actions))
    again = planner.plan(batch)  # no hidden queue: the same observations give the same chunk
    assert np.array_equal(plan.actions, again.actions)


@pytest.mark.slow
def test_vla_serve_evaluated_through_a_websocket_policy(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "ckpt")  # state-only, fits LIBERO
    planner = load_policy_planner(str(ckpt))
    planner.warmup()
    with PolicyServer(planner, port=0, token=TOKEN, protocol="openpi") as server:
        uri = "ws://{}:{}".format(*server.address)
        done = _libero(uri, tmp_path / "eval", "--api-key", TOKEN)
        assert done.exit_code == 0, done.output
        wrong = _libero(uri, tmp_path / "wrong", "--api-key", "nope")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["policy"]["type"] == "websocket"
    rows = _records(tmp_path / "eval")
    assert all(r["error"] is None and r["steps"] == 8 for r in rows), rows
    assert server.stats["requests"] == sum(r["policy_calls"] for r in rows) > 0
    assert isinstance(wrong.exception, EvalError) and "401" in str(wrong.exception)
    assert TOKEN not in (tmp_path / "eval" / "summary.json").read_text()


def test_a_diffusion_policy_reads_its_observation_history(tmp_path: Path) -> None:
    """n_obs_steps=2: the harness's (B, 2, ...) history reaches LeRobot's offline predict_action_chunk."""
    from vla.testing.lerobot_policy import write_tiny_diffusion

    planner = build_foreign(f"lerobot:{write_tiny_diffusion(tmp_path / 'dp', 8, 7, AGENTVIEW)}")
    assert planner.n_obs == 2 and planner.native_config.chunk_size == 4
    batch = {AGENTVIEW: np.zeros((3, 2, 48, 48, 3), np.uint8), "observation.state": np.zeros((3, 2, 8), np.float32),
             "task": ["a", "b", "c"]}  # fmt: skip
    plan = planner.plan(batch)
    assert plan.actions.shape == (3, 4, 7) and np.all(np.abs(plan.actions) <= 1.0 + 1e-6)
