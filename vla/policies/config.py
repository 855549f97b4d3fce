"""The policy config base: every hyperparameter in a frozen dataclass, presets, JSON round trip, and the data
contract (camera keys, state and action sizes, chunk length, observation history) a trainer checks a store against.

Field groups several policies share are mixins, each with its own checks: `ConditioningFields` (the shared
observation encoder's vision and language settings) and `HorizonFields` (the mixture of horizons and
dynamic inference). A policy config lists them before `PolicyConfig`: `class XConfig(HorizonFields,
ConditioningFields, PolicyConfig)`, so the base's fields come first in the saved config.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from vla.errors import PolicyError
from vla.keys import STATE_KEY
from vla.policies.modules.horizons import DEFAULT_HORIZONS, horizon_config_problems
from vla.policies.modules.language import LANGUAGE_ENCODERS
from vla.policies.modules.vision import NORMS
from vla.policies.modules.vision_timm import vision_backbone_problems

C = TypeVar("C", bound="PolicyConfig")


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
        default_factory=lambda: {STATE_KEY: "mean_std", "action": "min_max"}
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # JSON gives lists; keep configs hashable-ish and comparable
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, _to_tuple(v))
        self._check_field_types()
        if self.chunk_size < 1 or self.n_obs < 1 or self.action_dim < 1:
            raise PolicyError(f"chunk_size, n_obs and action_dim must be >= 1 (got {self})")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise PolicyError(f"n_action_steps must be in [1, chunk_size={self.chunk_size}], got {self.n_action_steps}")

    def _check_field_types(self) -> None:
        """A value of the wrong kind (a config.json edited by hand, a `--set` typo) is refused here, naming the
        field, instead of failing later inside a comparison or a layer size."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _matches(value, hints.get(f.name, Any)):
                kind = _describe(hints[f.name])
                raise PolicyError(f"{self.name or 'policy'} config field {f.name!r} should be {kind}, got {value!r}")

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
        return (*self.camera_keys, *((STATE_KEY,) if self.state_dim is not None else ()))

    def required_features(self) -> dict[str, tuple[int, ...] | None]:
        """Per-frame keys the policy reads, with the shape it needs (None: any shape of that kind)."""
        out: dict[str, tuple[int, ...] | None] = dict.fromkeys(self.camera_keys)
        if self.state_dim is not None:
            out[STATE_KEY] = (self.state_dim,)
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


@dataclasses.dataclass(frozen=True)
class ConditioningFields:
    """Settings of the shared observation encoder (vla.policies.modules.conditioning): a frozen language
    encoder for the instruction and a FiLM ResNet per camera."""

    language_encoder: str = "minilm"  # minilm | clip (frozen, not saved with the weights)
    language_path: str | None = None  # local model directory; None: the packaged all-MiniLM-L6-v2
    language_dim: int = 384  # the encoder's embedding size (checked when the encoder loads)
    vision_widths: tuple[int, ...] = (64, 128, 256, 512)  # ResNet-18 layout
    vision_blocks: tuple[int, ...] = (2, 2, 2, 2)
    vision_norm: str = "group"  # group | batch
    # camera encoder: "film_resnet" (the FiLM ResNet above, from scratch) | a timm ResNet name (resnet18,
    # resnet50, ...: built without download, FiLM after every block, BatchNorm statistics frozen)
    vision_backbone: str = "film_resnet"
    # local weights for the camera encoders: one path for every camera, or one per camera; safetensors, or a
    # torch file read with weights_only=True (None: random initialisation)
    vision_weights: str | tuple[str, ...] | None = None

    def language_problems(self) -> list[str]:
        if self.language_encoder not in LANGUAGE_ENCODERS:
            return [f"language_encoder {self.language_encoder!r} not in {LANGUAGE_ENCODERS}"]
        return []

    def vision_problems(self) -> list[str]:
        problems = [f"vision_norm {self.vision_norm!r} not in {NORMS}"] if self.vision_norm not in NORMS else []
        problems += vision_backbone_problems(self.vision_backbone)
        weights = self.vision_weights
        cameras = getattr(self, "camera_keys", ())
        if isinstance(weights, tuple) and len(weights) != len(cameras):
            problems.append(f"vision_weights has {len(weights)} paths for {len(cameras)} cameras: give one per camera")
        return problems


@dataclasses.dataclass(frozen=True)
class HorizonFields:
    """Mixture of horizons (vla.policies.modules.horizons) and dynamic inference; `horizons=None`: off."""

    # Overrides every mixture-of-horizons version of this policy also takes (see `moh_overrides`).
    moh_fixed: ClassVar[dict[str, Any]] = {}
    # n_action_steps of the mixture version, capped at the longest horizon (None: keep the config's).
    moh_n_action_steps: ClassVar[int | None] = None

    horizons: tuple[int, ...] | None = None  # e.g. DEFAULT_HORIZONS = (3, 6, ..., 30); chunk_size = max
    moh_gate_noise: bool = True  # learned-std Gaussian noise on the gate logits in training
    moh_horizon_loss_weight: float = 1.0  # weight of the summed per-horizon losses
    moh_balance_weight: float = 1e-3  # squared coefficient of variation of horizon usage
    # "global": CV^2 of each horizon's mean weight over the steps it covers | "segments": CV^2 per segment
    # between horizon boundaries over the horizons active there, unbiased variance, averaged (the authors)
    moh_balance: str = "global"
    dynamic_ratio: float | None = None  # dynamic inference threshold ratio r (None: execute n_action_steps)
    dynamic_window: int = 5  # threshold = mean disagreement of the first `dynamic_window` steps * r
    dynamic_min_steps: int = 5  # always execute at least this many steps
    dynamic_stop_cover: int = 5  # stop at a step covered by this many horizons or fewer

    @classmethod
    def moh_overrides(cls, horizons: tuple[int, ...] = DEFAULT_HORIZONS) -> dict[str, Any]:
        """Config overrides that turn a config of this policy into its mixture-of-horizons version."""
        hs = tuple(sorted(horizons))
        out: dict[str, Any] = {"horizons": hs, **cls.moh_fixed, "chunk_size": max(hs)}
        if cls.moh_n_action_steps is not None:
            out["n_action_steps"] = min(cls.moh_n_action_steps, max(hs))
        return out

    def horizon_problems(self) -> list[str]:
        return horizon_config_problems(self)


@dataclasses.dataclass(frozen=True)
class ExpertCompressionFields:
    """Merged and compressed experts (`vla compress`): written by the compressor, never set by hand. The
    defaults (no map, no rank, no sparsity) are the experts as trained."""

    # one entry per MoE layer in module order: () leaves the layer as trained; otherwise router output -> one of
    # K stored experts (vla.policies.modules.moe.restructure_experts)
    expert_map: tuple[tuple[int, ...], ...] | None = None
    expert_rank: int | None = None  # merged experts' projections as rank-r products (None: dense)
    expert_sparsity: float = 0.0  # ... plus this share of each weight's entries as a sparse residual

    def compression_problems(self) -> list[str]:
        problems = []
        if self.expert_rank is not None and self.expert_rank < 1:
            problems.append(f"expert_rank must be >= 1 (or None), got {self.expert_rank}")
        if not 0.0 <= self.expert_sparsity < 1.0:
            problems.append(f"expert_sparsity must be in [0, 1), got {self.expert_sparsity}")
        if self.expert_map is None and (self.expert_rank is not None or self.expert_sparsity):
            problems.append("expert_rank and expert_sparsity apply to merged experts: they need expert_map")
        return problems


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits its annotation (the kinds configs use: numbers, strings, bools, None,
    tuples, mappings, unions); anything more exotic is not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if origin in (Mapping, dict):
        key_hint, value_hint = args or (Any, Any)
        return isinstance(value, Mapping) and all(
            _matches(k, key_hint) and _matches(v, value_hint) for k, v in value.items()
        )
    return True


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _to_tuple(v: Any) -> Any:
    return tuple(_to_tuple(x) for x in v) if isinstance(v, list | tuple) else v


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in v.items()}
    return v
