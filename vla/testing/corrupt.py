"""Byte-level damage to a copy of a source, as disks, copies and downloads do it (fuzz tests).

`corrupt_file` applies one `Damage` to one file; which file and how are chosen by the caller
(a hypothesis strategy in the tests), so a failing example names exactly what was done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["truncate", "garble", "delete", "empty"]
KINDS: tuple[Kind, ...] = ("truncate", "garble", "delete", "empty")


@dataclass(frozen=True)
class Damage:
    """What happens to a file: `at` (0..1) is where, as a fraction of its size."""

    kind: Kind
    at: float = 0.5
    xor: int = 0xFF  # garble: each of `length` bytes from `at` is XOR-ed with this
    length: int = 8


def files_of(root: Path) -> list[Path]:
    """Every regular file under `root` (or `root` itself), in a fixed order."""
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def corrupt_file(path: Path, damage: Damage) -> None:
    if damage.kind == "delete":
        path.unlink()
        return
    raw = bytearray(path.read_bytes())
    cut = min(len(raw), int(len(raw) * damage.at))
    if damage.kind == "truncate":
        del raw[cut:]
    elif damage.kind == "empty":
        raw.clear()
    else:
        for i in range(cut, min(len(raw), cut + damage.length)):
            raw[i] ^= damage.xor or 0xFF
    path.write_bytes(bytes(raw))
