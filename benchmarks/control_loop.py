"""Control-loop benchmark: the emulated SO-101 (real Feetech SDK over a pty) at 30 Hz with a policy of
configurable latency. Reports the share of ticks served with a fresh action on time and the tick jitter
(|send time - deadline|, p50/p99) for synchronous inference vs the async loop.

    .venv/bin/python benchmarks/control_loop.py --latency-ms 60 --seconds 5

Last line: `fresh_tick_ratio: <async fresh share / sync fresh share>`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vla.real_robot.arm import load_arm
from vla.real_robot.clock import RealClock
from vla.real_robot.deploy import make_safety
from vla.real_robot.drivers.servo_bus import ServoBusArm
from vla.real_robot.dryrun import emulated
from vla.real_robot.loop import ControlLoop, LoopConfig, LoopReport
from vla.real_robot.workers import SyncWorker, ThreadedWorker


class LatencyPolicy:
    """A stand-in policy: sleeps `latency_s`, then returns a gentle ramp from the current state."""

    def __init__(self, latency_s: float, horizon: int):
        self.latency_s, self.horizon = latency_s, horizon

    def __call__(self, obs: dict) -> np.ndarray:
        time.sleep(self.latency_s)
        state = np.asarray(obs["observation.state"], dtype=np.float64)
        return state[None] + 0.002 * np.arange(1, self.horizon + 1)[:, None]


def run(mode: str, latency_s: float, horizon: int, seconds: float, fps: float) -> LoopReport:
    with emulated(load_arm("so101")) as (spec, port):
        robot = ServoBusArm(spec, port=port)
        robot.connect()
        policy = LatencyPolicy(latency_s, horizon)
        worker = SyncWorker(policy) if mode == "sync" else ThreadedWorker(policy)
        loop = ControlLoop(robot, worker, make_safety(spec, robot), RealClock(),
                           LoopConfig(fps=fps, max_ticks=int(seconds * fps), watchdog_s=10.0))  # fmt: skip
        try:
            return loop.run()
        finally:
            worker.close()
            robot.disconnect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=60.0, help="policy latency per chunk")
    ap.add_argument("--horizon", type=int, default=8, help="actions per chunk")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    ap.add_argument("--fps", type=float, default=30.0)
    args = ap.parse_args()
    fresh = {}
    print(f"emulated so101 at {args.fps:g} Hz, policy latency {args.latency_ms:g} ms, horizon {args.horizon}")
    for mode in ("sync", "async"):
        r = run(mode, args.latency_ms / 1e3, args.horizon, args.seconds, args.fps)
        p50, p99 = r.jitter_ms()
        fresh[mode] = r.fresh_ratio
        events = ", ".join(f"{k}={v}" for k, v in sorted(r.events.items())) or "none"
        print(f"{mode:>5}: ticks {r.ticks}, fresh {r.fresh_ratio:.3f}, jitter p50 {p50:.2f} ms p99 {p99:.2f} ms "
              f"({events})")  # fmt: skip
    print(f"fresh_tick_ratio: {fresh['async'] / max(fresh['sync'], 1e-9):.3f}")


if __name__ == "__main__":
    main()
