"""Training-window throughput: our store + WindowDataset vs lerobot's LeRobotDataset, same episodes.

One run of this script:
1. writes (or reuses, with --data-dir) a LeRobot v3 dataset with lerobot's own writer: two 128x128
   video cameras (lerobot's default AV1 encoding), 8-D state, 7-D action, 100-200 frames/episode.
   The frames are rendered by the LIBERO simulator (`--frames libero`, the default: agentview and
   wrist camera of an arm sweeping over libero_object scenes; clips rendered once and cached next to
   the dataset, each episode a stretch of one clip), or the synthetic fixture (`--frames fixture`);
2. converts it to a store in a subprocess with `--image-codec` (default: the CLI's), reporting
   conversion frames/s, peak RSS, the store's size against the LeRobot folder and the decode error;
3. times training windows (batch 32, 1 observation frame, action chunk 10) from LeRobotDataset
   (video-backed, its default decoder, `delta_timestamps` for the chunk, as lerobot trains) and
   from our WindowDataset, each with DataLoader num_workers 0 and 2: a warm-up batch (worker
   start-up, first decoders), then a fixed number of timed batches, best of --repeats runs, with
   one torch thread per process (what DataLoader workers get anyway);
4. measures the peak RSS of converting 1x and 4x the data, each in its own subprocess. The 4x
   dataset is lerobot's `aggregate_datasets` over four copies of the 1x dataset (same episode
   lengths, 4x the episodes, frames and video length).

The line before the last is `store_size_ratio: <store bytes / LeRobot folder bytes>` (1x data); the
last line is `ratio: <ours / lerobot samples/s, both with 2 workers>`; if lerobot's 2-worker
configuration fails, its best working configuration is used instead and named.

    python benchmarks/sampler_vs_lerobot.py [--episodes 50] [--batches 30] [--data-dir DIR] [--quick]
        [--frames libero|fixture] [--image-codec webp:90]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder's banner is not benchmark output

BATCH_SIZE = 32
CHUNK = 10
N_OBS = 1
CAMERAS = ("front", "wrist")
IMAGE_SIZE = (128, 128)
STATE_DIM, ACTION_DIM = 8, 7
FPS = 30
EPISODE_LEN = range(100, 201)
QUICK_LEN = range(40, 61)
CLIPS, CLIP_LEN = 6, 200  # LIBERO clips rendered once; every episode is a stretch of one of them

# Runs in a fresh interpreter: its own peak RSS is the conversion's (plus the imports, reported apart).
CHILD_CONVERT = """
import json, resource, sys, time
import vla
from vla.datasets.convert.base import convert
import lerobot.datasets.lerobot_dataset, lerobot.datasets.video_utils
after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
summary = convert("lerobot", sys.argv[1], sys.argv[2], progress=False, image_codec=sys.argv[3])
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"frames": summary.frames, "episodes": summary.store.num_episodes, "seconds": seconds,
                  "peak_kb": peak, "after_imports_kb": after_imports, "image_codec": summary.image_codec}))
"""


@dataclass
class Conversion:
    frames: int
    episodes: int
    seconds: float
    peak_mb: float
    after_imports_mb: float
    image_codec: dict

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds


# --- data ---------------------------------------------------------------------------------------
def libero_clips(cache: Path) -> np.ndarray:
    """(CLIPS, 2 cameras, CLIP_LEN, 128, 128, 3) uint8 frames rendered by LIBERO, cached in `cache` (.npy)."""
    if cache.exists():
        return np.load(cache)
    from vla.datasets.conventions.libero import CAMERAS as LIBERO_CAMERAS
    from vla.keys import camera_key
    from vla.sim.libero import LiberoEnv

    t0 = time.perf_counter()
    clips = np.zeros((CLIPS, len(CAMERAS), CLIP_LEN, *IMAGE_SIZE, 3), np.uint8)
    cams = tuple(LIBERO_CAMERAS)[: len(CAMERAS)]
    for task in range(2):
        env = LiberoEnv("libero_object", task, cameras=cams, image_size=IMAGE_SIZE[0])
        try:
            for k in range(CLIPS // 2):
                clip = task * (CLIPS // 2) + k
                env.reset(k)
                t = np.arange(CLIP_LEN)[:, None]
                phase = 2 * np.pi * (t / np.array([60.0, 80.0, 50.0]) + clip / CLIPS)
                for i in range(CLIP_LEN):  # the arm sweeps over the table and opens/closes the gripper
                    action = np.r_[0.6 * np.sin(phase[i]), np.zeros(3), (-1.0) ** ((i // 40) % 2)]
                    obs = env.step(action).obs
                    for c, cam in enumerate(cams):
                        clips[clip, c, i] = obs[camera_key(cam)]
        finally:
            env.close()
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, clips)
    os.replace(tmp, cache)
    print(f"rendered {CLIPS} LIBERO clips of {CLIP_LEN} frames in {time.perf_counter() - t0:.0f} s")
    return clips


def clip_frames(clips: np.ndarray, lengths: list[int]):
    """image_fn for the fixture writer: episode e shows a stretch of clip e % CLIPS."""
    offsets = [(e * 53) % (CLIP_LEN - n + 1) for e, n in enumerate(lengths)]
    return lambda e, c, t: clips[e % len(clips), c, offsets[e] + t]


def source_dataset(root: Path, episodes: int, lengths: range, seed: int, frames: str) -> Path:
    """The LeRobot v3 fixture, written with lerobot's writer unless `root` already holds it."""
    info = root / "meta" / "info.json"
    if info.exists() and json.loads(info.read_text()).get("total_episodes") == episodes:
        print(f"reusing LeRobot dataset {root}")
        return root
    from vla.testing.lerobot import episode_lengths, write_lerobot_dataset

    image_fn = None
    if frames == "libero":
        image_fn = clip_frames(libero_clips(root.parent / "libero_clips.npy"), episode_lengths(episodes, lengths, seed))

    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    write_lerobot_dataset(
        root,
        episodes,
        lengths,
        cameras=CAMERAS,
        image_size=IMAGE_SIZE,
        video_cameras=CAMERAS,
        state_dim=STATE_DIM,
        action_dim=ACTION_DIM,
        fps=FPS,
        seed=seed,
        repo_id=f"bench/{root.name}",
        extra_features=False,
        image_fn=image_fn,
    )
    print(f"wrote LeRobot dataset {root} ({episodes} episodes) in {time.perf_counter() - t:.0f} s")
    return root


def times_four(src: Path, root: Path) -> Path:
    """4x the data through lerobot's own aggregation (no re-encoding: videos are concatenated)."""
    info = root / "meta" / "info.json"
    want = 4 * json.loads((src / "meta" / "info.json").read_text())["total_episodes"]
    if info.exists() and json.loads(info.read_text()).get("total_episodes") == want:
        return root
    from lerobot.datasets.aggregate import aggregate_datasets

    shutil.rmtree(root, ignore_errors=True)
    aggregate_datasets([f"bench/{src.name}"] * 4, f"bench/{root.name}", roots=[src] * 4, aggr_root=root)
    return root


def convert_in_subprocess(src: Path, dst: Path, image_codec: str) -> Conversion:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(dst.with_name(dst.name + ".partial"), ignore_errors=True)
    cmd = [sys.executable, "-c", CHILD_CONVERT, str(src), str(dst), image_codec]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"conversion of {src} failed:\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    kb = 1024.0  # ru_maxrss is in KiB on Linux
    return Conversion(
        r["frames"], r["episodes"], r["seconds"], r["peak_kb"] / kb, r["after_imports_kb"] / kb, r["image_codec"]
    )


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- loaders ------------------------------------------------------------------------------------
def lerobot_windows(root: Path, backend: str):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    # The action chunk the way lerobot's training builds it: delta_timestamps from the policy config.
    delta = {"action": [i / FPS for i in range(CHUNK)]}
    return LeRobotDataset(f"bench/{root.name}", root=root, delta_timestamps=delta, video_backend=backend)


def our_windows(store_path: Path):
    from vla.datasets.sampler import WindowConfig, WindowDataset

    return WindowDataset(store_path, WindowConfig(n_obs=N_OBS, horizons=(CHUNK,)))


def samples_per_second(dataset, workers: int, batches: int, seed: int = 0) -> float:
    """Timed batches after one warm-up batch (which pays for worker start-up and opening files)."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )
    it = iter(loader)
    try:
        next(it)
        t = time.perf_counter()
        n = sum(len(next(it)["action"]) for _ in range(batches))
        return n / (time.perf_counter() - t)
    finally:
        del it  # shuts the workers down before the next configuration starts


def measure(name: str, make: Callable[[], object], workers: int, batches: int, repeats: int) -> float | str:
    """Best of `repeats` timings: other processes on a shared machine only ever slow a run down."""
    rates = []
    try:
        dataset = make()
        for r in range(repeats):
            rates.append(samples_per_second(dataset, workers, batches, seed=r))
    except Exception as e:  # lerobot's decoders have crashed in DataLoader workers on some set-ups
        first_line = (str(e).strip().splitlines() or [""])[0][:150]
        msg = f"failed: {type(e).__name__}: {first_line}"
        print(f"  {name}, {workers} workers: {msg}", flush=True)
        return msg
    shown = ", ".join(f"{r:.1f}" for r in rates)
    print(f"  {name}, {workers} workers: {shown} samples/s (best {max(rates):.1f})", flush=True)
    return max(rates)


# --- report -------------------------------------------------------------------------------------
def print_table(rows: dict[tuple[str, int], float | str]) -> None:
    print(f"\n{'loader':<58} {'workers':>7} {'samples/s':>10}")
    for (name, workers), value in rows.items():
        shown = f"{value:>10.1f}" if isinstance(value, float) else f"  {value}"
        print(f"{name:<58} {workers:>7} {shown}")


def lerobot_reference(rows: dict[tuple[str, int], float | str], name: str) -> tuple[float, str]:
    two = rows[(name, 2)]
    if isinstance(two, float):
        return two, "2 workers"
    working = [(v, w) for (n, w), v in rows.items() if n == name and isinstance(v, float)]
    if not working:
        raise SystemExit("no lerobot configuration worked; nothing to compare against")
    value, workers = max(working)
    print(f"lerobot with 2 workers failed ({two}); comparing against its best working configuration: {workers} workers")
    return value, f"{workers} workers (best working)"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=50, help="episodes of the 1x dataset (default 50)")
    ap.add_argument("--batches", type=int, default=30, help="timed batches per configuration (default 30)")
    ap.add_argument("--data-dir", type=Path, default=None, help="keep (and reuse) the datasets and stores here")
    ap.add_argument("--repeats", type=int, default=3, help="timings per configuration, best one kept (default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 short episodes, 3 batches, 1 repeat")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", choices=("libero", "fixture"), default="libero", help="what the cameras show")
    ap.add_argument("--image-codec", default=None, help="the store's image codec (default: the CLI's default)")
    ap.add_argument("--skip-4x", action="store_true", help="skip the 4x conversion (peak RSS growth)")
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.batches, args.repeats = min(args.episodes, 6), min(args.batches, 3), 1
    return args


def main() -> None:
    args = parse_args()
    import torch

    import vla  # noqa: F401  (offline defaults)
    from vla.datasets.convert.lerobot import default_video_backend
    from vla.datasets.image_codecs import DEFAULT_CODEC

    codec = args.image_codec or DEFAULT_CODEC

    # DataLoader workers run with one torch thread; the 0-worker runs in this process do too, so they
    # measure loading rather than OpenMP spin-waits on a shared machine (lerobot's decoder copies one
    # small frame tensor at a time: 2 threads made it ~18x slower on 2 busy cores).
    torch.set_num_threads(1)

    work = args.data_dir or Path(tempfile.mkdtemp(prefix="vla-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    lengths = QUICK_LEN if args.quick else EPISODE_LEN
    name = f"lerobot_{args.episodes}ep" + ("_q" if args.quick else "") + ("_libero" if args.frames == "libero" else "")
    src = source_dataset(work / name, args.episodes, lengths, args.seed, args.frames)

    store1 = work / "store_1x.zarr"
    conv1 = convert_in_subprocess(src, store1, codec)
    print(f"conversion 1x: {conv1.frames} frames in {conv1.seconds:.1f} s = {conv1.frames_per_second:.0f} frames/s")
    conv4 = conv1
    if not args.skip_4x:
        src4 = times_four(src, work / f"{name}_x4")
        conv4 = convert_in_subprocess(src4, work / "store_4x.zarr", codec)
        print(f"conversion 4x: {conv4.frames} frames in {conv4.seconds:.1f} s = {conv4.frames_per_second:.0f} frames/s")
    size_src, size_store = folder_bytes(src), folder_bytes(store1)

    backend = default_video_backend()
    lerobot_name = f"lerobot LeRobotDataset (video, {backend}, float CHW)"
    ours_name = "vla WindowDataset (zarr store, uint8 CHW)"
    print(f"timing {args.batches} batches of {BATCH_SIZE} after 1 warm-up batch, best of {args.repeats}:", flush=True)
    configs = [(lerobot_name, lambda: lerobot_windows(src, backend)), (ours_name, lambda: our_windows(store1))]
    rows: dict[tuple[str, int], float | str] = {}
    for name, make in configs:
        for workers in (0, 2):
            rows[(name, workers)] = measure(name, make, workers, args.batches, args.repeats)

    print(
        f"\ndata: {conv1.episodes} episodes, {conv1.frames} frames ({lengths.start}-{lengths.stop - 1} per episode), "
        f"cameras {', '.join(CAMERAS)} {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} as lerobot's default AV1 video, "
        f"state {STATE_DIM}, action {ACTION_DIM}, {FPS} fps"
    )
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, lerobot video backend {backend}")
    print_table(rows)
    print(f"\nconversion: {conv1.frames_per_second:.0f} frames/s (1x), {conv4.frames_per_second:.0f} frames/s (4x)")
    print(
        f"conversion peak RSS: 1x ({conv1.frames} frames) {conv1.peak_mb:.0f} MB, 4x ({conv4.frames} frames) "
        f"{conv4.peak_mb:.0f} MB, ratio 4x/1x {conv4.peak_mb / conv1.peak_mb:.2f} "
        f"(after imports: {conv1.after_imports_mb:.0f} / {conv4.after_imports_mb:.0f} MB; above imports "
        f"{conv1.peak_mb - conv1.after_imports_mb:.0f} / {conv4.peak_mb - conv4.after_imports_mb:.0f} MB)"
    )
    ours = rows[(ours_name, 2)]
    if not isinstance(ours, float):
        raise SystemExit(f"our loader failed with 2 workers: {ours}")
    theirs, which = lerobot_reference(rows, lerobot_name)
    print(f"ours (2 workers) / lerobot ({which}): {ours:.1f} / {theirs:.1f} samples/s")
    errors = "; ".join(
        f"{k}: PSNR {e['psnr_db']} dB, max abs {e['max_abs']}" for k, e in conv1.image_codec["error"].items()
    )
    print(
        f"store images: {conv1.image_codec['name']} quality {conv1.image_codec['quality']} ({errors or 'lossless'}); "
        f"frames: {args.frames}; store {size_store / 1e6:.1f} MB, LeRobot folder {size_src / 1e6:.1f} MB"
    )
    if args.data_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"store_size_ratio: {size_store / size_src:.2f}")
    print(f"ratio: {ours / theirs:.2f}", flush=True)


if __name__ == "__main__":
    main()
