"""The `vla` command line: one thin module per command group, each calling library functions."""

from __future__ import annotations

import sys

import typer

from vla.cli import compress, data, demo, robot, sim
from vla.cli import eval as eval_cli
from vla.cli import export as export_cli
from vla.cli import inspect as inspect_cli
from vla.cli import train as train_cli
from vla.errors import VlaError

app = typer.Typer(
    name="vla",
    help="Robot learning with mixture-of-experts VLA policies: convert demonstrations, train, evaluate, deploy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(sim.app, name="sim")
app.add_typer(eval_cli.app, name="eval")
app.command(name="train")(train_cli.train)
app.command(name="compress")(compress.compress)
app.command(name="demo")(demo.demo)
app.add_typer(robot.app, name="robot")
app.add_typer(inspect_cli.app, name="inspect")
app.command(name="deploy")(robot.deploy)
app.command(name="serve")(robot.serve)
app.command(name="export")(export_cli.export)


def main() -> None:
    try:
        app()
    except VlaError as e:
        # Bad input: one clear line, no traceback.
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
