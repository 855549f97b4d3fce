"""`vla serve --protocol openpi` against openpi's own client code, and against hostile websocket peers.

openpi's `openpi_client` pins numpy<2, so it is never installed: scripts/setup_env.sh keeps its wheel beside
the venv (`<venv>/test-wheels`) and this test puts the wheel on sys.path for itself only.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import websockets
from websockets.sync.client import connect

from vla.policies.openpi_wire import WireError, pack, unpack
from vla.real_robot.deploy import load_policy_planner
from vla.real_robot.server.server import PolicyServer, ServerLimits

from .helpers import RampPlanner, tiny_mode_checkpoint

STATE = "observation.state"
CAM = "observation.images.wrist"
TOKEN = "correct-horse-battery-staple"
FAST = ServerLimits(auth_timeout_s=1.0, idle_timeout_s=2.0, failed_token_delay_s=0.05)


def _openpi_client_wheel() -> Path:
    given = os.environ.get("VLA_OPENPI_CLIENT_WHEEL")
    found = [Path(given)] if given else sorted((Path(sys.prefix) / "test-wheels").glob("openpi_client-*.whl"))
    if not found or not found[-1].is_file():
        pytest.fail(f"openpi's client wheel is missing from {Path(sys.prefix) / 'test-wheels'}: run "
                    "scripts/setup_env.sh (or set VLA_OPENPI_CLIENT_WHEEL to the wheel)")  # fmt: skip
    return found[-1]


@pytest.fixture
def openpi_client(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """openpi's `websocket_client_policy` module, imported from its wheel (a zip on sys.path)."""
    monkeypatch.syspath_prepend(str(_openpi_client_wheel()))
    for name in [m for m in sys.modules if m.startswith("openpi_client")]:
        monkeypatch.delitem(sys.modules, name)
    from openpi_client import websocket_client_policy

    assert "test-wheels" in websocket_client_policy.__file__ or ".whl" in websocket_client_policy.__file__
    return websocket_client_policy


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")  # openpi's client code
def test_openpi_client_gets_metadata_and_a_chunk_with_an_api_key(openpi_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ckpt = tiny_mode_checkpoint(tmp_path / "ckpt", camera_keys=(CAM,))
    planner = load_policy_planner(str(ckpt))
    planner.warmup()
    with PolicyServer(planner, port=0, token=TOKEN, protocol="openpi") as server:
        host, port = server.address
        policy = openpi_client.WebsocketClientPolicy(host, port, api_key=TOKEN)
        meta = policy.get_server_metadata()
        assert meta["observation"] == {CAM: {"dtype": "uint8", "shape": [None, None, 3]},
                                       STATE: {"dtype": "float32", "shape": [6]}}  # fmt: skip
        assert meta["action_dim"] == 6 and meta["camera_keys"] == [CAM]
        obs = {STATE: np.zeros(6, np.float32), CAM: np.zeros((48, 64, 3), np.uint8), "task": "pick up the cube"}
        reply = policy.infer(obs)
        assert reply["actions"].shape == (6, 6) and reply["actions"].dtype == np.float32
        assert np.all(np.isfinite(reply["actions"])) and reply["server_timing"]["infer_ms"] > 0
        with pytest.raises(RuntimeError, match="missing"):  # a schema error: openpi's client raises it
            policy.infer({STATE: np.zeros(6, np.float32)})
        assert policy.infer(obs)["actions"].shape == (6, 6)  # the connection carries on
        policy._ws.close()
        with pytest.raises(websockets.InvalidStatus, match="401"):
            openpi_client.WebsocketClientPolicy(host, port, api_key="wrong")
        with pytest.raises(websockets.InvalidStatus, match="401"):
            openpi_client.WebsocketClientPolicy(host, port)
    assert server.stats["failed_tokens"] == 2 and server.stats["crashes"] == 0


def test_answers_match_the_framed_protocol_and_batch() -> None:
    planner = RampPlanner()
    with PolicyServer(planner, port=0, protocol="openpi") as server:
        uri = "ws://{}:{}".format(*server.address)
        stack = contextlib.ExitStack()
        clients = [stack.enter_context(connect(uri, compression=None, max_size=None)) for _ in range(4)]
        for c in clients:
            assert unpack(c.recv())["state_dim"] == 6
        states = [np.full(6, k, np.float64) for k in range(4)]  # float64: numpy's default is accepted
        for c, s in zip(clients, states, strict=True):
            c.send(pack({STATE: s, "prompt": "x"}))
        for c, s in zip(clients, states, strict=True):
            assert np.allclose(unpack(c.recv())["actions"], planner.expected(s), atol=1e-6)
        stack.close()
    assert server.stats["requests"] == 4


@pytest.mark.parametrize(
    "message, error",
    [
        ("text", "binary"),
        (b"\xc1", "msgpack"),
        (msgpack.packb([1, 2]), "map"),
        (pack({STATE: np.zeros(5, np.float32)}), "shape"),
        (pack({STATE: np.zeros(6, np.int64)}), "dtype"),
        (pack({STATE: np.full(6, np.nan, np.float32)}), "NaN"),
        (pack({STATE: np.zeros(6, np.float32), "extra": 1}), "unexpected key"),
        (pack({STATE: np.zeros(6, np.float32), "task": "x" * 5000}), "at most"),
        (msgpack.packb({STATE: {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f4", b"shape": [6]}}), "bytes"),
        (msgpack.packb({STATE: {b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}}), "dtype"),
    ],
    ids=["text", "junk", "list", "shape", "int", "nan", "extra", "long-task", "short-data", "object"],
)
def test_bad_requests_get_a_text_error_and_the_connection_carries_on(message: object, error: str) -> None:
    server = PolicyServer(RampPlanner(), port=0, protocol="openpi")
    with server, connect("ws://{}:{}".format(*server.address)) as ws:
        ws.recv()
        ws.send(message)
        reply = ws.recv()
        assert isinstance(reply, str) and error in reply, reply
        ws.send(pack({STATE: np.zeros(6, np.float32)}))
        assert unpack(ws.recv())["actions"].shape == (8, 6)
    assert server.stats["crashes"] == 0


def test_token_rules_and_connection_caps() -> None:
    with pytest.raises(ValueError, match="token"):
        PolicyServer(RampPlanner(), host="0.0.0.0", port=0, protocol="openpi")
    limits = ServerLimits(max_connections=4, max_per_address=2, auth_timeout_s=5.0, failed_token_delay_s=0.01,
                          max_failed_tokens=3)  # fmt: skip
    with PolicyServer(RampPlanner(), port=0, token=TOKEN, limits=limits, protocol="openpi") as server:
        uri = "ws://{}:{}".format(*server.address)
        auth = {"Authorization": f"Api-Key {TOKEN}"}
        with contextlib.ExitStack() as stack:
            for _ in range(2):
                stack.enter_context(connect(uri, additional_headers=auth))
            with pytest.raises(websockets.InvalidStatus, match="503"):
                connect(uri, additional_headers=auth)
        for _ in range(3):
            with pytest.raises(websockets.InvalidStatus, match="401"):
                connect(uri, additional_headers={"Authorization": "Api-Key nope"})
        with pytest.raises(websockets.InvalidStatus, match="503"):  # locked out, even with the right token
            connect(uri, additional_headers=auth)
    assert server.stats["refused"] == 2 and server.stats["crashes"] == 0


def test_a_silent_or_oversized_client_is_dropped() -> None:
    with PolicyServer(RampPlanner(), port=0, limits=FAST, protocol="openpi") as server:
        uri = "ws://{}:{}".format(*server.address)
        with connect(uri, max_size=None) as ws:
            ws.recv()
            with pytest.raises(websockets.ConnectionClosed):
                ws.recv(timeout=10)  # the server ends it after the idle timeout
        with connect(uri, max_size=None) as ws:
            ws.recv()
            with pytest.raises(websockets.ConnectionClosed):
                ws.send(b"\0" * (33 * 1024 * 1024))
                ws.recv(timeout=10)


def test_wire_decoding_refuses_what_it_cannot_check() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = unpack(pack({"a": arr, "s": np.float32(2.5), "n": [1, "x"]}))
    assert np.array_equal(back["a"], arr) and back["s"] == np.float32(2.5) and back["n"] == [1, "x"]
    with pytest.raises(WireError, match="shape"):
        unpack(msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}))
    with pytest.raises(WireError, match="dtype"):
        unpack(msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "V8", b"shape": [0]}))
    with pytest.raises(WireError, match="msgpack"):
        unpack(b"\x91" * 100_000)  # nested too deep
