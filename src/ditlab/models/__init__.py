"""The DiT backbone, its registry of named configs, Gflops accounting and checkpoint formats."""

from ditlab.models.checkpoint import load_model, save_model
from ditlab.models.config import CONDITIONINGS, DiTConfig
from ditlab.models.dit import DiT, DiTBlock, FinalLayer
from ditlab.models.flops import count_parameters, flop_breakdown, flops
from ditlab.models.zoo import MODELS, VARIANTS, create_model, model_config

__all__ = [
    "CONDITIONINGS",
    "MODELS",
    "VARIANTS",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "FinalLayer",
    "count_parameters",
    "create_model",
    "flop_breakdown",
    "flops",
    "load_model",
    "model_config",
    "save_model",
]
