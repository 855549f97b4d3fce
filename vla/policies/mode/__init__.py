"""MoDE: mixture-of-denoising-experts diffusion transformer policy."""

from vla.policies.mode.configuration_mode import MoDEConfig
from vla.policies.mode.modeling_mode import MoDEPolicy

__all__ = ["MoDEConfig", "MoDEPolicy"]
