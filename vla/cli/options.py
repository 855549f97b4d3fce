"""Option texts and types shared by several commands, so that one flag means the same everywhere."""

from typing import Annotated

import typer

DEVICE_HELP = "Torch device of the policy: auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:1, mps."

PERTURB_HELP = (
    "Perturbed layouts: every movable object of each initial state moved D metres in a random direction (kept "
    "apart and on the surface; recorded in the settings and per episode). The same --perturb-seed gives the same "
    "layouts to every run, so `vla eval compare` pairs them; `vla sim demos --perturb` checks the scripted expert "
    "still solves them."
)
PerturbOption = Annotated[str | None, typer.Option(metavar="objects=D", help=PERTURB_HELP)]
PerturbSeedOption = Annotated[int, typer.Option(help="Seed of the --perturb directions (same seed: same layouts).")]
