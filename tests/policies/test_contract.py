"""The contract every registered policy keeps, with and without a mixture of horizons (MoH): it trains a
step, saves and loads (safetensors), predicts a chunk and a plan, and runs through the policy runtime in
the evaluation worker and in the deploy loop on the servo-bus emulator.

The cases come from the policy registry, so a new policy gets these tests by its registry line. Each case
is its `cpu` preset with the generic tiny sizes below (the ones a config has), a state-only SO-101-sized
data contract (6-D state and actions, no camera, empty instructions: no language encoder is loaded).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vla.cli import app
from vla.cli.train import moh_settings
from vla.eval.episodes import EpisodeSpec
from vla.eval.planners import PlannerSpec
from vla.eval.worker import LocalWorker, SlotConfig
from vla.keys import ACTION_KEY, STATE_KEY
from vla.policies.modules.moe import keep_idle_experts
from vla.policies.policy import Policy
from vla.policies.registry import available_policies, get_policy
from vla.policies.runtime import Plan, PolicyPlanner
from vla.real_robot.arm import load_arm
from vla.real_robot.chunks import ChunkBuffer
from vla.real_robot.recorder import store_spec
from vla.sim.base import SimEnv, StepResult
from vla.train.config import TrainError

ARM = "so101"
DOF = 6
CONTRACT = {"camera_keys": (), "state_dim": DOF, "action_dim": DOF, "chunk_size": 6, "n_action_steps": 4}
# Small sizes, applied to the configs that have these fields (the rest of each case is its `cpu` preset).
TINY = {"width": 32, "n_heads": 2, "n_layers": 1, "num_sampling_steps": 2, "num_steps": 2}
HORIZONS = "2,4,6"
DYNAMIC_RATIO = 1.3


class Case(NamedTuple):
    policy: str
    moh: bool

    def __str__(self) -> str:
        return f"{self.policy}-{'moh' if self.moh else 'plain'}"

    def config(self) -> Any:
        config_cls, _ = get_policy(self.policy)
        fields = {f.name for f in dataclasses.fields(config_cls)}
        overrides = {**CONTRACT, **{k: v for k, v in TINY.items() if k in fields}}
        if self.moh:
            try:
                overrides.update(moh_settings(self.policy, HORIZONS))
            except TrainError:
                pytest.skip(f"{self.policy} has no mixture of horizons")
        return config_cls.from_preset("cpu", **overrides)

    def build(self) -> Policy:
        _, model_cls = get_policy(self.policy)
        config = self.config()
        unit = {"mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0, "q01": -1.0, "q99": 1.0}  # every mode's statistics
        stats = {key: {k: [v] * DOF for k, v in unit.items()} for key in (ACTION_KEY, STATE_KEY)}
        torch.manual_seed(0)
        return model_cls(config, stats)

    @property
    def dynamic_horizon(self) -> float | None:
        """MoH cases run with dynamic inference: the policy decides how many actions each plan executes."""
        return DYNAMIC_RATIO if self.moh else None


CASES = [Case(name, moh) for name in available_policies() for moh in (False, True)]


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def checkpoint(case: Case, tmp_path: Path) -> Path:
    return case.build().save_pretrained(tmp_path / "ckpt")


def training_batch(config: Any, rows: int = 2) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        STATE_KEY: torch.randn(rows, config.n_obs, DOF, generator=g),
        "observation_is_pad": torch.zeros(rows, config.n_obs, dtype=torch.bool),
        ACTION_KEY: torch.rand(rows, config.chunk_size, DOF, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(rows, config.chunk_size, dtype=torch.bool),
        "task": [""] * rows,
        "embodiment_id": torch.zeros(rows, dtype=torch.long),
    }


def test_trains_one_step(case: Case) -> None:
    policy = case.build().train()
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    loss, info = policy(training_batch(policy.config))
    assert loss.ndim == 0 and torch.isfinite(loss) and isinstance(info, dict)
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_saves_and_loads_with_the_same_outputs(case: Case, tmp_path: Path) -> None:
    policy = case.build().eval()
    directory = policy.save_pretrained(tmp_path / "ckpt")
    assert (directory / "model.safetensors").is_file() and (directory / "config.json").is_file()
    loaded = Policy.from_pretrained(directory).eval()
    assert type(loaded) is type(policy) and loaded.config == policy.config
    batch = training_batch(policy.config)
    noise = torch.randn(2, policy.config.chunk_size, DOF, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.predict_chunk(batch, noise=noise), policy.predict_chunk(batch, noise=noise))


def test_predicts_a_chunk_and_a_plan(case: Case) -> None:
    policy = case.build().eval()
    if case.dynamic_horizon is not None:
        policy.set_dynamic_horizon(case.dynamic_horizon)
    cfg = policy.config
    batch = training_batch(cfg, rows=3)
    assert policy.predict_chunk(batch).shape == (3, cfg.chunk_size, DOF)
    chunk, n_exec = policy.predict_plan(batch)
    n = torch.as_tensor(n_exec)
    assert chunk.shape == (3, cfg.chunk_size, DOF) and n.shape == (3,)
    assert ((n >= 1) & (n <= cfg.chunk_size)).all()


class ArmEnv(SimEnv):
    """A 6-joint arm that goes where it is told: enough of a simulator to run an episode through the worker."""

    def __init__(self) -> None:
        self.state = np.zeros(DOF, np.float32)

    @property
    def spec(self) -> Any:
        arm = load_arm(ARM)
        return store_spec(arm, arm.rate_hz, {})

    @property
    def task_language(self) -> str:
        return ""

    @property
    def max_steps(self) -> int:
        return 9

    @property
    def num_init_states(self) -> int:
        return 1

    def reset(self, init_state_id: int) -> dict[str, np.ndarray]:
        self.state = np.zeros(DOF, np.float32)
        return {STATE_KEY: self.state.copy()}

    def step(self, action: np.ndarray) -> StepResult:
        assert action.shape == (DOF,) and np.isfinite(action).all()
        self.state = np.asarray(action, np.float32)
        return StepResult({STATE_KEY: self.state.copy()}, False, {})

    def close(self) -> None:
        pass


def make_arm_env(spec: EpisodeSpec) -> ArmEnv:
    return ArmEnv()


def test_runs_an_episode_in_the_eval_worker(case: Case, checkpoint: Path) -> None:
    planner_spec = PlannerSpec(str(checkpoint), dynamic_horizon=case.dynamic_horizon)
    planner = planner_spec.build()
    assert isinstance(planner, PolicyPlanner)
    worker = LocalWorker(SlotConfig(make_arm_env, planner.n_obs, planner.obs_keys), planner_spec)
    worker.send(("start", EpisodeSpec("arm/0", "arm", "arm", 0, 0), False))
    reply = worker.recv()
    worker.close()
    result = reply.result
    assert reply.kind == "done" and result is not None and result.error is None, reply
    assert result.steps == result.actions_executed == 9 and 2 <= result.policy_calls <= 9


def test_deploys_on_the_emulator_executing_each_plans_n_exec(
    case: Case, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vla deploy --dry-run` (and `--dynamic-horizon` for MoH): every chunk the loop receives is the
    plan's n_exec actions, and with dynamic horizons that is what `predict_plan` chose."""
    plans: list[Plan] = []
    chosen: list[int] = []
    received: list[int] = []
    plan, add = PolicyPlanner.plan, ChunkBuffer.add
    _, model_cls = get_policy(case.policy)
    predict_plan = model_cls.predict_plan

    def spy_plan(self: PolicyPlanner, batch: dict[str, Any]) -> Plan:
        plans.append(plan(self, batch))
        return plans[-1]

    def spy_predict_plan(self: Policy, batch: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        chunk, n_exec = predict_plan(self, batch, *args, **kwargs)
        chosen.extend(torch.as_tensor(n_exec).tolist())
        return chunk, n_exec

    def spy_add(self: ChunkBuffer, chunk: Any, now_tick: int) -> None:
        received.append(len(chunk.actions))
        add(self, chunk, now_tick)

    monkeypatch.setattr(PolicyPlanner, "plan", spy_plan)
    if case.dynamic_horizon is not None:  # (a class with its own predict_plan counts as deciding its horizon)
        monkeypatch.setattr(model_cls, "predict_plan", spy_predict_plan)
    monkeypatch.setattr(ChunkBuffer, "add", spy_add)
    args = ["deploy", "--robot", ARM, "--policy", str(checkpoint), "--dry-run", "--seconds", "1.0", "--fps", "10"]
    if case.dynamic_horizon is not None:
        args += ["--dynamic-horizon", str(case.dynamic_horizon)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "episode 0: finished" in out.output and "inference_error" not in out.output
    executed = [int(p.n_exec[0]) for p in plans[1:]]  # the first plan is the warm-up
    assert received and received == executed[: len(received)]
    chunk_size = plans[0].actions.shape[1]
    if case.dynamic_horizon is None:
        assert set(received) == {chunk_size}, "without dynamic horizons every predicted action is sent"
    else:
        assert chosen[1 : len(received) + 1] == received, "the loop runs the steps predict_plan chose"
        assert min(chosen) < chunk_size, "dynamic inference cut at least one plan short"


def test_every_parameter_joins_the_graph_for_data_parallel_training(case: Case) -> None:
    """DDP reduces every parameter on every process: with `keep_idle_experts` (what the trainer sets under
    several processes) no parameter may be left without a gradient, even on a one-window batch where most
    experts get no token, and the loss must be exactly the single-process one."""
    policy = case.build().train()
    batch = training_batch(policy.config, rows=1)
    torch.manual_seed(1)
    plain, _ = policy(batch)
    keep_idle_experts(policy)
    for seed in (1, 2, 3):
        policy.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        loss, _ = policy(batch)
        if seed == 1:
            assert torch.equal(loss, plain)
        loss.backward()
        missing = [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing[:5]
