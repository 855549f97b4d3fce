"""Conversions under bad input, interruption, restart and growth; the `vla data` commands end to end.

Every bad input must fail with ONE line naming the file, the key and the problem, and must never
leave a store at DST that looks complete. An interrupted conversion resumes without re-reading
what was committed and ends identical to a clean run. Peak memory must not grow with the number
of episodes.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from vla.cli import app
from vla.datasets import stats
from vla.datasets.convert.base import convert
from vla.datasets.convert.dp_zarr import DiffusionPolicyZarrConverter
from vla.datasets.convert.libero import LiberoConverter
from vla.datasets.declare import Declaration
from vla.datasets.libero_hdf5 import LiberoHdf5Writer
from vla.datasets.store import INDEX_KEYS, JOURNAL, PARTIAL_SUFFIX, Store, StoreWriter
from vla.errors import DataError
from vla.testing.dp_zarr import DpZarrWriter, write_pusht_zarr
from vla.testing.libero_hdf5 import synthetic_demo, write_libero_hdf5

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
READ_EPISODE = LiberoConverter._read_episode  # the real one, before any test wraps it


def partial_of(dst: Path) -> Path:
    return dst.with_name(dst.name + PARTIAL_SUFFIX)


def assert_no_complete_store(dst: Path) -> None:
    assert not dst.exists()
    with pytest.raises(DataError):
        Store(dst)
    if partial_of(dst).exists():
        with pytest.raises(DataError, match="incomplete"):
            Store(partial_of(dst))


def assert_same_store(a: Store, b: Store) -> None:
    """Same metadata (spec, counts, tasks, statistics) and bit-identical arrays."""
    assert a.meta == b.meta
    for key in (*a.keys, *INDEX_KEYS):
        np.testing.assert_array_equal(a.array(key)[:], b.array(key)[:], err_msg=key)
    for key in ("meta/episode_ends", "meta/episode_task"):
        np.testing.assert_array_equal(a.root[key][:], b.root[key][:], err_msg=key)


# --- bad input ----------------------------------------------------------------------------------


WITH_FPS = Declaration(fps=10)  # dp-zarr requires an fps; for LIBERO it only overrides 20 Hz


@dataclass
class BadCase:
    fmt: str
    make: Callable[[Path], Path]  # writes a bad source under tmp_path, returns SRC
    key: str | None  # the key the message must name
    problem: str  # a phrase of the problem the message must state
    decl: Declaration = WITH_FPS
    named: Callable[[Path], Path] | None = None  # the file the message must name (default: SRC)


def _libero(tmp: Path, n: int = 3, length: int = 4, **kw) -> Path:
    return write_libero_hdf5(tmp / "task_demo.hdf5", "pick up the bowl", n, length, (4, 4), **kw)


def _edit_h5(edit: Callable[[h5py.File], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        src = _libero(tmp)
        with h5py.File(src, "r+") as f:
            edit(f)
        return src

    return make


def _replace(f: h5py.File, name: str, value: np.ndarray) -> None:
    del f[name]
    f[name] = value


def _with_value(name: str, frame: int, value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        arr = f[name][()]
        arr[frame, 0] = value
        _replace(f, name, arr)

    return edit


def _truncated(tmp: Path) -> Path:
    src = _libero(tmp)
    with open(src, "r+b") as fh:
        fh.truncate(int(src.stat().st_size * 0.6))
    return src


def _no_data_group(tmp: Path) -> Path:
    src = tmp / "other_demo.hdf5"
    with h5py.File(src, "w") as f:
        f.create_group("episodes").create_dataset("actions", data=np.zeros((3, 7)))
    return src


def _empty_demo(tmp: Path) -> Path:
    src = tmp / "task_demo.hdf5"
    with LiberoHdf5Writer(src, "pick up the bowl") as w:
        w.add_demo(*synthetic_demo(3, 0, (4, 4), True, 0))
        w.add_demo(*synthetic_demo(0, 1, (4, 4), True, 0))
    return src


def _second_file_lacks(tmp: Path) -> Path:
    folder = tmp / "suite"
    write_libero_hdf5(folder / "a_demo.hdf5", "a", 2, 3, (4, 4))
    b = write_libero_hdf5(folder / "b_demo.hdf5", "b", 2, 3, (4, 4))
    with h5py.File(b, "r+") as f:
        del f["data/demo_1/obs/joint_states"]
    return folder


def _pusht(tmp: Path, **kw) -> Path:
    return write_pusht_zarr(tmp / "pusht.zarr", 3, [4, 5, 3], image_size=8, **kw)


def _dp_episodes(tmp: Path, episodes: list[dict[str, np.ndarray]]) -> Path:
    w = DpZarrWriter(tmp / "rb.zarr")
    for ep in episodes:
        w.add_episode(ep)
    return w.path


def _edit_zarr(edit: Callable[[zarr.Group], None], **kw) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        src = _pusht(tmp, **kw)
        edit(zarr.open_group(src, mode="r+"))
        return src

    return make


def _zarr_meta(name: str, version: int, **kw) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        src = _pusht(tmp, **kw)
        (src / name).write_text(json.dumps({"zarr_format": version, "node_type": "group"}))
        return src

    return make


def _set(key: str, index: tuple, value: float) -> Callable[[zarr.Group], None]:
    def edit(root: zarr.Group) -> None:
        root[key][index] = value

    return edit


def _corrupt_chunk(tmp: Path) -> Path:
    src = _pusht(tmp)
    (src / "data/action/0.0").write_bytes(b"not a blosc frame" * 4)
    return src


def _ends(values: list[int]) -> Callable[[zarr.Group], None]:
    def edit(root: zarr.Group) -> None:
        root["meta/episode_ends"][:] = values

    return edit


BAD = {
    "libero missing actions": BadCase(
        "libero", _edit_h5(lambda f: f.__delitem__("data/demo_1/actions")), "data/demo_1/actions", "missing"
    ),
    "libero actions wrong shape": BadCase(
        "libero",
        _edit_h5(lambda f: _replace(f, "data/demo_2/actions", np.zeros((4, 6)))),
        "data/demo_2/actions",
        "expected shape (T, 7), got (4, 6)",
    ),
    "libero state part wrong shape": BadCase(
        "libero",
        _edit_h5(lambda f: _replace(f, "data/demo_0/obs/ee_pos", np.zeros((3, 3)))),
        "data/demo_0/obs/ee_pos",
        "expected shape (4, 3), got (3, 3)",
    ),
    "libero NaN in actions": BadCase(
        "libero",
        _edit_h5(_with_value("data/demo_1/actions", 2, np.nan)),
        "data/demo_1/actions",
        "non-finite value (NaN or inf) at frame 2",
    ),
    "libero inf in ee_ori": BadCase(
        "libero",
        _edit_h5(_with_value("data/demo_2/obs/ee_ori", 3, np.inf)),
        "data/demo_2/obs/ee_ori",
        "non-finite value (NaN or inf) at frame 3",
    ),
    "libero truncated file": BadCase("libero", _truncated, None, "truncated"),
    "libero no data group": BadCase("libero", _no_data_group, "data", "no 'data' group"),
    "libero empty episode": BadCase("libero", _empty_demo, "data/demo_1/actions", "episode is empty (0 frames)"),
    "libero problem_info not JSON": BadCase(
        "libero",
        _edit_h5(lambda f: f["data"].attrs.__setitem__("problem_info", "{oops")),
        "data.attrs['problem_info']",
        "not valid JSON",
    ),
    "libero folder, one file lacks a key": BadCase(
        "libero",
        _second_file_lacks,
        "data/demo_1/obs/joint_states",
        "missing",
        named=lambda src: src / "b_demo.hdf5",
    ),
    "dp missing action": BadCase(
        "dp-zarr",
        lambda tmp: _dp_episodes(tmp, [{"state": np.zeros((3, 2))}]),
        "data/action",
        "no action array",
    ),
    "dp array shorter than episode_ends": BadCase(
        "dp-zarr",
        _edit_zarr(lambda root: root["data/state"].resize((10, 5))),
        "data/state",
        "has 10 frames, meta/episode_ends ends at 12",
    ),
    "dp action wrong shape": BadCase(
        "dp-zarr",
        lambda tmp: _dp_episodes(tmp, [{"action": np.zeros(3), "state": np.zeros((3, 2))}]),
        "data/action",
        "needs a numeric (N, D) array",
    ),
    "dp NaN in action": BadCase(
        "dp-zarr",
        _edit_zarr(_set("data/action", (6, 1), np.nan)),
        "data/action",
        "non-finite value (NaN or inf) at frame 6",
    ),
    "dp unknown zarr_format v2": BadCase("dp-zarr", _zarr_meta(".zgroup", 4), ".zgroup", "unsupported zarr_format 4"),
    "dp unknown zarr_format v3": BadCase(
        "dp-zarr", _zarr_meta("zarr.json", 5, zarr_format=3), "zarr.json", "unsupported zarr_format 5"
    ),
    "dp not a zarr store": BadCase("dp-zarr", lambda tmp: _mkdir(tmp / "empty.zarr"), None, "not a Zarr group"),
    "dp empty episode": BadCase("dp-zarr", _edit_zarr(_ends([4, 4, 12])), "meta/episode_ends", "episode 1 is empty"),
    "dp missing episode_ends": BadCase(
        "dp-zarr", _edit_zarr(lambda root: root["meta"].__delitem__("episode_ends")), "meta/episode_ends", "missing"
    ),
    "dp corrupt chunk": BadCase("dp-zarr", _corrupt_chunk, "data/action", "cannot read frames 0..3"),
    "dp float image not 0..255": BadCase(
        "dp-zarr",
        _edit_zarr(_set("data/img", (5, 0, 0, 0), 0.5), float_images=True),
        "data/img",
        "whole numbers in 0..255; frame 5",
    ),
    "dp fps not declared": BadCase("dp-zarr", _pusht, None, "pass --fps", decl=Declaration()),
}


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_input_fails_with_one_clear_message(tmp_path, case: BadCase):
    src = case.make(tmp_path)
    dst = tmp_path / "out.zarr"
    with pytest.raises(DataError) as e:
        convert(case.fmt, src, dst, case.decl, progress=False)
    err = e.value
    message = str(err)
    assert "\n" not in message
    assert err.path == str(case.named(src) if case.named else src), message
    assert err.key == case.key, message
    assert case.problem in err.problem, message
    assert message.startswith(err.path) and (case.key is None or f"[{case.key}]" in message)
    assert_no_complete_store(dst)


# --- interruption and resume -------------------------------------------------------------------


def _libero_suite(tmp: Path) -> Path:
    folder = tmp / "suite"
    write_libero_hdf5(folder / "a_demo.hdf5", "open the drawer", 3, [3, 5, 4], (8, 8), seed=1)
    write_libero_hdf5(folder / "b_demo.hdf5", "close the drawer", 2, [4, 3], (8, 8), seed=2)
    return folder


def _record_reads(monkeypatch, reads: list, fail_at: int | None = None) -> None:
    """Wrap the converter's per-demo read: record it, and raise like a crash on read number `fail_at`."""

    def read(self, f, tf, demo):
        if fail_at is not None and len(reads) == fail_at:
            raise RuntimeError("simulated crash")
        reads.append((tf.path.name, demo))
        return READ_EPISODE(self, f, tf, demo)

    monkeypatch.setattr(LiberoConverter, "_read_episode", read)


def test_resume_after_a_crash_reads_only_what_is_left(tmp_path, monkeypatch):
    src = _libero_suite(tmp_path)
    clean = convert("libero", src, tmp_path / "clean.zarr", progress=False).store
    dst = tmp_path / "out.zarr"
    reads: list = []
    _record_reads(monkeypatch, reads, fail_at=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert("libero", src, dst, progress=False)
    assert json.loads((partial_of(dst) / JOURNAL).read_text())["episodes"] == 4
    assert_no_complete_store(dst)

    reads.clear()
    _record_reads(monkeypatch, reads)
    summary = convert("libero", src, dst, progress=False)
    assert summary.resumed and (summary.episodes_skipped, summary.episodes_written) == (4, 1)
    assert reads == [("b_demo.hdf5", "demo_1")]  # nothing committed was read again
    assert_same_store(summary.store, clean)
    assert not partial_of(dst).exists()


def test_resume_after_a_kill_inside_an_episode_write(tmp_path, monkeypatch):
    """The process dies after an episode's arrays were written but before the journal said so."""
    src = write_pusht_zarr(tmp_path / "pusht.zarr", 4, [3, 5, 4, 2], image_size=8)
    decl = Declaration(fps=10, task="push the T")
    clean = convert("dp-zarr", src, tmp_path / "clean.zarr", decl, progress=False).store
    dst = tmp_path / "out.zarr"
    original_append = StoreWriter._append

    def dying_append(self, key, values):
        if key == "meta/episode_ends" and self.done_episodes == 2:
            raise KeyboardInterrupt  # like Ctrl-C: frames of episode 2 are already in the arrays
        return original_append(self, key, values)

    monkeypatch.setattr(StoreWriter, "_append", dying_append)
    with pytest.raises(KeyboardInterrupt):
        convert("dp-zarr", src, dst, decl, progress=False)
    assert zarr.open_group(partial_of(dst), mode="r")["data/action"].shape[0] == 3 + 5 + 4
    monkeypatch.setattr(StoreWriter, "_append", original_append)

    read: list[int] = []
    original_read = DiffusionPolicyZarrConverter._read_episode
    monkeypatch.setattr(
        DiffusionPolicyZarrConverter, "_read_episode", lambda s, i: read.append(i) or original_read(s, i)
    )
    summary = convert("dp-zarr", src, dst, decl, progress=False)
    assert read == [2, 3] and summary.episodes_skipped == 2
    assert_same_store(summary.store, clean)


KILL_SCRIPT = """
import os, signal, sys
from vla.datasets import stats
from vla.datasets.convert.base import convert
from vla.datasets.store import StoreWriter

commits = 0
original = StoreWriter._commit

def commit_or_die(self):
    global commits
    commits += 1
    if commits == 1 + int(sys.argv[3]):  # the creation commit, then one per episode: die before it
        os.kill(os.getpid(), signal.SIGKILL)
    original(self)

StoreWriter._commit = commit_or_die
convert("libero", sys.argv[1], sys.argv[2], progress=False)
"""


def test_resume_after_sigkill_of_a_real_process(tmp_path):
    src = _libero_suite(tmp_path)
    clean = convert("libero", src, tmp_path / "clean.zarr", progress=False).store
    dst = tmp_path / "out.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(src), str(dst), "3"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert json.loads((partial_of(dst) / JOURNAL).read_text())["episodes"] == 2
    assert_no_complete_store(dst)
    summary = convert("libero", src, dst, progress=False)
    assert summary.episodes_skipped == 2 and summary.episodes_written == 3
    assert_same_store(summary.store, clean)


def test_cli_resumes_by_default_and_restart_starts_over(tmp_path, monkeypatch):
    src = _libero_suite(tmp_path)
    clean = convert("libero", src, tmp_path / "clean.zarr", progress=False).store
    dst = tmp_path / "out.zarr"
    args = ["data", "convert", "--from", "libero", str(src), str(dst), "--image-codec", "lz4"]  # exact, as the API
    reads: list = []
    _record_reads(monkeypatch, reads, fail_at=3)
    assert isinstance(runner.invoke(app, args).exception, RuntimeError)

    reads.clear()
    _record_reads(monkeypatch, reads)
    result = runner.invoke(app, [*args, "--restart"])
    assert result.exit_code == 0, result.output
    assert reads == [("a_demo.hdf5", f"demo_{i}") for i in range(3)] + [("b_demo.hdf5", f"demo_{i}") for i in range(2)]
    assert "0 resumed" in result.output
    assert_same_store(Store(dst), clean)

    shutil.rmtree(dst)
    reads.clear()
    _record_reads(monkeypatch, reads, fail_at=3)
    runner.invoke(app, args)
    reads.clear()
    _record_reads(monkeypatch, reads)
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "3 resumed" in result.output and len(reads) == 2
    assert_same_store(Store(dst), clean)


# --- the command line ----------------------------------------------------------------------------


def test_cli_convert_info_validate(tmp_path):
    src = _libero_suite(tmp_path)
    dst = tmp_path / "libero.zarr"
    result = runner.invoke(app, ["data", "convert", "--from", "libero", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "episodes" in result.output and Store(dst).num_episodes == 5

    result = runner.invoke(app, ["data", "info", str(dst)])
    assert result.exit_code == 0, result.output
    assert "libero_panda" in result.output and "stored upright (source rotated_180)" in result.output
    result = runner.invoke(app, ["data", "info", "--json", str(dst)])
    info = json.loads(result.output)
    assert (info["episodes"], info["frames"], info["fps"], info["source"]) == (5, 19, 20.0, "libero")
    assert info["tasks"] == ["open the drawer", "close the drawer"]

    result = runner.invoke(app, ["data", "validate", str(dst)])
    assert result.exit_code == 0 and result.output.strip() == f"{dst}: ok"

    # An existing store is never replaced without --overwrite.
    result = runner.invoke(app, ["data", "convert", "--from", "libero", str(src), str(dst)])
    assert isinstance(result.exception, DataError) and "already exists" in str(result.exception)


def test_cli_dp_zarr_with_flags(tmp_path):
    src = write_pusht_zarr(tmp_path / "pusht.zarr", 2, [3, 4], image_size=8)
    dst = tmp_path / "pusht_store.zarr"
    args = ["data", "convert", "--from", "dp-zarr", str(src), str(dst), "--fps", "10", "--action-space", "pusht_xy"]
    args += ["--task", "push the T", "--camera-orientation", "img=rotated_180", "--key", "keypoint=observation.kp"]
    args += ["--image-codec", "lz4"]  # lossless: frames compared bit for bit below
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    store = Store(dst)
    assert store.tasks == ["push the T"] and "observation.kp" in store.keys and store.fps == 10.0
    assert store.spec.cameras[0].source_orientation == "rotated_180"
    source = zarr.open_group(src, mode="r")["data/img"][:3]
    np.testing.assert_array_equal(store.episode(0).frames["observation.images.img"], np.rot90(source, 2, axes=(1, 2)))
    assert runner.invoke(app, ["data", "validate", str(dst)]).exit_code == 0


def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    from vla.cli import main

    src = write_pusht_zarr(tmp_path / "pusht.zarr", 1, 3, image_size=8)
    monkeypatch.setattr(sys, "argv", ["vla", "data", "convert", "--from", "dp-zarr", str(src), str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {src}: ") and "--fps" in err and "\n" not in err


def test_validate_reports_each_problem_of_a_broken_store(tmp_path):
    src = write_libero_hdf5(tmp_path / "t_demo.hdf5", "pick up the bowl", 3, [3, 4, 5], (4, 4))
    dst = convert("libero", src, tmp_path / "s.zarr", progress=False).store.path
    shutil.rmtree(dst / "data" / "observation.images.agentview")
    ends = zarr.open_group(dst, mode="r+")["meta/episode_ends"]
    ends[1] = 2  # episode 1 now ends before episode 0 does
    result = runner.invoke(app, ["data", "validate", str(dst)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "data/observation.images.agentview: array is missing",
        "meta/episode_ends: must be strictly increasing and end at the frame count (empty episode?)",
        "cameras: observation.images.agentview declared but not stored",
    ]


# --- memory ---------------------------------------------------------------------------------------

DEMO_LEN = 24
FINALIZE, ADD_EPISODE = StoreWriter.finalize, StoreWriter.add_episode


def _peaks(tmp: Path, demos: int, monkeypatch) -> tuple[int, int]:
    """(peak while streaming episodes, peak of the whole conversion) in traced bytes."""
    src = write_libero_hdf5(tmp / f"m{demos}_demo.hdf5", "x", demos, DEMO_LEN, (32, 32))
    streaming: list[int] = []
    finalize, add = FINALIZE, ADD_EPISODE

    def measured_finalize(self):
        streaming.append(tracemalloc.get_traced_memory()[1])
        return finalize(self)

    def collected_add(self, ep):
        # zarr's asyncio machinery leaves reference cycles behind; collecting them after every
        # episode keeps the garbage collector's timing out of the measurement.
        add(self, ep)
        gc.collect()

    monkeypatch.setattr(StoreWriter, "finalize", measured_finalize)
    monkeypatch.setattr(StoreWriter, "add_episode", collected_add)
    gc.collect()
    tracemalloc.start()
    try:
        convert("libero", src, tmp / f"m{demos}.zarr", progress=False)
        total = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return streaming[0], total


def test_peak_memory_does_not_grow_with_the_number_of_episodes(tmp_path, monkeypatch):
    # Statistics hold at most a fixed number of frames (512 images, 262,144 rows); scaled down here
    # so that both runs exceed the caps while staying small. A converter or writer that kept
    # episodes (or whole arrays) in memory would then show a ~4x larger peak.
    monkeypatch.setattr(stats, "MAX_IMAGE_FRAMES", 16)
    monkeypatch.setattr(stats, "MAX_QUANTILE_ROWS", 32)
    monkeypatch.setattr(stats, "READ_BLOCK", 32)
    _peaks(tmp_path, 1, monkeypatch)  # warm-up: lazy imports and caches are not conversion memory
    stream_1, total_1 = _peaks(tmp_path, 4, monkeypatch)
    stream_4, total_4 = _peaks(tmp_path, 16, monkeypatch)
    assert stream_4 / stream_1 < 1.5, (stream_1, stream_4)
    assert total_4 / total_1 < 1.5, (total_1, total_4)
