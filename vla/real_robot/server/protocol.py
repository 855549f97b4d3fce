"""Wire format and schema. A frame is: u32 total length | u32 header length | JSON header | raw array bytes.

The header names each array with dtype, shape and byte offset; arrays are plain little-endian numpy bytes.
Nothing is ever unpickled. Every incoming header is checked against a schema derived from the policy
(keys, dtypes, shapes, sizes) before a single array is built. The reader takes a size limit and deadlines
per frame, so a peer can neither make it buffer more than the limit nor hold it by trickling bytes.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_FRAME = 32 * 1024 * 1024
MAX_HEADER = 64 * 1024
MAX_AUTH_FRAME = 64 * 1024  # the first frame of a connection, read before its token is checked: a hello
MAX_TASK = 2000
MAX_IMAGE_SIDE = 1024
ALLOWED_DTYPES = {"uint8", "float32", "float64"}
_LEN = struct.Struct(">II")


class ProtocolError(Exception):
    """A malformed or schema-violating message: answered with an error, never fatal to the server."""


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    blobs, meta, offset = [], {}, 0
    for name, arr in (arrays or {}).items():
        a = np.ascontiguousarray(arr)
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        meta[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset, "nbytes": len(b)}
        blobs.append(b)
        offset += len(b)
    head = json.dumps({**header, "arrays": meta}).encode()
    body = head + b"".join(blobs)
    return _LEN.pack(len(body) + 4, len(head)) + body


class FrameTooLarge(ConnectionError):
    """A frame over the reader's limit: it is never read, so the stream cannot be resynchronised."""


def recv_exact(sock: socket.socket, n: int, until: float | None = None) -> bytes:
    """`n` bytes; `until` (time.monotonic()) bounds the whole read, not each recv: trickling cannot stretch it."""
    buf = bytearray()
    while len(buf) < n:
        if until is not None:
            left = until - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"frame not complete in time ({len(buf)} of {n} bytes)")
            sock.settimeout(left)
        part = sock.recv(min(n - len(buf), 1 << 20))
        if not part:
            raise ConnectionError("peer closed the connection")
        buf += part
    return bytes(buf)


def read_frame(
    sock: socket.socket, max_frame: int = MAX_FRAME, frame_s: float | None = None, until: float | None = None
) -> tuple[dict[str, Any], bytes]:
    """One frame. Raises ProtocolError for a bad frame (the stream can still be resynchronised: its length was
    read), FrameTooLarge above `max_frame` (before any of it is buffered), TimeoutError past a deadline.

    The first byte is awaited with the socket's own timeout (the idle time between frames) or until `until`;
    from then on the whole frame must arrive within `frame_s` seconds and by `until`.
    """
    idle = sock.gettimeout()
    try:
        first = recv_exact(sock, 1, until)
        if frame_s is not None:
            end = time.monotonic() + frame_s
            until = end if until is None else min(until, end)
        total, head_len = _LEN.unpack(first + recv_exact(sock, 7, until))
        if total > max_frame or total < 4:
            raise FrameTooLarge(f"frame of {total} bytes is outside [4, {max_frame}]: cannot resynchronise")
        body = recv_exact(sock, total - 4, until)
    finally:
        sock.settimeout(idle)
    if head_len > min(MAX_HEADER, len(body)):
        raise ProtocolError(f"header length {head_len} is larger than the frame or {MAX_HEADER} bytes")
    try:
        header = json.loads(body[:head_len])
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, a 5000-digit number, deep nesting
        raise ProtocolError(f"header is not JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    return header, body[head_len:]


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT, with IPv6 hosts bare (::1:8765) or bracketed ([::1]:8765)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ArraySpec:
    dtype: str
    shape: tuple[int | None, ...]  # None: any size up to MAX_IMAGE_SIDE


def decode_arrays(header: dict[str, Any], payload: bytes, schema: dict[str, ArraySpec]) -> dict[str, np.ndarray]:
    meta = header.get("arrays")
    if not isinstance(meta, dict):
        raise ProtocolError("'arrays' must be an object")
    missing = sorted(set(schema) - set(meta))
    extra = sorted(set(meta) - set(schema))
    if missing or extra:
        raise ProtocolError(f"arrays do not match the schema (missing {missing}, unexpected {extra})")
    out = {}
    for name, spec in schema.items():
        m = meta[name]
        if not isinstance(m, dict):
            raise ProtocolError(f"{name}: array description must be an object")
        dtype, shape, offset, nbytes = m.get("dtype"), m.get("shape"), m.get("offset"), m.get("nbytes")
        if dtype != spec.dtype or dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"{name}: dtype {dtype!r}, expected {spec.dtype}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise ProtocolError(f"{name}: shape must be a list of integers")
        if len(shape) != len(spec.shape) or any(
            (want is not None and s != want) or not 0 < s <= MAX_IMAGE_SIDE
            for s, want in zip(shape, spec.shape, strict=True)
        ):
            raise ProtocolError(f"{name}: shape {shape}, expected {list(spec.shape)}")
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not (isinstance(offset, int) and isinstance(nbytes, int)) or nbytes != size:
            raise ProtocolError(f"{name}: nbytes {nbytes!r} does not match shape and dtype ({size})")
        if offset < 0 or offset + nbytes > len(payload):
            raise ProtocolError(f"{name}: bytes [{offset}, {offset + nbytes}) lie outside the payload")
        arr = np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder("<"), count=int(np.prod(shape)), offset=offset)
        arr = arr.reshape(shape)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ProtocolError(f"{name}: contains NaN or inf")
        out[name] = arr
    return out


def check_task(header: dict[str, Any]) -> str:
    task = header.get("task", "")
    if not isinstance(task, str) or len(task) > MAX_TASK:
        raise ProtocolError(f"'task' must be a string of at most {MAX_TASK} characters")
    return task
