"""The deploy loop's side of `vla serve`: a planner that ships observations to a remote policy."""

from __future__ import annotations

import itertools
import socket
import threading
from typing import Any

import numpy as np

from vla.keys import STATE_KEY, TASK_KEY
from vla.real_robot.server.protocol import ArraySpec, decode_arrays, encode, read_frame, split_address
from vla.real_robot.server.server import is_loopback
from vla.real_robot.workers import Observation


class RemoteError(RuntimeError):
    pass


class RemotePlanner:
    def __init__(self, address: str, token: str | None = None, timeout_s: float = 5.0):
        try:
            host, port = split_address(address)
        except ValueError:
            raise ValueError(f"--server takes HOST:PORT (IPv6: [::1]:PORT), got {address!r}") from None
        if not is_loopback(host) and not token:
            raise ValueError(f"{host} is not this machine: pass the server's token")
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self._sock: socket.socket | None = None
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {}

    def _exchange(
        self, sock: socket.socket, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
    ) -> tuple[dict, bytes]:
        msg_id = next(self._ids)
        sock.sendall(encode({**header, "id": msg_id, "token": self.token or ""}, arrays))
        reply, payload = read_frame(sock)
        if reply.get("type") == "error":
            raise RemoteError(reply.get("error", "unknown server error"))
        if reply.get("id") != msg_id:
            raise RemoteError(f"reply id {reply.get('id')} does not answer request {msg_id}")
        return reply, payload

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        try:  # the server reads only a small first frame before the token is checked: a hello
            self.info, _ = self._exchange(sock, {"type": "hello"})
        except BaseException:
            sock.close()
            raise
        return sock

    def _request(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> tuple[dict, bytes]:
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = self._connect()
                return self._exchange(self._sock, header, arrays)
            except OSError:
                self.close()  # reconnect on the next call
                raise

    def hello(self) -> dict[str, Any]:
        self.info, _ = self._request({"type": "hello"})
        return self.info

    def reset(self) -> None:
        self._request({"type": "reset"})

    def __call__(self, obs: Observation) -> np.ndarray:
        arrays = {k: np.asarray(v) for k, v in obs.items() if k != TASK_KEY}
        if STATE_KEY in arrays:
            arrays[STATE_KEY] = arrays[STATE_KEY].astype(np.float32)
        reply, payload = self._request({"type": "infer", "task": str(obs.get(TASK_KEY, ""))}, arrays)
        meta = reply.get("arrays", {}).get("actions", {})
        shape = meta.get("shape", [])
        spec = {"actions": ArraySpec("float32", tuple(shape) if len(shape) == 2 else (None, None))}
        return decode_arrays(reply, payload, spec)["actions"].astype(np.float64)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
