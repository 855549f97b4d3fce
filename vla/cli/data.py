"""`vla data`: convert demonstrations into a store, describe it, validate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vla.datasets.convert import CONVERTERS
from vla.datasets.export import EXPORTERS
from vla.datasets.image_codecs import DEFAULT_CODEC

app = typer.Typer(help="Convert demonstrations into the vla store, inspect and validate stores.", no_args_is_help=True)
console = Console()


def _parse_pairs(values: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise typer.BadParameter(f"{what} must look like NAME=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k] = val
    return out


@app.command()
def convert(
    src: Annotated[
        Path, typer.Argument(help="Source file or folder (e.g. a folder of LIBERO HDF5 files, one per task).")
    ],
    dst: Annotated[Path, typer.Argument(help="Output store folder (written as DST.partial, renamed when complete).")],
    fmt: Annotated[str, typer.Option("--from", help=f"Source format: {', '.join(CONVERTERS.names())}.")] = ...,
    declare: Annotated[
        Path | None, typer.Option(help="YAML declaring what the source does not say (fps, action dims, ...).")
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Control rate in Hz (required for dp-zarr unless declared).")
    ] = None,
    embodiment: Annotated[str | None, typer.Option(help="Robot/embodiment name recorded in the store.")] = None,
    action_space: Annotated[
        str | None,
        typer.Option(
            help="Action-space preset: eef_delta_axis_angle_gripper, eef_abs_euler_gripper, eef_rel_euler_gripper, "
            "pusht_xy, jointN, jointN_gripper."
        ),
    ] = None,
    camera_orientation: Annotated[
        list[str] | None,
        typer.Option(help="CAMERA=upright|rotated_180: orientation of a camera's SOURCE frames (repeatable)."),
    ] = None,
    key: Annotated[list[str] | None, typer.Option(help="SOURCE_KEY=STORE_KEY renaming (repeatable).")] = None,
    task: Annotated[str | None, typer.Option(help="Language instruction for sources that carry none.")] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace DST if it is a vla store (once the new one is complete); anything else is refused."),
    ] = False,
    restart: Annotated[bool, typer.Option(help="Ignore a partial conversion at DST.partial and start over.")] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes reading (decoding) episodes in parallel; each holds one episode at a time. The store "
            "is identical to a serial conversion.",
        ),
    ] = 1,
    image_codec: Annotated[
        str,
        typer.Option(
            help="How camera frames are stored: lz4 (lossless, large) or one compressed image per frame: "
            "jpeg (default, quality 75), webp, avif, jpegxl, optionally with a quality 1-100 (e.g. jpeg:90, "
            "webp:85). The conversion reports the error against the source (PSNR, largest pixel error). "
            "See docs/store.md.",
        ),
    ] = DEFAULT_CODEC,
) -> None:
    """Convert demonstrations into a store, episode by episode; an interrupted run resumes."""
    from vla.datasets.convert.base import convert as run_convert
    from vla.datasets.declare import Declaration, check_fps, preset

    if fmt not in CONVERTERS:
        choices = ", ".join(CONVERTERS.names())
        raise typer.BadParameter(f"unknown format {fmt!r}; choose one of {choices}", param_hint="--from")
    if fps is not None:
        check_fps(fps, "--fps")
    decl = Declaration.from_yaml(declare) if declare else Declaration()
    decl = decl.updated(
        fps=fps,
        embodiment=embodiment,
        task=task,
        action=preset(action_space) if action_space else None,
        camera_orientation=_parse_pairs(camera_orientation, "--camera-orientation") or None,
        keys=_parse_pairs(key, "--key") or None,
    )
    from vla.datasets.image_codecs import ImageCodec

    try:
        images = ImageCodec.parse(image_codec)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--image-codec") from None
    summary = run_convert(fmt, src, dst, decl, resume=not restart, overwrite=overwrite, workers=workers,
                          image_codec=images)  # fmt: skip
    store = summary.store
    table = Table(title=f"converted {fmt} -> {store.path}", show_header=False)
    table.add_row("episodes", f"{store.num_episodes} ({summary.episodes_skipped} resumed from an earlier run)")
    table.add_row("frames", str(store.num_frames))
    table.add_row("fps", f"{store.fps:g}")
    table.add_row("tasks", str(len(store.tasks)))
    table.add_row("keys", ", ".join(store.keys))
    table.add_row(
        "time", f"{summary.seconds:.1f} s ({summary.frames_per_second:.0f} frames/s, {workers} reading process(es))"
    )
    codec = summary.image_codec
    quality = f" quality {codec['quality']}" if codec.get("quality") else ""
    errors = [f"{k}: PSNR {e['psnr_db']} dB, max abs {e['max_abs']}" for k, e in codec.get("error", {}).items()]
    table.add_row("images", f"{codec['name']}{quality}" + (f" ({'; '.join(errors)})" if errors else " (lossless)"))
    console.print(table)


@app.command()
def export(
    store_path: Annotated[Path, typer.Argument(metavar="STORE", help="A store folder.")],
    dst: Annotated[Path, typer.Argument(help="Output dataset folder (written as DST.partial, renamed when complete).")],
    fmt: Annotated[str, typer.Option("--to", help=f"Target format: {', '.join(EXPORTERS.names())}.")] = ...,
    images: Annotated[
        str, typer.Option(help="Cameras as 'video' (lerobot's encoder, lossy) or 'png' (lossless frames).")
    ] = "video",
    vcodec: Annotated[
        str | None, typer.Option(help="Video codec for lerobot's encoder (default: lerobot's, libsvtav1).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Task text for episodes the store gives no language.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it is a dataset of that format.")] = False,
) -> None:
    """Write a store as another toolkit's dataset (LeRobot v3, through lerobot's own writer)."""
    from vla.datasets.export.lerobot import ExportOptions
    from vla.datasets.store import Store

    if fmt not in EXPORTERS:
        raise typer.BadParameter(
            f"unknown format {fmt!r}; choose one of {', '.join(EXPORTERS.names())}", param_hint="--to"
        )
    store = Store(store_path)
    options = ExportOptions(images=images, vcodec=vcodec, default_task=task, overwrite=overwrite)
    summary = EXPORTERS.load(fmt)(store, dst, options)
    table = Table(title=f"exported {store.path} -> {fmt}", show_header=False)
    table.add_row("path", str(summary.path))
    table.add_row("episodes", str(summary.episodes))
    table.add_row("frames", str(summary.frames))
    table.add_row("fps", str(summary.fps))
    table.add_row("cameras", ", ".join(summary.cameras) + f" ({images})")
    console.print(table)


def describe(store) -> dict:
    keys = {k: {"dtype": v.dtype, "shape": list(v.shape)} for k, v in store.keys.items()}
    return {
        "path": str(store.path),
        "episodes": store.num_episodes,
        "frames": store.num_frames,
        "fps": store.fps,
        "embodiment": store.spec.embodiment,
        "source": store.spec.source.format,
        "keys": keys,
        "tasks": store.tasks,
        "annotations": int(store.meta.get("num_annotations", 0)),
        "action_space": [f"{d.name}:{d.kind}/{d.mode}" for d in store.spec.action],
        "cameras": [
            {"name": c.name, "orientation": c.orientation, "source_orientation": c.source_orientation}
            for c in store.spec.cameras
        ],
        "stats": store.stats,
        "image_codec": store.meta.get("image_codec", {"name": "lz4", "quality": None, "error": {}}),
    }


def _span(values) -> str:
    """A vector of statistics in a few characters: the value, or the range over its entries."""
    import numpy as np

    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size == 0:
        return ""
    lo, hi = float(v.min()), float(v.max())
    return f"{lo:.3g}" if v.size == 1 or lo == hi else f"{lo:.3g}..{hi:.3g}"


def key_summary(store) -> Table:
    """One row per key, however wide: shape, dtype, overall min/max, and the range of per-dimension means."""
    t = Table(title="keys (mean and std: range over the dimensions; --dims KEY for each one)")
    longest = max((len(k) for k in store.keys), default=3)
    t.add_column("key", overflow="fold", min_width=min(longest, 40))  # the whole name, folded if need be
    for name in ("dtype", "shape", "min", "max", "mean", "std"):
        t.add_column(name, no_wrap=True)
    for key, spec in store.keys.items():
        st = store.stats.get(key, {})
        lo = _span([min(st["min"])]) if st.get("min") else ""
        hi = _span([max(st["max"])]) if st.get("max") else ""
        t.add_row(key, spec.dtype, str(tuple(spec.shape)), lo, hi, _span(st.get("mean", [])), _span(st.get("std", [])))
    return t


def dim_table(store, key: str) -> Table:
    """Per-dimension statistics of one key, with the store's dimension names where it has them."""
    st = store.stats.get(key, {})
    fields = [f for f in ("mean", "std", "min", "max", "q01", "q99") if f in st]
    names = {"action": [d.name for d in store.spec.action], "observation.state": [d.name for d in store.spec.state]}
    labels = names.get(key) or list(store.keys[key].names or [])
    t = Table("dim", "name", *fields, title=key)
    width = len(st[fields[0]]) if fields else 0
    for i in range(width):
        name = labels[i] if i < len(labels) else ""
        t.add_row(str(i), name, *(f"{st[f][i]:.4g}" for f in fields))
    return t


@app.command()
def info(
    store_path: Annotated[Path, typer.Argument(metavar="STORE", help="A store folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
    dims: Annotated[
        list[str] | None,
        typer.Option(
            "--dims",
            help="Per-dimension statistics of these keys (repeatable; 'all' for every low-dimensional key).",
        ),
    ] = None,
) -> None:
    """Episodes, frames, keys and shapes, fps, tasks, action space and statistics of a store.

    Each key is one summary row, however wide its vectors; --dims KEY lists its dimensions one by one.
    """
    from vla.datasets.store import Store

    store = Store(store_path)
    d = describe(store)
    if as_json:
        print(json.dumps(d, indent=2))
        return
    # Written to a log or a pipe, rich would assume 80 columns and fold every key name: use 120.
    console = Console() if Console().is_terminal else Console(width=120)
    console.print(
        f"[bold]{store.path}[/]  {d['episodes']} episodes, {d['frames']} frames, {d['fps']:g} fps, "
        f"embodiment {d['embodiment']!r}, from {d['source']}"
    )
    console.print(key_summary(store))
    wanted = [k for k in store.keys if k not in store.camera_keys] if dims == ["all"] else list(dims or [])
    for key in wanted:
        if key not in store.keys:
            raise typer.BadParameter(
                f"{key!r} is not a key of the store; keys: {', '.join(store.keys)}", param_hint="--dims"
            )
        console.print(dim_table(store, key))
    console.print("action: " + ", ".join(d["action_space"]))
    for c in d["cameras"]:
        console.print(f"camera {c['name']}: stored {c['orientation']} (source {c['source_orientation']})")
    codec = d["image_codec"]
    if d["cameras"]:
        errors = "; ".join(f"{k}: PSNR {e['psnr_db']} dB, max abs {e['max_abs']}" for k, e in codec["error"].items())
        console.print(f"images: {codec['name']}" + (f" quality {codec['quality']} ({errors})" if errors else ""))
    console.print(f"{len(d['tasks'])} tasks" + (f", {d['annotations']} language windows" if d["annotations"] else ""))
    for i, task_text in enumerate(d["tasks"][:20]):
        console.print(f"  [{i}] {task_text}")
    if len(d["tasks"]) > 20:
        console.print(f"  ... and {len(d['tasks']) - 20} more")


@app.command()
def view(
    store_path: Annotated[Path, typer.Argument(metavar="STORE", help="A store folder.")],
    episode: Annotated[
        list[int] | None, typer.Option(help="Episode index to show (repeatable; default: every episode).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Recording file to write (default: <store name>.rrd in this folder).")
    ] = None,
    spawn: Annotated[bool, typer.Option(help="Open the rerun viewer instead of writing a file.")] = False,
) -> None:
    """Show a store in rerun: cameras, state and action curves per dimension, language and annotation windows.

    Writes an .rrd recording (open it with `rerun FILE.rrd`), or with --spawn starts the viewer.
    """
    from vla.analysis.view import record_store
    from vla.datasets.store import Store

    store = Store(store_path)
    target = None if spawn else (out or Path(f"{store.path.name.removesuffix('.zarr')}.rrd"))
    try:
        written = record_store(store, episode, target, spawn=spawn)
    except IndexError as e:
        raise typer.BadParameter(str(e), param_hint="--episode") from None
    shown = f"episodes {', '.join(map(str, episode))}" if episode else f"all {store.num_episodes} episodes"
    console.print(f"{shown} of {store.path} " + (f"written to {written}" if written else "sent to the viewer"))


@app.command()
def validate(store_path: Annotated[Path, typer.Argument(metavar="STORE", help="A store folder.")]) -> None:
    """Check a store against the schema: one line per problem, exit code 1 if there is any."""
    from vla.datasets.validate import validate_store

    problems = validate_store(store_path)
    for p in problems:
        print(p)
    if problems:
        raise typer.Exit(1)
    print(f"{store_path}: ok")
