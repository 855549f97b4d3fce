"""Per-key statistics computed in bounded memory: exact moments, quantiles from a fixed subsample."""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
MAX_QUANTILE_ROWS = 262_144  # rows kept for quantiles; exact below this many frames
MAX_IMAGE_FRAMES = 512  # frames sampled for per-channel image statistics
READ_BLOCK = 65_536
IMAGE_BATCH = 32  # sampled frames read per call: bounded memory at any resolution


def _quantile_name(q: float) -> str:
    return f"q{round(q * 100):02d}"


def lowdim_stats(array: Any, n: int) -> dict[str, Any]:
    """Stats of an (n, D) array read block by block: mean/std/min/max exact, quantiles over a
    regular subsample of at most MAX_QUANTILE_ROWS rows (exact for smaller datasets)."""
    stride = max(1, -(-n // MAX_QUANTILE_ROWS))
    total = np.zeros(array.shape[1:], np.float64)
    total_sq = np.zeros(array.shape[1:], np.float64)
    lo = np.full(array.shape[1:], np.inf)
    hi = np.full(array.shape[1:], -np.inf)
    kept = []
    for start in range(0, n, READ_BLOCK):
        block = np.asarray(array[start : min(n, start + READ_BLOCK)], dtype=np.float64)
        total += block.sum(0)
        total_sq += (block * block).sum(0)
        lo = np.minimum(lo, block.min(0))
        hi = np.maximum(hi, block.max(0))
        first = (-start) % stride  # keep global rows 0, stride, 2*stride, ...
        kept.append(block[first::stride])
    mean = total / n
    var = np.maximum(total_sq / n - mean * mean, 0.0)
    sample = np.concatenate(kept, 0)
    out: dict[str, Any] = {
        "count": int(n),
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "min": lo.tolist(),
        "max": hi.tolist(),
        "quantile_rows": int(sample.shape[0]),
    }
    for q, v in zip(QUANTILES, np.quantile(sample, QUANTILES, axis=0), strict=True):
        out[_quantile_name(q)] = v.tolist()
    return out


def image_stats(array: Any, n: int) -> dict[str, Any]:
    """Per-channel stats of uint8 HWC frames scaled to [0, 1], over evenly spaced frames.

    Accumulated frame by frame, read IMAGE_BATCH frames at a time, so memory stays bounded whatever the resolution."""
    idx = np.unique(np.linspace(0, n - 1, num=min(n, MAX_IMAGE_FRAMES)).astype(np.int64))
    channels = array.shape[-1]
    total, total_sq = np.zeros(channels), np.zeros(channels)
    lo, hi = np.full(channels, np.inf), np.full(channels, -np.inf)
    pixels = 0
    for start in range(0, len(idx), IMAGE_BATCH):
        # One zarr call per batch of frames (it fetches their chunks concurrently); ~20x faster than a call per frame.
        batch = np.asarray(
            array.oindex[idx[start : start + IMAGE_BATCH]]
            if hasattr(array, "oindex")
            else array[idx[start : start + IMAGE_BATCH]]
        )
        for raw in batch:
            frame = raw.reshape(-1, channels).astype(np.float64) / 255.0
            total += frame.sum(0)
            total_sq += (frame * frame).sum(0)
            lo, hi = np.minimum(lo, frame.min(0)), np.maximum(hi, frame.max(0))
            pixels += frame.shape[0]
    mean = total / pixels
    return {
        "count": int(n),
        "sampled_frames": len(idx),
        "mean": mean.tolist(),
        "std": np.sqrt(np.maximum(total_sq / pixels - mean * mean, 0.0)).tolist(),
        "min": lo.tolist(),
        "max": hi.tolist(),
    }
