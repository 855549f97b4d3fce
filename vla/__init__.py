"""vla: data, mixture-of-experts VLA policies, simulation benchmarks and real-robot deployment."""

from vla._env import apply_defaults

apply_defaults()

__version__ = "0.1.0"
