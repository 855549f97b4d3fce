"""`vla serve`'s openpi front end: openpi's websocket protocol in front of the policy server's batcher.

What a client sees is what openpi's `WebsocketClientPolicy` expects: on connect, a msgpack map of metadata
(the observation keys, dtypes and shapes the policy expects, the action size); then each binary message is
an observation map in the store's key names (`observation.state`, `observation.images.<camera>` as HWC
uint8, `task` or openpi's `prompt`) and each reply a map with `actions` (n x action size, float32) and
`server_timing`. A bad message gets a text message naming the problem (openpi's clients raise it as an
error) and the connection carries on. The token travels as `Authorization: Api-Key <token>`.

The guarantees of the framed protocol hold here too: admission (connection caps, lock-out after wrong
tokens) runs before the handshake is read; the token is checked in the HTTP handshake, before any message
is read, and the handshake must be complete within the auth timeout; after that a message may hold at most
MAX_FRAME bytes, at most one is buffered per connection, and one must arrive within the idle timeout.
"""

from __future__ import annotations

import contextlib
import hmac
import http
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import websockets
from websockets.sync.server import Server, ServerConnection, serve

from vla.keys import TASK_KEY
from vla.policies.openpi_wire import WireError, pack, text_key, unpack
from vla.real_robot.server.protocol import MAX_FRAME, MAX_IMAGE_SIDE, MAX_TASK, ProtocolError

if TYPE_CHECKING:
    from vla.real_robot.server.server import PolicyServer

PROMPT_KEY = "prompt"  # openpi's name for the instruction


def api_key_matches(header: str | None, expected: bytes) -> bool:
    """`Authorization: Api-Key <token>`, compared in constant time."""
    if not isinstance(header, str) or not header.startswith("Api-Key "):
        return False
    given = header.removeprefix("Api-Key ")
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected)


def check_observation(message: Any, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded request -> the observation the planner reads; ProtocolError names what is wrong."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a request must be a map of observation keys, got {type(message).__name__}")
    obs: dict[str, Any] = {}
    for raw_key, value in message.items():
        key = text_key(raw_key)
        if key in (TASK_KEY, PROMPT_KEY):
            if not isinstance(value, str) or len(value) > MAX_TASK:
                raise ProtocolError(f"{key!r} must be a string of at most {MAX_TASK} characters")
            obs[TASK_KEY] = value
        elif key in schema:
            obs[key] = _check_array(key, value, schema[key])
        else:
            raise ProtocolError(f"unexpected key {raw_key!r}: this policy reads {sorted(schema)} and 'task'")
    missing = sorted(set(schema) - set(obs))
    if missing:
        raise ProtocolError(f"missing {missing}: this policy reads {sorted(schema)} and 'task'")
    obs.setdefault(TASK_KEY, "")
    return obs


def _check_array(key: str, value: Any, spec: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"{key}: expected a numpy array, got {type(value).__name__}")
    shape = value.shape
    if len(shape) != len(spec.shape) or any(
        (want is not None and s != want) or not 0 < s <= MAX_IMAGE_SIDE
        for s, want in zip(shape, spec.shape, strict=True)
    ):
        raise ProtocolError(f"{key}: shape {list(shape)}, expected {list(spec.shape)} (None: any size)")
    if spec.dtype == "uint8":
        if value.dtype != np.uint8:
            raise ProtocolError(f"{key}: dtype {value.dtype}, expected uint8 (HWC images)")
        return value
    if value.dtype.kind != "f":  # a state in float64 (numpy's default) is fine: the policy reads float32
        raise ProtocolError(f"{key}: dtype {value.dtype}, expected float32")
    if not np.all(np.isfinite(value)):
        raise ProtocolError(f"{key}: contains NaN or inf")
    return value.astype(np.float32)


def metadata(server: PolicyServer) -> dict[str, Any]:
    native = server.planner.native_config
    shapes = {k: {"dtype": spec.dtype, "shape": list(spec.shape)} for k, spec in server.schema.items()}
    return {
        "protocol": "openpi",
        "observation": shapes,  # image sides: None = any size up to MAX_IMAGE_SIDE, the policy resizes
        "camera_keys": list(native.camera_keys),
        "state_dim": native.state_dim,
        "action_dim": native.action_dim,
        "chunk_size": getattr(native, "chunk_size", None),  # the most actions a reply holds
        "task_key": TASK_KEY,
    }


def _drain_request(sock: socket.socket, until: float, limit: int = 16384) -> None:
    """Read a refused client's HTTP request (bounded in bytes and time) so that it can read the answer."""
    seen = b""
    while b"\r\n\r\n" not in seen and len(seen) < limit and (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        part = sock.recv(4096)
        if not part:
            return
        seen += part


class OpenpiFront:
    """The websocket listener; `serve_forever` / `shutdown` like socketserver's servers."""

    def __init__(self, core: PolicyServer, host: str, port: int, family: int):
        self.core = core
        lim = core.limits
        sock = socket.create_server((host, port), family=family, backlog=128)
        self._ws: Server = serve(
            self._handle,
            sock=sock,
            compression=None,  # as openpi: images are already dense, deflate costs latency
            max_size=MAX_FRAME,
            max_queue=1,  # bounded memory: one message buffered per connection besides the one being answered
            open_timeout=lim.auth_timeout_s,
            ping_interval=None,  # the idle timeout below ends silent peers
            close_timeout=1.0,
            process_request=self._check_request,
        )
        self._ws.handler = self._gated(self._ws.handler)
        self.server_address = sock.getsockname()

    def _gated(self, handler: Any) -> Any:
        gate, stats = self.core._gate, self.core.stats

        def run(sock: socket.socket, addr: Any) -> None:
            # Admission before the handshake is read: a refused connection's thread ends at once.
            refusal = gate.admit(addr[0])
            if refusal is not None:
                stats["refused"] += 1
                body = refusal.encode()
                with contextlib.suppress(OSError):
                    _drain_request(sock, time.monotonic() + 0.5)  # else closing resets it before it is read
                    sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))  # fmt: skip
                    sock.shutdown(socket.SHUT_WR)
                sock.close()
                with self._ws.lock:  # the library's own handler would have unregistered its thread
                    self._ws.handler_threads.discard(threading.current_thread())
                return
            try:
                handler(sock, addr)
            finally:
                gate.release(addr[0])

        return run

    def _check_request(self, connection: ServerConnection, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        core = self.core
        if core._token is not None and not api_key_matches(request.headers.get("Authorization"), core._token):
            core.stats["failed_tokens"] += 1
            core._gate.failed_token(connection.remote_address[0])
            core._stop.wait(core.limits.failed_token_delay_s)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong api key "
                                      "(send the header 'Authorization: Api-Key <token>')\n")  # fmt: skip
        return None

    def _handle(self, connection: ServerConnection) -> None:
        core = self.core
        history = core.planner.new_history()
        try:
            connection.send(pack(metadata(core)))
            while not core._stop.is_set():
                try:
                    message = connection.recv(timeout=core.limits.idle_timeout_s)
                except TimeoutError:
                    return
                t0 = time.monotonic()
                try:
                    if isinstance(message, str):
                        raise ProtocolError("send observations as binary msgpack messages, not text")
                    obs = check_observation(unpack(message), core.schema)
                except (ProtocolError, WireError) as e:
                    core.stats["errors"] += 1
                    connection.send(f"bad request: {e}")
                    continue
                try:
                    actions = core.submit(obs, history).result(timeout=60.0)
                except Exception as e:  # inference failure: report it, keep serving
                    core.stats["errors"] += 1
                    connection.send(f"inference failed: {type(e).__name__}: {e}")
                    continue
                core.stats["requests"] += 1
                timing = {"infer_ms": (time.monotonic() - t0) * 1000}
                connection.send(pack({"actions": np.asarray(actions, np.float32), "server_timing": timing}))
        except websockets.ConnectionClosed:
            return

    def serve_forever(self) -> None:
        self._ws.serve_forever()

    def shutdown(self) -> None:
        self._ws.shutdown()
