"""Analytic compute of a DiT forward pass, in the DiT paper's "Gflops": 10⁹ multiply-accumulates per image.

The paper counted with fvcore, which reports MACs (so real FLOPs are 2×), counts attention's two matmuls
(QKᵀ and AV), one op per LayerNorm element, and nothing for activations, softmax or elementwise adds.
This module reproduces that count from the config, so it holds for every conditioning variant and input size.

    python -m ditlab flops DiT-XL/2          # 118.64 Gflops, 675,129,632 parameters
"""

from __future__ import annotations

import torch

from ditlab.models.config import DiTConfig
from ditlab.nn.modulation import params_per_branch


def _config_and_hw(model_or_config, input=None) -> tuple[DiTConfig, tuple[int, int]]:
    cfg = (
        model_or_config
        if isinstance(model_or_config, DiTConfig)
        else getattr(model_or_config, "config", None)
    )
    if not isinstance(cfg, DiTConfig):
        raise TypeError(f"flops() takes a DiT model or a DiTConfig, got {type(model_or_config).__name__}")
    if input is None:
        hw = cfg.image_hw
    elif torch.is_tensor(input):
        hw = tuple(input.shape[-2:])
    elif isinstance(input, int):
        hw = (input, input)
    else:
        hw = tuple(input)[-2:]
    if hw[0] % cfg.patch_size or hw[1] % cfg.patch_size:
        raise ValueError(f"input size {hw} is not a multiple of the patch size {cfg.patch_size}")
    return cfg, (int(hw[0]), int(hw[1]))


def flop_breakdown(model_or_config, input=None) -> dict[str, float]:
    """MACs per image, by part: embed, condition, per-block attention/MLP/modulation/norms (summed), final."""
    cfg, (H, W) = _config_and_hw(model_or_config, input)
    p, C, D, F = cfg.patch_size, cfg.in_channels, cfg.hidden_size, cfg.mlp_hidden
    T = (H // p) * (W // p)
    S = 1 + int(cfg.num_classes > 0) + int(cfg.pooled_dim > 0)  # condition vectors (tokens when in-context)
    Tb = T + S if cfg.conditioning == "in-context" else T  # tokens a block sees
    k = params_per_branch(cfg.shift, cfg.gated)

    out = {"patch_embed": T * C * p * p * D, "timestep_embed": 256 * D + D * D}
    out["pooled_embed"] = (cfg.pooled_dim * D + D * D) if cfg.pooled_dim else 0
    B = cfg.branches  # modulated branches per block (2; 1 for the parallel arrangement)
    out["shared_modulation"] = D * B * k * D if cfg.conditioning == "adaln-single" else 0

    attn = Tb * D * 3 * D + 2 * Tb * Tb * D + Tb * D * D  # qkv, QKᵀ and AV, out-projection
    mlp = 2 * Tb * D * F
    modulation = D * B * k * D if cfg.conditioning in ("adaln", "adaln-zero") else 0
    cross = (
        (T * D * D + S * D * 2 * D + 2 * T * S * D + T * D * D)
        if cfg.conditioning == "cross-attention"
        else 0
    )
    norms = (
        B * Tb * D
        + (T * D if cfg.conditioning == "cross-attention" else 0)
        + (2 * Tb * D if cfg.sandwich_norm else 0)
    )
    out.update(
        attention=cfg.depth * attn,
        mlp=cfg.depth * mlp,
        block_modulation=cfg.depth * modulation,
        cross_attention=cfg.depth * cross,
        norms=cfg.depth * norms + T * D,
    )
    final_k = params_per_branch(cfg.shift, False)
    out["final_modulation"] = D * final_k * D if cfg.conditioning in ("adaln", "adaln-zero") else 0
    out["final_linear"] = T * D * p * p * cfg.out_channels
    out["total"] = sum(out.values())
    out["per_block_attention"] = attn
    out["per_block_mlp"] = mlp
    return out


def flops(model_or_config, input=None) -> float:
    """Analytic Gflops (10⁹ MACs, the paper's unit) of one forward pass for ONE image.

    `input` may be an example tensor (N, C, H, W), an (H, W) pair or an int side; default the config's size.
    """
    return flop_breakdown(model_or_config, input)["total"] / 1e9


def count_parameters(model) -> int:
    """All parameters, the frozen position table included (the convention of the paper's parameter counts)."""
    return sum(p.numel() for p in model.parameters())
