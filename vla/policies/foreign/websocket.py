"""`--policy ws://HOST:PORT`: an openpi-style websocket policy server (`vla serve`, or openpi's own) as a
planner.

One connection per episode (and per CALVIN stage): a server that keeps observation history per connection,
as `vla serve` does, starts each episode fresh, and a stateless one (openpi's) does not care. All rows of a
batch are sent before any reply is read, so a batching server answers them in one forward pass. The server's
metadata must list the observation keys it reads (`observation`, or `camera_keys` and `state_dim`).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import numpy as np

from vla.errors import PolicyError
from vla.keys import STATE_KEY, TASK_KEY
from vla.policies.foreign import ForeignConfig
from vla.policies.openpi_wire import WireError, pack, unpack
from vla.policies.runtime import ObservationHistory, Plan

MAX_OPEN = 8  # connections kept open (one per running episode): `vla serve` allows 8 per address by default
UNKNOWN_CHUNK = 10_000  # a server that does not say how many actions it returns: the reply tells


class WebsocketPlanner:
    n_obs = 1  # the server keeps any history it needs

    def __init__(self, uri: str, api_key: str | None = None, replan_steps: int | None = None, timeout_s: float = 60.0):
        self.uri, self.api_key, self.timeout_s = uri, api_key, timeout_s
        self._open: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        probe, self.metadata = self._connect()
        probe.close()
        self.config = self._config(self.metadata)
        self.obs_keys = self.config.observation_keys
        self.replan_steps = min(replan_steps or self.config.n_action_steps, self.config.chunk_size)

    def _connect(self) -> tuple[Any, dict[str, Any]]:
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        try:
            # Entered as a context manager (closed by close()): websockets 17 warns on a bare connect().
            ws = connect(self.uri, compression=None, max_size=None, additional_headers=headers,
                         open_timeout=self.timeout_s).__enter__()  # fmt: skip
            metadata = unpack(ws.recv(timeout=self.timeout_s))
        except (OSError, TimeoutError, WireError) as e:
            raise PolicyError(f"policy server {self.uri}: {type(e).__name__}: {e}") from None
        except Exception as e:  # websockets' handshake errors: 401 (api key), 503 (busy), not a websocket
            raise PolicyError(f"policy server {self.uri}: {e}") from None
        if not isinstance(metadata, dict):
            ws.close()
            raise PolicyError(f"policy server {self.uri}: its metadata is not a map")
        return ws, metadata

    def _config(self, meta: Mapping[str, Any]) -> ForeignConfig:
        shapes = meta.get("observation")
        if isinstance(shapes, dict):
            cams = tuple(k for k, v in shapes.items() if k != STATE_KEY and len(v.get("shape", ())) == 3)
            state = shapes.get(STATE_KEY, {}).get("shape")
            state_dim = int(state[0]) if state else None
        elif "camera_keys" in meta or "state_dim" in meta:
            cams, state_dim = tuple(meta.get("camera_keys") or ()), meta.get("state_dim")
        else:
            raise PolicyError(
                f"policy server {self.uri}: its metadata does not list the observation keys it reads "
                f"(got {sorted(meta)}); serve with `vla serve`, or add 'observation' to the server's metadata"
            )
        chunk = int(meta.get("chunk_size") or UNKNOWN_CHUNK)
        return ForeignConfig(
            name="websocket", camera_keys=cams, state_dim=state_dim, action_dim=meta.get("action_dim"),
            chunk_size=chunk, n_action_steps=int(meta.get("n_action_steps") or chunk), source=self.uri,
        )  # fmt: skip

    @property
    def native_config(self) -> ForeignConfig:
        return self.config

    def _connection(self, stream: tuple) -> Any:
        if stream in self._open:
            self._open.move_to_end(stream)
            return self._open[stream]
        while len(self._open) >= MAX_OPEN:
            self._open.popitem(last=False)[1].close()
        self._open[stream] = ws = self._connect()[0]
        return ws

    def plan(self, batch: Mapping[str, Any]) -> Plan:
        rows = len(batch[TASK_KEY])
        ids = batch.get("episode_id") or [str(i) for i in range(rows)]
        stages = batch.get("stage") or [0] * rows
        firsts = batch.get("plan_index") or [1] * rows
        sockets = []
        for i in range(rows):
            stream = (ids[i], int(stages[i]))
            if int(firsts[i]) == 0 and stream in self._open:  # an episode run again (a resume): start fresh
                self._open.pop(stream).close()
            ws = self._connection(stream)
            obs = {k: np.asarray(batch[k][i][-1]) for k in self.obs_keys}  # the newest frame
            obs[TASK_KEY] = str(batch[TASK_KEY][i])
            ws.send(pack(obs))
            sockets.append(ws)
        chunks = [self._reply(ws) for ws in sockets]
        if len({c.shape for c in chunks}) != 1:
            raise PolicyError(f"policy server {self.uri}: rows of one batch got chunks of different shapes")
        actions = np.stack(chunks)
        return Plan(actions, np.full(rows, min(self.replan_steps, actions.shape[1])))

    def _reply(self, ws: Any) -> np.ndarray:
        try:
            reply = ws.recv(timeout=self.timeout_s)
        except Exception as e:
            raise PolicyError(f"policy server {self.uri}: no reply ({type(e).__name__}: {e})") from None
        if isinstance(reply, str):
            raise PolicyError(f"policy server {self.uri}: {reply}")
        out = unpack(reply)
        actions = out.get("actions") if isinstance(out, dict) else None
        if not isinstance(actions, np.ndarray) or actions.ndim not in (1, 2):
            raise PolicyError(f"policy server {self.uri}: the reply has no 'actions' array (chunk x action size)")
        actions = actions.astype(np.float64).reshape(-1, actions.shape[-1])
        if not np.all(np.isfinite(actions)):
            raise PolicyError(f"policy server {self.uri}: the actions contain NaN or inf")
        return actions

    def new_history(self) -> ObservationHistory:
        return ObservationHistory(1, self.obs_keys)

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def describe(self) -> dict[str, Any]:
        return {"type": "websocket", "server": self.uri, "replan_steps": self.replan_steps,
                "chunk_size": None if self.config.chunk_size == UNKNOWN_CHUNK else self.config.chunk_size}  # fmt: skip
