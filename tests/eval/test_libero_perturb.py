"""`vla eval libero --perturb`: perturbed layouts recorded in the settings and per episode, so runs pair up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.eval.helpers import eval_config
from vla.eval.episodes import EvalError
from vla.eval.protocols.libero import evaluate_libero, prepare


def test_bad_perturbation_fails_before_any_episode(tmp_path):
    with pytest.raises(EvalError, match="objects=D"):
        prepare(eval_config(tmp_path / "out", perturb="objects=far"))
    assert not (tmp_path / "out").exists()


def test_unperturbed_settings_do_not_name_a_perturbation(tmp_path):
    plan = prepare(eval_config(tmp_path / "out"))
    assert "perturbation" not in plan.settings and all("perturbation" not in e.meta for e in plan.episodes)


@pytest.mark.slow
def test_perturbed_run_records_the_layout_and_starts_from_it(tmp_path):
    config = eval_config(tmp_path / "out", perturb="objects=0.05", perturb_seed=3, init_states=[40], max_steps=2)
    summary = evaluate_libero(config, progress=False)
    expected = {"objects": 0.05, "seed": 3, "method": "fixed-distance random direction"}
    assert summary["settings"]["perturbation"] == expected
    rows = [json.loads(line) for line in (tmp_path / "out" / "episodes.jsonl").read_text().splitlines()]
    assert rows and all(r["perturbation"] == expected for r in rows)
    # The environment the run builds starts each episode from the displaced layout.
    plan = prepare(config)
    env = plan.factory(plan.episodes[0])
    try:
        plain = env.__class__(env.task.suite, env.task.task_id, cameras=())
        assert not np.array_equal(env.layout(40), plain.layout(40))
        assert env.perturbation.seed == 3
    finally:
        env.close()
        plain.close()
    # A different perturbation is a different protocol: resuming into the same folder is refused.
    with pytest.raises(EvalError):
        evaluate_libero(eval_config(tmp_path / "out", perturb="objects=0.1", init_states=[40], max_steps=2),
                        progress=False)  # fmt: skip
