"""Process-wide defaults that keep the toolkit prompt-free, and the offline switch for jobs that want it.

`apply_defaults` runs on `import vla`, before lerobot, transformers, torch or libero are imported:
LIBERO reads the config file written by `python -m vla.setup_libero` instead of asking questions on
stdin, and rendering and threading get safe defaults. It does not switch the process offline: a
user's own code (and `Policy.from_pretrained("owner/name")`) may use the Hugging Face Hub.
`apply_offline_defaults` does, for what must never download (`vla demo`, the tests): HF_HUB_OFFLINE=1
and friends, unless the user set them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def libero_config_dir() -> Path:
    """Where our LIBERO config lives: inside the active environment, never the user's home."""
    return Path(os.environ.get("VLA_LIBERO_CONFIG_DIR", Path(sys.prefix) / "vla-libero"))


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def apply_offline_defaults() -> None:
    """No hub access in this process (set before huggingface_hub is imported: it reads them once)."""
    for name in OFFLINE_VARIABLES:
        os.environ.setdefault(name, "1")


def apply_defaults() -> None:
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(libero_config_dir()))
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("MESA_SHADER_CACHE_DISABLE", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that spin-wait for a core held by a simulator or loader process turn every small
    # op into milliseconds (measured: 18 s vs 0.17 s per MoDE chunk on 2 busy cores). Passive waiting
    # costs nothing measurable when the cores are free. Only takes effect if vla is imported before torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
