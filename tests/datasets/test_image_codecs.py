"""Compressed image chunks (vla.datasets.image_codecs): chosen at conversion, recorded in the store, read
back by a fresh process and by the sampler's fast path, the decode error reported against the source,
lz4 still bit-exact, a parallel lossy conversion identical to the serial one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.datasets.store_helpers import small_spec, toy_episode
from vla.cli import app
from vla.datasets.convert.base import convert
from vla.datasets.image_codecs import ImageCodec
from vla.datasets.sampler import FrameReader
from vla.datasets.store import Store, StoreWriter, spec_fingerprint
from vla.testing.libero_hdf5 import write_libero_hdf5

REPO = Path(__file__).resolve().parents[2]
KEY = "observation.images.front"


def scene(n: int, size: int = 32, shift: int = 0) -> np.ndarray:
    """Smooth frames with a moving square: something image codecs are made for (unlike noise)."""
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.uint8)
    frames = np.repeat(base[None], n, 0)
    for t in range(n):
        c = (2 * t + shift) % (size - 8)
        frames[t, c : c + 8, c : c + 8] = (200, 40, 40)
    return frames


def write(path: Path, codec: str, episodes: int = 2, length: int = 6) -> tuple[Store, np.ndarray]:
    spec = small_spec(image=32)
    writer = StoreWriter(path, spec, image_codec=ImageCodec.parse(codec))
    rng = np.random.default_rng(0)
    sources = []
    for i in range(episodes):
        ep = toy_episode(i, length, spec, rng)
        ep.frames[KEY] = scene(length, shift=5 * i)
        sources.append(ep.frames[KEY])
        writer.add_episode(ep)
    return writer.finalize(), np.concatenate(sources)


@pytest.mark.parametrize("codec", ["webp:90", "jpeg", "avif"])
def test_lossy_codec_is_recorded_read_back_and_its_error_reported(tmp_path, codec):
    store, source = write(tmp_path / "s.zarr", codec)
    name = codec.split(":")[0]
    meta = store.meta["image_codec"]
    assert meta["name"] == name and meta["quality"] == ImageCodec.parse(codec).level
    zarr_meta = json.loads((store.path / "data" / KEY / "zarr.json").read_text())
    assert zarr_meta["codecs"][0]["configuration"]["codecs"][0]["name"] == f"numcodecs.imagecodecs_{name}"
    stored = store.array(KEY)[:]
    diff = stored.astype(int) - source.astype(int)
    psnr = 10 * np.log10(255**2 / np.mean(diff**2))
    error = meta["error"][KEY]
    assert error["max_abs"] == np.abs(diff).max() > 0 and error["psnr_db"] == pytest.approx(psnr, abs=0.01)
    assert psnr > 25, "a usable quality (sharp synthetic edges at 32x32: the hardest case for these codecs)"
    reader = FrameReader(store.path, KEY, (32, 32, 3))  # the sampler's fast path decodes shards itself
    assert reader.layout is not None and reader.layout.image_decoder is not None
    out = np.empty((7, 32, 32, 3), np.uint8)
    reader.read(3, out)
    np.testing.assert_array_equal(out, stored[3:10])
    # A fresh interpreter opens it with nothing registered beforehand: Store registers the codecs.
    code = f"from vla.datasets.store import Store; print(int(Store({str(store.path)!r}).array({KEY!r})[:].sum()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == int(stored.astype(np.int64).sum())


def test_lz4_stays_lossless_and_other_codecs_are_refused(tmp_path):
    store, source = write(tmp_path / "s.zarr", "lz4")
    np.testing.assert_array_equal(store.array(KEY)[:], source)
    assert store.meta["image_codec"] == {"name": "lz4", "quality": None, "error": {}}
    for bad, match in (("png8", "unknown image codec"), ("webp:0", "1..100"), ("lz4:50", "lossless")):
        with pytest.raises(ValueError, match=match):
            ImageCodec.parse(bad)


def libero_source(tmp: Path) -> Path:
    folder = tmp / "suite"
    write_libero_hdf5(folder / "a_demo.hdf5", "open the drawer", 3, [6, 5, 7], (32, 32), seed=1)
    return folder


def test_parallel_lossy_conversion_equals_serial_and_resume_keeps_the_codec(tmp_path):
    src = libero_source(tmp_path)
    serial = convert("libero", src, tmp_path / "serial.zarr", progress=False, image_codec="webp:80").store
    parallel = convert("libero", src, tmp_path / "par.zarr", progress=False, image_codec="webp:80", workers=2).store
    assert serial.meta == parallel.meta and serial.meta["image_codec"]["name"] == "webp"
    for key in serial.camera_keys:
        np.testing.assert_array_equal(serial.array(key)[:], parallel.array(key)[:])
        assert serial.meta["image_codec"]["error"][key]["max_abs"] > 0
    # A partial conversion is continued only with the codec it was started with.
    fingerprints = {spec_fingerprint(serial.spec, "src", ImageCodec.parse(c)) for c in ("lz4", "webp:80", "webp:90")}
    assert len(fingerprints) == 3


def test_cli_reports_the_codec_and_its_error(tmp_path):
    src = libero_source(tmp_path)
    dst = tmp_path / "cli.zarr"
    result = CliRunner().invoke(
        app, ["data", "convert", "--from", "libero", str(src), str(dst), "--image-codec", "jpeg:85"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "jpeg quality 85" in text and "PSNR" in text and "max abs" in text
    assert CliRunner().invoke(app, ["data", "validate", str(dst)]).exit_code == 0
    info = CliRunner().invoke(app, ["data", "info", str(dst)])
    assert info.exit_code == 0 and "images: jpeg quality 85" in info.output
    bad = CliRunner().invoke(
        app, ["data", "convert", "--from", "libero", str(src), str(tmp_path / "x"), "--image-codec", "gif"]
    )
    assert bad.exit_code != 0 and "unknown image codec" in bad.output
