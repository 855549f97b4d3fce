"""Stand-ins for the hardware so the whole deploy loop can be rehearsed: the servo bus emulator for the
servo arms, franky-sim for the Franka."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vla.real_robot.arm import ArmSpec
from vla.real_robot.control_tables import table_for
from vla.real_robot.emulator import ServoBusEmulator

EMULATOR_LATENCY_MS = 50.0


@contextlib.contextmanager
def emulated(spec: ArmSpec) -> Iterator[tuple[ArmSpec, str]]:
    """Yield (spec for the stand-in, port or host to connect to)."""
    if spec.driver == "lerobot":  # LeRobot's own motor bus on our emulated servos (the arm file names the model)
        with ServoBusEmulator(table_for(spec.model), [j.id for j in spec.joints]) as emu:
            yield spec, emu.port
        return
    if spec.driver in ("feetech", "dynamixel"):
        offsets = {j.offset for j in spec.joints}
        with ServoBusEmulator(table_for(spec.model), [j.id for j in spec.joints], start_ticks=min(offsets)) as emu:
            # A loaded host may be slow to schedule the emulator thread: allow it more time than a real bus.
            yield spec.replace(extra={**spec.extra, "latency_timer_ms": EMULATOR_LATENCY_MS}), emu.port
        return
    from franky_sim import SimulationServer
    from franky_sim.mujoco_simulator import MujocoSimulator

    with MujocoSimulator(enable_visualization=False) as sim:
        robot = sim.add_robot()
        with SimulationServer(sim) as server:
            server.run_async()
            yield spec.replace(extra={**spec.extra, "ignore_realtime": True}), robot.hostname
