"""Writing a file so that a reader never sees half of it: write a temporary sibling, then rename it over the
target (a rename within one folder is atomic). One place for every small text output and figure the toolkit writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through `<name>.tmp` and a rename; the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG to `path` through `<name>.tmp` and a rename, then close it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    import matplotlib.pyplot as plt  # only where a figure exists: matplotlib is already loaded

    plt.close(fig)
    os.replace(tmp, path)
    return path
