"""HiMoE: hierarchical mixture-of-experts flow-matching action head for heterogeneous robots."""

from vla.policies.himoe.configuration_himoe import HiMoEConfig
from vla.policies.himoe.modeling_himoe import HiMoEPolicy

__all__ = ["HiMoEConfig", "HiMoEPolicy"]
