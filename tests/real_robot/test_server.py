"""The policy server on loopback: thousands of malformed and valid messages, concurrent clients, tokens."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vla.real_robot.deploy import load_policy_planner
from vla.real_robot.server.client import RemoteError, RemotePlanner
from vla.real_robot.server.protocol import encode, read_frame
from vla.real_robot.server.server import PolicyServer

from .helpers import RampPlanner, tiny_mode_checkpoint

STATE = "observation.state"


def _ask(sock: socket.socket, raw: bytes) -> dict:
    sock.sendall(raw)
    header, _ = read_frame(sock)
    return header


def _malformed(rng: np.random.Generator, i: int) -> bytes:
    good_state = np.zeros(6, np.float32)
    kind = i % 10
    if kind == 0:
        return encode({"type": "infer", "id": i}, {STATE: np.zeros(5, np.float32)})  # wrong length
    if kind == 1:
        return encode({"type": "infer", "id": i}, {STATE: np.zeros(6, np.float64)})  # wrong dtype
    if kind == 2:
        return encode({"type": "infer", "id": i}, {STATE: np.full(6, np.nan, np.float32)})
    if kind == 3:
        return encode({"type": "infer", "id": i}, {STATE: good_state, "extra": good_state})
    if kind == 4:
        return encode({"type": "infer", "id": i})  # no arrays
    if kind == 5:
        return encode({"type": "bogus", "id": i})
    if kind == 6:  # header claims more bytes than it has
        body = json.dumps({"type": "infer", "id": i, "arrays": {STATE: {"dtype": "float32", "shape": [6],
                           "offset": 0, "nbytes": 24}}}).encode()  # fmt: skip
        return struct.pack(">II", len(body) + 4, len(body)) + body
    if kind == 7:  # not JSON at all
        junk = rng.bytes(40)
        return struct.pack(">II", len(junk) + 4, 20) + junk
    if kind == 8:
        return encode({"type": "infer", "id": i, "task": "x" * 5000}, {STATE: good_state})
    body = b"[1, 2, 3]"
    return struct.pack(">II", len(body) + 4, len(body)) + body  # JSON but not an object


def test_malformed_storm_and_valid_answers() -> None:
    planner = RampPlanner()
    rng = np.random.default_rng(0)
    with PolicyServer(planner, port=0) as server, socket.create_connection(server.address, timeout=5) as sock:
        assert server.address[0] == "127.0.0.1"
        errors = valid = 0
        t0 = time.monotonic()
        for i in range(3000):
            if i % 3 == 0:
                state = rng.normal(size=6).astype(np.float32)
                reply = _ask(sock, encode({"type": "infer", "id": i}, {STATE: state}))
                assert reply["type"] == "result" and reply["id"] == i
                valid += 1
            else:
                reply = _ask(sock, _malformed(rng, i))
                assert reply["type"] == "error", reply
                errors += 1
        assert time.monotonic() - t0 < 60
        client = RemotePlanner("{}:{}".format(*server.address), timeout_s=60)  # first call warms torch up
        state = np.arange(6, dtype=np.float32)
        assert np.allclose(client({STATE: state, "task": "pick"}), planner.expected(state), atol=1e-6)
        client.close()
    assert valid == 1000 and errors == 2000 and server.stats["errors"] == 2000


def test_concurrent_clients_are_batched() -> None:
    class SlowRamp(RampPlanner):
        def plan_streams(self, items):  # type: ignore[override]
            time.sleep(0.02)
            return super().plan_streams(items)

    planner = SlowRamp()
    with PolicyServer(planner, port=0, batch_wait_s=0.01) as server:
        results: dict[int, bool] = {}

        def client(k: int) -> None:
            c = RemotePlanner("{}:{}".format(*server.address))
            ok = True
            for _ in range(5):
                s = np.full(6, k, np.float32)
                ok &= bool(np.allclose(c({STATE: s}), planner.expected(s), atol=1e-6))
            results[k] = ok
            c.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert results == dict.fromkeys(range(6), True)
    assert server.stats["max_batch_seen"] > 1


def test_token_is_required_off_loopback_and_checked() -> None:
    with pytest.raises(ValueError, match="token"):
        PolicyServer(RampPlanner(), host="0.0.0.0", port=0)
    with PolicyServer(RampPlanner(), port=0, token="s3cret") as server:
        addr = "{}:{}".format(*server.address)
        with pytest.raises(RemoteError, match="token"):
            RemotePlanner(addr, token="wrong").hello()
        assert RemotePlanner(addr, token="s3cret").hello()["action_dim"] == 6
    with pytest.raises(ValueError, match="token"):
        RemotePlanner("10.1.2.3:9000")  # never contacted: refused before connecting


def test_serves_a_real_checkpoint(tmp_path: Path) -> None:
    ckpt = tiny_mode_checkpoint(tmp_path / "ckpt")
    planner = load_policy_planner(str(ckpt))
    planner.warmup()  # loads the language encoder before the clock of the client's timeout starts
    with PolicyServer(planner, port=0) as server:
        client = RemotePlanner("{}:{}".format(*server.address), timeout_s=60)  # first call warms torch up
        chunk = client({STATE: np.zeros(6, np.float32), "task": "pick up the cube"})
        assert chunk.shape == (6, 6) and np.all(np.isfinite(chunk))
        client.close()


def test_serves_the_steps_a_dynamic_horizon_policy_chooses(tmp_path: Path) -> None:
    """`vla serve --dynamic-horizon`: each reply holds the actions the mixture of horizons chose to execute."""
    from vla.policies.mode.configuration_mode import MoDEConfig

    ckpt = tiny_mode_checkpoint(tmp_path / "ckpt", **MoDEConfig.moh_overrides((2, 4, 6)))
    planner = load_policy_planner(str(ckpt), dynamic_horizon=1.3)
    planner.warmup()
    with PolicyServer(planner, port=0) as server:
        client = RemotePlanner("{}:{}".format(*server.address), timeout_s=60)
        chunk = client({STATE: np.zeros(6, np.float32)})
        client.close()
    chosen = int(planner.policy.last_horizons.n_exec[0])
    assert chunk.shape == (chosen, 6) and chosen < 6
