"""Issue 19, items 4, 6 and 7 (destination): nothing the user owns is deleted, values that are not
values are refused where they enter, and every bad destination ends in one clear line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import h5py
import pytest

from vla.cli import main
from vla.datasets.convert.base import convert
from vla.datasets.declare import Declaration
from vla.datasets.store import PARTIAL_SUFFIX, Store
from vla.errors import DataError
from vla.testing.calvin_data import write_calvin_split
from vla.testing.libero_hdf5 import write_libero_hdf5


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("calvin") / "training"
    return write_calvin_split(root, [(0, 3), (10, 12)], [(0, 2, "open the drawer", "open_drawer")], image_sizes=(8, 8))


def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.txt").write_text("years of work")
    return path


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# --- item 4: --overwrite and DST.partial ----------------------------------------------------------
def test_overwrite_refuses_an_ordinary_folder_and_keeps_its_files(split, tmp_path):
    dst = _user_folder(tmp_path / "mine")
    with pytest.raises(DataError) as err:
        convert("calvin", split, dst, overwrite=True, progress=False)
    assert "replaces only a vla store" in _one_line(err) and "1 entries" in str(err.value)
    assert (dst / "thesis.txt").read_text() == "years of work"
    assert not (tmp_path / f"mine{PARTIAL_SUFFIX}").exists()


def test_overwrite_refuses_a_file(split, tmp_path):
    dst = tmp_path / "notes.txt"
    dst.write_text("keep")
    with pytest.raises(DataError, match="this is a file"):
        convert("calvin", split, dst, overwrite=True, progress=False)
    assert dst.read_text() == "keep"


def test_an_unrelated_partial_folder_is_never_deleted(split, tmp_path):
    partial = _user_folder(tmp_path / f"out{PARTIAL_SUFFIX}")
    for kwargs in ({}, {"resume": False}, {"overwrite": True}):
        with pytest.raises(DataError) as err:
            convert("calvin", split, tmp_path / "out", progress=False, **kwargs)
        assert "not a partial conversion written by vla" in _one_line(err)
        assert (partial / "thesis.txt").read_text() == "years of work"


def test_overwrite_replaces_a_store_and_says_so(split, tmp_path, caplog):
    dst = tmp_path / "out"
    convert("calvin", split, dst, progress=False)
    with caplog.at_level(logging.WARNING, logger="vla.datasets.store"):
        summary = convert("calvin", split, dst, overwrite=True, progress=False)
    assert summary.store.num_episodes == 2
    assert any("replacing the store" in r.getMessage() and str(dst) in r.getMessage() for r in caplog.records)


def test_restart_deletes_only_our_partial_and_says_so(split, tmp_path, caplog, monkeypatch):
    dst = tmp_path / "out"
    monkeypatch.setattr(
        "vla.datasets.store.StoreWriter.finalize", lambda self: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        convert("calvin", split, dst, progress=False)
    monkeypatch.undo()
    assert (tmp_path / f"out{PARTIAL_SUFFIX}").is_dir()
    with caplog.at_level(logging.WARNING, logger="vla.datasets.store"):
        summary = convert("calvin", split, dst, resume=False, progress=False)
    assert summary.store.num_episodes == 2 and not summary.resumed
    assert any("deleting the partial conversion" in r.getMessage() for r in caplog.records)


# --- item 7: destinations ---------------------------------------------------------------------------
def test_dst_equal_to_the_source_file_is_refused_and_leaves_nothing(tmp_path):
    src = write_libero_hdf5(tmp_path / "task_demo.hdf5", "pick it up", 1, 4, image_size=(8, 8))
    before = src.read_bytes()
    with pytest.raises(DataError) as err:
        convert("libero", src, src, overwrite=True, progress=False)
    assert "overlaps the source" in _one_line(err)
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task_demo.hdf5"]


@pytest.mark.parametrize("where", ["inside", "parent", "self"])
def test_dst_overlapping_a_source_folder_is_refused(split, where):
    dst = {"inside": split / "out", "parent": split.parent, "self": split}[where]
    names = sorted(p.name for p in split.iterdir())
    with pytest.raises(DataError, match="overlaps the source"):
        convert("calvin", split, dst, overwrite=True, progress=False)
    assert sorted(p.name for p in split.iterdir()) == names


def test_dst_dot_is_refused_and_the_folder_kept(split, tmp_path, monkeypatch):
    here = _user_folder(tmp_path / "cwd")
    monkeypatch.chdir(here)
    with pytest.raises(DataError) as err:
        convert("calvin", split, ".", overwrite=True, progress=False)
    assert "replaces only a vla store" in _one_line(err)
    assert sorted(p.name for p in here.iterdir()) == ["thesis.txt"]
    assert not (tmp_path / f"cwd{PARTIAL_SUFFIX}").exists()


def test_a_300_byte_name_is_one_line(split, tmp_path):
    with pytest.raises(DataError) as err:
        convert("calvin", split, tmp_path / ("x" * 300), progress=False)
    assert "name is too long" in _one_line(err)


def test_an_unwritable_destination_is_one_line(split, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)  # root ignores chmod, so the refusal is simulated
    with pytest.raises(DataError) as err:
        convert("calvin", split, tmp_path / "out", progress=False)
    assert "cannot write: Permission denied" in _one_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(split, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    with pytest.raises(DataError, match="cannot write"):
        convert("calvin", split, ro / "out", progress=False)


# --- item 6: values that are not values -------------------------------------------------------------
@pytest.mark.parametrize("fps", [float("nan"), float("inf"), float("-inf"), 0.0, -5.0])
def test_non_finite_or_non_positive_fps_is_refused_by_the_api(fps):
    with pytest.raises(DataError, match="fps"):
        Declaration(fps=fps)
    with pytest.raises(DataError, match="fps"):
        Declaration().updated(fps=fps)


def test_yaml_fps_that_is_not_a_number_is_refused(tmp_path):
    for text in ("fps: .nan", "fps: .inf", "fps: abc", "fps: -1"):
        (tmp_path / "d.yaml").write_text(text)
        with pytest.raises(DataError, match=r"\[fps\]"):
            Declaration.from_yaml(tmp_path / "d.yaml")


@pytest.mark.parametrize("fps", ["nan", "inf", "0"])
def test_cli_fps_nan_is_one_line_and_writes_nothing(split, tmp_path, monkeypatch, capsys, fps):
    dst = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["vla", "data", "convert", "--from", "calvin", str(split), str(dst), "--fps", fps])
    with pytest.raises(SystemExit) as code:
        main()
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --fps [fps]: must be a finite number") and "\n" not in err
    assert not dst.exists() and not (tmp_path / f"out{PARTIAL_SUFFIX}").exists()


def test_duplicate_demo_numbers_are_refused_naming_both(tmp_path):
    src = write_libero_hdf5(tmp_path / "task_demo.hdf5", "pick it up", 2, 4, image_size=(8, 8))
    with h5py.File(src, "r+") as f:
        f.copy("data/demo_1", "data/demo_01")
    with pytest.raises(DataError) as err:
        convert("libero", src, tmp_path / "out", progress=False)
    names = {err.value.key, err.value.problem.split(" as ")[1].split(";")[0]}
    assert "same demo number 1" in _one_line(err) and names == {"data/demo_1", "data/demo_01"}


def test_a_dangling_symlink_in_a_source_folder_is_an_error(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    write_libero_hdf5(folder / "task_demo.hdf5", "pick it up", 1, 4, image_size=(8, 8))
    (folder / "other_demo.hdf5").symlink_to(tmp_path / "gone.hdf5")
    with pytest.raises(DataError) as err:
        convert("libero", folder, tmp_path / "out", progress=False)
    assert "dangling symlink" in _one_line(err) and err.value.path.endswith("other_demo.hdf5")


def test_a_dangling_calvin_annotation_link_is_an_error(tmp_path):
    src = write_calvin_split(tmp_path / "training", [(0, 3)], image_sizes=(8, 8))
    lang = src / "lang_annotations" / "auto_lang_ann.npy"
    lang.unlink()
    lang.symlink_to(tmp_path / "gone.npy")
    with pytest.raises(DataError, match="dangling symlink"):
        convert("calvin", src, tmp_path / "out", progress=False)


def test_an_instruction_with_a_lone_surrogate_is_refused_at_conversion(tmp_path):
    src = write_libero_hdf5(tmp_path / "task_demo.hdf5", "pick \udc80 up", 1, 4, image_size=(8, 8))
    dst = tmp_path / "out"
    with pytest.raises(DataError) as err:
        convert("libero", src, dst, progress=False)
    assert "lone surrogate" in _one_line(err) and err.value.key == "task" and "demo_0" in err.value.path
    with pytest.raises(DataError):
        Store(dst)


def test_a_declared_task_with_a_lone_surrogate_is_refused():
    with pytest.raises(DataError, match="lone surrogate"):
        Declaration(task="open \ud800 drawer")
