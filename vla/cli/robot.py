"""`vla robot`, `vla deploy`, `vla serve`: real arms without ROS (being built)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Real arms: calibration, teleoperation and arm description files.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Real arms: calibration, teleoperation and arm description files."""


def deploy() -> None:
    """Run a policy on a real arm (not implemented yet)."""
    raise typer.Exit(2)


def serve() -> None:
    """Serve a checkpoint to remote deploy loops (not implemented yet)."""
    raise typer.Exit(2)
