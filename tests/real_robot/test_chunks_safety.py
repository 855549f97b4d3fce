from __future__ import annotations

import numpy as np
import pytest

from vla.real_robot.chunks import Chunk, ChunkBuffer
from vla.real_robot.safety import SafetyLayer


def _chunk(tick: int, h: int, base: float = 0.0) -> Chunk:
    return Chunk(tick, base + np.arange(h, dtype=float)[:, None] * np.ones((1, 2)))


def test_stale_steps_are_dropped() -> None:
    buf = ChunkBuffer("replace")
    buf.add(_chunk(10, 5), now_tick=13)  # computed for tick 10, arrives at 13: steps 10-12 are past
    assert buf.dropped_steps == 3
    assert buf.action_for(13)[0] == 3.0 and buf.action_for(14)[0] == 4.0
    assert buf.action_for(15) is None  # ran out: the loop holds
    buf.add(_chunk(0, 4), now_tick=20)
    assert buf.stale_chunks == 1 and buf.action_for(20) is None


def test_replace_takes_the_newest_chunk() -> None:
    buf = ChunkBuffer("replace")
    buf.add(_chunk(0, 10, base=0.0), 0)
    buf.add(_chunk(2, 10, base=100.0), 2)
    assert buf.action_for(2)[0] == 100.0


def test_temporal_ensembling_weights_older_chunks_more() -> None:
    buf = ChunkBuffer("ensemble", ensemble_k=0.5)
    buf.add(Chunk(0, np.zeros((10, 1))), 0)
    buf.add(Chunk(2, np.ones((10, 1))), 2)
    w = np.exp(-0.5 * np.arange(2))
    assert buf.action_for(3)[0] == pytest.approx(w[1] / w.sum())
    assert buf.action_for(1)[0] == 0.0  # only the first chunk covers tick 1


def test_variable_length_chunks() -> None:
    buf = ChunkBuffer("replace")
    buf.add(_chunk(0, 1), 0)
    assert buf.horizon(0) == 1 and buf.action_for(1) is None
    buf.add(_chunk(1, 7), 1)
    assert buf.horizon(1) == 7


def _safety(**kw: object) -> SafetyLayer:
    return SafetyLayer(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([0.1, 0.1]), **kw)  # type: ignore[arg-type]


def test_every_safety_rule_is_applied_and_counted() -> None:
    s = _safety()
    current = np.zeros(2)
    assert np.allclose(s.filter(np.array([0.05, 0.0]), current), [0.05, 0.0])
    assert np.allclose(s.filter(np.array([np.nan, 0.0]), current), [0.05, 0.0])  # rejected: hold
    assert np.allclose(s.filter(np.array([np.inf, 0.0]), current), [0.05, 0.0])
    assert np.allclose(s.filter(np.zeros(3), current), [0.05, 0.0])  # wrong length
    assert np.allclose(s.filter(None, current), [0.05, 0.0])  # nothing fresh: hold
    assert np.allclose(s.filter(np.array([5.0, -0.03]), current), [0.15, -0.03])  # clamped then rate-limited
    for _ in range(20):
        cmd = s.filter(np.array([5.0, -5.0]), current)
    assert np.allclose(cmd, [1.0, -1.0])  # never past the joint limits
    c = s.interventions
    assert c["reject_non_finite"] == 2 and c["reject_wrong_length"] == 1 and c["hold_no_action"] == 1
    assert c["clamp_joint_limits"] >= 21 and c["rate_limit"] >= 1


def test_workspace_box_with_kinematics() -> None:
    fk = lambda q: np.array([q[0], q[1], 0.5])  # noqa: E731  (a toy arm whose tip is at its joints)
    s = _safety(workspace=(np.array([-0.2, -0.2, 0.0]), np.array([0.2, 0.2, 1.0])), forward_kinematics=fk)
    q = np.zeros(2)
    for _ in range(10):
        q = s.filter(np.array([1.0, 0.0]), q)
    assert q[0] <= 0.2 + 1e-9 and s.interventions["workspace"] > 0


def test_first_tick_with_nothing_known_sends_nothing() -> None:
    assert _safety().filter(np.array([np.nan, 0.0]), None) is None
