"""openpi's wire format: msgpack, numpy arrays as maps (`__ndarray__`, `data`, `dtype`, `shape`).

openpi's policy servers and `openpi_client.WebsocketClientPolicy` exchange msgpack messages over a websocket:
the server sends its metadata on connect, then each binary message from the client is an observation dict
and each reply a dict with `actions`; a text message is an error. Arrays travel as maps holding the raw
bytes, numpy's dtype string (`<f4`, `|u1`) and the shape; numpy scalars as `__npgeneric__` maps.

This is an independent implementation of that encoding. Decoding never unpickles and checks every array
map (known plain dtype, integer shape, byte count matching the shape) before it builds an array, so a
peer's bytes can be read safely; the arrays are read-only views of the message.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_ND, _GEN = b"__ndarray__", b"__npgeneric__"
_KINDS = "biuf"  # bool, signed, unsigned, float: no objects, strings, structured or complex types
MAX_NDIM = 8


class WireError(ValueError):
    """A message that is not openpi's msgpack encoding of plain data."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _KINDS:
            raise TypeError(f"cannot send an array of dtype {obj.dtype}")
        a = np.ascontiguousarray(obj)
        return {_ND: True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": list(a.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _KINDS:
            raise TypeError(f"cannot send a scalar of dtype {obj.dtype}")
        return {_GEN: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """`obj` (dicts, lists, numbers, strings, numpy arrays and scalars) as one message."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def _dtype(value: Any) -> np.dtype:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not isinstance(text, str) or len(text) > 8:
        raise WireError(f"array dtype must be a short string, got {value!r}")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise WireError(f"unknown array dtype {text!r}") from None
    if dtype.kind not in _KINDS or dtype.itemsize > 8:
        raise WireError(f"array dtype {text!r} is not a plain number type")
    return dtype


def _decode_hook(obj: dict) -> Any:
    if _ND in obj:
        data, shape = obj.get(b"data"), obj.get(b"shape")
        dtype = _dtype(obj.get(b"dtype"))
        if not isinstance(data, bytes):
            raise WireError("array data must be bytes")
        if not isinstance(shape, list | tuple) or len(shape) > MAX_NDIM:
            raise WireError(f"array shape must be a list of at most {MAX_NDIM} sizes")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise WireError(f"array shape {shape!r} must hold non-negative integers")
        if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(data):
            raise WireError(f"array of shape {list(shape)} and dtype {dtype.str} needs "
                            f"{int(np.prod(shape, dtype=object)) * dtype.itemsize} bytes, got {len(data)}")  # fmt: skip
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if _GEN in obj:
        dtype, value = _dtype(obj.get(b"dtype")), obj.get(b"data")
        if not isinstance(value, bool | int | float):
            raise WireError("a numpy scalar must hold a number")
        try:
            return dtype.type(value)
        except (OverflowError, ValueError):
            raise WireError(f"{value!r} does not fit dtype {dtype.str}") from None
    return obj


def unpack(message: bytes) -> Any:
    """One message -> plain Python data with numpy arrays. Raises WireError on anything else."""
    if not isinstance(message, bytes | bytearray | memoryview):
        raise WireError(f"expected a binary message, got {type(message).__name__}")
    try:
        return msgpack.unpackb(message, object_hook=_decode_hook, raw=False, strict_map_key=True)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as e:
        raise WireError(f"not a msgpack message ({type(e).__name__}: {e})") from None


def text_key(key: Any) -> str | None:
    """A map key as text (openpi's clients send str keys; bytes keys are accepted too)."""
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None
