"""Layers: token norms and the adaLN modulation family, embedders, attention, and the classical
conditional norms (AdaIN, conditional BatchNorm / FiLM, SPADE, AdaGN)."""

from ditlab.nn.attention import Attention, CrossAttention, JointAttention, Mlp
from ditlab.nn.conditional_norms import (
    SPADE,
    AdaGN,
    AdaIN,
    ClassConditionalBatchNorm2d,
    ConditionalBatchNorm2d,
    FiLM,
    StyleAdaIN,
    adain,
)
from ditlab.nn.embed import (
    LabelEmbedder,
    PatchEmbed,
    PooledEmbedder,
    TextEmbedder,
    TimestepEmbedder,
    rope_2d,
    sincos_2d,
    timestep_sinusoid,
)
from ditlab.nn.modulation import (
    AdaLNModulation,
    AdaLNSingle,
    AdaptiveNorm,
    Modulation,
    ScaleShiftTable,
    modulate,
    split_modulation,
)
from ditlab.nn.norms import RMSNorm, make_norm

__all__ = [
    "SPADE",
    "AdaGN",
    "AdaIN",
    "ClassConditionalBatchNorm2d",
    "ConditionalBatchNorm2d",
    "FiLM",
    "StyleAdaIN",
    "adain",
    "AdaLNModulation",
    "AdaLNSingle",
    "AdaptiveNorm",
    "Attention",
    "CrossAttention",
    "JointAttention",
    "LabelEmbedder",
    "Mlp",
    "Modulation",
    "PatchEmbed",
    "PooledEmbedder",
    "RMSNorm",
    "ScaleShiftTable",
    "TextEmbedder",
    "TimestepEmbedder",
    "make_norm",
    "modulate",
    "rope_2d",
    "sincos_2d",
    "split_modulation",
    "timestep_sinusoid",
]
