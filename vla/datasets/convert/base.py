"""What every converter provides, and the one driver that streams episodes into a store."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vla.datasets.convert import CONVERTERS
from vla.datasets.declare import Declaration
from vla.datasets.spec import StoreSpec
from vla.datasets.store import PARTIAL_SUFFIX, Episode, Store, StoreWriter
from vla.errors import DataError
from vla.progress import progress_bar


class Converter(Protocol):
    """A reader of one source format.

    `spec()` describes the dataset before anything is written; `episodes(start)` yields episodes in
    a fixed order beginning at index `start` (a resumed conversion skips what is committed);
    `fingerprint()` identifies the source so a resume never continues a different dataset.
    """

    def spec(self) -> StoreSpec: ...

    def num_episodes(self) -> int: ...

    def episodes(self, start: int = 0) -> Iterator[Episode]: ...

    def fingerprint(self) -> str: ...


ConverterFactory = Callable[[Path, Declaration], Converter]  # what CONVERTERS (vla.datasets.convert) names


def refuse_dangling_symlinks(paths: Iterable[Path]) -> None:
    """A source entry that is a link to nothing is an error, never silently skipped."""
    for p in paths:
        if p.is_symlink() and not p.exists():
            raise DataError(p, None, "dangling symlink: its target does not exist; fix the link or remove it")


def files_fingerprint(paths: list[Path]) -> str:
    """Identity of source files by name, size and modification time (cheap, no reading)."""
    refuse_dangling_symlinks(paths)
    h = hashlib.sha256()
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def check_outside_source(src: Path, dst: Path) -> None:
    """DST and DST.partial must neither be the source, nor inside it, nor contain it: the source is never touched."""
    out = dst.resolve()
    for path in (out, out.with_name(out.name + PARTIAL_SUFFIX)):
        if path == src or src in path.parents or path in src.parents:
            raise DataError(dst, None, f"the output {path} overlaps the source {src}; choose a DST outside the source")


@dataclass
class ConversionSummary:
    store: Store
    episodes_written: int
    episodes_skipped: int  # committed by an earlier, interrupted run
    frames: int
    seconds: float
    resumed: bool

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def convert(
    fmt: str,
    src: str | Path,
    dst: str | Path,
    declaration: Declaration | None = None,
    *,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionSummary:
    """Convert SRC (a file or a folder) of format `fmt` into a store at DST, episode by episode."""
    src = Path(src).resolve()  # one spelling of the path, so a re-run with another one still resumes
    if not src.exists():
        raise DataError(src, None, "source does not exist")
    make: ConverterFactory = CONVERTERS.load(fmt)
    converter = make(src, declaration or Declaration())
    check_outside_source(src, Path(dst))
    spec = converter.spec()
    writer = StoreWriter(dst, spec, source_fingerprint=converter.fingerprint(), resume=resume, overwrite=overwrite)
    skipped = writer.done_episodes
    total = converter.num_episodes()
    t0 = time.perf_counter()
    frames_before = writer.num_frames
    bar = progress_bar(total, f"convert {fmt}", initial=skipped, unit="ep", disable=not progress)
    with bar:
        for ep in converter.episodes(start=skipped):
            writer.add_episode(ep)
            bar.update(1)
            bar.set_postfix(frames=writer.num_frames)
    store = writer.finalize()
    seconds = time.perf_counter() - t0
    return ConversionSummary(
        store=store,
        episodes_written=store.num_episodes - skipped,
        episodes_skipped=skipped,
        frames=store.num_frames - frames_before,
        seconds=seconds,
        resumed=writer.resumed,
    )
