"""The policy server against hostile clients, on loopback only (127.0.0.1, ::1): big frames before the token,
connection floods, trickling, token guessing, odd tokens, IPv6, and a fuzz test of the wire protocol."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vla.cli import app
from vla.real_robot.server.client import RemoteError, RemotePlanner
from vla.real_robot.server.protocol import MAX_AUTH_FRAME, encode, read_frame
from vla.real_robot.server.server import PolicyServer, ServerLimits

from .helpers import RampPlanner

STATE = "observation.state"
TOKEN = "correct-horse-battery-staple"
FAST = ServerLimits(auth_timeout_s=0.5, frame_timeout_s=0.5, idle_timeout_s=2.0, failed_token_delay_s=0.05)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _connect(server: PolicyServer) -> socket.socket:
    return socket.create_connection(server.address[:2], timeout=5)


def _answer(sock: socket.socket) -> dict | None:
    """The next reply, or None once the server has closed the connection."""
    try:
        return read_frame(sock)[0]
    except (ConnectionError, OSError):
        return None


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection within `seconds` (any error replies read and skipped)."""
    end = time.monotonic() + seconds
    sock.settimeout(0.05)
    while time.monotonic() < end:
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def _wait_for(condition, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def token_server() -> Iterator[PolicyServer]:
    with PolicyServer(RampPlanner(), port=0, token=TOKEN, limits=FAST) as server:
        yield server
    assert server.stats["crashes"] == 0


def _good_client(server: PolicyServer, token: str | None = TOKEN) -> None:
    client = RemotePlanner("{}:{}".format(*server.address[:2]), token=token, timeout_s=10)
    state = np.arange(6, dtype=np.float32)
    try:
        assert np.allclose(client({STATE: state}), RampPlanner().expected(state), atol=1e-6)
    finally:
        client.close()


def test_a_big_first_frame_is_refused_before_it_is_read(token_server: PolicyServer) -> None:
    for claimed in (32 * 1024 * 1024, MAX_AUTH_FRAME + 1):
        with _connect(token_server) as sock:
            sock.sendall(struct.pack(">II", claimed, 20) + b"x" * 1000)  # the rest never comes
            reply = _answer(sock)
            assert reply is not None and reply["type"] == "error" and "hello" in reply["error"], reply
            assert _closed_within(sock, 2.0)
    _good_client(token_server)  # a hello first, then frames of any size up to MAX_FRAME


def test_connections_are_capped_per_address_and_in_total() -> None:
    threads_before = threading.active_count()
    limits = ServerLimits(max_connections=6, max_per_address=3, auth_timeout_s=30.0)
    with PolicyServer(RampPlanner(), port=0, token=TOKEN, limits=limits) as server:
        socks = [_connect(server) for _ in range(40)]
        try:
            assert _wait_for(lambda: server.stats["refused"] == 37)
            assert server.connections == 3 and threading.active_count() <= threads_before + 2 + 3
            refused = [_answer(s) for s in socks[3:6]]
            assert all(r is not None and "too many connections from 127.0.0.1" in r["error"] for r in refused)
        finally:
            for s in socks:
                s.close()
        assert _wait_for(lambda: server.connections == 0)
        _good_client(server)
    # the total cap, with a per-address cap that does not bite
    limits = ServerLimits(max_connections=4, max_per_address=100, auth_timeout_s=30.0)
    with PolicyServer(RampPlanner(), port=0, limits=limits) as server:
        socks = [_connect(server) for _ in range(10)]
        try:
            assert _wait_for(lambda: server.stats["refused"] == 6) and server.connections == 4
            assert "server busy" in (_answer(socks[-1]) or {}).get("error", "")
        finally:
            for s in socks:
                s.close()


def test_a_trickling_client_is_dropped_at_the_frame_deadline(token_server: PolicyServer) -> None:
    frame = encode({"type": "hello", "id": 0, "token": TOKEN, "pad": "x" * 200})
    for authenticate_first in (False, True):
        with _connect(token_server) as sock:
            if authenticate_first:  # the per-frame deadline also holds once the token was shown
                sock.sendall(encode({"type": "hello", "id": 1, "token": TOKEN}))
                assert (_answer(sock) or {}).get("type") == "hello"
            t0 = time.monotonic()
            closed = False
            for byte in frame[:60]:  # one byte every 50 ms: each read is quick, the frame never completes
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                if _closed_within(sock, 0.05):
                    closed = True
                    break
            assert closed and time.monotonic() - t0 < 2.5


def test_a_silent_connection_is_dropped_before_it_authenticates(token_server: PolicyServer) -> None:
    with _connect(token_server) as sock:
        t0 = time.monotonic()
        assert _closed_within(sock, 3.0) and time.monotonic() - t0 < 2.0
    assert _wait_for(lambda: token_server.connections == 0)


def test_wrong_tokens_are_slow_final_and_locked_out() -> None:
    limits = ServerLimits(failed_token_delay_s=0.2, max_failed_tokens=3, failed_token_window_s=60.0)
    with PolicyServer(RampPlanner(), port=0, token=TOKEN, limits=limits) as server:
        for guess in ("wrong", TOKEN[:-1], TOKEN + "x"):
            with _connect(server) as sock:
                t0 = time.monotonic()
                sock.sendall(encode({"type": "hello", "id": 0, "token": guess}))
                reply = _answer(sock)
                assert reply is not None and "wrong token" in reply["error"] and time.monotonic() - t0 >= 0.2
                assert _closed_within(sock, 2.0)  # no second guess on the same connection
        with _connect(server) as sock:  # locked out: even the right token waits for the window to pass
            reply = _answer(sock)
            assert reply is not None and "too many wrong tokens" in reply["error"]
        assert server.stats["failed_tokens"] == 3 and server.stats["crashes"] == 0


@pytest.mark.parametrize("given_token", ["pässwörd-✓-ünïcode", "\ud800", 12345, ["a"], None, {"t": 1}])
def test_odd_tokens_are_refused_without_a_traceback(token_server: PolicyServer, given_token: object) -> None:
    header = {"type": "hello", "id": 0}
    if given_token is not None:
        header["token"] = given_token
    body = json.dumps(header).encode()  # ensure_ascii: a lone surrogate travels as \\ud800
    with _connect(token_server) as sock:
        sock.sendall(struct.pack(">II", len(body) + 4, len(body)) + body)
        reply = _answer(sock)
    assert reply is not None and reply["error"] == "missing or wrong token"
    assert token_server.stats["crashes"] == 0


def test_a_non_ascii_token_works() -> None:
    token = "schlüssel-für-den-roboter-✓"
    with PolicyServer(RampPlanner(), port=0, token=token) as server:
        _good_client(server, token)
        with pytest.raises(RemoteError, match="wrong token"):
            RemotePlanner("{}:{}".format(*server.address), token="schlussel-fur-den-roboter-?").hello()
    assert server.stats["crashes"] == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "example.invalid"])
def test_a_public_bind_needs_a_strong_token(host: str) -> None:
    for weak in (None, "", "x", "a" * 15):
        with pytest.raises(ValueError, match="token"):  # refused before any socket is bound
            PolicyServer(RampPlanner(), host=host, port=0, token=weak)


def test_cli_refuses_a_weak_token_in_one_line_before_loading() -> None:
    result = CliRunner().invoke(app, ["serve", "--policy", "no-such-checkpoint", "--host", "0.0.0.0", "--token", "x"])
    assert result.exit_code != 0
    message = str(result.exception)
    assert "at least 16 characters" in message and "\n" not in message


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_serves_on_ipv6_loopback() -> None:
    with PolicyServer(RampPlanner(), host="::1", port=0) as server:
        assert server.address[0] == "::1"
        port = server.address[1]
        for address in (f"[::1]:{port}", f"::1:{port}"):
            client = RemotePlanner(address, timeout_s=10)
            assert client.hello()["action_dim"] == 6
            state = np.zeros(6, np.float32)
            assert np.allclose(client({STATE: state}), RampPlanner().expected(state), atol=1e-6)
            client.close()
    with PolicyServer(RampPlanner(), host="[::1]", port=0, token="short") as server:  # loopback: any token
        _good_client(server, "short")


# --- fuzz ----------------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_array_meta = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["float32", "float64", "uint8", "int64", "object", "<f4"]) | _json_values,
        "shape": st.lists(st.integers(-2, 2000), max_size=4) | _json_values,
        "offset": st.integers(-100, 10**12) | _json_values,
        "nbytes": st.integers(-100, 10**12) | _json_values,
    },
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["hello", "reset", "infer", "bogus"]) | _json_values,
        "id": st.integers() | _json_values,
        "token": st.sampled_from([TOKEN, "wrong", "ü" * 20]) | _json_values,
        "task": st.text(max_size=50) | _json_values,
        "arrays": st.dictionaries(st.sampled_from([STATE, "other"]), _array_meta, max_size=2) | _json_values,
    },
)


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["header", "raw", "lengths"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    payload = draw(st.binary(max_size=64))
    if kind == "header":
        head = json.dumps(draw(_headers)).encode()
        return struct.pack(">II", len(head) + len(payload) + 4, len(head)) + head + payload
    total = draw(st.integers(0, 2**32 - 1))  # a length prefix that lies (larger, smaller, absurd)
    head_len = draw(st.integers(0, 2**32 - 1))
    return struct.pack(">II", total, head_len) + payload


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[PolicyServer]:
    limits = ServerLimits(max_connections=8, max_per_address=6, auth_timeout_s=0.5, frame_timeout_s=0.5,
                          idle_timeout_s=1.0, failed_token_delay_s=0.0, max_failed_tokens=10**9)  # fmt: skip
    with PolicyServer(RampPlanner(), port=0, token=TOKEN, limits=limits) as server:
        yield server


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hello_first=st.booleans(), frames=st.lists(_frames(), min_size=1, max_size=4))
def test_fuzzed_frames_never_crash_the_server_nor_starve_good_clients(
    fuzz_server: PolicyServer, hello_first: bool, frames: list[bytes]
) -> None:
    server = fuzz_server
    threads_before = threading.active_count()
    with _connect(server) as sock:
        if hello_first:
            sock.sendall(encode({"type": "hello", "id": 0, "token": TOKEN}))
            assert (_answer(sock) or {}).get("type") == "hello"
        for raw in frames:
            try:
                sock.sendall(raw)
            except OSError:
                break  # the server may drop a connection that sent garbage
        _closed_within(sock, 0.05)  # read (and ignore) what the server said
    assert server.connections <= server.limits.max_per_address
    assert threading.active_count() <= threads_before + server.limits.max_connections
    _good_client(server)  # still answered, correctly
    assert server.stats["crashes"] == 0
    assert all(t.is_alive() for t in server._threads)
    assert _wait_for(lambda: server.connections == 0, 2.0)  # nothing held once the clients are gone
