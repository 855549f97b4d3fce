"""`vla deploy`: wire arm, cameras, planner, safety, loop and recorder together from the command's options."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vla.errors import VlaError
from vla.keys import camera_key, camera_name
from vla.real_robot.arm import ArmSpec, load_arm
from vla.real_robot.cameras import OpenCVCamera, parse_camera_arg
from vla.real_robot.clock import RealClock
from vla.real_robot.drivers import make_robot
from vla.real_robot.loop import ControlLoop, LoopConfig, LoopReport
from vla.real_robot.recorder import EpisodeRecorder, store_spec
from vla.real_robot.safety import SafetyLayer
from vla.real_robot.workers import StreamPlanner, SyncWorker, ThreadedWorker

if TYPE_CHECKING:
    from vla.policies.runtime import PolicyPlanner

log = logging.getLogger("vla.real_robot.deploy")


@dataclass
class DeployOptions:
    robot: str
    policy: str | None = None
    calibration: str | None = None  # --robot lerobot:TYPE: LeRobot's calibration file of this arm
    server: str | None = None
    token: str | None = None
    leader: str | None = None  # teleoperation: a leader arm file instead of a policy
    leader_port: str | None = None
    cameras: list[str] = field(default_factory=list)
    camera_size: tuple[int, int] | None = None
    fps: float | None = None
    merge: str = "replace"
    ensemble_k: float = 0.1
    record: str | None = None
    task: str = ""
    episodes: int = 1
    seconds: float = 30.0
    dry_run: bool = False
    sync: bool = False  # run inference inside the tick (debugging / the benchmark's baseline)
    port: str | None = None
    device: str = "cpu"
    # Multi-embodiment policies: which of their robots this arm is (default: the arm file's name,
    # which is what `--record` stores call it).
    embodiment: str | None = None
    # Mixture-of-Horizons policies: dynamic inference with this threshold ratio; each chunk is then cut
    # to the actions the policy chose to execute (None: every predicted action is sent to the loop).
    dynamic_horizon: float | None = None


def make_safety(spec: ArmSpec, robot: object) -> SafetyLayer:
    fk = getattr(robot, "forward_kinematics", None)
    ws = None if spec.workspace is None else (np.array(spec.workspace[0]), np.array(spec.workspace[1]))
    return SafetyLayer(spec.low, spec.high, spec.max_step, workspace=ws, forward_kinematics=fk)


def _planner(opts: DeployOptions, spec: ArmSpec, stack: contextlib.ExitStack) -> StreamPlanner:
    chosen = [x for x in (opts.policy, opts.server, opts.leader) if x]
    if len(chosen) != 1:
        raise VlaError("give exactly one of --policy CKPT_DIR, --server HOST:PORT or --leader ARM_FILE")
    if opts.policy:
        planner = load_policy_planner(opts.policy, opts.device, opts.dynamic_horizon, opts.embodiment or spec.name)
        native = planner.native_config
        _check_cameras(native.camera_keys, opts)
        planner.warmup(opts.task)
        _check_fits(native.action_dim, native.state_dim, spec, "policy")
        return _in_arm_units(planner, opts.policy, opts.embodiment or spec.name, spec)
    if opts.server and opts.server.startswith(("ws://", "wss://")):  # `vla serve` (openpi protocol) or openpi's
        from vla.errors import PolicyError
        from vla.policies.foreign.websocket import WebsocketPlanner

        try:
            ws = WebsocketPlanner(opts.server, api_key=opts.token)
        except PolicyError as e:
            raise VlaError(str(e)) from None
        stack.callback(ws.close)
        _check_cameras(ws.config.camera_keys, opts, f"the policy served at {opts.server}")
        _check_fits(ws.config.action_dim, ws.config.state_dim, spec, f"the policy served at {opts.server}")
        return _WebsocketStream(ws)
    if opts.server:
        from vla.real_robot.server.client import RemoteError, RemotePlanner

        try:
            remote = RemotePlanner(opts.server, token=opts.token)
            stack.callback(remote.close)
            info = remote.hello()  # the served policy's sizes, checked like a local one's before the arm moves
        except (ValueError, OSError, RemoteError) as e:
            hint = (
                ""
                if isinstance(e, ValueError)
                else " (`vla serve` speaks openpi's protocol unless given "
                "--protocol vla: for it, pass --server ws://HOST:PORT)"
            )
            raise VlaError(f"policy server {opts.server}: {e}{hint}") from None
        _check_cameras(info.get("camera_keys"), opts, f"the policy served at {opts.server}")
        _check_fits(info.get("action_dim"), info.get("state_dim"), spec, f"the policy served at {opts.server}")
        return remote
    from vla.real_robot.teleop import LeaderPlanner

    leader_spec = load_arm(opts.leader or "")
    leader = make_robot(leader_spec, port=opts.leader_port, torque=False)
    leader.connect()
    stack.callback(leader.disconnect)
    return LeaderPlanner(leader)


class _WebsocketStream:
    """The deploy loop's planner over a websocket planner: one stream, one connection, all actions."""

    def __init__(self, ws: Any):
        self.ws, self.episode = ws, 0

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        batch: dict[str, Any] = {k: [np.asarray(obs[k])[None]] for k in self.ws.obs_keys}
        batch["task"] = [str(obs.get("task", ""))]
        batch["episode_id"] = [str(self.episode)]
        chunk = self.ws.plan(batch).actions[0]
        return chunk

    def reset(self) -> None:
        self.episode += 1  # a new connection: a fresh observation history on the server


def _in_arm_units(planner: Any, checkpoint: str, embodiment: str, spec: ArmSpec) -> Any:
    """The planner, converting units where the training data's differ from the arm's (refused where no factor
    converts them: vla.real_robot.units)."""
    from vla.policies.pretrained import load_data_spec
    from vla.real_robot.units import UnitAdapter, UnitError, unit_factors

    data_spec = load_data_spec(checkpoint, embodiment)
    if data_spec is None:
        return planner
    try:
        action, state = unit_factors(data_spec, spec)
    except UnitError as e:
        raise VlaError(f"{checkpoint}: {e}") from None
    if np.all(action == 1.0) and (state is None or np.all(state == 1.0)):
        return planner
    log.warning("converting units between the policy's data and arm %s: actions x %s", spec.name, action.tolist())
    return UnitAdapter(planner, action, state)


def _check_cameras(camera_keys: object, opts: DeployOptions, who: str = "the policy") -> None:
    if not isinstance(camera_keys, list | tuple) or not all(isinstance(k, str) for k in camera_keys):
        raise VlaError(f"{who} does not say which cameras it reads (camera_keys: {camera_keys!r})")
    given = {camera_key(parse_camera_arg(a)[0]) for a in opts.cameras}
    missing = [k for k in camera_keys if k not in given]
    if missing:
        names = ", ".join(str(camera_name(k)) for k in missing)
        raise VlaError(f"{who} reads cameras {names}; pass each as --camera NAME=INDEX_OR_FILE")


def _check_fits(action_dim: object, state_dim: object, spec: ArmSpec, who: str = "policy") -> None:
    """A policy whose actions are not this arm's joints fails before the arm moves, not tick after tick in the
    safety layer (which would reject every action of the wrong length and hold)."""
    if action_dim != spec.dof or state_dim not in (None, spec.dof):
        raise VlaError(f"{who} acts in {action_dim} dims with state {state_dim}; arm {spec.name} has {spec.dof} joints")


def load_policy_planner(
    checkpoint: str, device: str = "cpu", dynamic_horizon: float | None = None, embodiment: str | None = None
) -> PolicyPlanner:
    """A checkpoint through the policy runtime, for `vla deploy` and `vla serve`. The loop re-plans whenever
    its worker is idle, so every predicted action goes to its chunk buffer, unless the policy decides its
    horizon (`dynamic_horizon`, Mixture-of-Horizons): each chunk is then cut to the actions it chose.
    `embodiment`: the arm, for a multi-embodiment policy (which refuses to run without one)."""
    from vla.policies.runtime import PolicyPlanner

    planner = PolicyPlanner.load(checkpoint, device, dynamic_horizon=dynamic_horizon)
    planner.bind_embodiment(embodiment)
    planner.replan_steps = planner.policy.config.chunk_size
    return planner


def deploy(opts: DeployOptions) -> list[LoopReport]:
    if len([x for x in (opts.policy, opts.server, opts.leader) if x]) != 1:  # before touching the arm
        raise VlaError("give exactly one of --policy CKPT_DIR, --server HOST:PORT or --leader ARM_FILE")
    spec = load_arm(opts.robot, calibration=opts.calibration)
    if spec.driver == "lerobot" and not spec.extra.get("calibration"):  # before any policy or server is touched
        raise VlaError(f"{opts.robot}: LeRobot's driver needs the arm's calibration file: pass --calibration ID.json")
    fps = opts.fps or spec.rate_hz
    reports = []
    with contextlib.ExitStack() as stack:
        port = opts.port
        if opts.dry_run:
            spec, port = stack.enter_context(_emulated(spec))
        # The planner first: a policy that cannot drive this arm fails before the arm is touched.
        planner = _planner(opts, spec, stack)
        robot = make_robot(spec, port=port)
        robot.connect()
        stack.callback(robot.disconnect)
        clock = RealClock()
        cameras = []
        for arg in opts.cameras:
            name, src = parse_camera_arg(arg)
            cam = OpenCVCamera(name, src, fps=fps, size=opts.camera_size, clock=clock, loop_file=True)
            stack.callback(cam.close)
            cameras.append(cam)
        recorder = None
        if opts.record:
            sizes = {c.name: _frame_size(c) for c in cameras}
            mode = "teleop" if opts.leader else "deploy"
            recorder = EpisodeRecorder(Path(opts.record), store_spec(spec, fps, sizes, mode))
        for ep in range(opts.episodes):
            worker = SyncWorker(planner) if opts.sync or opts.leader else ThreadedWorker(planner)
            if hasattr(planner, "reset"):
                planner.reset()
            config = LoopConfig(fps=fps, merge=opts.merge, ensemble_k=opts.ensemble_k,
                                max_ticks=int(opts.seconds * fps), task=opts.task)  # fmt: skip
            loop = ControlLoop(robot, worker, make_safety(spec, robot), clock, config, cameras,
                               on_tick=recorder.on_tick if recorder else None)  # fmt: skip
            try:
                report = loop.run()
            finally:
                worker.close()
            reports.append(report)
            log.info("episode %d: %s", ep, report.ended)
            if recorder is not None:
                recorder.end_episode()
            if report.ended != "finished":
                break
        if recorder is not None and recorder.episodes:
            recorder.writer.finalize()
    return reports


def _emulated(spec: ArmSpec):  # imported lazily: franky-sim pulls in MuJoCo
    from vla.real_robot.dryrun import emulated

    return emulated(spec)


def _frame_size(cam: OpenCVCamera) -> tuple[int, int]:
    size = cam.frame_size()
    if size is None:
        raise VlaError(f"camera {cam.name!r} does not report a frame size")
    return size
