"""`python -m vla ...` is the `vla` command."""

from vla.cli import main

main()
