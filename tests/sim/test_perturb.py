"""Perturbed layouts in the real LIBERO simulator: deterministic per seed, every object moved by the
distance asked, apart from the others, resting where it was put; the expert still solves one."""

from __future__ import annotations

import numpy as np
import pytest

from vla.sim.base import SimError
from vla.sim.libero import LiberoEnv
from vla.sim.perturb import Perturbation, objects_touching, parse_perturbation

SUITE, TASK, STATE = "libero_object", 0, 40


def test_parse_perturbation():
    assert parse_perturbation("objects=0.05") == Perturbation(0.05, 0)
    assert parse_perturbation(" objects = .1", seed=3) == Perturbation(0.1, 3)
    assert Perturbation(0.05).to_json()["objects"] == 0.05
    for bad in ("objects=-1", "objects=1", "distance=0.05", "objects=", "objects=0.05m"):
        with pytest.raises(SimError, match="objects="):
            parse_perturbation(bad)


@pytest.fixture(scope="module")
def envs():
    made = {
        "plain": LiberoEnv(SUITE, TASK, cameras=()),
        "a": LiberoEnv(SUITE, TASK, cameras=(), perturbation=Perturbation(0.05, 0)),
        "b": LiberoEnv(SUITE, TASK, cameras=(), perturbation=Perturbation(0.05, 0)),
        "other_seed": LiberoEnv(SUITE, TASK, cameras=(), perturbation=Perturbation(0.05, 1)),
    }
    yield made
    for env in made.values():
        env.close()


def _positions(env: LiberoEnv) -> dict[str, np.ndarray]:
    return {n: env.object_pose(n)[0] for n in env.robosuite_env.objects_dict}


@pytest.mark.slow
def test_layout_is_deterministic_moved_apart_and_resting(envs):
    plain, a, b, other = envs["plain"], envs["a"], envs["b"], envs["other_seed"]
    np.testing.assert_array_equal(a.layout(STATE), b.layout(STATE))  # same seed, another env: same layout
    assert a.displacements[STATE] == b.displacements[STATE]
    assert not np.array_equal(a.layout(STATE), plain.layout(STATE))
    assert not np.array_equal(a.layout(STATE), other.layout(STATE))  # the seed picks the directions
    assert a.spec.source.details["perturbation"]["objects"] == 0.05
    plain.reset(STATE)
    before = _positions(plain)
    a.reset(STATE)
    after = _positions(a)
    assert set(after) == set(before) and len(after) >= 5
    for name, pos in after.items():
        moved = pos - before[name]
        # Every object was moved 5 cm in the plane and rests there after settling: on the surface it stood on.
        assert abs(np.linalg.norm(moved[:2]) - 0.05) < 0.01, name
        assert abs(moved[2]) < 0.01, name
        np.testing.assert_allclose(moved[:2], a.displacements[STATE][name], atol=0.01)
    assert objects_touching(a, list(after)) == []
    # An episode from the perturbed state starts from it every time.
    again = a.reset(STATE)["observation.state"]
    np.testing.assert_array_equal(again, a.reset(STATE)["observation.state"])


@pytest.mark.slow
def test_the_scripted_expert_solves_a_perturbed_state(tmp_path):
    from vla.sim.scripted import collect_task

    report = collect_task(
        SUITE, TASK, tmp_path, 1, init_state_ids=[STATE], max_attempts=1, perturbation=Perturbation(0.05, 0)
    )
    assert (report.successes, report.attempts) == (1, 1)
