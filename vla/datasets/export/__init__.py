"""Exporters: a finished store -> another toolkit's dataset format (`vla data export --to NAME`).

Each row names an `export(store, dst, options)` function; it is imported only when used, so listing
the formats loads nothing heavy. The reverse direction lives in `vla.datasets.convert`.
"""

from vla.registry import Registry

EXPORTERS = Registry(
    "exporter",
    {
        "lerobot": "vla.datasets.export.lerobot:export_lerobot",
    },
)
