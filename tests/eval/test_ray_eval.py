"""`vla eval --ray` on a real local Ray instance (2 CPUs): the same episodes as the process backend,
resume after a kill, and an env actor killed mid-chain whose chain runs again elsewhere, once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

from tests.eval.helpers import eval_config
from vla.cli import app
from vla.eval import ray_runner
from vla.eval.episodes import EvalError
from vla.eval.protocols.calvin import CalvinEvalConfig, evaluate_calvin
from vla.eval.protocols.libero import evaluate_libero
from vla.eval.results import ResultsLog
from vla.testing.calvin_fake import FakeBackendFactory, ScriptedPlanner

CHAINS = [0, 1, 4, 13, 19]  # lengths 0, 1, 4, 2 and 5 with the scripted planner in the fake scene


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local Ray instance for the module (starting one costs ~10 s); the runs must leave it up."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def config(out: Path, **overrides) -> CalvinEvalConfig:
    base = {"out": out, "policy": ScriptedPlanner(), "backend": FakeBackendFactory(), "chain_ids": CHAINS}
    return CalvinEvalConfig(**{**base, **overrides})


def stable(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    ids = [r["episode_id"] for r in rows]
    assert len(ids) == len(set(ids)), "every episode exactly once"
    return {r["episode_id"]: {k: v for k, v in r.items() if k != "wall_s"} for r in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The chains through the process backend (one in-process worker)."""
    out = tmp_path_factory.mktemp("processes")
    evaluate_calvin(config(out), progress=False)
    return stable(out)


def test_ray_runs_the_same_chains_as_the_process_backend(reference, tmp_path):
    summary = evaluate_calvin(config(tmp_path, workers=2, ray="auto"), progress=False)
    assert stable(tmp_path) == reference
    assert summary["run"]["backend"] == "ray" and summary["avg_len"] == pytest.approx(2.4)
    assert summary["throughput"]["retried_episodes"] == 0
    assert summary["throughput"]["policy_calls"] <= summary["throughput"]["plans"]  # batched across actors
    assert ray.is_initialized(), "a Ray instance we did not start is left running"


def test_an_actor_killed_mid_chain_has_its_chain_rerun_once(reference, tmp_path, monkeypatch):
    real_count, killed = ray_runner._Loop._count, []

    def count_then_kill(self, reply):
        real_count(self, reply)
        if not killed:  # the other actors are mid-chain now: kill them
            done = reply.result.episode_id
            killed.extend(i for i, spec in self.active.items() if spec.episode_id != done)
            for i in killed:
                ray.kill(self.envs[i])

    monkeypatch.setattr(ray_runner._Loop, "_count", count_then_kill)
    summary = evaluate_calvin(config(tmp_path, workers=2, ray="auto"), progress=False)
    assert killed, "an actor was killed mid-run"
    assert summary["throughput"]["retried_episodes"] == len(killed)
    assert stable(tmp_path) == reference and summary["chains"] == 5


def test_resume_on_ray(reference, tmp_path, monkeypatch):
    real_append, calls = ResultsLog.append, []

    def append_then_die(self, result):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(result.episode_id)
        return real_append(self, result)

    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(ResultsLog, "append", append_then_die)
        evaluate_calvin(config(tmp_path, workers=2, ray="auto"), progress=False)
    summary = evaluate_calvin(config(tmp_path, workers=2, ray="auto"), progress=False)
    assert summary["run"]["resumed_episodes"] == 2 and summary["throughput"]["episodes"] == 3
    assert stable(tmp_path) == reference


def test_more_workers_than_the_cluster_has_cpus(tmp_path):
    with pytest.raises(EvalError, match="Ray cluster has 2 CPUs"):
        evaluate_calvin(config(tmp_path, workers=3, chain_ids=[0, 1, 4], ray="auto"), progress=False)


def test_cli_offers_ray():
    for bench in ("libero", "calvin"):
        helped = CliRunner().invoke(app, ["eval", bench, "--help"])
        assert helped.exit_code == 0 and "--ray" in helped.output


@pytest.mark.slow
def test_libero_on_ray_equals_processes(tmp_path):
    """The real simulator in 2 Ray actors, the random policy (seeded per episode and plan): same episodes."""
    evaluate_libero(eval_config(tmp_path / "p"), progress=False)
    summary = evaluate_libero(eval_config(tmp_path / "r", workers=2, ray="auto"), progress=False)
    assert summary["run"]["backend"] == "ray" and summary["throughput"]["episodes"] == 4
    assert stable(tmp_path / "r") == stable(tmp_path / "p")
