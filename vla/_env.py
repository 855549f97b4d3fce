"""Process-wide defaults that keep the toolkit offline and prompt-free.

Set before lerobot, transformers, torch or libero are imported: no hub downloads at run time
(HF_HUB_OFFLINE=1 unless the user set it), and LIBERO reads the config file written by
`python -m vla.setup_libero` instead of asking questions on stdin.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def libero_config_dir() -> Path:
    """Where our LIBERO config lives: inside the active environment, never the user's home."""
    return Path(os.environ.get("VLA_LIBERO_CONFIG_DIR", Path(sys.prefix) / "vla-libero"))


def apply_defaults() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(libero_config_dir()))
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("MESA_SHADER_CACHE_DISABLE", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP threads that spin-wait for a core held by a simulator or loader process turn every small
    # op into milliseconds (measured: 18 s vs 0.17 s per MoDE chunk on 2 busy cores). Passive waiting
    # costs nothing measurable when the cores are free. Only takes effect if vla is imported before torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
