"""The policy base class every policy model derives from.

A policy is a config (vla.policies.config) and a model (a `Policy`, an nn.Module): `forward(batch) -> (loss,
info)`, `predict_chunk(batch) -> (B, H, A)` unnormalised actions, `select_action(obs)` with an internal queue
of the last chunk (`n_action_steps` executed per plan) and `reset()`, `save_pretrained(dir)` /
`from_pretrained(dir)` (vla.policies.pretrained). Normalisation lives inside the policy (a `Normalizer` from
vla.datasets.normalize, built from store statistics and saved with the checkpoint), so what the data loader
gives and what the robot gets are raw units and nothing is normalised twice or forgotten. A policy trained on
a mixture of robots also carries its embodiment table (`embodiments`, saved with the checkpoint).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from vla.datasets.normalize import MultiNormalizer, Normalizer
from vla.errors import PolicyError
from vla.keys import ACTION_KEY, STATE_KEY, TASK_KEY
from vla.policies.config import PolicyConfig
from vla.policies.embodiment import EmbodimentTable
from vla.policies.modules.moe import expert_parameters
from vla.policies.pretrained import hub_error, load_pretrained, resolve_pretrained, save_pretrained
from vla.policies.routing import LayerRouting
from vla.policies.runtime import ObservationHistory


class Policy(nn.Module, PyTorchModelHubMixin, library_name="vla", tags=["robotics", "vla"]):
    """Base policy. Subclasses implement `forward` (training loss) and `predict_chunk`.

    Checkpoints go through huggingface_hub's `PyTorchModelHubMixin` (`save_pretrained`, `push_to_hub`,
    `from_pretrained` of a local directory or a Hub repo id) with our own files: `_save_pretrained` and
    `_from_pretrained` are the readers and writers of vla.policies.pretrained."""

    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig, dataset_stats: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__()
        self.config = config
        self.normalizer: Normalizer | MultiNormalizer = Normalizer({})
        self._embodiments: EmbodimentTable | None = None
        if dataset_stats is not None:
            self.set_normalization(dataset_stats)
        self._action_queue: deque[torch.Tensor] = deque()
        self._obs_history = ObservationHistory(config.n_obs, config.observation_keys)

    # --- normalisation seam -----------------------------------------------------------------------
    def set_normalization(
        self,
        stats: Mapping[str, Mapping[str, Any]] | Normalizer | MultiNormalizer,
        embodiments: EmbodimentTable | None = None,
    ) -> None:
        """Use store statistics (key -> {mean, std, min, max, q01, q99, ...}) or a ready normaliser.

        A mixture's per-embodiment `MultiNormalizer` makes this a multi-embodiment policy: `embodiments`
        becomes its table of robots (by default the normaliser's embodiment names and slots)."""
        if embodiments is None and isinstance(stats, MultiNormalizer):
            embodiments = EmbodimentTable.from_json({"names": stats.names, "slots": stats.slots})
        self._embodiments = embodiments
        if isinstance(stats, Normalizer | MultiNormalizer):
            self.normalizer = stats
            return
        modes = {k: m for k, m in self.config.normalization.items() if k in stats or k == "action"}
        self.normalizer = Normalizer.from_stats(stats, modes)

    def normalize(self, key: str, x: torch.Tensor, embodiment_id: torch.Tensor | None = None) -> torch.Tensor:
        return self.normalizer.normalize(key, x, embodiment_id)

    def unnormalize(self, key: str, x: torch.Tensor, embodiment_id: torch.Tensor | None = None) -> torch.Tensor:
        return self.normalizer.unnormalize(key, x, embodiment_id)

    @property
    def embodiments(self) -> EmbodimentTable | None:
        """The robots of a multi-embodiment (slot-layout) policy; None for a single-embodiment policy."""
        return self._embodiments

    # --- batches ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        first = next(self.parameters(), None)
        return torch.device("cpu") if first is None else first.device

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        dev = self.device
        return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _batch_size(self, batch: Mapping[str, Any]) -> int:
        for key in (*self.config.camera_keys, STATE_KEY, ACTION_KEY):
            if key in batch:
                return int(batch[key].shape[0])
        if isinstance(batch.get("task"), list | tuple):
            return len(batch["task"])
        raise PolicyError("cannot tell the batch size: no camera, state, action or task in the batch")

    def _action_chunk(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's raw action chunks (B, chunk_size, action_dim) as floats."""
        actions, cfg = batch["action"], self.config
        if actions.shape[1:] != (cfg.chunk_size, cfg.action_dim):
            raise PolicyError(f"action should be (B, {cfg.chunk_size}, {cfg.action_dim}), got {tuple(actions.shape)}")
        return actions.float()

    def _tasks(self, batch: Mapping[str, Any]) -> list[str]:
        """The batch's instructions, one per row ("" when it has none)."""
        tasks, rows = batch.get("task"), self._batch_size(batch)
        return [""] * rows if tasks is None else ([tasks] * rows if isinstance(tasks, str) else list(tasks))

    # --- the interface ----------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError

    def predict_chunk(self, batch: Mapping[str, Any]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def reset(self) -> None:
        """Call at the start of every episode: clears the action queue and observation history."""
        self._action_queue.clear()
        self._obs_history.reset()

    @torch.no_grad()
    def select_action(self, obs: Mapping[str, Any]) -> torch.Tensor:
        """One action (B, A) for the current observation; plans a new chunk when the queue is empty.

        `obs` holds one frame per key (images (B, 3, H, W), state (B, S)) plus `task`; the policy keeps
        the last `n_obs` frames itself (repeating the first frame after a reset, like training)."""
        batch = self._with_history(obs)
        if not self._action_queue:
            chunk = self.predict_chunk(batch)  # (B, H, A)
            self._action_queue.extend(chunk[:, : self.config.n_action_steps].transpose(0, 1))
        return self._action_queue.popleft()

    def _with_history(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """`obs` with each observation key's last `n_obs` frames (B, n_obs, ...) and the batch's `task` list."""
        self._obs_history.push({k: torch.as_tensor(obs[k]) for k in self._obs_history.keys if k in obs})
        frames = self._obs_history.stacked(axis=1)
        batch_size = next(iter(frames.values())).shape[0] if frames else 1
        task = obs.get(TASK_KEY, "")
        return {
            **obs,
            **frames,
            "observation_is_pad": torch.zeros(batch_size, self.config.n_obs, dtype=torch.bool),
            TASK_KEY: [task] * batch_size if isinstance(task, str) else list(task),
        }

    # --- checkpoints ----------------------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None, **hub_kwargs: Any
    ) -> Path:
        """Write config.json, model.safetensors and normalization.json (and a model card, README.md) into
        `directory`; `hub_kwargs` are the mixin's (`push_to_hub=True, repo_id=...` uploads it).

        `state_dict`: weights to save instead of the module's own (the trainer saves EMA weights)."""
        self._weights_to_save = state_dict
        try:
            super().save_pretrained(directory, **hub_kwargs)
        finally:
            self._weights_to_save = None
        return Path(directory)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_pretrained(self, save_directory, getattr(self, "_weights_to_save", None))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path, map_location: str | torch.device = "cpu", **hub_kwargs: Any
    ) -> Policy:
        """A checkpoint directory, or a Hub repo id ("owner/name", optionally revision=..., cache_dir=...):
        resolved from the local Hugging Face cache, and downloaded only when the process is online."""
        if Path(pretrained_model_name_or_path).exists():  # a local checkpoint: no hub machinery at all
            return load_pretrained(pretrained_model_name_or_path, map_location, expected=cls)
        try:
            return super().from_pretrained(str(pretrained_model_name_or_path), map_location=map_location, **hub_kwargs)
        except PolicyError:
            raise
        except Exception as e:  # the mixin's fetch of config.json: invalid id, offline without a cached copy, ...
            raise hub_error(str(pretrained_model_name_or_path), e) from None

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str | torch.device = "cpu",
        **_: Any,  # the mixin's copy of config.json, and its other options: our reader reads the files itself
    ) -> Policy:
        directory = resolve_pretrained(model_id, revision, cache_dir, force_download, local_files_only, token)
        return load_pretrained(directory, map_location, expected=cls)

    # --- routing inspection (mixture-of-experts policies) ------------------------------------------------
    @torch.no_grad()
    def inspect_routing(self, batch: Mapping[str, Any], level: torch.Tensor) -> list[LayerRouting]:
        """Run the action network once on a raw (unnormalised) training batch at noise/time `level`
        (B,) and return every MoE layer's routing (for `vla inspect routing`). Dense policies raise."""
        raise PolicyError(f"{type(self).__name__} has no mixture-of-experts layers to inspect")

    def routing_levels(self) -> tuple[torch.Tensor, str]:
        """The noise/time levels inference runs the action network at, and their name ("sigma", "t")."""
        raise PolicyError(f"{type(self).__name__} has no mixture-of-experts layers to inspect")

    # --- router-decoupled specialisation (vla export, vla/policies/specialise.py) ---------------------------
    def specialise(self, embodiment: str | None = None, expert_plan: bool = False) -> dict[str, Any]:
        """Keep only the experts that can fire for one embodiment (HiMoE) or one sampling schedule (MoDE's
        per-step expert plan), in place; the config records what was kept. Returns `specialisation()`."""
        raise PolicyError(
            f"a {self.config.name!r} policy has no experts whose routing is known ahead: `vla export` specialises "
            "HiMoE checkpoints (--embodiment) and MoDE checkpoints (--expert-plan)"
        )

    def specialisation(self) -> dict[str, Any] | None:
        """What an exported (specialised) checkpoint was made for; None for a full model."""
        return None

    # --- accounting ------------------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def parameter_counts(self) -> dict[str, int]:
        """Total parameters, those one routing unit (token or sequence) runs through ("active": the top_k
        experts of each MoE layer), and the experts' and routers' shares."""
        total = self.num_parameters()
        moe = expert_parameters(self)
        active = total - moe.experts + moe.active
        return {"total": total, "active": active, "experts": moe.experts, "routers": moe.routers}
