"""Fuzz: random damage to a small valid source ends in a correct store or one VlaError.

Never another exception type, and never a store that opens after a failed conversion. Each test
damages fresh copies of one small source (bytes: truncated, garbled, emptied, deleted files;
structure: dtypes, shapes, attributes, metadata fields) and is bounded to a few seconds:
derandomized, so CI runs the same examples every time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from vla.datasets.convert.base import convert
from vla.datasets.declare import Declaration
from vla.datasets.store import Store
from vla.datasets.validate import validate_store
from vla.errors import VlaError
from vla.testing.corrupt import KINDS, Damage, corrupt_file, files_of
from vla.testing.dp_zarr import write_pusht_zarr
from vla.testing.libero_hdf5 import write_libero_hdf5

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

# No shrinking: it can take minutes; the failing example is printed as generated.
FUZZ = settings(
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.generate],
)

damages = st.lists(
    st.tuples(
        st.integers(0, 10**6),  # which file (modulo the number of files)
        st.builds(
            Damage,
            kind=st.sampled_from(KINDS),
            at=st.floats(0, 1),
            xor=st.integers(1, 255),
            length=st.integers(1, 64),
        ),
    ),
    max_size=3,
)
# Values a metadata field or attribute may be changed to: plausible and implausible alike.
json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|O", "<U3", "|b1", "", "v9.9", "float32", "string", "video"]),
    st.lists(st.integers(-1, 9), max_size=4),
    st.dictionaries(st.sampled_from(["a", "id", "name"]), st.integers(0, 3), max_size=2),
)


def _damage_bytes(src: Path, chosen: list[tuple[int, Damage]]) -> None:
    for which, damage in chosen:
        files = files_of(src)
        if files:
            corrupt_file(files[which % len(files)], damage)


def _check_outcome(fmt: str, src: Path, dst: Path, decl: Declaration) -> None:
    """The property: a correct store, or one VlaError and no store."""
    try:
        convert(fmt, src, dst, decl, progress=False)
    except VlaError as e:
        assert "\n" not in str(e)  # one line
        with pytest.raises(VlaError):
            Store(dst)
        return
    assert validate_store(dst) == []


def _fuzz_copy(base: Path, run: Callable[[Path, Path], None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / base.name
        (shutil.copytree if base.is_dir() else shutil.copy)(base, src)
        run(src, Path(tmp) / "out.zarr")


# --- LIBERO HDF5 ---------------------------------------------------------------------------------
LIBERO_KEYS = [
    "data/demo_0/actions",
    "data/demo_1/actions",
    "data/demo_0/obs/ee_pos",
    "data/demo_1/obs/joint_states",
    "data/demo_0/obs/agentview_rgb",
    "data/demo_1/obs/eye_in_hand_rgb",
    "data/demo_0/obs",
    "data/demo_1",
]
LIBERO_DTYPES = ["float32", "int8", "uint8", "bool", "S4", "complex64"]


@st.composite
def libero_edits(draw) -> list[tuple[str, Any]]:
    edits = []
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(["delete", "retype", "reshape", "attr"]))
        if what == "attr":
            name = draw(st.sampled_from(["problem_info", "macros_image_convention"]))
            value = draw(
                st.one_of(json_values.map(json.dumps), st.binary(max_size=40), st.integers(), json_values.map(str))
            )
            edits.append((what, (name, value)))
        else:
            edits.append((what, (draw(st.sampled_from(LIBERO_KEYS)), draw(st.sampled_from(LIBERO_DTYPES)))))
    return edits


def _retyped(old: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "S4" or old.dtype.kind == "S":  # strings cannot be cast to numbers and back
        return np.full(old.shape, b"ab") if dtype == "S4" else np.zeros(old.shape, dtype)
    return old.astype(dtype)


def _edit_libero(path: Path, edits: list[tuple[str, Any]]) -> None:
    with h5py.File(path, "a") as f:
        for what, (key, value) in edits:
            if what == "attr":
                f["data"].attrs[key] = np.bytes_(value) if isinstance(value, bytes) else value
                continue
            if key not in f or not isinstance(f[key], h5py.Dataset):
                continue
            old = f[key][()]
            del f[key]
            if what == "retype":
                f.create_dataset(key, data=_retyped(old, value))
            elif what == "reshape":
                f.create_dataset(key, data=old.reshape(-1)[: max(1, old.size // 2)])


@pytest.fixture(scope="module")
def libero_src(tmp_path_factory) -> Path:
    return write_libero_hdf5(tmp_path_factory.mktemp("libero") / "t_demo.hdf5", "pick up the bowl", 2, 3, (4, 4))


@settings(FUZZ, max_examples=40)
@given(chosen=damages, edits=libero_edits())
def test_libero_fuzz(libero_src, chosen, edits):
    def run(src: Path, dst: Path) -> None:
        _edit_libero(src, edits)
        _damage_bytes(src, chosen)
        _check_outcome("libero", src, dst, Declaration())

    _fuzz_copy(libero_src, run)


# --- Diffusion-Policy Zarr ----------------------------------------------------------------------
DP_FIELDS = ["dtype", "shape", "chunks", "fill_value", "compressor", "filters", "zarr_format", "order"]


@st.composite
def json_edits(draw, fields: list[str]) -> list[tuple[int, str, Any]]:
    return draw(
        st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(fields), json_values), max_size=2),
    )


def _edit_json_files(src: Path, names: tuple[str, ...], edits: list[tuple[int, str, Any]]) -> None:
    files = [p for p in files_of(src) if p.name in names]
    for which, field, value in edits:
        path = files[which % len(files)]
        meta = json.loads(path.read_text())
        if value is None and field in meta:
            del meta[field]  # a field that vanished
        else:
            meta[field] = value
        path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def dp_src(tmp_path_factory) -> Path:
    return write_pusht_zarr(tmp_path_factory.mktemp("dp") / "src.zarr", 2, [3, 4], image_size=4)


@settings(FUZZ, max_examples=40)
@given(chosen=damages, edits=json_edits(DP_FIELDS))
def test_dp_zarr_fuzz(dp_src, chosen, edits):
    def run(src: Path, dst: Path) -> None:
        _edit_json_files(src, (".zarray", ".zgroup"), edits)
        _damage_bytes(src, chosen)
        _check_outcome("dp-zarr", src, dst, Declaration(fps=10))

    _fuzz_copy(dp_src, run)


# --- LeRobot ---------------------------------------------------------------------------------------
LEROBOT_PATHS = [
    ("fps",),
    ("total_episodes",),
    ("codebase_version",),
    ("features", "action", "shape"),
    ("features", "action", "dtype"),
    ("features", "observation.state", "shape"),
    ("features", "observation.images.front", "shape"),
    ("features", "observation.images.front", "dtype"),
    ("features", "next.reward", "dtype"),
    ("features", "action"),
]


def _edit_info(src: Path, edits: list[tuple[tuple[str, ...], Any]]) -> None:
    path = src / "meta/info.json"
    info = json.loads(path.read_text())
    for keys, value in edits:
        node = info
        for k in keys[:-1]:
            node = node[k]
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    path.write_text(json.dumps(info))


@settings(FUZZ, max_examples=10)
@given(
    chosen=damages.filter(lambda d: len(d) <= 1),
    edits=st.lists(st.tuples(st.sampled_from(LEROBOT_PATHS), json_values), max_size=1),
)
def test_lerobot_fuzz(small_lerobot, chosen, edits):
    def run(src: Path, dst: Path) -> None:
        _edit_info(src, edits)
        _damage_bytes(src, chosen)
        _check_outcome("lerobot", src, dst, Declaration())

    _fuzz_copy(small_lerobot, run)
