"""How the store compresses camera frames: lossless lz4 (blosc) or one image codec per frame.

A store's image arrays are shards of one-frame chunks (docs/store.md). With `lz4` each frame is
blosc-lz4 compressed, bit-exact and large (decoded pixels, ~1-2x smaller); with an image codec
(`jpeg`, `webp`, `avif`, `jpegxl`, through imagecodecs) each frame is one compressed image, 10-20x
smaller on simulator renders at a small, measured error (the conversion reports PSNR and the largest pixel error
against the source). The codec is chosen at conversion time and recorded in the array's Zarr
metadata (`numcodecs.imagecodecs_<name>`, zarr's naming for numcodecs codecs) and in the store's
`vla` metadata.

Zarr resolves codecs by name: `register()` (called whenever this package opens or writes a store)
makes the image codecs known to zarr. imagecodecs itself is imported at the first encode or decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

# zarr's own wrapper of a numcodecs array->bytes codec (to_dict/from_dict, async encode/decode); we
# only say which imagecodecs class does the work.
from zarr.codecs.numcodecs._codecs import _NumcodecsArrayBytesCodec

LOSSLESS = "lz4"
DEFAULT_CODEC = "jpeg"  # meets both targets on LIBERO renders: <= 2x the AV1 source, decode ~0.15 ms/frame
DEFAULT_QUALITY = {"jpeg": 75, "webp": 85, "avif": 80, "jpegxl": 90}  # each codec's own 0-100 scale
PREFIX = "imagecodecs_"


class _ImageCodec(_NumcodecsArrayBytesCodec):
    imagecodecs_class: ClassVar[str]

    @cached_property
    def _codec(self) -> Any:
        import imagecodecs.numcodecs

        config = {k: v for k, v in self.codec_config.items() if k != "id"}
        return getattr(imagecodecs.numcodecs, self.imagecodecs_class)(**config)


class JpegCodec(_ImageCodec, codec_name="imagecodecs_jpeg"):
    imagecodecs_class = "Jpeg"


class WebpCodec(_ImageCodec, codec_name="imagecodecs_webp"):
    imagecodecs_class = "Webp"


class AvifCodec(_ImageCodec, codec_name="imagecodecs_avif"):
    imagecodecs_class = "Avif"


class JpegxlCodec(_ImageCodec, codec_name="imagecodecs_jpegxl"):
    imagecodecs_class = "Jpegxl"


CODECS: dict[str, type[_ImageCodec]] = {"jpeg": JpegCodec, "webp": WebpCodec, "avif": AvifCodec, "jpegxl": JpegxlCodec}
CHOICES = (LOSSLESS, *CODECS)
_registered = False


def register() -> None:
    """Make the image codecs known to zarr (idempotent, cheap: no imagecodecs import)."""
    global _registered
    if _registered:
        return
    from zarr.registry import register_codec

    for cls in CODECS.values():
        register_codec(cls.codec_name, cls)
    _registered = True


@dataclass(frozen=True)
class ImageCodec:
    """The image compression chosen at conversion: `name` in CHOICES, `quality` 1-100 (lossy codecs)."""

    name: str = DEFAULT_CODEC
    quality: int | None = None  # None: the codec's default

    def __post_init__(self) -> None:
        if self.name not in CHOICES:
            raise ValueError(f"unknown image codec {self.name!r}; choose one of {', '.join(CHOICES)}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"image quality must be in 1..100, got {self.quality}")
        if self.name == LOSSLESS and self.quality is not None:
            raise ValueError("lz4 is lossless: it takes no quality")

    @property
    def lossy(self) -> bool:
        return self.name != LOSSLESS

    @property
    def level(self) -> int | None:
        return None if not self.lossy else (self.quality or DEFAULT_QUALITY[self.name])

    def zarr_serializer(self) -> _ImageCodec:
        register()
        return CODECS[self.name](level=self.level)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "quality": self.level}

    @classmethod
    def parse(cls, text: str) -> ImageCodec:
        """`webp`, `webp:85` (name and quality)."""
        name, _, quality = text.partition(":")
        try:
            return cls(name.strip().lower(), int(quality) if quality else None)
        except ValueError as e:
            raise ValueError(f"--image-codec {text!r}: {e}") from None


LZ4 = ImageCodec(LOSSLESS)


def decoder(inner_codec: dict[str, Any]) -> Any:
    """The imagecodecs decoder of a shard's inner codec entry (its zarr.json form), or None if not an image codec."""
    name = inner_codec.get("name", "")
    short = name.removeprefix(f"numcodecs.{PREFIX}")
    if short == name or short not in CODECS:
        return None
    return CODECS[short](**inner_codec.get("configuration", {}))._codec


class ErrorMeter:
    """Decode error of the stored frames against the source frames: PSNR (dB) and the largest pixel error."""

    def __init__(self, state: dict[str, Any]):
        self.state = state  # the running sums, kept in the writer's journal so a resumed conversion continues them

    @staticmethod
    def empty() -> dict[str, Any]:
        return {"sse": 0.0, "values": 0, "max_abs": 0}

    def add(self, source: np.ndarray, stored: np.ndarray) -> None:
        diff = source.astype(np.int16) - stored.astype(np.int16)
        self.state["sse"] += float(np.square(diff, dtype=np.int64).sum())
        self.state["values"] += int(diff.size)
        self.state["max_abs"] = max(self.state["max_abs"], int(np.abs(diff).max(initial=0)))

    def summary(self) -> dict[str, Any]:
        mse = self.state["sse"] / max(self.state["values"], 1)
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
        return {"psnr_db": None if mse == 0 else round(float(psnr), 2), "max_abs": self.state["max_abs"]}
