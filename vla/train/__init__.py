"""Training: `train()` runs any registered policy on one or more stores (see trainer.py)."""

from vla.train.config import TrainConfig
from vla.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
