"""A store -> a LeRobot v3 dataset, written by lerobot's own `LeRobotDataset` writer.

The dataset is recorded exactly as a LeRobot user would record it (`LeRobotDataset.create`, one
`add_frame` per frame, `save_episode` per episode, `finalize`), so its layout, statistics and
video encoding are lerobot's. What it gets:

- `action`, `observation.state` and every extra key under the store's key name, with the store's
  dtype; feature `names` are the store's dimension names (the LeRobot converter infers dimension
  kinds from them on the way back). A scalar key becomes lerobot's shape (1,).
- every camera as `observation.images.<name>`, upright (the store keeps frames upright): as video
  (lerobot's encoder; `vcodec` picks the codec) or, with `images="png"`, as lossless PNG frames.
- a task per frame: the language window covering the frame (later windows win where they
  overlap), else the episode's task, else `default_task`; lerobot requires one on every frame.
- fps and robot type from the store (robot type: the spec's robot_type, else the embodiment).

The dataset is written to `<dst>.partial` and renamed into place when lerobot has finalised it,
so DST never holds half a dataset; an interrupted export starts over.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vla.datasets.store import Store
from vla.errors import DataError
from vla.keys import IMAGE_PREFIX
from vla.progress import progress_bar

PARTIAL_SUFFIX = ".partial"
MIN_AV1_WIDTH = 32  # libsvtav1 crashes lerobot's encoding worker on narrower frames (measured)
IMAGE_MODES = ("video", "png")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    images: str = "video"  # "video" (lerobot's encoder) or "png" (lossless frames in the parquet)
    vcodec: str | None = None  # lerobot's RGBEncoderConfig codec; None = its default (libsvtav1)
    default_task: str | None = None  # for episodes and frames the store gives no language
    repo_id: str | None = None  # written into nothing but lerobot's in-memory metadata; default local/<dst name>
    overwrite: bool = False


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    episodes: int
    frames: int
    fps: int
    cameras: tuple[str, ...]
    tasks: int


def lerobot_features(store: Store, images: str) -> dict[str, dict[str, Any]]:
    """lerobot's `features` table for the store's keys."""
    spec = store.spec
    names = {"action": [d.name for d in spec.action], "observation.state": [d.name for d in spec.state]}
    features: dict[str, dict[str, Any]] = {}
    for key, ks in store.keys.items():
        if key.startswith(IMAGE_PREFIX):
            features[key] = {
                "dtype": "video" if images == "video" else "image",
                "shape": tuple(ks.shape),
                "names": ["height", "width", "channels"],
            }
            continue
        shape = tuple(ks.shape) or (1,)
        dim_names = names.get(key) or (list(ks.names) if ks.names else None)
        features[key] = {"dtype": ks.dtype, "shape": shape, "names": dim_names or None}
    return features


def frame_tasks(store: Store, episode: int, n: int, default_task: str | None) -> list[str]:
    """The task text of each frame of one episode (see the module docstring for the rule)."""
    base = store.task_of(episode) or default_task
    tasks: list[str | None] = [base] * n
    s = int(store.episode_starts[episode])
    for start, end, task in store.annotations:  # global frame indices, end exclusive
        if s <= start < s + n:
            tasks[start - s : min(end - s, n)] = [store.tasks[int(task)]] * (min(end - s, n) - (start - s))
    if any(t is None for t in tasks):
        first = tasks.index(None)
        raise DataError(
            store.path,
            f"episode {episode}",
            f"frame {first} has no task (no episode task, no language window); LeRobot needs one on every frame: "
            "pass --task TEXT",
        )
    return tasks  # type: ignore[return-value]


def _fps(store: Store) -> int:
    fps = store.fps
    if abs(fps - round(fps)) > 1e-9:
        raise DataError(store.path, "spec.fps", f"{fps:g} Hz is not a whole number; LeRobot datasets store an int fps")
    return round(fps)


def _check_options(store: Store, options: ExportOptions) -> None:
    if options.images not in IMAGE_MODES:
        raise DataError(store.path, None, f"unknown image mode {options.images!r}; use one of {IMAGE_MODES}")
    narrow = [c.name for c in store.spec.cameras if c.width < MIN_AV1_WIDTH]
    av1 = options.vcodec is None or "av1" in options.vcodec
    if options.images == "video" and narrow and av1:
        raise DataError(
            store.path,
            f"observation.images.{narrow[0]}",
            f"frames narrower than {MIN_AV1_WIDTH} px cannot be AV1-encoded; export with --images png "
            "(lossless) or another --vcodec (h264, hevc)",
        )


def _prepare_destination(dst: Path, overwrite: bool) -> Path:
    """The temporary folder to write into; refuses to replace anything but a LeRobot dataset."""
    if dst.exists() and not overwrite:
        raise DataError(dst, None, "already exists; choose another destination or pass --overwrite")
    if dst.exists() and not (dst / "meta/info.json").is_file():
        raise DataError(dst, None, "exists and is not a LeRobot dataset (no meta/info.json); not replaced")
    tmp = dst.with_name(dst.name + PARTIAL_SUFFIX)
    if tmp.exists():
        if not (tmp / "meta/info.json").is_file() and any(tmp.iterdir()):
            raise DataError(tmp, None, "exists and is not an unfinished export; move it away")
        shutil.rmtree(tmp)  # an interrupted export: lerobot cannot append to it, start over
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def export_lerobot(
    store: Store, dst: str | Path, options: ExportOptions | None = None, progress: bool = True
) -> ExportSummary:
    """Write `store` as a LeRobot v3 dataset at `dst` (through `<dst>.partial`)."""
    import datasets
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    options = options or ExportOptions()
    dst = Path(dst)
    _check_options(store, options)
    fps = _fps(store)
    features = lerobot_features(store, options.images)
    tmp = _prepare_destination(dst, options.overwrite)
    encoder = None
    if options.vcodec:
        from lerobot.configs import RGBEncoderConfig

        encoder = RGBEncoderConfig(vcodec=options.vcodec)
    ds = LeRobotDataset.create(
        options.repo_id or f"local/{dst.name}",
        fps=fps,
        features=features,
        root=tmp,
        robot_type=store.spec.robot_type or store.spec.embodiment,
        use_videos=options.images == "video",
        video_backend="pyav",  # only for reading back; naming it skips lerobot's torchcodec probe
        rgb_encoder=encoder,
    )
    keys = list(features)
    bar = progress_bar(store.num_episodes, "export lerobot", unit="ep", disable=not progress)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # lerobot's per-episode "Map" bars: ours counts episodes instead
    try:
        for index in range(store.num_episodes):
            ep = store.episode(index, keys=keys)
            n = ep.length
            tasks = frame_tasks(store, index, n, options.default_task)
            for t in range(n):
                frame: dict[str, Any] = {"task": tasks[t]}
                for key in keys:
                    frame[key] = np.asarray(ep.frames[key][t]).reshape(features[key]["shape"])
                ds.add_frame(frame)
            ds.save_episode()
            bar.update(1)
    finally:
        ds.finalize()
        bar.close()
        if bars_were_on:
            datasets.enable_progress_bars()
    if dst.exists():
        log.warning("replacing the LeRobot dataset at %s (--overwrite)", dst)
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    cams = tuple(c.name for c in store.spec.cameras)
    return ExportSummary(dst, store.num_episodes, store.num_frames, fps, cams, len(store.tasks))
