"""What a training run needs besides the policy config: steps, batch, schedule, checkpoints, logs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla.datasets.sampler import LANGUAGE_MODES
from vla.errors import VlaError

MIXED_PRECISION = ("no", "fp16", "bf16")


class TrainError(VlaError):
    """A training run that cannot start or continue as asked; says what to change."""


# Keys of a `vla train --config FILE.yaml` besides the TrainConfig fields: what to train.
RUN_KEYS = {
    "policy": "registered policy name",
    "preset": "the policy config's preset",
    "overrides": "policy config overrides (a mapping, as --set KEY=VALUE)",
    "moh": "mixture of horizons (true/false)",
    "horizons": "mixture-of-horizons horizon set, e.g. '3-30:3'",
}


def read_train_file(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML training file: TrainConfig fields and RUN_KEYS; anything else is refused by name."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise TrainError(f"{path}: cannot read as YAML ({' '.join(str(e).split())[:300]})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TrainError(f"{path}: expected a mapping of settings (key: value), got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in raw:
        if key not in fields and key not in RUN_KEYS:
            valid = ", ".join(sorted(fields | set(RUN_KEYS)))
            raise TrainError(f"{path}: unknown key {key!r}; valid keys: {valid}")
    if "overrides" in raw and not isinstance(raw["overrides"], dict | None):
        raise TrainError(
            f"{path}: 'overrides' must be a mapping of policy config fields, e.g. overrides: {{width: 256}}"
        )
    return dict(raw)


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]  # store paths, mixed by `weights`
    out: str  # run directory: checkpoints/, metrics.jsonl, train_config.json
    steps: int = 1000
    batch_size: int = 32  # windows per forward pass and process (a micro-batch under grad_accum)
    grad_accum: int = 1  # micro-batches per optimiser step: global batch = batch_size * grad_accum * processes
    weights: tuple[float, ...] | None = None  # per store; default: store sizes
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0
    # Optimiser and schedule. None: the policy config's own optimizer_* fields (paper values).
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.999  # 0 disables EMA; warmed up as min(decay, (1 + t) / (10 + t))
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU)
    cpu: bool = False  # force the CPU even when a GPU is present
    # Several processes: DDP's graph walk for parameters a rank did not use, instead of running idle
    # experts on zero rows (vla.policies.modules.moe.keep_idle_experts; measured faster, see docs/training.md).
    find_unused_parameters: bool = False
    # Logging and checkpoints
    log_every: int = 10
    save_every: int = 500  # also saved at the last step
    keep_checkpoints: int = 2  # older step_* directories are deleted
    progress: bool = True
    image_size: tuple[int, int] | None = None  # resize cameras in the loader (None: the store's size)
    # Which frames anchor windows and which text they carry (vla.datasets.sampler.LANGUAGE_MODES):
    # "episode" (the episode's task), "all" (play data: annotation text where one covers the frame),
    # "annotations" (only frames inside language windows, as CALVIN's language-conditioned training).
    language: str = "episode"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(str(p) for p in self.data))
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        problems = []
        if not self.data:
            problems.append("no training data: pass at least one --data STORE")
        if self.weights is not None and len(self.weights) != len(self.data):
            problems.append(f"{len(self.weights)} weights for {len(self.data)} stores")
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            problems.append(
                "steps, batch_size and grad_accum must be >= 1 "
                f"(got {self.steps}, {self.batch_size}, {self.grad_accum})"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision {self.mixed_precision!r} not in {MIXED_PRECISION}")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.language not in LANGUAGE_MODES:
            problems.append(f"language {self.language!r} not in {LANGUAGE_MODES}")
        if self.save_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            problems.append("save_every, log_every and keep_checkpoints must be >= 1")
        if problems:
            raise TrainError("invalid training config: " + "; ".join(problems))

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("betas", "image_size"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def same_run(self, other: TrainConfig) -> list[str]:
        """Fields that must not change between a run and its resumption (all but steps/logging)."""
        free = {
            "steps", "progress", "log_every", "save_every", "keep_checkpoints", "num_workers", "find_unused_parameters"
        }  # fmt: skip
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in free and a[k] != b[k]]
