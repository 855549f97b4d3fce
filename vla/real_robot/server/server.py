"""`vla serve`: one checkpoint served to remote deploy loops over TCP, concurrent clients batched.

Binds to 127.0.0.1 unless told otherwise, and then only with a token of at least MIN_TOKEN characters;
IPv4 and IPv6. Each connection keeps its own observation history; a batcher thread gathers requests from all
connections for one forward pass of the policy runtime's planner (`plan_streams`), and each client gets the
actions its robot should execute. Malformed messages get an error reply and the connection (and server) carry on.

Before a connection has shown the token it costs little: its first frame may hold at most MAX_AUTH_FRAME
bytes and must arrive within `auth_timeout_s`; connections are capped in total and per client address; a
wrong token closes the connection after a delay, and an address with too many recent wrong tokens is refused.
After that, every frame has a deadline (not every read), so a trickling client cannot hold its thread.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import ipaddress
import logging
import queue
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vla.keys import STATE_KEY, TASK_KEY
from vla.real_robot.server.protocol import (
    MAX_AUTH_FRAME,
    MAX_FRAME,
    ArraySpec,
    FrameTooLarge,
    ProtocolError,
    check_task,
    decode_arrays,
    encode,
    read_frame,
)

if TYPE_CHECKING:
    from vla.policies.runtime import ObservationHistory

log = logging.getLogger("vla.real_robot.server")

MIN_TOKEN = 16
PROTOCOLS = ("vla", "openpi")  # the framed TCP protocol of this module; openpi's websocket protocol (openpi.py)


def is_loopback(host: str) -> bool:
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the server. The defaults suit a few robots per address on a local network."""

    max_connections: int = 32
    max_per_address: int = 8
    auth_timeout_s: float = 5.0  # a new connection's first frame (hello + token) must be in by then
    frame_timeout_s: float = 30.0  # a frame, once begun, must be complete within this (32 MB over a slow link)
    idle_timeout_s: float = 30.0  # the most time between two frames
    failed_token_delay_s: float = 0.5  # before the error reply to a wrong token (then the connection is closed)
    max_failed_tokens: int = 10  # wrong tokens per address within failed_token_window_s before it is refused
    failed_token_window_s: float = 60.0


class _Gate:
    """Admission: connection caps, in total and per address, and a lock-out after repeated wrong tokens."""

    def __init__(self, limits: ServerLimits):
        self.limits = limits
        self._lock = threading.Lock()
        self.active = 0
        self._per_address: collections.Counter[str] = collections.Counter()
        self._failures: dict[str, collections.deque[float]] = {}

    def admit(self, address: str) -> str | None:
        """None when admitted (and counted), else why not."""
        lim = self.limits
        with self._lock:
            if len(self._recent_failures(address)) >= lim.max_failed_tokens:
                return f"too many wrong tokens from {address}; try again later"
            if self.active >= lim.max_connections:
                return f"server busy: {lim.max_connections} connections open"
            if self._per_address[address] >= lim.max_per_address:
                return f"too many connections from {address} (at most {lim.max_per_address})"
            self.active += 1
            self._per_address[address] += 1
            return None

    def release(self, address: str) -> None:
        with self._lock:
            self.active -= 1
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]

    def failed_token(self, address: str) -> None:
        with self._lock:
            self._failures.setdefault(address, collections.deque()).append(time.monotonic())
            self._recent_failures(address)

    def _recent_failures(self, address: str) -> collections.deque[float]:
        # Forget failures older than the window, so the table of addresses cannot grow without bound.
        horizon = time.monotonic() - self.limits.failed_token_window_s
        for addr in list(self._failures):
            times = self._failures[addr]
            while times and times[0] < horizon:
                times.popleft()
            if not times:
                del self._failures[addr]
        return self._failures.get(address, collections.deque())


def _family(host: str, port: int) -> int:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"cannot bind to {host!r}: {e}") from None
    return infos[0][0]


def check_bind(host: str, token: str | None) -> bytes | None:
    """The token as bytes (None: no token); refuses a missing or weak token off loopback."""
    if token is not None and not isinstance(token, str):
        raise ValueError("the token must be text")
    if not is_loopback(host):
        if not token:
            raise ValueError(f"binding to {host or 'every address'} exposes the robot's policy: pass a token (--token)")
        if len(token) < MIN_TOKEN:
            raise ValueError(
                f"a token for {host or 'every address'} must have at least {MIN_TOKEN} characters, got "
                f"{len(token)}; make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'"
            )
    if not token:
        return None
    try:
        return token.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the token is not valid text (UTF-8)") from None


def _token_matches(given: object, expected: bytes) -> bool:
    if not isinstance(given, str):
        return False
    # Bytes, so any text compares in constant time; surrogatepass never yields a valid token's UTF-8.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected)


@dataclass
class _Request:
    obs: dict[str, Any]
    history: ObservationHistory
    future: Future


class PolicyServer:
    def __init__(
        self,
        planner: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        max_batch: int = 8,
        batch_wait_s: float = 0.003,
        limits: ServerLimits | None = None,
        protocol: str = "vla",
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r} ({' | '.join(PROTOCOLS)})")
        host = host.removeprefix("[").removesuffix("]")
        self._token = check_bind(host, token)  # before binding: a weak public server never opens
        self.planner = planner
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.limits = limits or ServerLimits()
        native = planner.native_config
        self.schema = {k: ArraySpec("uint8", (None, None, 3)) for k in native.camera_keys}
        if native.state_dim is not None:
            self.schema[STATE_KEY] = ArraySpec("float32", (native.state_dim,))
        self.stats = collections.Counter(requests=0, errors=0, batches=0, max_batch_seen=0, refused=0,
                                         failed_tokens=0, crashes=0)  # fmt: skip
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=256)
        self._stop = threading.Event()
        self._gate = _Gate(self.limits)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self.protocol = protocol
        if protocol == "openpi":
            from vla.real_robot.server.openpi import OpenpiFront

            self._tcp: Any = OpenpiFront(self, host, port, _family(host, port))
        else:
            self._tcp = self._make_tcp_server(host, port)
        self.address: tuple[str, int] = self._tcp.server_address[:2]
        self._threads = [
            threading.Thread(target=self._tcp.serve_forever, name="serve", daemon=True),
            threading.Thread(target=self._batcher, name="batcher", daemon=True),
        ]

    def _make_tcp_server(self, host: str, port: int) -> socketserver.ThreadingTCPServer:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request, self.client_address[0])

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False
            request_queue_size = 128  # a burst of connects is accepted (or refused) at once, not retried in 1 s
            address_family = _family(host, port)

            def verify_request(self, request: Any, client_address: Any) -> bool:
                # Runs on the accepting thread: a refused connection never gets a thread of its own.
                refusal = outer._gate.admit(client_address[0])
                if refusal is not None:
                    outer.stats["refused"] += 1
                    outer._send_quietly(request, None, refusal)
                return refusal is None

            def process_request(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    outer._gate.release(client_address[0])
                    raise

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    outer._gate.release(client_address[0])

            def handle_error(self, request: Any, client_address: Any) -> None:
                outer.stats["crashes"] += 1  # a bug, not a bad client: the tests require none
                log.exception("connection from %s failed", client_address[0])

        return Server((host, port), Handler)

    @property
    def connections(self) -> int:
        return self._gate.active

    # --- connections -------------------------------------------------------------------------------
    def _reply_error(self, sock: socket.socket, msg_id: Any, error: str) -> None:
        self.stats["errors"] += 1
        sock.sendall(encode({"type": "error", "id": msg_id if isinstance(msg_id, int) else None, "error": error}))

    def _send_quietly(self, sock: socket.socket, msg_id: Any, error: str) -> None:
        """A last word to a client about to be dropped; it may be gone or not reading."""
        with contextlib.suppress(OSError):
            sock.settimeout(0.2)
            self._reply_error(sock, msg_id, error)

    @contextlib.contextmanager
    def _tracked(self, sock: socket.socket) -> Iterator[None]:
        with self._open_lock:
            self._open.add(sock)
        try:
            yield
        finally:
            with self._open_lock:
                self._open.discard(sock)

    def _read(self, sock: socket.socket, authenticated: bool, auth_by: float) -> tuple[dict[str, Any], bytes]:
        if authenticated:
            return read_frame(sock, MAX_FRAME, frame_s=self.limits.frame_timeout_s)
        return read_frame(sock, MAX_AUTH_FRAME, until=auth_by)

    def _serve_connection(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(self.limits.idle_timeout_s)
        auth_by = time.monotonic() + self.limits.auth_timeout_s
        authenticated = False
        history = self.planner.new_history()
        with self._tracked(sock):
            while not self._stop.is_set():
                try:
                    header, payload = self._read(sock, authenticated, auth_by)
                except FrameTooLarge as e:
                    hint = "" if authenticated else " (before its token is checked, a connection sends a hello)"
                    self._send_quietly(sock, None, f"{e}{hint}")
                    return
                except ProtocolError as e:
                    try:
                        self._reply_error(sock, None, str(e))
                    except OSError:
                        return
                    continue
                except (ConnectionError, OSError):
                    return  # closed, timed out or unsynchronisable: drop this client only
                msg_id = header.get("id")
                if self._token is not None and not _token_matches(header.get("token"), self._token):
                    self._wrong_token(sock, peer, msg_id)
                    return
                authenticated = True
                try:
                    history = self._respond(sock, header, payload, history)
                except (ConnectionError, OSError):
                    return

    def _wrong_token(self, sock: socket.socket, peer: str, msg_id: Any) -> None:
        """Slow and final: guessing costs a connection and a delay per try, and an address is locked out."""
        self.stats["failed_tokens"] += 1
        self._gate.failed_token(peer)
        self._stop.wait(self.limits.failed_token_delay_s)
        self._send_quietly(sock, msg_id, "missing or wrong token")

    def _respond(self, sock: socket.socket, header: dict[str, Any], payload: bytes, history: Any) -> Any:
        """Answer one authenticated message; returns the connection's (possibly new) observation history."""
        msg_id = header.get("id")
        try:
            kind = header.get("type")
            if kind == "hello":
                sock.sendall(encode({"type": "hello", "id": msg_id, **self.describe()}))
            elif kind == "reset":
                history = self.planner.new_history()
                sock.sendall(encode({"type": "ok", "id": msg_id}))
            elif kind == "infer":
                obs: dict[str, Any] = decode_arrays(header, payload, self.schema)
                obs[TASK_KEY] = check_task(header)
                actions = self.submit(obs, history).result(timeout=60.0)
                self.stats["requests"] += 1
                sock.sendall(encode({"type": "result", "id": msg_id}, {"actions": actions.astype(np.float32)}))
            else:
                raise ProtocolError(f"unknown message type {kind!r} (hello | reset | infer)")
        except ProtocolError as e:
            self._reply_error(sock, msg_id, str(e))
        except (ConnectionError, OSError):
            raise
        except Exception as e:  # inference failure: report it, keep serving
            log.exception("request failed")
            self._reply_error(sock, msg_id, f"inference failed: {type(e).__name__}: {e}")
        return history

    def describe(self) -> dict[str, Any]:
        native = self.planner.native_config
        return {"camera_keys": list(native.camera_keys), "state_dim": native.state_dim, "action_dim": native.action_dim}

    # --- batching ----------------------------------------------------------------------------------
    def submit(self, obs: dict[str, Any], history: Any) -> Future:
        """Queue one checked observation for the batcher; the future holds the actions to execute."""
        fut: Future = Future()
        self._queue.put(_Request(obs, history, fut), timeout=5.0)
        return fut

    def _batcher(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=self.batch_wait_s))
                except queue.Empty:
                    break
            self.stats["batches"] += 1
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
            # Requests with different image sizes cannot share a tensor: one pass per size.
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault(tuple(np.shape(v) for k, v in sorted(r.obs.items()) if k != TASK_KEY), []).append(r)
            for reqs in groups.values():
                try:
                    outs = self.planner.plan_streams([(r.obs, r.history) for r in reqs])
                    for r, out in zip(reqs, outs, strict=True):
                        r.future.set_result(np.asarray(out))
                except Exception as e:
                    for r in reqs:
                        r.future.set_exception(e)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> PolicyServer:
        for t in self._threads:
            t.start()
        return self

    def serve_forever(self) -> None:
        self.start()
        try:
            self._stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        while True:  # requests the batcher will not take any more: their connections end now
            try:
                self._queue.get_nowait().future.set_exception(ConnectionError("server closed"))
            except queue.Empty:
                break
        self._tcp.shutdown()
        if self.protocol == "vla":
            self._tcp.server_close()
        with self._open_lock:  # wake the connection threads blocked in a read: they end at once
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
