"""The policy interface every policy implements, and the registry name -> (config class, model class).

A policy is two things:
- a frozen config dataclass (`PolicyConfig` subclass): every hyperparameter, presets
  (`from_preset(name, **overrides)`), and what it needs from data (camera keys, state and action
  sizes, chunk length, observation history), so a trainer can check a store fits before training;
- a model (`Policy` subclass, an nn.Module): `forward(batch) -> (loss, info)`,
  `predict_chunk(batch) -> (B, H, A)` unnormalised actions, `select_action(obs)` with an internal
  queue of the last chunk (`n_action_steps` executed per plan) and `reset()`,
  `save_pretrained(dir)` / `from_pretrained(dir)`.

Normalisation lives inside the policy (a `Normalizer` from vla.datasets.normalize, built from store
statistics and saved with the checkpoint), so what the data loader gives and what the robot gets
are raw units and nothing is normalised twice or forgotten.

Checkpoint directory: config.json (with the policy type), model.safetensors, normalization.json.
No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vla.datasets.normalize import MultiNormalizer, Normalizer
from vla.errors import VlaError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZATION_FILE = "normalization.json"

C = TypeVar("C", bound="PolicyConfig")


@dataclasses.dataclass
class LayerRouting:
    """One MoE layer's routing decision for a batch, as `Policy.inspect_routing` returns it.

    `weights` (B, T, E): the combine weight of each expert for each routing unit (token or, for
    sequence-level routers, T = 1), zero for experts not selected. `kind` says what the router
    reads: "noise" (MoDE), "action_space" (HiMoE AS-MoE), "token" (HiMoE HB-MoE)."""

    layer: str
    kind: str
    weights: torch.Tensor


class PolicyError(VlaError):
    """A policy config, checkpoint or input that cannot work: says what and how to fix it."""


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Base config: the data contract shared by all policies. Subclasses add their own fields."""

    name: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    camera_keys: tuple[str, ...] = ("observation.images.image",)
    state_dim: int | None = None  # None: the policy uses no proprioceptive state
    action_dim: int = 7
    chunk_size: int = 10  # actions predicted per plan (H)
    n_action_steps: int = 10  # actions executed from each plan before re-planning
    n_obs: int = 1  # observation frames per plan (history)
    image_size: tuple[int, int] = (128, 128)  # images are resized to (H, W) inside the policy
    # key -> normalisation mode (mean_std | min_max | quantile | identity), from store statistics
    normalization: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"observation.state": "mean_std", "action": "min_max"}
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # JSON gives lists; keep configs hashable-ish and comparable
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, _to_tuple(v))
        if self.chunk_size < 1 or self.n_obs < 1 or self.action_dim < 1:
            raise PolicyError(f"chunk_size, n_obs and action_dim must be >= 1 (got {self})")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise PolicyError(f"n_action_steps must be in [1, chunk_size={self.chunk_size}], got {self.n_action_steps}")

    # --- presets and serialisation -----------------------------------------------------------
    @classmethod
    def from_preset(cls: type[C], preset: str, **overrides: Any) -> C:
        if preset not in cls.presets:
            raise PolicyError(f"unknown {cls.name} preset {preset!r}; choose one of {sorted(cls.presets)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise PolicyError(f"unknown {cls.name} config fields {unknown}")
        return cls(**{**cls.presets[preset], **overrides})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"type": self.name, **out}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"type"})
        if unknown:
            raise PolicyError(f"config has fields this {cls.name} version does not know: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    # --- the data contract ------------------------------------------------------------------------
    @property
    def observation_keys(self) -> tuple[str, ...]:
        """Per-frame observation keys the policy reads: its cameras, then the state if it uses one."""
        return (*self.camera_keys, *(("observation.state",) if self.state_dim is not None else ()))

    def required_features(self) -> dict[str, tuple[int, ...] | None]:
        """Per-frame keys the policy reads, with the shape it needs (None: any shape of that kind)."""
        out: dict[str, tuple[int, ...] | None] = dict.fromkeys(self.camera_keys)
        if self.state_dim is not None:
            out["observation.state"] = (self.state_dim,)
        out["action"] = (self.action_dim,)
        return out

    def check_features(self, features: Mapping[str, Any]) -> None:
        """Raise PolicyError naming every mismatch between this config and a store's keys.

        `features`: key -> per-frame shape, or an object with `.shape` (a store's `keys`)."""
        problems = []
        for key, need in self.required_features().items():
            if key not in features:
                problems.append(f"missing key {key!r}")
                continue
            shape = tuple(getattr(features[key], "shape", features[key]))
            if need is None:  # a camera: any size (resized inside), 3 channels either HWC or CHW
                if len(shape) != 3 or 3 not in (shape[0], shape[-1]):
                    problems.append(f"{key!r} should be an RGB image, has per-frame shape {shape}")
            elif shape != need:
                problems.append(f"{key!r} has per-frame shape {shape}, the policy needs {need}")
        if problems:
            have = ", ".join(sorted(features))
            raise PolicyError(
                f"the data does not fit this {self.name} config: {'; '.join(problems)} (data has: {have})"
            )


class Policy(nn.Module):
    """Base policy. Subclasses implement `forward` (training loss) and `predict_chunk`."""

    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig, dataset_stats: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__()
        self.config = config
        self.normalizer: Normalizer | MultiNormalizer = Normalizer({})
        if dataset_stats is not None:
            self.set_normalization(dataset_stats)
        self._action_queue: deque[torch.Tensor] = deque()
        self._obs_history: dict[str, deque[torch.Tensor]] = {}

    # --- normalisation seam -----------------------------------------------------------------------
    def set_normalization(self, stats: Mapping[str, Mapping[str, Any]] | Normalizer | MultiNormalizer) -> None:
        """Use store statistics (key -> {mean, std, min, max, q01, q99, ...}) or a ready normaliser."""
        if isinstance(stats, Normalizer | MultiNormalizer):
            self.normalizer = stats
            return
        modes = {k: m for k, m in self.config.normalization.items() if k in stats or k == "action"}
        self.normalizer = Normalizer.from_stats(stats, modes)

    def normalize(self, key: str, x: torch.Tensor, embodiment_id: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.normalizer, MultiNormalizer):
            return self.normalizer.normalize(key, x, embodiment_id)
        return self.normalizer.normalize(key, x)

    def unnormalize(self, key: str, x: torch.Tensor, embodiment_id: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.normalizer, MultiNormalizer):
            return self.normalizer.unnormalize(key, x, embodiment_id)
        return self.normalizer.unnormalize(key, x)

    # --- the interface ----------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError

    def predict_chunk(self, batch: Mapping[str, Any]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def reset(self) -> None:
        """Call at the start of every episode: clears the action queue and observation history."""
        self._action_queue.clear()
        self._obs_history.clear()

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
        n = self.config.n_obs
        out = dict(obs)
        keys = [*self.config.camera_keys, *(["observation.state"] if self.config.state_dim is not None else [])]
        for key in keys:
            if key not in obs:
                raise PolicyError(f"observation is missing {key!r}")
            frame = torch.as_tensor(obs[key])
            hist = self._obs_history.get(key)
            if hist is None:
                hist = self._obs_history[key] = deque([frame] * n, maxlen=n)
            else:
                hist.append(frame)
            out[key] = torch.stack(list(hist), dim=1)  # (B, n_obs, ...)
        batch_size = next(iter(out[k] for k in keys)).shape[0] if keys else 1
        out["observation_is_pad"] = torch.zeros(batch_size, n, dtype=torch.bool)
        task = obs.get("task", "")
        out["task"] = [task] * batch_size if isinstance(task, str) else list(task)
        return out

    # --- checkpoints ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write config.json, model.safetensors and normalization.json into `directory`.

        `state_dict`: weights to save instead of the module's own (the trainer saves EMA weights)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        source = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
        save_file(state, str(d / WEIGHTS_FILE), metadata={"format": "pt", "policy": self.config.name})
        (d / NORMALIZATION_FILE).write_text(json.dumps(self.normalizer.state_dict(), indent=2))
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Policy:
        d = Path(directory)
        if not (d / CONFIG_FILE).exists() or not (d / WEIGHTS_FILE).exists():
            raise PolicyError(f"{d} is not a policy checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            raw = json.loads((d / CONFIG_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise PolicyError(f"{d / CONFIG_FILE}: unreadable policy config ({e})") from None
        config_cls, model_cls = get_policy(raw.get("type", cls.config_class.name))
        if cls is not Policy and not issubclass(model_cls, cls):
            raise PolicyError(f"{d} holds a {raw.get('type')!r} policy, not a {cls.config_class.name!r} one")
        model = model_cls(config_cls.from_dict(raw))
        try:
            weights = load_file(str(d / WEIGHTS_FILE), device=str(map_location))
        except (OSError, SafetensorError) as e:
            raise PolicyError(f"{d / WEIGHTS_FILE}: unreadable weights ({e}); the checkpoint is damaged") from None
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise PolicyError(f"{d / WEIGHTS_FILE}: weights do not fit {d / CONFIG_FILE} ({first})") from None
        norm_path = d / NORMALIZATION_FILE
        if norm_path.exists():
            try:
                nd = json.loads(norm_path.read_text())
                model.normalizer = (
                    MultiNormalizer.from_state_dict(nd) if "normalizers" in nd else Normalizer.from_state_dict(nd)
                )
            except (json.JSONDecodeError, KeyError, ValueError) as e:
                raise PolicyError(f"{norm_path}: unreadable normalisation statistics ({e})") from None
        return model.to(map_location)

    # --- routing inspection (mixture-of-experts policies) ------------------------------------------------
    @torch.no_grad()
    def inspect_routing(self, batch: Mapping[str, Any], level: torch.Tensor) -> list[LayerRouting]:
        """Run the action network once on a raw (unnormalised) training batch at noise/time `level`
        (B,) and return every MoE layer's routing (for `vla inspect routing`). Dense policies raise."""
        raise PolicyError(f"{type(self).__name__} has no mixture-of-experts layers to inspect")

    def routing_levels(self) -> tuple[torch.Tensor, str]:
        """The noise/time levels inference runs the action network at, and their name ("sigma", "t")."""
        raise PolicyError(f"{type(self).__name__} has no mixture-of-experts layers to inspect")

    # --- accounting ------------------------------------------------------------------------------------
    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


@dataclasses.dataclass(frozen=True)
class EmbodimentLayout:
    """Where one robot's native vectors sit in a multi-embodiment (24-slot) policy's layout, so a
    closed-loop caller (evaluation, deployment) can hand it native observations and get native actions.
    """

    name: str
    embodiment_id: int
    state_slots: tuple[int, ...]
    action_slots: tuple[int, ...]

    @classmethod
    def of(cls, policy: Policy, embodiment: str | None) -> EmbodimentLayout | None:
        """The layout of `embodiment` in `policy` (None for single-embodiment policies)."""
        norm = policy.normalizer
        if not isinstance(norm, MultiNormalizer):
            return None
        if embodiment not in norm.names:
            raise PolicyError(
                f"this policy was trained on several embodiments ({', '.join(norm.names)}); "
                f"{'the robot/environment is ' + repr(embodiment) if embodiment else 'none was named'}: "
                "run it on one of those (or train with this robot's data)"
            )
        e = norm.names.index(embodiment)
        state = norm.slots.get("observation.state", [()] * len(norm.names))[e]
        return cls(embodiment, e, tuple(state), tuple(norm.slots["action"][e]))

    @property
    def state_dim(self) -> int | None:
        """The robot's native state size (None: it has no state)."""
        return len(self.state_slots) or None

    @property
    def action_dim(self) -> int:
        return len(self.action_slots)

    def to_policy(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Native state (B, n_obs, D) -> slots; every row is this embodiment."""
        from vla.datasets import slots as slotlib

        state = batch.get("observation.state")
        if state is not None and state.shape[-1] != slotlib.NUM_SLOTS:
            out = state.new_zeros((*state.shape[:-1], slotlib.NUM_SLOTS))
            out[..., list(self.state_slots)] = state
            batch["observation.state"] = out
        rows = len(batch["task"])
        batch["embodiment_id"] = torch.full((rows,), self.embodiment_id, dtype=torch.long)
        return batch

    def to_native(self, chunk: torch.Tensor) -> torch.Tensor:
        """(B, H, 24) slot-layout actions -> (B, H, D) in the robot's own layout."""
        return chunk[..., list(self.action_slots)]


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


# --- registry ------------------------------------------------------------------------------------

_REGISTRY: dict[str, tuple[type[PolicyConfig], type[Policy]]] = {}


def register_policy(config_cls: type[PolicyConfig]):
    """Class decorator for a Policy subclass: registers (config class, model class) under config.name."""

    def wrap(model_cls: type[Policy]) -> type[Policy]:
        name = config_cls.name
        if not name:
            raise PolicyError(f"{config_cls.__name__} needs a `name`")
        if name in _REGISTRY and _REGISTRY[name][1] is not model_cls:
            raise PolicyError(f"policy name {name!r} is already registered to {_REGISTRY[name][1].__name__}")
        model_cls.config_class = config_cls
        _REGISTRY[name] = (config_cls, model_cls)
        return model_cls

    return wrap


def _load_builtin_policies() -> None:
    import vla.policies.himoe  # (registers "himoe")
    import vla.policies.mode  # noqa: F401  (registers "mode")


def get_policy(name: str) -> tuple[type[PolicyConfig], type[Policy]]:
    if name not in _REGISTRY:
        _load_builtin_policies()
    if name not in _REGISTRY:
        raise PolicyError(f"unknown policy {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_policies() -> list[str]:
    _load_builtin_policies()
    return sorted(_REGISTRY)


def make_policy(
    name: str, preset: str | None = None, dataset_stats: Mapping[str, Any] | None = None, **overrides: Any
) -> Policy:
    config_cls, model_cls = get_policy(name)
    config = config_cls.from_preset(preset, **overrides) if preset else config_cls(**overrides)
    return model_cls(config, dataset_stats)


def _to_tuple(v: Any) -> Any:
    return tuple(_to_tuple(x) for x in v) if isinstance(v, list | tuple) else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in v.items()}
    return v
