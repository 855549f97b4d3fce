"""Damaged or hand-edited checkpoints are refused at load with one line naming the file and the key or tensor
(issue: hostile inputs, class 8), instead of a traceback or a policy that fails every request later."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.policies.mode.helpers import make_policy, tiny_config
from vla.errors import PolicyError
from vla.policies.policy import Policy
from vla.policies.pretrained import CONFIG_FILE, NORMALIZATION_FILE, WEIGHTS_FILE


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    make_policy(tiny_config()).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _edit_json(path: Path, change: Callable[[object], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _set(key: str, value: object) -> Callable[[dict], dict]:
    return lambda d: {**d, key: value}


def _norm(key: str, field: str, value: object) -> Callable[[dict], dict]:
    return lambda d: {**d, key: {**d[key], field: value}}


def test_a_valid_checkpoint_loads(checkpoint):
    assert isinstance(Policy.from_pretrained(checkpoint), Policy)


@pytest.mark.parametrize(
    ("file", "change", "says"),
    [
        (CONFIG_FILE, lambda d: list(d), "JSON object"),
        (CONFIG_FILE, _set("chunk_size", "ten"), "chunk_size"),
        (CONFIG_FILE, _set("camera_keys", 3), "camera_keys"),
        (CONFIG_FILE, _set("language_path", "/nonexistent/minilm"), "language_path"),
        (NORMALIZATION_FILE, _norm("action", "offset", [0.0, 0.0, 0.0]), "action"),
        (NORMALIZATION_FILE, _norm("action", "scale", [math.nan] * 4), "action"),
        (NORMALIZATION_FILE, _norm("observation.state", "scale", [0.0] * 5), "observation.state"),
        (NORMALIZATION_FILE, lambda d: [1, 2], "normalisation"),
    ],
    ids=[
        "config-list",
        "chunk-not-a-number",
        "cameras-not-a-list",
        "missing-language-dir",
        "norm-wrong-length",
        "norm-nan-scale",
        "norm-zero-scale",
        "norm-not-a-table",
    ],
)
def test_bad_json_is_refused_naming_file_and_key(checkpoint, file, change, says):
    _edit_json(checkpoint / file, change)
    with pytest.raises(PolicyError, match=file) as err:
        Policy.from_pretrained(checkpoint)
    assert says in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(checkpoint, bad):
    weights = load_file(str(checkpoint / WEIGHTS_FILE))
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name] = torch.full_like(weights[name], bad)
    save_file(weights, str(checkpoint / WEIGHTS_FILE))
    with pytest.raises(PolicyError, match=WEIGHTS_FILE) as err:
        Policy.from_pretrained(checkpoint)
    assert name in str(err.value)
