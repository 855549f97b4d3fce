"""Policy checkpoints on disk: what is written, and the one reader of each file.

    CHECKPOINT/
        config.json          the policy config with its type (the registry name)
        model.safetensors    the weights (no pickle anywhere)
        normalization.json   the normaliser's statistics
        embodiments.json     a multi-embodiment policy's robots and their slots (older checkpoints: read from
                             normalization.json)
        data_spec.json       the first training store's StoreSpec (evaluation fit checks, image settings)
        data.json            every training store: path, embodiment, spec

A training run's folder holds its checkpoints as RUN/checkpoints/step_N (complete ones only: each is
renamed into place) and RUN/last pointing to the newest; `resolve_checkpoint` accepts either.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vla.datasets.normalize import MultiNormalizer, Normalizer
from vla.datasets.spec import StoreSpec
from vla.errors import PolicyError
from vla.keys import ACTION_KEY, STATE_KEY
from vla.policies.embodiment import EmbodimentTable

if TYPE_CHECKING:
    from vla.policies.config import PolicyConfig
    from vla.policies.policy import Policy

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZATION_FILE = "normalization.json"
EMBODIMENTS_FILE = "embodiments.json"
DATA_SPEC_FILE = "data_spec.json"
DATA_FILE = "data.json"

CHECKPOINTS = "checkpoints"
LAST = "last"
STEP_DIR = re.compile(r"^step_(\d+)$")


# --- the policy ---------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    """`--device auto`: the first GPU when there is one (CUDA, else Apple's MPS), else the CPU; any other
    name is torch's."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps" if mps is not None and mps.is_available() else "cpu")


def save_pretrained(
    policy: Policy, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None
) -> Path:
    """Write config.json, model.safetensors, normalization.json (and embodiments.json for a multi-embodiment
    policy) into `directory`.

    `state_dict`: weights to save instead of the module's own (the trainer saves EMA weights)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG_FILE).write_text(json.dumps(policy.config.to_dict(), indent=2))
    source = policy.state_dict() if state_dict is None else state_dict
    state = {k: v.detach().contiguous().cpu() for k, v in source.items()}
    save_file(state, str(d / WEIGHTS_FILE), metadata={"format": "pt", "policy": policy.config.name})
    (d / NORMALIZATION_FILE).write_text(json.dumps(policy.normalizer.state_dict(), indent=2))
    if policy.embodiments is not None:
        (d / EMBODIMENTS_FILE).write_text(json.dumps(policy.embodiments.to_json(), indent=2))
    return d


def load_pretrained(
    directory: str | Path, map_location: str | torch.device = "cpu", expected: type[Policy] | None = None
) -> Policy:
    """The policy saved in `directory`; `expected`: refuse a checkpoint of another policy class
    (None or the `Policy` base: any registered policy)."""
    from vla.policies.registry import get_policy

    d = Path(directory)
    map_location = resolve_device(map_location)
    if not (d / CONFIG_FILE).exists() or not (d / WEIGHTS_FILE).exists():
        raise PolicyError(f"{d} is not a policy checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads((d / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{d / CONFIG_FILE}: unreadable policy config ({e})") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{d / CONFIG_FILE}: should hold a JSON object of config fields, not a {type(raw).__name__}")
    specific = expected is not None and bool(expected.config_class.name)
    config_cls, model_cls = get_policy(raw.get("type", expected.config_class.name if specific else ""))
    if specific and not issubclass(model_cls, expected):
        raise PolicyError(f"{d} holds a {raw.get('type')!r} policy, not a {expected.config_class.name!r} one")
    try:
        config = config_cls.from_dict(raw)
    except PolicyError as e:
        raise PolicyError(f"{d / CONFIG_FILE}: {e}") from None
    _check_local_paths(config, d / CONFIG_FILE)
    # the checkpoint holds the trained encoder weights: the initial ones (vision_weights) are not read again,
    # so a checkpoint runs where the pretrained file is not
    initial = getattr(config, "vision_weights", None)
    model = model_cls(config.replace(vision_weights=None) if initial is not None else config)
    model.config = config
    try:
        weights = load_file(str(d / WEIGHTS_FILE), device=str(map_location))
    except (OSError, SafetensorError) as e:
        raise PolicyError(f"{d / WEIGHTS_FILE}: unreadable weights ({e}); the checkpoint is damaged") from None
    _check_finite_weights(weights, d / WEIGHTS_FILE)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise PolicyError(f"{d / WEIGHTS_FILE}: weights do not fit {d / CONFIG_FILE} ({first})") from None
    norm_path = d / NORMALIZATION_FILE
    if norm_path.exists():
        try:
            nd = json.loads(norm_path.read_text())
            normalizer = MultiNormalizer.from_state_dict(nd) if "normalizers" in nd else Normalizer.from_state_dict(nd)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"{norm_path}: unreadable normalisation statistics ({e})") from None
        _check_normalizer(normalizer, config, norm_path)
        model.set_normalization(normalizer, _load_embodiments(d / EMBODIMENTS_FILE))
    return model.to(map_location)


def resolve_pretrained(
    model_id: str,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A checkpoint directory for `model_id`: the directory itself, or the Hub repo's snapshot (from the
    local cache; downloaded only when the process is online and the cache lacks it)."""
    if Path(model_id).is_dir():
        return Path(model_id)
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                model_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
        )
    except Exception as e:  # invalid id, offline without a cached copy, unknown repo, network errors
        raise hub_error(model_id, e) from None


def hub_error(model_id: str, e: Exception) -> PolicyError:
    from huggingface_hub.errors import HFValidationError

    if isinstance(e, HFValidationError):
        return PolicyError(f"{model_id}: no such checkpoint directory, and not a Hub repo id (owner/name)")
    return PolicyError(
        f"{model_id}: not a local checkpoint directory, and the Hub repo cannot be resolved "
        f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); offline, it must be in the Hugging Face cache "
        "(HF_HUB_CACHE)"
    )


def _check_local_paths(config: PolicyConfig, path: Path) -> None:
    """A model directory the policy loads lazily (the language encoder) must exist now, not fail every request
    later. Paths loaded while the policy is built (vision weights, a VLM backbone) fail there already."""
    language = getattr(config, "language_path", None)
    if language is not None and not Path(language).exists():
        raise PolicyError(
            f"{path} [language_path]: {language} does not exist; copy the language model there or set "
            "language_path to where it is"
        )


def _check_finite_weights(weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """NaN or inf in a weight makes every action NaN (an arm would hold, a simulator fail): refuse at load."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PolicyError(
                f"{path} [{name}]: holds NaN or infinite values; the checkpoint is damaged (use an earlier one)"
            )


def _check_normalizer(normalizer: Normalizer | MultiNormalizer, config: PolicyConfig, path: Path) -> None:
    """Statistics must be finite, scales non-zero, and each vector as long as the policy's input or output."""
    if isinstance(normalizer, MultiNormalizer):
        tables = [(f"{name}.", n) for name, n in zip(normalizer.names, normalizer.normalizers, strict=True)]
    else:
        sizes = {ACTION_KEY: config.action_dim, STATE_KEY: config.state_dim}
        tables = [("", normalizer)]
    for prefix, table in tables:
        for key, norm in table.norms.items():
            where = f"{path} [{prefix}{key}]"
            if not (np.isfinite(norm.offset).all() and np.isfinite(norm.scale).all()):
                raise PolicyError(f"{where}: offset/scale hold NaN or infinite values; recompute the statistics")
            if (norm.scale == 0).any():
                raise PolicyError(f"{where}: a scale of 0 would divide by zero; recompute the statistics")
            expected = None if isinstance(normalizer, MultiNormalizer) else sizes.get(key)
            if expected is not None and norm.offset.size not in (1, expected):  # a scalar statistic broadcasts
                raise PolicyError(
                    f"{where}: {norm.offset.size} values, the policy's {key} has {expected}; "
                    f"{path.name} belongs to another policy or data"
                )


def _load_embodiments(path: Path) -> EmbodimentTable | None:
    """The saved embodiment table; None when the checkpoint has none (single-embodiment, or older than the
    file: the table then comes from the mixture normaliser's names and slots)."""
    if not path.exists():
        return None
    try:
        return EmbodimentTable.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise PolicyError(f"{path}: unreadable embodiment table ({e})") from None


# --- the training data it was made from ------------------------------------------------------------------


def save_data_specs(directory: Path, specs: Sequence[StoreSpec], data_paths: Sequence[str]) -> None:
    """data_spec.json (the first store) and data.json (every store with its embodiment)."""
    (directory / DATA_SPEC_FILE).write_text(json.dumps(specs[0].to_json(), indent=2))
    entries = [
        {"path": p, "embodiment": s.embodiment, "spec": s.to_json()} for p, s in zip(data_paths, specs, strict=True)
    ]
    (directory / DATA_FILE).write_text(json.dumps(entries, indent=2))


def save_derived_checkpoint(policy: Policy, source: Path, out: Path, extra: Mapping[str, str] | None = None) -> Path:
    """`policy`, made from the checkpoint in `source` (exported, compressed), as the new checkpoint folder `out`,
    with the source's training-data specs (what evaluation checks a benchmark against) and `extra` files
    (name -> text). Written as `<out>.partial` and renamed, so `out` is complete or absent."""
    import os
    import shutil

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    policy.save_pretrained(partial)
    for name in (DATA_SPEC_FILE, DATA_FILE):
        if (source / name).exists():
            shutil.copy2(source / name, partial / name)
    for name, text in (extra or {}).items():
        (partial / name).write_text(text)
    os.replace(partial, out)
    return out


def load_data_spec(checkpoint: str | Path, embodiment: str | None = None) -> StoreSpec | None:
    """The training store's spec saved with a checkpoint (with `embodiment`: the first store of that
    embodiment, from the checkpoint's data.json), None when the checkpoint has none."""
    if embodiment is not None:
        stores = Path(checkpoint) / DATA_FILE
        if stores.exists():
            for entry in json.loads(stores.read_text()):
                if entry.get("embodiment") == embodiment:
                    return StoreSpec.from_json(entry["spec"])
    path = Path(checkpoint) / DATA_SPEC_FILE
    return StoreSpec.from_json(json.loads(path.read_text())) if path.exists() else None


# --- a training run's folder of checkpoints -------------------------------------------------------------


def step_dir(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step_{step:06d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (`.partial` leftovers of a kill are ignored)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a training run's folder (its newest checkpoint)."""
    p = Path(path)
    if (p / CONFIG_FILE).exists():
        return p
    latest = latest_checkpoint(p) if p.is_dir() else None
    if latest is None:
        raise PolicyError(f"{p}: neither a checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) nor a run folder with one")
    return latest
