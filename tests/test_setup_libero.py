"""The environment set-up must make LIBERO importable with no prompt and no download."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from vla import setup_libero


def test_config_has_every_key_libero_asks_for(tmp_path):
    path = setup_libero.write_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    assert set(config) == {"benchmark_root", "bddl_files", "init_states", "datasets", "assets"}
    assert os.path.isdir(config["bddl_files"]) and os.path.isdir(config["init_states"])
    assert os.path.isdir(os.path.join(config["assets"], "scenes"))


def test_libero_imports_without_stdin_and_finds_the_wheel_assets(tmp_path):
    setup_libero.write_config(tmp_path)
    setup_libero.link_assets()
    code = (
        "import libero.libero as L, os; p = L.get_assets_path(); "
        "assert os.path.isdir(os.path.join(p, 'scenes')), p; print(os.path.realpath(p))"
    )
    env = {**os.environ, "LIBERO_CONFIG_PATH": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert os.path.realpath(setup_libero.assets_dir()) == out.stdout.strip().splitlines()[-1]


def test_importing_the_toolkit_leaves_the_hub_alone():
    """`import vla` sets LIBERO's config path but never switches the user's process offline."""
    code = "import os, vla; print(os.environ.get('HF_HUB_OFFLINE'), os.environ['LIBERO_CONFIG_PATH'] != '')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "LIBERO_CONFIG_PATH")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "None True", out.stderr[-2000:]
