"""Checkpoints of a training run: a loadable policy plus everything needed to resume exactly.

    OUT/checkpoints/step_000200/
        config.json, model.safetensors, normalization.json   the policy (EMA weights), `from_pretrained`
        data_spec.json                                       the first training store's spec (for eval fit checks)
        data.json                                            every store, its spec and embodiment
        train_state/                                         resume only
            model.safetensors                                raw (non-EMA) weights
            optimizer.safetensors + optimizer.json           AdamW moments / param groups
            ema.safetensors                                  the EMA shadow (same as ../model.safetensors)
            rng.safetensors + trainer.json                   RNG states, step, scheduler, train config
            rng_rank1.safetensors, ...                       the other processes' RNG states (several processes)
    OUT/last -> checkpoints/step_000200

Each checkpoint is written to `step_N.partial/` and renamed into place, so a directory named
`step_N` is always complete; `last` is switched with an atomic symlink replace. No pickle: tensors
go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vla.datasets.spec import StoreSpec
from vla.policies.policy import Policy
from vla.policies.pretrained import LAST, list_checkpoints, save_data_specs, step_dir
from vla.train.config import TrainError

STATE = "train_state"


# --- optimizer and RNG state as safetensors + JSON ------------------------------------------------


def _split_optimizer(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}/{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{name}"] = v
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def _join_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, v in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = flat.split("/", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


RngState = tuple[dict[str, torch.Tensor], dict[str, Any]]


def rng_state() -> RngState:
    """This process's torch (CPU, CUDA), numpy and Python RNG states: tensors and JSON metadata."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [py_version, list(py_state), py_gauss]}
    return tensors, meta


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in tensors]
        if states:
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


# --- save / load ---------------------------------------------------------------------------------


def save_checkpoint(
    out: Path,
    step: int,
    policy: Policy,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema_state: Mapping[str, torch.Tensor] | None,
    ema_updates: int,
    specs: list[StoreSpec],
    data_paths: tuple[str, ...],
    train_config: Mapping[str, Any],
    keep: int,
    rank_rngs: list[RngState] | None = None,
    model_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """`rank_rngs`: every process's `rng_state()`, by rank (default: this process's only); `model_state`:
    the raw weights when gathering them is a collective (FSDP; default: `policy.state_dict()`)."""
    final = step_dir(out, step)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    raw = {k: v.detach().cpu().contiguous() for k, v in (model_state or policy.state_dict()).items()}
    policy.save_pretrained(tmp, state_dict=ema_state if ema_state is not None else raw)
    save_data_specs(tmp, specs, data_paths)
    state = tmp / STATE
    state.mkdir()
    save_file(raw, str(state / "model.safetensors"))
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(state / "optimizer.safetensors"))
    (state / "optimizer.json").write_text(json.dumps(opt_meta))
    if ema_state is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(state / "ema.safetensors"))
    rngs = rank_rngs if rank_rngs is not None else [rng_state()]
    for rank, (rng_tensors, _) in enumerate(rngs):
        save_file(rng_tensors, str(state / _rng_file(rank)))
    trainer = {
        "step": step,
        "ema_updates": ema_updates,
        "scheduler": scheduler.state_dict(),
        "rng": rngs[0][1],
        "rng_ranks": [meta for _, meta in rngs[1:]],
        "train_config": dict(train_config),
    }
    (state / "trainer.json").write_text(json.dumps(trainer, indent=2))
    if final.exists():  # the same step saved again (a resumed run that had reached it)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _point_last(out, final)
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _point_last(out: Path, target: Path) -> None:
    link = out / LAST
    tmp = out / f".{LAST}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.relative_to(out))
    os.replace(tmp, link)


def _rng_file(rank: int) -> str:
    return "rng.safetensors" if rank == 0 else f"rng_rank{rank}.safetensors"


def load_training_state(path: Path, rank: int = 0) -> dict[str, Any]:
    """Everything `save_checkpoint` wrote for resuming, as tensors and dicts (the RNG state of process
    `rank`); clear errors if damaged."""
    state = path / STATE
    try:
        trainer = json.loads((state / "trainer.json").read_text())
        if rank > 0:
            trainer["rng"] = trainer["rng_ranks"][rank - 1]
        out: dict[str, Any] = {
            "trainer": trainer,
            "model": load_file(str(state / "model.safetensors")),
            "optimizer": _join_optimizer(
                load_file(str(state / "optimizer.safetensors")), json.loads((state / "optimizer.json").read_text())
            ),
            "rng": load_file(str(state / _rng_file(rank))),
        }
        ema = state / "ema.safetensors"
        out["ema"] = load_file(str(ema)) if ema.exists() else None
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError, IndexError) as e:
        raise TrainError(
            f"{path}: cannot resume from this checkpoint ({type(e).__name__}: {e}); "
            "delete it to resume from an earlier one, or start a new run with another --out"
        ) from None
    return out


def restore_rng(state: Mapping[str, Any]) -> None:
    _set_rng_state(state["rng"], state["trainer"]["rng"])
