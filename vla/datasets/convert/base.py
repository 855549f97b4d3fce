"""What every converter provides, and the one driver that streams episodes into a store."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vla.datasets.convert import CONVERTERS
from vla.datasets.declare import Declaration
from vla.datasets.image_codecs import ImageCodec
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
    startup_s: float = 0.0  # until the first episode was written (reading processes started, source opened)
    startup_frames: int = 0  # frames of that first episode
    loop_s: float = 0.0  # until the last episode was written (then statistics and the rename: a fixed cost)

    @property
    def steady_frames_per_second(self) -> float:
        """The episode loop's rate after the first episode: what a long conversion sustains (reading processes
        start once; the final statistics sample a bounded number of frames)."""
        seconds = self.loop_s - self.startup_s
        return (self.frames - self.startup_frames) / seconds if seconds > 0 else self.frames_per_second

    @property
    def image_codec(self) -> dict:
        """{"name", "quality", "error": {camera key: {"psnr_db", "max_abs"}}} against the source frames."""
        return self.store.meta.get("image_codec", {"name": "lz4", "quality": None, "error": {}})

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
    workers: int = 1,
    image_codec: ImageCodec | str | None = None,
) -> ConversionSummary:
    """Convert SRC (a file or a folder) of format `fmt` into a store at DST, episode by episode.

    `workers` > 1 reads episodes in that many processes (vla.datasets.convert.parallel); the store is
    written in the same order, so it is identical to a serial conversion. `image_codec`: how frames are
    compressed ("lz4", "webp", "webp:85", ...; default lossless lz4 here, the CLI's default is
    vla.datasets.image_codecs.DEFAULT_CODEC); lossy codecs report their error in `image_error`."""
    if workers < 1:
        raise DataError(dst, None, f"--workers must be >= 1, got {workers}")
    src = Path(src).resolve()  # one spelling of the path, so a re-run with another one still resumes
    if not src.exists():
        raise DataError(src, None, "source does not exist")
    make: ConverterFactory = CONVERTERS.load(fmt)
    converter = make(src, declaration or Declaration())
    check_outside_source(src, Path(dst))
    spec = converter.spec()
    images = ImageCodec.parse(image_codec) if isinstance(image_codec, str) else image_codec
    writer = StoreWriter(dst, spec, source_fingerprint=converter.fingerprint(), resume=resume, overwrite=overwrite,
                         image_codec=images)  # fmt: skip
    skipped = writer.done_episodes
    total = converter.num_episodes()
    t0 = time.perf_counter()
    frames_before = writer.num_frames
    bar = progress_bar(total, f"convert {fmt}", initial=skipped, unit="ep", disable=not progress)
    if workers > 1 and total - skipped > 1:
        from vla.datasets.convert.parallel import parallel_episodes

        episodes = parallel_episodes(fmt, src, declaration or Declaration(), skipped, total, workers)
    else:
        episodes = converter.episodes(start=skipped)
    startup_s, startup_frames = 0.0, 0
    with bar, closing(episodes):  # an interrupted loop stops the workers (or closes the source) at once
        for ep in episodes:
            writer.add_episode(ep)
            if not startup_s:
                startup_s, startup_frames = time.perf_counter() - t0, writer.num_frames - frames_before
            bar.update(1)
            bar.set_postfix(frames=writer.num_frames)
    loop_s = time.perf_counter() - t0
    store = writer.finalize()
    seconds = time.perf_counter() - t0
    return ConversionSummary(
        store=store,
        episodes_written=store.num_episodes - skipped,
        episodes_skipped=skipped,
        frames=store.num_frames - frames_before,
        seconds=seconds,
        resumed=writer.resumed,
        startup_s=startup_s,
        startup_frames=startup_frames,
        loop_s=loop_s,
    )
