"""The benchmarks' evaluation protocols, by name (`vla eval <name>`): one line per benchmark."""

from vla.registry import Registry

PROTOCOLS = Registry(
    "evaluation protocol",
    {
        "libero": "vla.eval.protocols.libero:LiberoProtocol",
        "calvin": "vla.eval.protocols.calvin:CalvinProtocol",
    },
)
