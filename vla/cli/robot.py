"""`vla robot`, `vla deploy`, `vla serve`: real arms without ROS. Thin: parse, call one library function, print."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from vla.cli.options import DEVICE_HELP
from vla.errors import VlaError

app = typer.Typer(help="Real arms: calibration, teleoperation and arm description files.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Real arms: calibration, teleoperation and arm description files."""


def _print_reports(reports: list) -> None:
    for i, r in enumerate(reports):
        p50, p99 = r.jitter_ms()
        typer.echo(
            f"episode {i}: {r.ended}, {r.ticks} ticks, fresh {r.fresh_ratio:.1%}, jitter p50 {p50:.1f} ms "
            f"p99 {p99:.1f} ms"
        )
        if r.events:
            typer.echo("  interventions: " + ", ".join(f"{k}={v}" for k, v in sorted(r.events.items())))


@app.command("calibrate")
def calibrate_cmd(
    arm: Annotated[str, typer.Option("--arm", help="arm file (or built-in name: so101, koch) to start from")],
    out: Annotated[Path, typer.Option("--out", help="where to write the calibrated arm file (.yaml or .json)")],
    port: str | None = typer.Option(None, help="serial port (default: the arm file's)"),
    sweep_s: float = typer.Option(10.0, help="seconds to sample while you move every joint"),
) -> None:
    """Record the zero pose and joint ranges of a servo arm and write its arm file."""
    from vla.real_robot.arm import load_arm, save_arm
    from vla.real_robot.calibrate import calibrate

    spec = load_arm(arm)
    if spec.driver not in ("feetech", "dynamixel"):
        raise VlaError(f"{spec.name}: only servo arms are calibrated here (the Franka calibrates itself)")
    result = calibrate(spec, port=port, prompt=lambda msg: typer.prompt(msg, default="", show_default=False),
                       sweep_s=sweep_s)  # fmt: skip
    save_arm(result, out)
    typer.echo(f"wrote {out}")


@app.command("teleop")
def teleop_cmd(
    robot: str = typer.Option(..., "--robot", help="follower arm file"),
    leader: str = typer.Option(..., "--leader", help="leader arm file (moved by hand, torque off)"),
    leader_port: str | None = typer.Option(None, help="leader's serial port (default: its arm file's)"),
    record: str | None = typer.Option(None, "--record", help="store to write the demonstrations into"),
    task: str = typer.Option("", help="language instruction saved with each episode"),
    episodes: int = typer.Option(1),
    seconds: float = typer.Option(30.0, help="length of each episode"),
    camera: Annotated[list[str] | None, typer.Option("--camera", help="NAME=INDEX_OR_FILE, repeatable")] = None,
) -> None:
    """Drive a follower servo arm from a hand-moved leader arm and record demonstrations."""
    from vla.real_robot.deploy import DeployOptions, deploy

    opts = DeployOptions(robot=robot, leader=leader, leader_port=leader_port, record=record, task=task,
                         episodes=episodes, seconds=seconds, cameras=list(camera or []))  # fmt: skip
    _print_reports(deploy(opts))


def deploy(
    robot: str = typer.Option(
        ...,
        "--robot",
        help="arm file, built-in name (so101, koch, fr3), a LeRobot calibration file (its built-in "
        "arm, calibrated), or lerobot:TYPE (LeRobot's own driver, e.g. lerobot:so101_follower, with --calibration)",
    ),
    calibration: str | None = typer.Option(
        None, "--calibration", help="--robot lerobot:TYPE: LeRobot's calibration file of this arm (ID.json)"
    ),
    policy: str | None = typer.Option(None, "--policy", help="checkpoint directory"),
    server: str | None = typer.Option(
        None,
        "--server",
        help="ws://HOST:PORT of a `vla serve` (or any openpi policy server), or HOST:PORT of a "
        "`vla serve --protocol vla`",
    ),
    token: str | None = typer.Option(None, "--token", envvar="VLA_SERVE_TOKEN"),
    camera: Annotated[list[str] | None, typer.Option("--camera", help="NAME=INDEX_OR_FILE, repeatable")] = None,
    fps: float | None = typer.Option(None, "--fps", help="control rate (default: the arm file's)"),
    merge: str = typer.Option("replace", "--merge", help="chunk merging: replace | ensemble"),
    ensemble_k: float = typer.Option(0.1, help="temporal-ensembling weight decay"),
    record: str | None = typer.Option(None, "--record", help="store to write the executed episodes into"),
    task: str = typer.Option("", "--task", help="language instruction"),
    episodes: int = typer.Option(1),
    seconds: float = typer.Option(30.0, help="length of each episode"),
    dry_run: bool = typer.Option(False, "--dry-run", help="rehearse against the emulator / simulator"),
    port: str | None = typer.Option(None, help="serial port or host (default: the arm file's)"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    embodiment: str | None = typer.Option(
        None, help="a policy trained on several robots: which one this arm is (default: the arm file's name)"
    ),
    dynamic_horizon: float | None = typer.Option(
        None, "--dynamic-horizon", metavar="RATIO", help="mixture-of-horizons policies: dynamic inference ratio"
    ),
    verbose: bool = typer.Option(False, "-v", help="log every intervention"),
) -> None:
    """Run a policy on an arm: fixed-rate loop, async inference, safety layer, optional recording."""
    from vla.real_robot.deploy import DeployOptions
    from vla.real_robot.deploy import deploy as run_deploy

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    opts = DeployOptions(robot=robot, calibration=calibration, policy=policy, server=server, token=token,
                         cameras=list(camera or []), fps=fps,
                         merge=merge, ensemble_k=ensemble_k, record=record, task=task, episodes=episodes,
                         seconds=seconds, dry_run=dry_run, port=port, device=device,
                         embodiment=embodiment, dynamic_horizon=dynamic_horizon)  # fmt: skip
    _print_reports(run_deploy(opts))


def serve(
    policy: str = typer.Option(..., "--policy", help="checkpoint directory"),
    host: str = typer.Option(
        "127.0.0.1", help="address to bind (IPv4 or IPv6: ::1, ::); anything but loopback needs a --token"
    ),
    port: int = typer.Option(8765),
    token: str | None = typer.Option(
        None, "--token", envvar="VLA_SERVE_TOKEN", help="shared secret; at least 16 characters off loopback"
    ),
    max_batch: int = typer.Option(8, help="most requests answered by one forward pass"),
    max_connections: int = typer.Option(32, min=1, help="most clients connected at once"),
    max_per_address: int = typer.Option(8, min=1, help="most clients connected at once from one address"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dynamic_horizon: float | None = typer.Option(
        None, "--dynamic-horizon", metavar="RATIO", help="mixture-of-horizons policies: dynamic inference ratio"
    ),
    protocol: str = typer.Option(
        "openpi",
        help="openpi: openpi's websocket protocol (openpi_client.WebsocketClientPolicy, `vla deploy --server "
        "ws://HOST:PORT`, `vla eval --policy ws://HOST:PORT`); vla: the framed TCP protocol (`--server HOST:PORT`)",
    ),
) -> None:
    """Serve a checkpoint to remote deploy loops, evaluation runs and openpi clients."""
    from vla.real_robot.deploy import load_policy_planner
    from vla.real_robot.server.protocol import join_address
    from vla.real_robot.server.server import PROTOCOLS, PolicyServer, ServerLimits, check_bind

    if protocol not in PROTOCOLS:
        raise VlaError(f"--protocol {protocol!r}: choose one of {' | '.join(PROTOCOLS)}")
    try:  # a weak or missing token fails before the checkpoint is loaded
        check_bind(host, token)
    except ValueError as e:
        raise VlaError(str(e)) from None
    planner = load_policy_planner(policy, device, dynamic_horizon)
    limits = ServerLimits(max_connections=max_connections, max_per_address=max_per_address)
    try:
        server = PolicyServer(planner, host=host, port=port, token=token, max_batch=max_batch, limits=limits,
                              protocol=protocol)  # fmt: skip
    except (ValueError, OSError) as e:
        raise VlaError(f"cannot serve on {join_address(host, port)}: {e}") from None
    server.planner.warmup()
    scheme = "ws://" if protocol == "openpi" else ""
    typer.echo(f"serving {policy} on {scheme}{join_address(*server.address)} ({protocol} protocol)")
    server.serve_forever()
