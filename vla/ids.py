"""Id lists as people type them on a command line: '0-9', '0,3,5-7', '40-49'."""

from __future__ import annotations

from vla.errors import VlaError


def parse_ids(text: str, error: type[VlaError] = VlaError) -> list[int]:
    """'0-9' / '0,3,5-7' -> ids in the given order, without repeats; `error` is raised on bad text."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise error(f"cannot read ids from {text!r}; write them like '0-9' or '0,3,5-7'") from None
    if not out:
        raise error(f"no ids in {text!r}")
    return list(dict.fromkeys(out))
