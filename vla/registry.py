"""One registry shape for everything found by name: policies, converters, evaluation protocols, robot drivers.

A registry is a table name -> "package.module:attribute", imported only when that name is asked for, so
listing the choices (a CLI's `--help`) imports nothing and no registry table can create an import cycle.
Adding a policy, converter, protocol or driver is one line in its table.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from vla.errors import VlaError


class RegistryError(VlaError):
    """An unknown name, or a table entry that does not import."""


class Registry:
    """`kind`: what the entries are, for messages ("policy", "converter", ...)."""

    def __init__(self, kind: str, table: Mapping[str, str]):
        for name, target in table.items():
            if ":" not in target:
                raise RegistryError(
                    f"{kind} {name!r}: registry entry {target!r} should read 'package.module:attribute'"
                )
        self.kind = kind
        self._table = dict(table)
        self._loaded: dict[str, Any] = {}

    def names(self) -> list[str]:
        """The registered names, in table order (what a CLI offers)."""
        return list(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def target(self, name: str) -> str:
        """ "module:attribute" of `name`, without importing it."""
        self._check(name)
        return self._table[name]

    def load(self, name: str) -> Any:
        """The object registered as `name`, imported on first use."""
        self._check(name)
        if name not in self._loaded:
            module_name, _, attr = self._table[name].partition(":")
            module = importlib.import_module(module_name)
            try:
                self._loaded[name] = getattr(module, attr)
            except AttributeError:
                raise RegistryError(f"{self.kind} {name!r}: {module_name} has no {attr!r}") from None
        return self._loaded[name]

    def _check(self, name: str) -> None:
        if name not in self._table:
            raise RegistryError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._table)}")
