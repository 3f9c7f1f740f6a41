"""Training: the config, the loop (EMA, exact resume, torchrun DDP), checkpoints, metrics and plots."""

from ditlab.train.config import TrainConfig
from ditlab.train.ema import EMA
from ditlab.train.state import latest_checkpoint, list_checkpoints, load_training_state, save_training_state
from ditlab.train.trainer import Trainer, train

__all__ = [
    "EMA",
    "TrainConfig",
    "Trainer",
    "latest_checkpoint",
    "list_checkpoints",
    "load_training_state",
    "save_training_state",
    "train",
]
