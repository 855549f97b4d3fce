"""`vla serve` and `vla deploy` with a checkpoint from `vla export`: the same actions as the full checkpoint
over the openpi protocol, and an arm the export was not made for is refused before it moves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from websockets.sync.client import connect

from tests.policies.test_specialise import two_robot_himoe
from vla.errors import VlaError
from vla.policies.openpi_wire import pack, unpack
from vla.policies.specialise import export_specialised
from vla.real_robot.deploy import load_policy_planner
from vla.real_robot.server.server import PolicyServer

from .helpers import tiny_mode_checkpoint

STATE = "observation.state"


def served_actions(checkpoint: Path, state: np.ndarray, seed: int = 0) -> np.ndarray:
    planner = load_policy_planner(str(checkpoint))  # what `vla serve --policy CHECKPOINT` runs
    with (
        PolicyServer(planner, port=0, protocol="openpi") as server,
        connect("ws://{}:{}".format(*server.address), compression=None, max_size=None) as client,
    ):
        unpack(client.recv())  # the server's metadata
        torch.manual_seed(seed)  # the initial noise of the one plan below
        client.send(pack({STATE: state, "prompt": "pick"}))
        return unpack(client.recv())["actions"]


def test_a_served_expert_plan_answers_as_the_full_checkpoint(tmp_path: Path) -> None:
    full = tiny_mode_checkpoint(tmp_path / "full", n_layers=2, num_sampling_steps=3)
    export_specialised(full, tmp_path / "plan", expert_plan=True)
    state = np.linspace(-1, 1, 6).astype(np.float32)
    assert np.array_equal(served_actions(tmp_path / "plan", state), served_actions(full, state))


def test_deploying_a_specialised_himoe_binds_its_robot_and_refuses_another(tmp_path: Path) -> None:
    two_robot_himoe().save_pretrained(tmp_path / "full")
    export_specialised(tmp_path / "full", tmp_path / "eef", embodiment="eef_arm")
    planner = load_policy_planner(str(tmp_path / "eef"))  # `vla serve`: no robot named
    assert planner.layout is not None and planner.layout.name == "eef_arm"
    assert planner.native_config.action_dim == 7
    with pytest.raises(VlaError, match=r"exported for embodiment 'eef_arm' only.*'joint_arm'"):
        load_policy_planner(str(tmp_path / "eef"), embodiment="joint_arm")  # `vla deploy` on the other arm
