"""Issue 19, item 1: a CALVIN annotation or scene file can never run code; real files still read."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vla.datasets.convert.base import convert
from vla.datasets.npyfile import load_npy
from vla.datasets.store import PARTIAL_SUFFIX, Store
from vla.errors import DataError
from vla.testing.calvin_data import LANG_FILE, write_calvin_split

SCENE_FILE = Path("scene_info.npy")


class Payload:
    """Unpickling this calls `func(*args)`: what a hostile dataset file would carry."""

    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w')"),
    }


def _save_npy(path: Path, obj: Any, protocol: int = 3) -> None:
    """Write `obj` as np.save would (a 0-d object array pickled after an .npy header)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    arr = np.empty((), object)
    arr[()] = obj
    path.write_bytes(buf.getvalue() + pickle.dumps(arr, protocol=protocol))


@pytest.fixture
def split(tmp_path) -> Path:
    return write_calvin_split(
        tmp_path / "training", [(0, 3), (10, 12)], [(0, 2, "open the drawer", "open_drawer")], image_sizes=(8, 8)
    )


@pytest.mark.parametrize("target", [LANG_FILE, SCENE_FILE], ids=["lang", "scene"])
@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen", "builtins.exec"])
@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_a_pickled_call_never_runs(split, tmp_path, target, payload, nested):
    marker = tmp_path / "pwned"
    evil = _payloads(marker)[payload]
    original = np.load(split / target, allow_pickle=True).item()  # the trusted fixture
    np.save(split / target, {**original, "x": [evil]} if nested else evil, allow_pickle=True)
    dst = tmp_path / "out"
    with pytest.raises(DataError) as err:
        convert("calvin", split, dst, progress=False)
    assert not marker.exists()
    line = str(err.value)
    assert "\n" not in line and "refused to unpickle" in line
    assert err.value.path == str(split / target) and payload.split(".")[1] in line
    assert not dst.exists() and not Path(f"{dst}{PARTIAL_SUFFIX}").exists()


def test_a_persistent_id_is_refused(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "x" if isinstance(obj, str) else None

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    P(buf, protocol=3).dump({"a": "b"})
    (tmp_path / "f.npy").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="refused to unpickle persistent_id"):
        load_npy(tmp_path / "f.npy")


@pytest.mark.parametrize("name", [LANG_FILE, SCENE_FILE], ids=["lang", "scene"])
def test_the_real_fixture_files_read_as_numpy_reads_them(split, name):
    safe = load_npy(split / name)
    trusted = np.load(split / name, allow_pickle=True).item()
    assert pickle.dumps(safe) == pickle.dumps(trusted)


def test_numpy_1_pickles_read_too(split, tmp_path):
    """CALVIN's published files were written by numpy 1 (`numpy.core.multiarray`)."""
    trusted = np.load(split / LANG_FILE, allow_pickle=True).item()
    path = tmp_path / "old.npy"
    _save_npy(path, trusted)
    raw = path.read_bytes()
    old = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert old != raw  # protocol 3 names globals as text lines
    path.write_bytes(old)
    assert pickle.dumps(load_npy(path)) == pickle.dumps(trusted)


def test_a_plain_number_array_reads_without_pickle(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(6).reshape(3, 2))
    assert load_npy(tmp_path / "ids.npy").tolist() == [[0, 1], [2, 3], [4, 5]]


def test_conversion_of_the_fixture_is_unchanged(split, tmp_path):
    """Bit-identical to reading the same files with np.load(allow_pickle=True)."""
    from vla.datasets.convert import calvin

    safe = Store(convert("calvin", split, tmp_path / "safe", progress=False).store.path)

    def trusting(path: Path, pickled: bool = True) -> Any:
        value = np.load(path, allow_pickle=True)
        return value.item() if value.dtype == object and value.shape == () else value

    mp = pytest.MonkeyPatch()
    mp.setattr(calvin, "load_npy", trusting)
    try:
        trusted = Store(convert("calvin", split, tmp_path / "trusted", progress=False).store.path)
    finally:
        mp.undo()
    assert safe.meta == trusted.meta
    for key in (*safe.keys, "episode_index", "timestamp"):
        assert np.array_equal(safe.array(key)[:], trusted.array(key)[:])
    assert [safe.episode(i).annotations for i in range(2)] == [trusted.episode(i).annotations for i in range(2)]


def test_an_index_file_of_pickled_objects_is_refused_without_unpickling(split, tmp_path):
    marker = tmp_path / "pwned"
    np.save(
        split / "ep_start_end_ids.npy", np.asarray([[_payloads(marker)["os.system"], 1]], object), allow_pickle=True
    )
    with pytest.raises(DataError, match="expected an array of plain numbers"):
        convert("calvin", split, tmp_path / "out", progress=False)
    assert not marker.exists()


def test_a_segment_claiming_ten_billion_frames_is_refused_before_allocating(split, tmp_path):
    np.save(split / "ep_start_end_ids.npy", np.asarray([[0, 10**10 - 1]], np.int64))
    with pytest.raises(DataError, match="claims 10000000000 frames but the folder holds only 7"):
        convert("calvin", split, tmp_path / "out", progress=False)
