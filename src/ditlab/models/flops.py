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


def _attention(tokens: int, D: int, queries: int | None = None) -> int:
    """qkv projections of `tokens`, QKᵀ and AV of `queries` (default all) against them, output projection."""
    q = tokens if queries is None else queries
    return tokens * D * 3 * D + 2 * q * tokens * D + q * D * D


def _joint_block(cfg: DiTConfig, T: int, L: int, pre_only: bool) -> dict[str, int]:
    """MMDiT: each stream's projections and MLP, one attention over T + L tokens (pre-only: T queries)."""
    D, F, E = cfg.hidden_size, cfg.mlp_hidden, cfg.cond_width
    k = params_per_branch(cfg.shift, cfg.gated)
    ctx_q = 0 if pre_only else L
    attn = T * D * 3 * D + L * D * (2 if pre_only else 3) * D  # qkv per stream
    attn += 2 * (T + ctx_q) * (T + L) * D + (T + ctx_q) * D * D  # QKᵀ, AV, output projections
    heads = (2 * T + L + ctx_q) * D if cfg.qk_norm else 0  # q/k norms: image q, k; text k[, q]
    return dict(
        attention=attn,
        mlp=_mlp_macs(cfg) * (T + ctx_q) * D * F,
        block_modulation=E * 2 * k * D + (E * 2 * D if pre_only else E * 2 * k * D),
        norms=2 * T * D + (L * D if pre_only else 2 * L * D) + heads,
    )


def _block(cfg: DiTConfig, Tb: int, T: int, S: int) -> dict[str, int]:
    """One Block on Tb tokens (T image tokens, S context tokens for cross-attention)."""
    D, F = cfg.hidden_size, cfg.mlp_hidden
    B, k = cfg.branches, params_per_branch(cfg.shift, cfg.gated)
    cross = cfg.conditioning == "cross-attention" or cfg.text_mixing == "cross-attention"
    return dict(
        attention=_attention(Tb, D),
        mlp=_mlp_macs(cfg) * Tb * D * F,
        block_modulation=cfg.cond_width * B * k * D if cfg.conditioning in ("adaln", "adaln-zero") else 0,
        cross_attention=(T * D * D + S * D * 2 * D + 2 * T * S * D + T * D * D) if cross else 0,
        norms=B * Tb * D
        + (T * D if cross and cfg.cross_norm else 0)
        + (2 * Tb * D if cfg.sandwich_norm else 0)
        + (2 * Tb * D if cfg.qk_norm else 0),
    )


def _mlp_macs(cfg: DiTConfig) -> int:
    """Matmuls of D×F per token in the MLP: fc1, fc2 (GELU) or w1, w3, w2 (SwiGLU)."""
    return 3 if cfg.mlp == "swiglu" else 2


def _add(total: dict[str, int], part: dict[str, int], times: int = 1) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + times * value


def flop_breakdown(model_or_config, input=None, text_len: int | None = None) -> dict[str, float]:
    """MACs per image, by part: embed, condition, text, per-block attention/MLP/modulation/norms (summed),
    final. Text models count `text_len` text tokens (default: the config's `text_len`)."""
    cfg, (H, W) = _config_and_hw(model_or_config, input)
    p, C, D = cfg.patch_size, cfg.in_channels, cfg.hidden_size
    T = (H // p) * (W // p)
    L = (cfg.text_len if text_len is None else text_len) if cfg.has_text else 0
    S = 1 + int(cfg.num_classes > 0) + int(cfg.pooled_dim > 0)  # condition vectors (tokens when in-context)
    k = params_per_branch(cfg.shift, cfg.gated)

    E, mid = cfg.cond_width, cfg.timestep_mid or cfg.cond_width  # the condition's width, the timestep MLP's
    K = cfg.layout_channels
    C_in = C + (K if cfg.spatial_condition == "concat" else 0)  # the concat baseline's layout channels
    out = {"patch_embed": T * C_in * p * p * D, "timestep_embed": 256 * mid + mid * E}
    # SPADE: the shared 3×3 conv over the token grid, then each block's (and the final layer's) 1×1 conv to its
    # per-token modulation
    hidden = cfg.spatial_hidden if cfg.spatial_condition == "spade" else 0
    per_token = cfg.depth * cfg.branches * k * D + params_per_branch(cfg.shift, False) * D
    per_token += 2 * D if cfg.spatial_entry else 0  # the embedded tokens' (shift, scale)
    out["spatial_modulation"] = T * hidden * (9 * K * p * p + per_token)
    # the AdaGN pixel head: Conv3×3 in (output + input channels), Conv3×3 out, AdaGN's projection of c and, in
    # SPADE layout models, the layout's pixel-resolution Conv3×3 and Conv1×1 to (scale, shift)
    Wh, P, Co = cfg.pixel_head_width, H * W, cfg.out_channels
    head = P * 9 * Wh * (2 * Co + C) + E * 2 * Wh
    head += P * Wh * (9 * K + 2 * Wh) if cfg.spatial_condition == "spade" else 0
    out["pixel_head"] = head if cfg.pixel_head == "adagn" else 0
    # AdaIN reference: the reference's patch embedding, then Linear(2D -> E)
    out["reference"] = T * C_in * p * p * D + 2 * D * E if cfg.reference_condition == "adain" else 0
    out["pooled_embed"] = (cfg.pooled_dim * E + E * E) if cfg.pooled_dim else 0
    out["text_embed"] = L * cfg.text_dim * D + (L * D * D if cfg.text_embedder == "mlp" else 0)
    out["shared_modulation"] = E * cfg.branches * k * D if cfg.conditioning == "adaln-single" else 0

    blocks: dict[str, int] = {}
    if cfg.context_refiner:  # Z-Image: unmodulated blocks over the text tokens alone
        refiner = cfg.refiner_config()
        _add(blocks, _block(refiner, L, L, 0), cfg.context_refiner)
    _add(blocks, _block(cfg, T, T, 0), cfg.noise_refiner)  # Z-Image: the image tokens alone
    if cfg.text_embedder == "rms-linear":
        _add(blocks, {"norms": L * cfg.text_dim})
    joint = cfg.text_mixing == "joint"
    if joint:
        _add(blocks, _joint_block(cfg, T, L, pre_only=False), cfg.depth - 1)
        _add(blocks, _joint_block(cfg, T, L, pre_only=True))
    else:
        double = (
            cfg.replace(text_mixing="joint", arrangement="sequential", double_blocks=0)
            if cfg.double_blocks
            else None
        )
        if double is not None:
            _add(blocks, _joint_block(double, T, L, pre_only=False), cfg.double_blocks)
        Tb = T + S if cfg.conditioning == "in-context" else T  # tokens a block sees
        Tb += L if cfg.text_mixing == "concat" else 0
        cross_tokens = (S if cfg.conditioning == "cross-attention" else 0) + (
            L if cfg.text_mixing == "cross-attention" else 0
        )
        _add(blocks, _block(cfg, Tb, T, cross_tokens), cfg.depth - cfg.double_blocks)
    for key in ("attention", "mlp", "block_modulation", "cross_attention"):
        out[key] = blocks.get(key, 0)
    out["norms"] = blocks.get("norms", 0) + T * D
    final_k = params_per_branch(cfg.shift, False)
    out["final_modulation"] = E * final_k * D if cfg.conditioning in ("adaln", "adaln-zero") else 0
    out["final_linear"] = T * D * p * p * cfg.out_channels
    out["total"] = sum(out.values())
    Tb = T + S if cfg.conditioning == "in-context" else T
    out["per_block_attention"] = _attention(Tb, D)
    out["per_block_mlp"] = _mlp_macs(cfg) * Tb * D * cfg.mlp_hidden
    return out


def flops(model_or_config, input=None, text_len: int | None = None) -> float:
    """Analytic Gflops (10⁹ MACs, the paper's unit) of one forward pass for ONE image.

    `input` may be an example tensor (N, C, H, W), an (H, W) pair or an int side; default the config's size.
    Text models count `text_len` text tokens (default: the config's `text_len`).
    """
    return flop_breakdown(model_or_config, input, text_len)["total"] / 1e9


def count_parameters(model) -> int:
    """All parameters, the frozen position table included (the convention of the paper's parameter counts)."""
    return sum(p.numel() for p in model.parameters())
