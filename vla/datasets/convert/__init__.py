"""Converters: one reader per source format, each yielding episodes in the store's vocabulary.

`CONVERTERS` names them (`vla data convert --from NAME`); a converter is imported only when used, so
listing the formats loads neither lerobot nor h5py. A new format is one module and one line here.
The driver that streams a converter into a store is `vla.datasets.convert.base.convert`.
"""

from vla.registry import Registry

CONVERTERS = Registry(
    "converter",
    {
        "lerobot": "vla.datasets.convert.lerobot:LeRobotConverter",
        "libero": "vla.datasets.convert.libero:LiberoConverter",
        "calvin": "vla.datasets.convert.calvin:CalvinConverter",
        "dp-zarr": "vla.datasets.convert.dp_zarr:DiffusionPolicyZarrConverter",
    },
)
