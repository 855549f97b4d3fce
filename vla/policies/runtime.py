"""The policy runtime: what every closed-loop caller (the evaluation worker, the deploy loop, the policy
server) uses to run a policy.

- `ObservationHistory`: the last `n_obs` frames per key, the first frame repeated after a reset or a new
  stage (as training pads the start of an episode).
- `observation_batch`: stacked histories in the store's layout -> a policy batch (the one HWC -> CHW
  boundary).
- `Plan`: per row, a chunk of raw-unit actions and how many of them to execute before re-planning.
- `PolicyPlanner`: the one runner. `plan(batch) -> Plan` calls `predict_plan` when the policy decides its
  horizon (Mixture-of-Horizons dynamic inference), else `predict_chunk` with a fixed re-plan interval, and
  binds a multi-embodiment policy to one robot (native state in, native actions out). Deployment and the
  server feed it observation streams (`plan_streams`, or `__call__` for one stream) and execute each
  chunk's `n_exec` actions.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vla.errors import PolicyError, VlaError
from vla.keys import STATE_KEY, TASK_KEY

# torch and the checkpoint code load on first use: an evaluation worker that only steps a simulator imports
# this module (histories, plans) and should not pay for torch.
if TYPE_CHECKING:
    import torch

    from vla.policies.config import PolicyConfig
    from vla.policies.embodiment import EmbodimentLayout
    from vla.policies.policy import Policy


class ObservationHistory:
    """The last `n_obs` frames of each key; after a `reset` the first frame pushed fills the whole history.

    Frames are kept as given: numpy arrays in the store's layout (one robot or environment: (...)), or torch
    tensors with a batch dimension (`Policy.select_action`: (B, ...), stacked with `axis=1`)."""

    def __init__(self, n_obs: int, keys: Sequence[str]):
        self.n_obs = n_obs
        self.keys = tuple(keys)
        self._frames: dict[str, deque[Any]] = {}

    def reset(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        """Keys holding frames (0 after a reset)."""
        return len(self._frames)

    def push(self, obs: Mapping[str, Any]) -> None:
        for key in self.keys:
            if key not in obs:
                raise PolicyError(f"observation is missing {key!r}")
        for key in self.keys:
            frames = self._frames.get(key)
            if frames is None:
                self._frames[key] = deque([obs[key]] * self.n_obs, maxlen=self.n_obs)
            else:
                frames.append(obs[key])

    def stacked(self, axis: int = 0) -> dict[str, Any]:
        """key -> the frames stacked along `axis` (numpy or torch, as pushed)."""
        return {k: _stack(list(frames), axis) for k, frames in self._frames.items()}


def _stack(frames: list[Any], axis: int) -> Any:
    torch = sys.modules.get("torch")  # tensors exist only if torch was imported
    if torch is not None and isinstance(frames[0], torch.Tensor):
        return torch.stack(frames, axis)
    return np.stack(frames, axis)


def observation_batch(
    config: PolicyConfig,
    frames: Mapping[str, np.ndarray],
    tasks: Sequence[str],
    device: torch.device | str = "cpu",
    layout: EmbodimentLayout | None = None,
) -> dict[str, Any]:
    """Stacked observation histories in the store's layout -> a policy batch.

    `frames[key]` is (B, n_obs, ...) as environments, robots and stores hold it (images uint8 HWC);
    this is the one HWC -> CHW boundary of every closed-loop caller (evaluation, deployment, server).
    `layout`: the robot's place in a multi-embodiment policy (its native state goes into its slots).
    """
    import torch

    cams = set(config.camera_keys)
    out: dict[str, Any] = {"task": [str(t) for t in tasks]}
    for key in config.observation_keys:
        x = torch.from_numpy(np.ascontiguousarray(frames[key]))
        out[key] = x.permute(0, 1, 4, 2, 3).contiguous() if key in cams else x.float()
    rows = len(out["task"])
    out["observation_is_pad"] = torch.zeros(rows, config.n_obs, dtype=torch.bool)
    out["embodiment_id"] = torch.zeros(rows, dtype=torch.long)  # single-embodiment callers
    if layout is not None:
        out = layout.to_policy(out)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


@dataclass
class Plan:
    actions: np.ndarray  # (B, H, A) in the robot's / environment's raw action units
    n_exec: np.ndarray  # (B,) ints in [1, H]: actions to execute before the next plan

    def executed(self) -> list[np.ndarray]:
        """Per row, the actions to execute: (n_exec, A)."""
        return [a[: int(n)] for a, n in zip(self.actions, self.n_exec, strict=True)]


def policy_decides_horizon(policy: Any) -> bool:
    """Whether a policy chooses how many actions of each chunk to execute (`predict_plan`)."""
    return hasattr(policy, "predict_plan") and bool(getattr(policy, "decides_horizon", True))


class PolicyPlanner:
    """A policy behind the planner interface: batches of observation histories -> a `Plan`.

    The caller keeps the per-row observation histories (the policy's own `select_action` queue would mix
    rows), so only `predict_chunk` / `predict_plan` are called, on the stacked rows. A policy that picks its
    own horizon implements `predict_plan(batch) -> (chunk, n_exec)` (and, if it does so only in some
    settings, `decides_horizon` says when); otherwise each row executes `replan_steps` actions.

    `dynamic_horizon`: the threshold ratio of a Mixture-of-Horizons policy's dynamic inference
    (`set_dynamic_horizon`). `embodiment`: for a policy trained on several robots (slot layout), which one
    this planner drives (`bind_embodiment`).
    """

    def __init__(
        self,
        policy: Policy,
        replan_steps: int | None = None,
        dynamic_horizon: float | None = None,
        embodiment: str | None = None,
    ):
        self.policy = policy.eval()
        self.layout: EmbodimentLayout | None = None
        # a checkpoint exported for one embodiment (vla export) drives that robot unless told otherwise
        if embodiment is not None or getattr(policy.config, "specialised_embodiment", None) is not None:
            self.bind_embodiment(embodiment)
        if dynamic_horizon is not None:
            self._set_dynamic_horizon(float(dynamic_horizon))
        cfg = policy.config
        self.n_obs = cfg.n_obs
        self.obs_keys = cfg.observation_keys
        # The re-plan interval cannot exceed the chunk: executing past it would need actions never predicted.
        self.replan_steps = min(replan_steps or cfg.n_action_steps, cfg.chunk_size)
        self.history = self.new_history()  # the one stream of `__call__`

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "cpu", **options: Any) -> PolicyPlanner:
        """A planner for the checkpoint in `checkpoint`, its weights on `device`."""
        from vla.policies.pretrained import load_pretrained

        return cls(load_pretrained(checkpoint, map_location=device), **options)

    def _set_dynamic_horizon(self, ratio: float) -> None:
        if not hasattr(self.policy, "set_dynamic_horizon"):
            raise PolicyError(f"--dynamic-horizon: a {self.policy.config.name!r} policy has no mixture of horizons")
        try:
            self.policy.set_dynamic_horizon(ratio)
        except VlaError as e:
            raise PolicyError(f"--dynamic-horizon {ratio}: {e}") from None

    def bind_embodiment(self, embodiment: str | None) -> None:
        """Run a multi-embodiment policy as `embodiment`: native observations in, native actions out
        (a no-op for single-embodiment policies)."""
        from vla.policies.embodiment import EmbodimentLayout

        self.layout = EmbodimentLayout.of(self.policy, embodiment)

    @property
    def multi_embodiment(self) -> bool:
        return self.policy.embodiments is not None

    @property
    def native_config(self) -> PolicyConfig:
        """The policy config as the robot or environment sees it: native state/action sizes when bound."""
        cfg = self.policy.config
        if self.layout is None:
            return cfg
        return cfg.replace(state_dim=self.layout.state_dim, action_dim=self.layout.action_dim)

    @property
    def decides_horizon(self) -> bool:
        return policy_decides_horizon(self.policy)

    # --- planning ---------------------------------------------------------------------------------------
    def plan(self, batch: Mapping[str, Any]) -> Plan:
        """`batch`: each observation key -> (B, n_obs, ...) numpy in the store's layout, `task` list[str]."""
        import torch

        inputs = observation_batch(self.policy.config, batch, batch[TASK_KEY], self.policy.device, self.layout)
        with torch.no_grad():
            if self.decides_horizon:
                chunk, n_exec = self.policy.predict_plan(inputs)
                n = np.asarray(torch.as_tensor(n_exec).cpu(), np.int64).reshape(-1)
            else:
                chunk = self.policy.predict_chunk(inputs)
                n = np.full(chunk.shape[0], self.replan_steps)
        if self.layout is not None:
            chunk = self.layout.to_native(chunk)
        actions = chunk.detach().float().cpu().numpy().astype(np.float64)
        return Plan(actions, np.clip(n, 1, actions.shape[1]))

    def new_history(self) -> ObservationHistory:
        return ObservationHistory(self.n_obs, self.obs_keys)

    def plan_streams(self, streams: Sequence[tuple[Mapping[str, Any], ObservationHistory]]) -> list[np.ndarray]:
        """Several robots' newest observations, each with its own history -> per robot, the actions to
        execute (n_exec, A). One forward pass for all (the server batches its clients with this)."""
        rows = []
        for obs, history in streams:
            history.push({k: np.asarray(obs[k]) for k in self.obs_keys if k in obs})
            rows.append(history.stacked())
        batch: dict[str, Any] = {k: np.stack([r[k] for r in rows]) for k in self.obs_keys}
        batch[TASK_KEY] = [str(obs.get(TASK_KEY, "")) for obs, _ in streams]
        return self.plan(batch).executed()

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One robot's newest observation -> the actions to execute (the deploy loop's planner)."""
        return self.plan_streams([(obs, self.history)])[0]

    def reset(self) -> None:
        """A new episode: the next observation starts a fresh history."""
        self.history.reset()

    def warmup(self, task: str = "") -> None:
        """One throw-away plan: the language encoder and kernels load now, not on the first control tick."""
        cfg = self.native_config
        obs: dict[str, Any] = {k: np.zeros((*cfg.image_size, 3), np.uint8) for k in cfg.camera_keys}
        if cfg.state_dim is not None:
            obs[STATE_KEY] = np.zeros(cfg.state_dim, np.float32)
        obs[TASK_KEY] = task
        self.plan_streams([(obs, self.new_history())])

    def describe(self) -> dict[str, Any]:
        """What to record about this planner (evaluation summaries)."""
        cfg = self.policy.config
        return {
            "type": cfg.name,
            "chunk_size": cfg.chunk_size,
            "n_obs": cfg.n_obs,
            "replan_steps": "policy-decided" if self.decides_horizon else self.replan_steps,
            **({"dynamic_horizon": cfg.dynamic_ratio} if getattr(cfg, "dynamic_ratio", None) is not None else {}),
            "parameters": int(sum(p.numel() for p in self.policy.parameters())),
            # an exported checkpoint (vla export): only the experts that can fire are loaded
            **({"specialised": spec} if (spec := _specialisation(self.policy)) is not None else {}),
        }


def _specialisation(policy: Any) -> dict[str, Any] | None:
    """What an exported checkpoint was specialised for (`Policy.specialisation`); None for a full model or an
    object that is not one of ours."""
    describe = getattr(policy, "specialisation", None)
    return describe() if callable(describe) else None
