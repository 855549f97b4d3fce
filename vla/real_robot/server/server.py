"""`vla serve`: one checkpoint served to remote deploy loops over TCP, concurrent clients batched.

Binds to 127.0.0.1 unless told otherwise, and then only with a token. Each connection keeps its own
observation history; a batcher thread gathers requests from all connections for one forward pass of the
policy runtime's planner (`plan_streams`), and each client gets the actions its robot should execute.
Malformed messages get an error reply and the connection (and server) carry on.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import queue
import socket
import socketserver
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vla.keys import STATE_KEY, TASK_KEY
from vla.real_robot.server.protocol import (
    ArraySpec,
    ProtocolError,
    check_task,
    decode_arrays,
    encode,
    read_frame,
)

if TYPE_CHECKING:
    from vla.policies.runtime import ObservationHistory

log = logging.getLogger("vla.real_robot.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        idle_timeout_s: float = 30.0,
    ):
        if not is_loopback(host) and not token:
            raise ValueError(f"binding to {host} exposes the robot's policy: pass a token (--token)")
        self.planner = planner
        self.token = token
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.idle_timeout_s = idle_timeout_s
        native = planner.native_config
        self.schema = {k: ArraySpec("uint8", (None, None, 3)) for k in native.camera_keys}
        if native.state_dim is not None:
            self.schema[STATE_KEY] = ArraySpec("float32", (native.state_dim,))
        self.stats = {"requests": 0, "errors": 0, "batches": 0, "max_batch_seen": 0}
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=256)
        self._stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._tcp = Server((host, port), Handler)
        self.address: tuple[str, int] = self._tcp.server_address[:2]
        self._threads = [
            threading.Thread(target=self._tcp.serve_forever, name="serve", daemon=True),
            threading.Thread(target=self._batcher, name="batcher", daemon=True),
        ]

    # --- connections -------------------------------------------------------------------------------
    def _reply_error(self, sock: socket.socket, msg_id: Any, error: str) -> None:
        self.stats["errors"] += 1
        sock.sendall(encode({"type": "error", "id": msg_id if isinstance(msg_id, int) else None, "error": error}))

    def _serve_connection(self, sock: socket.socket) -> None:
        sock.settimeout(self.idle_timeout_s)
        history = self.planner.new_history()
        while not self._stop.is_set():
            try:
                header, payload = read_frame(sock)
            except ProtocolError as e:
                self._reply_error(sock, None, str(e))
                continue
            except (ConnectionError, OSError):
                return  # closed, timed out or unsynchronisable: drop this client only
            msg_id = header.get("id")
            try:
                if self.token is not None and not hmac.compare_digest(str(header.get("token", "")), self.token):
                    raise ProtocolError("missing or wrong token")
                kind = header.get("type")
                if kind == "hello":
                    sock.sendall(encode({"type": "hello", "id": msg_id, **self.describe()}))
                elif kind == "reset":
                    history = self.planner.new_history()
                    sock.sendall(encode({"type": "ok", "id": msg_id}))
                elif kind == "infer":
                    obs: dict[str, Any] = decode_arrays(header, payload, self.schema)
                    obs[TASK_KEY] = check_task(header)
                    fut: Future = Future()
                    self._queue.put(_Request(obs, history, fut), timeout=5.0)
                    actions = fut.result(timeout=60.0)
                    self.stats["requests"] += 1
                    sock.sendall(encode({"type": "result", "id": msg_id}, {"actions": actions.astype(np.float32)}))
                else:
                    raise ProtocolError(f"unknown message type {kind!r} (hello | reset | infer)")
            except ProtocolError as e:
                self._reply_error(sock, msg_id, str(e))
            except (ConnectionError, OSError):
                return
            except Exception as e:  # inference failure: report it, keep serving
                log.exception("request failed")
                try:
                    self._reply_error(sock, msg_id, f"inference failed: {type(e).__name__}: {e}")
                except OSError:
                    return

    def describe(self) -> dict[str, Any]:
        native = self.planner.native_config
        return {"camera_keys": list(native.camera_keys), "state_dim": native.state_dim, "action_dim": native.action_dim}

    # --- batching ----------------------------------------------------------------------------------
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
        self._tcp.shutdown()
        self._tcp.server_close()

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
