"""Scripted CALVIN demonstrations: the writer on the fake backend (layout, `vla data convert --from calvin`
reading it back value for value, replaying a demo, resume after a kill, bad input), and the scripted
expert in the real simulator where calvin_env is installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets.convert.base import convert
from vla.sim import calvin_demos as demos
from vla.sim.base import SimError
from vla.sim.calvin.backend import REL_POS_SCALE
from vla.sim.calvin.instructions import instruction
from vla.sim.calvin.oracle import subtask_done
from vla.sim.calvin.scene import reset_arrays
from vla.sim.calvin.tasks import initial_states, next_states
from vla.sim.calvin_demos import DemoConfig, collect_demos, start_states
from vla.testing.calvin_fake import FakeBackendFactory, scripted_action

NO_SIM = "calvin_env (the CALVIN simulator) is not installed; install it with `vla sim calvin-setup PATH`"
SUBTASKS = ("open_drawer", "turn_on_led", "move_slider_left")  # the fake scene's scripted planner solves these


class FakeExpert:
    """The fake scene's scripted planner as a demo expert."""

    def __init__(self, subtask: str, rng: np.random.Generator):
        self.subtask = subtask

    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> None:
        pass

    def act(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> np.ndarray:
        return scripted_action(self.subtask, robot_obs, scene_obs)


def fake_config(out: Path, **overrides) -> DemoConfig:
    fake = {"rollout_backend": FakeBackendFactory(), "render_backend": FakeBackendFactory(32, 16), "expert": FakeExpert}
    base = {"out": out, "subtasks": SUBTASKS, "episodes": 3, "validation": 0.34, "static_size": 32, "gripper_size": 16}
    base |= fake
    return DemoConfig(**{**base, **overrides})


def attempts(out: Path) -> list[dict]:
    return [
        {k: v for k, v in a.items() if k != "seconds"} for a in json.loads((out / "demos.json").read_text())["attempts"]
    ]


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demos") / "calvin_demos"
    run = collect_demos(fake_config(out))
    assert not run.reused and [r.successes for r in run.reports()] == [3, 3, 3]
    return out


def test_layout_is_calvins_split_layout(demo_set):
    assert sorted(p.name for p in demo_set.iterdir()) == ["demos.json", "training", "validation"]
    assert not demo_set.with_name(demo_set.name + ".partial").exists()
    for split, per_subtask in (("training", 2), ("validation", 1)):
        folder = demo_set / split
        ids = np.load(folder / "ep_start_end_ids.npy")
        assert ids.shape == (per_subtask * len(SUBTASKS), 2) and ids.dtype == np.int64
        np.testing.assert_array_equal(np.load(folder / "ep_lens.npy"), ids[:, 1] - ids[:, 0] + 1)
        assert ids[0, 0] == 0 and (ids[1:, 0] == ids[:-1, 1] + 1).all(), "frames numbered without gaps"
        frames = sorted(folder.glob("episode_*.npz"))
        assert len(frames) == int(ids[-1, 1]) + 1
        with np.load(frames[0]) as z:
            assert set(z.files) == {"actions", "rel_actions", "robot_obs", "scene_obs", "rgb_static", "rgb_gripper"}
            assert z["rgb_static"].shape == (32, 32, 3) and z["rgb_gripper"].shape == (16, 16, 3)
        lang = np.load(folder / "lang_annotations" / "auto_lang_ann.npy", allow_pickle=True).item()
        tasks = [t for t in SUBTASKS for _ in range(per_subtask)]
        assert lang["language"]["task"] == tasks
        assert lang["language"]["ann"] == [instruction(t) for t in tasks]
        assert [tuple(int(v) for v in w) for w in lang["info"]["indx"]] == [tuple(r) for r in ids.tolist()]
        scene = np.load(folder / "scene_info.npy", allow_pickle=True).item()
        assert scene == {"calvin_scene_D": [0, int(ids[-1, 1])]}


def test_converter_reads_the_demos_back_unchanged(demo_set, tmp_path):
    store = convert("calvin", demo_set, tmp_path / "s.zarr", progress=False).store
    ids = np.load(demo_set / "training" / "ep_start_end_ids.npy")
    assert store.num_episodes == len(ids) and store.spec.source.details["split"] == "training"
    texts = [(int(s), int(e), store.tasks[t]) for s, e, t in store.annotations]
    for k, (first, last) in enumerate(ids.tolist()):
        ep = store.episode(k)
        assert ep.annotations[0][:2] == (0, last - first + 1), "one window over the whole demo"
        assert texts[k][2] == ep.annotations[0][2]
        for j, frame in enumerate(range(first, last + 1)):
            with np.load(demo_set / "training" / f"episode_{frame:07d}.npz") as z:
                np.testing.assert_allclose(ep.frames["action"][j], z["rel_actions"], rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(ep.frames["action.absolute"][j], z["actions"], rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(ep.frames["observation.state"][j], z["robot_obs"], rtol=1e-6, atol=1e-6)
                np.testing.assert_allclose(ep.frames["observation.scene_obs"][j], z["scene_obs"], rtol=1e-6, atol=1e-6)
                np.testing.assert_array_equal(ep.frames["observation.images.static"][j], z["rgb_static"])
    assert {store.tasks[t] for _, _, t in store.annotations} == {instruction(t) for t in SUBTASKS}


def test_each_demo_replays_to_the_oracles_success_from_its_start_state(demo_set):
    """The frames are the rollout: replaying the relative actions from the recorded start state in a fresh
    backend ends in the subtask's success exactly at the last frame; absolute actions accumulate the target."""
    for a in (a for a in attempts(demo_set) if a["success"]):
        folder = demo_set / a["split"]
        first, last = a["frames"]
        frames = [dict(np.load(folder / f"episode_{i:07d}.npz")) for i in range(first, last + 1)]
        backend = FakeBackendFactory()()
        obs = backend.reset(*reset_arrays(initial_states()[a["state_id"]]))
        np.testing.assert_allclose(obs["robot_obs"], frames[0]["robot_obs"])
        start, done = backend.get_info(), []
        for f in frames:
            np.testing.assert_allclose(obs["scene_obs"], f["scene_obs"])
            obs = backend.step(f["rel_actions"])
            done.append(subtask_done(a["subtask"], start, backend.get_info()))
        assert done[-1] and not any(done[:-1])
        moved = frames[0]["robot_obs"][:3] + REL_POS_SCALE * np.cumsum([f["rel_actions"][:3] for f in frames], axis=0)
        np.testing.assert_allclose([f["actions"][:3] for f in frames], moved, atol=1e-9)


def test_start_states_are_the_chains_states_where_the_subtask_is_feasible():
    ids = start_states("close_drawer", seed=0)
    assert sorted(ids) == [i for i, s in enumerate(initial_states()) if s["drawer"] == "open"]
    assert all(len(next_states(initial_states()[i], "close_drawer")) == 1 for i in ids)
    assert ids != sorted(ids) and start_states("close_drawer", seed=1) != ids


def test_a_killed_run_resumes_to_the_same_demo_set(demo_set, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real, calls = demos.write_frames, []

    def write_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # halfway through the second subtask
            real(*args, **kwargs)  # frames on disk, journal line not yet: the demo is redone
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demos, "write_frames", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        collect_demos(fake_config(out))
    assert not out.exists() and (tmp_path / "resumed.partial" / "journal.jsonl").is_file()
    monkeypatch.setattr(demos, "write_frames", real)
    with pytest.raises(SimError, match=r"other settings \(seed: 0 there, 5 now"):
        collect_demos(fake_config(out, seed=5))
    collect_demos(fake_config(out))
    assert attempts(out) == attempts(demo_set)
    assert sorted(p.name for p in (out / "training").iterdir()) == sorted(
        p.name for p in (demo_set / "training").iterdir()
    )
    again = collect_demos(fake_config(out))  # a finished set is found, not redone
    assert again.reused and len(again.attempts) == 9


def test_bad_subtasks_are_one_clear_error(tmp_path):
    with pytest.raises(
        SimError, match=r"unknown CALVIN subtask\(s\) open_the_drawer in --subtasks; known: rotate_red_block_right"
    ):
        collect_demos(fake_config(tmp_path / "a", subtasks=("open_drawer", "open_the_drawer")))
    with pytest.raises(SimError, match=r"no script for lift_red_block_table; scripted: move_slider_left"):
        collect_demos(DemoConfig(tmp_path / "b", ("lift_red_block_table",)))
    assert not list(tmp_path.iterdir()), "nothing written"
    result = CliRunner().invoke(app, ["sim", "demos", "--benchmark", "calvin", "--subtasks", "open_the_drawer",
                                      "--out", str(tmp_path / "c")])  # fmt: skip
    assert result.exit_code != 0 and "unknown CALVIN subtask(s) open_the_drawer" in str(result.exception)


# ---- the scripted expert in the real simulator (judged by the oracle, as the evaluation judges) ----
@pytest.fixture(scope="module")
def physics():
    pytest.importorskip("calvin_env", reason=NO_SIM)
    from vla.sim.calvin.env import SimulatorFactory

    sim = SimulatorFactory(cameras=(), renderer="tiny")()  # state only: physics at hundreds of steps a second
    yield sim
    sim.close()


@pytest.mark.parametrize("subtask", ["open_drawer", "close_drawer", "move_slider_right", "turn_on_lightbulb",
                                     "turn_off_led"])  # fmt: skip
def test_real_simulator_expert_solves_a_subtask(physics, subtask):
    from vla.sim.experts.calvin_scripted import CalvinExpert

    state_id = start_states(subtask, seed=0)[0]
    run = demos.rollout(physics, CalvinExpert(subtask, np.random.default_rng(0)), subtask, state_id, max_steps=360)
    assert run.success and len(run.rel_actions) < 360
    assert np.abs(run.rel_actions).max() <= 1.0 and set(run.rel_actions[:, 6]) <= {-1.0, 1.0}
