"""Builders shared by the evaluation tests: tiny MoDE checkpoints and small LIBERO eval configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vla.datasets.conventions.libero import libero_spec
from vla.datasets.spec import StoreSpec
from vla.eval.protocols.libero import LiberoEvalConfig
from vla.policies.mode import MoDEConfig, MoDEPolicy

SUITE, TASK = "libero_object", 1  # the task the sim tests use too (its init states load quickly)
STEPS = 12  # a short step budget keeps each episode well under a second on 2 cores


def tiny_mode(**overrides: Any) -> MoDEPolicy:
    """A state-only MoDE small enough for CPU tests, sized for LIBERO (8-D state, 7-D actions)."""
    base: dict[str, Any] = {
        "camera_keys": (),
        "state_dim": 8,
        "action_dim": 7,
        "chunk_size": 6,
        "n_action_steps": 6,
        "width": 32,
        "n_heads": 2,
        "n_layers": 1,
        "vision_widths": (8,),
        "vision_blocks": (1,),
        "image_size": (32, 32),
        "language_dim": 384,  # the packaged MiniLM encoder's size (LIBERO episodes carry language)
        "num_sampling_steps": 2,
    }
    config = MoDEConfig.from_preset("cpu", **{**base, **overrides})
    stats: dict[str, Any] = {"action": {"min": [-1.0] * config.action_dim, "max": [1.0] * config.action_dim}}
    if config.state_dim is not None:
        stats["observation.state"] = {"mean": [0.0] * config.state_dim, "std": [1.0] * config.state_dim}
    torch.manual_seed(0)
    return MoDEPolicy(config, stats)


def save_checkpoint(directory: Path, data_spec: StoreSpec | None = None, **overrides: Any) -> Path:
    tiny_mode(**overrides).save_pretrained(directory)
    if data_spec is not None:
        (directory / "data_spec.json").write_text(json.dumps(data_spec.to_json()))
    return directory


def fitting_data_spec(cameras: tuple[str, ...] = (), size: int = 32) -> StoreSpec:
    """What a converted LIBERO store would describe: the spec our LIBERO env has."""
    return libero_spec(cameras, (size, size), "upright")


def eval_config(out: Path, **overrides: Any) -> LiberoEvalConfig:
    base: dict[str, Any] = {
        "suite": SUITE,
        "out": out,
        "tasks": [TASK],
        "init_states": [0, 1, 2, 3],
        "max_steps": STEPS,
        "seed": 3,
    }
    return LiberoEvalConfig(**{**base, **overrides})
