"""The Diffusion Transformer (Peebles & Xie, arXiv:2212.09748) and its one Block.

    patchify → + fixed 2-D sin-cos positions → depth × Block → final adaptive layer → unpatchify

Every conditioning the DiT paper compares (in-context, cross-attention, adaLN, adaLN-Zero), PixArt-α's
adaLN-single and the RMSNorm / shift-free / tanh-gated variants of later models are choices inside the same
Block (see DiTConfig), not copies of it. With the default config the parameter names, construction order,
initialisation and numerics are the official DiT's, so its checkpoints load with `load_state_dict` as they are.

    model = DiT(DiTConfig(input_size=8, in_channels=1, hidden_size=64, depth=2, num_heads=4, num_classes=10))
    out = model(x, t, y)            # (N, 2C, H, W): ε and the variance interpolation v

A Block is parts plugged into one body: norm → modulation → token mixer (`attn`) → gated residual, then
norm → modulation → MLP → gated residual, each part an explicit field that is None where the config does not
use it. Dynamic-width models do not copy the body: DyDiT hands each block a `BlockRoute` (head and channel-group
masks, sliced weight views, a token decision the block asks for after its attention branch) and the same
Block code runs its training, masked and deployed paths; `DiT.forward` = `embed` → `run_blocks` → `unembed`,
and a subclass changes only what it passes to `run_blocks`.

How the text-to-image models plug in, as parts rather than new bodies (`DiTConfig.text_mixing`; the models
take text tokens (N, L, text_dim) with their mask, `forward(x, t, pooled=..., text=..., text_mask=...)`):
- Pooled (SD3's global path): `pooled_dim` > 0, the pooled text vector's embedding joins c.
- Cross-attention with adaLN-single (PixArt-α): `text_embedder` (the caption projection) embeds the tokens and
  the Block's `cross_attn` part reads them after self-attention (`cross_norm=False`: PixArt has no norm there).
- Joint attention (SD3's MMDiT): a second stream of text tokens with its own weights. The Block gains a
  `context_stream` part (`ContextStream`: its own norm1/norm2, adaLN projection and MLP; None for every DiT
  config), and the token mixer is a `JointAttention` that takes the two modulated streams, projects each with
  its own qkv, concatenates them along the token axis for one scaled-dot-product attention and splits the
  result back through per-stream output projections. The gated residuals and the MLP branch are the same code
  applied once per stream; the block returns (x, context) and `run_blocks` threads the context stream from
  block to block. The last block is context-pre-only: its context stream only gives keys and values.
- Single stream (Flux single blocks, Z-Image): `text_mixing="concat"` appends the embedded text tokens to the
  image tokens (one sequence, one set of weights, a key mask marking padding) and `unembed` drops them again.
  Flux's block is the arrangement part `DiTConfig(arrangement="parallel")` (`Block.parallel_forward`): one
  norm and one modulation (shift, scale, gate), x + gate·(attn(h) + mlp(h)) with h = modulate(norm1(x)).
  Flux's fused linear1/linear2 are the same function as separate qkv + fc1 and proj + fc2 (a linear map of a
  concatenation is the sum of the maps), so a checkpoint converter splits them into these official names.
  Z-Image's S3-DiT block is the sequential Block with RMSNorm, shift-free tanh-gated modulation and sandwich
  norms; its context refiner (`context_refiner` unmodulated Blocks over the text tokens alone) and noise
  refiner (`noise_refiner` modulated Blocks over the image tokens alone) run first. Its checkpoints' other
  details are config fields of the same parts (SwiGLU `mlp`, bias-free attention, weighted norms, a 256-d
  condition `cond_dim` projected without SiLU, a LayerNorm `final_norm`, rotary ids with a sequence axis).
- Positions: the additive sin-cos table (cropped from a max-size table for SD3, `pos_embed_max_size`), 2-D
  rotary positions on the image tokens' queries and keys (`rope`; text tokens sit at position 0), or both
  (`rope=True, pos_embed="sincos"`).

The later class-conditional DiTs' block lessons (LightningDiT) are the same fields on the class-conditional
model: `mlp="swiglu"` (with `mlp_two_thirds` for its 2/3 hidden width), `qk_norm` (per-head RMSNorm of queries
and keys, which bounds the attention logits by √head_dim·|w_q|·|w_k| and keeps low-precision training finite),
`rope` with or without the table, `norm="rmsnorm"` and `shift=False`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ditlab.models.config import MODULATED, DiTConfig
from ditlab.nn import (
    AdaLNModulation,
    AdaLNSingle,
    Attention,
    CrossAttention,
    JointAttention,
    LabelEmbedder,
    Modulation,
    PatchEmbed,
    PooledEmbedder,
    RMSNorm,
    ScaleShiftTable,
    TextEmbedder,
    TimestepEmbedder,
    make_norm,
    rope_2d,
    sincos_2d,
)
from ditlab.nn.attention import AttentionSlice, Mlp, MlpSlice, SwiGLU, make_mlp
from ditlab.nn.modulation import params_per_branch
from ditlab.nn.pixel_head import PixelHead
from ditlab.nn.reference import ReferenceStyle, check_reference
from ditlab.nn.spatial import SpatialEmbedder, SpatialModulation, layout_channels_for

NO_MODULATION = Modulation(None, None, None)

# Gradient checkpointing of each block: "full" keeps only the block's input and recomputes the whole block in
# the backward pass; "selective" also keeps the outputs that cost the most compute per byte to redo (the
# attention kernel's and the matmuls that reduce a long axis to a short one, i.e. the MLP's fc2) and recomputes
# the rest (qkv, proj, fc1, norms, GELU). What each saves and costs: `python benchmarks/memory.py --threads 1`
# (DiT-B/2, batch 32; the figures are in benchmarks/RESULTS.md).
CHECKPOINT_POLICIES = ("full", "selective")
_ATTENTION_OPS = tuple(
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(torch.ops.aten, name)
)
_MATMUL_OPS = (torch.ops.aten.addmm.default, torch.ops.aten.mm.default)


def _keep_costly_outputs(ctx, op, *args, **kwargs):
    """Selective-checkpointing policy: save attention outputs and K > N matmul outputs, recompute the rest."""
    if op in _ATTENTION_OPS:
        return CheckpointPolicy.MUST_SAVE
    if op in _MATMUL_OPS and args[-2].shape[-1] > args[-1].shape[-1]:  # (M, K) @ (K, N) with K > N
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@dataclass
class BlockRoute:
    """What a dynamic-width model (DyDiT) asks of one Block forward; a None field leaves that part dense.

    The masks and sliced weights go to the attention and MLP modules as they are (see ditlab.nn.attention).
    The token fields are called with the residual stream after the attention branch, where DyDiT's token router
    decides: `token_mask(x)` gives an (N, T) multiplier of each token's MLP update (training, masked
    inference); `token_index(x)` gives the flat (K,) indices into the N·T tokens that run the MLP, which then
    runs on those K tokens only (the others keep their residual), or None for every token.
    """

    head_mask: torch.Tensor | None = None  # (N, H)
    attn_weights: AttentionSlice | None = None
    group_mask: torch.Tensor | None = None  # (N, G)
    mlp_weights: MlpSlice | None = None
    token_mask: Callable[[torch.Tensor], torch.Tensor] | None = None
    token_index: Callable[[torch.Tensor], torch.Tensor | None] | None = None


def mlp_branch_of(norm, mlp, post_norm, x, m: Modulation, inplace: bool, route=None) -> torch.Tensor:
    """One stream's MLP branch before its gate: norm → modulate → MLP [→ post-norm], (N, T, D)."""
    h = m.apply(norm(x), inplace)
    h = mlp(h) if route is None else mlp(h, route.group_mask, route.mlp_weights)
    return h if post_norm is None else post_norm(h)


def block_modulation(cfg: DiTConfig, pre_only: bool = False) -> AdaLNModulation:
    """A block stream's adaLN projection of c: one (shift, scale[, gate]) per branch. `pre_only` (the text
    stream of SD3's last block): one ungated branch, as its AdaLayerNormContinuous."""
    return AdaLNModulation(
        cfg.cond_width,
        cfg.hidden_size,
        branches=1 if pre_only else cfg.branches,
        shift=cfg.shift,
        gate=cfg.gated and not pre_only,
        zero_init=cfg.zero_init,
        act=cfg.adaln_act,
    )


class ContextStream(nn.Module):
    """The text stream's own parts in an MMDiT Block (SD3): norm1, adaLN projection, norm2 and MLP.

    In the context-pre-only last block the stream only feeds keys and values to the joint attention: one
    (shift, scale) modulation (SD3's AdaLayerNormContinuous) and no norm2/MLP.
    """

    def __init__(self, cfg: DiTConfig, pre_only: bool = False):
        super().__init__()
        D = cfg.hidden_size
        self.norm1 = make_norm(cfg.norm, D, eps=cfg.norm_eps, affine=cfg.norm_affine)
        self.norm2 = None if pre_only else make_norm(cfg.norm, D, eps=cfg.norm_eps, affine=cfg.norm_affine)
        self.mlp = None if pre_only else make_mlp(cfg.mlp, D, cfg.mlp_hidden)
        self.adaLN_modulation = block_modulation(cfg, pre_only)

    def mlp_branch(self, x, m: Modulation, inplace: bool) -> torch.Tensor:
        return mlp_branch_of(self.norm2, self.mlp, None, x, m, inplace)


class Block(nn.Module):
    """norm → modulate → attention → [post-norm →] gate → residual, [cross-attention,]
    norm → modulate → MLP → [post-norm →] gate → residual.

    Parts (None where the config does not use them): `adaLN_modulation` (per-block adaLN projection) or
    `adaLN_table` (adaLN-single's per-block table), else no modulation (in-context, cross-attention);
    `norm_cross`, `cross_attn` (the cross-attention variant, PixArt's text cross-attention);
    `post_norm1`, `post_norm2` (Lumina's sandwich); `context_stream` (MMDiT's text stream, with `attn` a
    `JointAttention`); `norm2` is None in the parallel arrangement, where both mixers read the output of norm1.
    Module creation order matches the official DiTBlock so seeded inits are identical.

    `inplace_ops` (default True) lets modulate and the gated residuals write into the temporaries they are
    handed (see `ditlab.nn.modulation.modulate`) instead of allocating new (N, T, D) buffers; False is the plain
    path (the eager baseline of benchmarks/). The two are bit-identical. Forward hooks on `norm1`, `norm2`,
    `attn` or `mlp` that keep their output see it overwritten; set False for such inspection.
    """

    def __init__(self, cfg: DiTConfig, context_pre_only: bool = False):
        super().__init__()
        D = cfg.hidden_size
        self.gate_fn = cfg.gate_fn
        self.norm1 = make_norm(cfg.norm, D, eps=cfg.norm_eps, affine=cfg.norm_affine)
        joint = cfg.text_mixing == "joint"
        self.attn = (
            JointAttention(D, cfg.num_heads, qk_norm=cfg.qk_norm, context_pre_only=context_pre_only)
            if joint
            else Attention(
                D,
                cfg.num_heads,
                qkv_bias=cfg.attn_bias,
                qk_norm=cfg.qk_norm,
                proj_bias=cfg.attn_bias,
                qk_norm_eps=cfg.qk_norm_eps,
            )
        )
        self.parallel = cfg.arrangement == "parallel"  # attention and MLP both read modulate(norm1(x))
        self.norm2 = (
            None
            if self.parallel
            else make_norm(
                cfg.norm,
                D,
                eps=cfg.norm_eps if cfg.mlp_norm_eps is None else cfg.mlp_norm_eps,
                affine=cfg.norm_affine,
            )
        )
        self.mlp = make_mlp(cfg.mlp, D, cfg.mlp_hidden)
        self.branches = cfg.branches
        self.adaLN_modulation = block_modulation(cfg) if cfg.conditioning in ("adaln", "adaln-zero") else None
        self.adaLN_table = (
            ScaleShiftTable(D, branches=cfg.branches, shift=cfg.shift, gate=True)
            if cfg.conditioning == "adaln-single"
            else None
        )
        cross = cfg.conditioning == "cross-attention" or cfg.text_mixing == "cross-attention"
        self.norm_cross = make_norm(cfg.norm, D, eps=cfg.norm_eps) if cross and cfg.cross_norm else None
        self.cross_attn = CrossAttention(D, cfg.num_heads) if cross else None
        self.post_norm1 = RMSNorm(D, eps=cfg.norm_eps) if cfg.sandwich_norm else None
        self.post_norm2 = RMSNorm(D, eps=cfg.norm_eps) if cfg.sandwich_norm else None
        self.context_stream = ContextStream(cfg, context_pre_only) if joint else None
        # SPADE-style per-token modulation from a layout, added to the global one (ditlab.nn.spatial); built
        # without drawing from the RNG, so a layout model's other weights are the plain model's for a seed
        self.spatial_modulation = (
            SpatialModulation(cfg.spatial_hidden, D, cfg.branches, cfg.shift, cfg.gated)
            if cfg.spatial_condition == "spade"
            else None
        )
        self.inplace_ops = True

    def modulations(
        self, c: torch.Tensor, shared: torch.Tensor | None, spatial=None, tokens=0
    ) -> list[Modulation]:
        """Each branch's modulation: the global one (per sample), plus the per-token one of a layout model
        (`spatial`: Condition.spatial; `tokens`: the length of the stream it modulates)."""
        if self.adaLN_modulation is not None:
            mods = self.adaLN_modulation(c)
        elif self.adaLN_table is not None:
            mods = self.adaLN_table(shared)
        else:
            return [NO_MODULATION] * self.branches
        if self.spatial_modulation is None:
            return mods
        return self.spatial_modulation.add_to(mods, spatial, tokens)

    def forward(
        self,
        x,
        c,
        shared=None,
        context=None,
        route: BlockRoute | None = None,
        mask=None,
        context_mask=None,
        rope=None,
        spatial=None,
    ):
        # x: (N, T, D) tokens; c: (N, D) condition; shared: (N, 6D) adaLN-single projection; context: (N, S, D)
        # condition tokens (cross-attention) or the text stream (joint); mask (N, T) / context_mask (N, S):
        # the tokens that exist (False = padding); rope: rotary (cos, sin) tables; spatial: (N, hidden, gh, gw)
        # layout features (Condition.spatial). Joint: returns (x, context).
        if self.context_stream is not None:
            return self.joint_forward(x, c, context, context_mask, rope, spatial)
        if self.parallel:
            return self.parallel_forward(x, c, shared, route, mask, rope, spatial)
        m_attn, m_mlp = self.modulations(c, shared, spatial, x.shape[1])
        inplace = self.inplace_ops  # the norm and branch outputs below are temporaries of this block
        h = m_attn.apply(self.norm1(x), inplace)
        h = self.self_attention(h, route, mask, rope)  # (N, T, D)
        if self.post_norm1 is not None:
            h = self.post_norm1(h)
        x = m_attn.residual(x, h, self.gate_fn, inplace)
        if self.cross_attn is not None:
            h = x if self.norm_cross is None else self.norm_cross(x)
            x = NO_MODULATION.residual(x, self.cross_attn(h, context, context_mask), inplace=inplace)
        if route is not None and route.token_mask is not None:  # each token's update times its {0, 1} mask
            h = m_mlp.gated(self.mlp_branch(x, m_mlp, route), self.gate_fn)
            return x + h * route.token_mask(x).unsqueeze(-1)  # (N, T, D): a skipped token keeps its residual
        if route is not None and route.token_index is not None:
            index = route.token_index(x)  # (K,) or None
            if index is not None:
                return self.mlp_on_tokens(x, m_mlp, route, index)
        return m_mlp.residual(x, self.mlp_branch(x, m_mlp, route), self.gate_fn, inplace)

    def self_attention(self, h, route: BlockRoute | None = None, mask=None, rope=None) -> torch.Tensor:
        """The token mixer on modulated tokens h (N, T, D): dense, or on the route's heads/masks."""
        if route is None:
            return self.attn(h, mask=mask, rope=rope)
        return self.attn(h, route.head_mask, route.attn_weights, mask=mask, rope=rope)

    def parallel_forward(
        self, x, c, shared=None, route: BlockRoute | None = None, mask=None, rope=None, spatial=None
    ):
        """x + gate·(attention(h) + MLP(h)), h = modulate(norm1(x)): one branch, both mixers on the same h."""
        (m,) = self.modulations(c, shared, spatial, x.shape[1])
        h = m.apply(self.norm1(x), self.inplace_ops)  # read by both mixers, written by neither
        mlp = self.mlp(h) if route is None else self.mlp(h, route.group_mask, route.mlp_weights)
        out = self.self_attention(h, route, mask, rope) + mlp
        return m.residual(x, out, self.gate_fn, self.inplace_ops)

    def joint_forward(self, x, c, context, context_mask=None, rope=None, spatial=None):
        """MMDiT: both streams modulated by their own adaLN, one joint attention, then each stream's gated
        residuals and MLP branch -> (x, context); context is None after a context-pre-only block."""
        if context is None:
            raise ValueError("an MMDiT block needs the text stream: pass text tokens to the model")
        inplace, stream = self.inplace_ops, self.context_stream
        m_attn, m_mlp = self.modulations(c, None, spatial, x.shape[1])  # the layout: the image stream only
        c_mods = stream.adaLN_modulation(c)  # [attention, MLP], or [(shift, scale)] when pre-only
        h, hc = self.attn(
            m_attn.apply(self.norm1(x), inplace),
            c_mods[0].apply(stream.norm1(context), inplace),
            context_mask,
            rope,
        )
        x = m_attn.residual(x, h, self.gate_fn, inplace)
        x = m_mlp.residual(x, self.mlp_branch(x, m_mlp), self.gate_fn, inplace)
        if hc is None:
            return x, None
        context = c_mods[0].residual(context, hc, self.gate_fn, inplace)
        return x, c_mods[1].residual(
            context, stream.mlp_branch(context, c_mods[1], inplace), self.gate_fn, inplace
        )

    def mlp_branch(self, x, m: Modulation, route: BlockRoute | None = None) -> torch.Tensor:
        """The MLP branch's output before its gate: norm2 → modulate → MLP [→ post-norm], (N, T, D)."""
        return mlp_branch_of(self.norm2, self.mlp, self.post_norm2, x, m, self.inplace_ops, route)

    def mlp_on_tokens(self, x, m: Modulation, route: BlockRoute, index: torch.Tensor) -> torch.Tensor:
        """x + gate·MLP branch for the flat token indices `index` (K,) of x (N, T, D); the others keep x.

        The kept tokens of the whole batch are gathered and run as one (K, 1, D) batch (each token a "sample"
        of one token, its sample's modulation gathered alongside), then added back into their rows.
        """
        N, T, D = x.shape
        if index.numel() == 0:
            return x
        flat = x.reshape(N * T, D)
        m = m.select(torch.div(index, T, rounding_mode="floor"))  # (K, D) fields
        h = self.mlp_branch(flat.index_select(0, index).unsqueeze(1), m, route)  # (K, 1, D)
        return flat.index_add(0, index, m.gated(h, self.gate_fn).squeeze(1)).view(N, T, D)


DiTBlock = Block  # the name the official code and earlier ditlab releases use


class FinalLayer(nn.Module):
    """norm → modulate(shift, scale from c) → Linear(D, p·p·out_channels).

    Parts: `adaLN_modulation` (adaLN variants) or `adaLN_table` (adaLN-single), None where unused."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D, p = cfg.hidden_size, cfg.patch_size
        self.norm_final = make_norm(cfg.final_norm or cfg.norm, D, eps=1e-6)
        self.linear = nn.Linear(D, p * p * cfg.out_channels, bias=True)
        self.adaLN_modulation = (
            AdaLNModulation(cfg.cond_width, D, branches=1, shift=cfg.shift, gate=False, zero_init=True)
            if cfg.conditioning in ("adaln", "adaln-zero")
            else None
        )
        self.adaLN_table = (  # PixArt: a (2, D) table plus the raw condition
            ScaleShiftTable(D, branches=1, shift=cfg.shift, gate=False)
            if cfg.conditioning == "adaln-single"
            else None
        )
        # layout models: per-token (shift, scale) here too, as SPADE modulates its last norm (zero-initialised)
        self.spatial_modulation = (
            SpatialModulation(cfg.spatial_hidden, D, 1, cfg.shift, False)
            if cfg.spatial_condition == "spade"
            else None
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, spatial=None) -> torch.Tensor:
        """(N, T, D) -> (N, T, p·p·C_out); spatial: a layout model's Condition.spatial (None: none)."""
        if self.adaLN_modulation is not None:
            (m,) = self.adaLN_modulation(c)
        elif self.adaLN_table is not None:
            (m,) = self.adaLN_table(c)
        else:
            m = NO_MODULATION
        if self.spatial_modulation is not None:
            (m,) = self.spatial_modulation.add_to([m], spatial, x.shape[1])
        return self.linear(m.apply(self.norm_final(x)))


class Condition(NamedTuple):
    """What the blocks and the final layer read besides the tokens, for one forward (see `DiT.embed`)."""

    c: torch.Tensor  # (N, D): the summed condition
    timestep: torch.Tensor  # (N, D): the timestep embedding alone (DyDiT's width routers read only this)
    shared: torch.Tensor | None  # (N, 6D): adaLN-single's shared projection
    context: torch.Tensor | None  # (N, S, D): the tokens cross-attention attends to, or MMDiT's text stream
    grid: tuple[int, int]  # (gh, gw) token grid of the input
    mask: torch.Tensor | None = None  # (N, T'): which of the block tokens exist (concatenated text padding)
    context_mask: torch.Tensor | None = None  # (N, S): which context tokens exist
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # rotary (cos, sin) tables of the attended tokens
    spatial: torch.Tensor | None = None  # (N, hidden, gh, gw): the layout's shared SPADE features
    pixels: torch.Tensor | None = None  # (N, C, H, W): the noisy input, for the pixel head (None: no head)
    pixel_layout: torch.Tensor | None = None  # (N, width, H, W): the pixel head's layout features


class DiT(nn.Module):
    """Diffusion Transformer. `forward(x, t, y=None, pooled=None, text=None, text_mask=None)` ->
    (N, out_channels, H, W); text models take text tokens (N, L, text_dim) and their (N, L) mask."""

    def __init__(self, config: DiTConfig | None = None, **overrides):
        super().__init__()
        cfg = (config or DiTConfig()).replace(**overrides) if overrides else (config or DiTConfig())
        self.config = cfg
        D = cfg.hidden_size
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels
        self.patch_size = cfg.patch_size
        self.num_heads = cfg.num_heads
        self.gradient_checkpointing = False
        self.checkpoint_policy = "full"  # one of CHECKPOINT_POLICIES, used when gradient_checkpointing is on
        # How the model was trained (ditlab.diffusion.ObjectiveSpec as a dict); set by the trainer and by
        # load_model, saved with the weights, so sampling never needs it repeated. None = unknown/official.
        self.objective_spec: dict | None = None
        # The data it was trained on ({"name", "class_names", "image_size", "channels"}; set by the trainer,
        # saved with the weights). None = unknown.
        self.data_spec: dict | None = None

        # Creation order = the official DiT's (x, t, y embedders, blocks, final layer): same seed, same init.
        concat = (
            cfg.layout_channels if cfg.spatial_condition == "concat" else 0
        )  # the layout as input channels
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels + concat, D)
        E = cfg.cond_width  # the condition vector c: the hidden size, or Z-Image's narrower 256
        self.t_embedder = TimestepEmbedder(
            E, freq_shift=cfg.timestep_freq_shift, mid_size=cfg.timestep_mid or None
        )
        self.y_embedder = (
            LabelEmbedder(cfg.num_classes, E, cfg.class_dropout_prob) if cfg.num_classes else None
        )
        # Fixed positions for the configured grid; a checkpoint carries them (key `pos_embed`) but they are
        # never trained. Other grid sizes get a table built on the fly.
        # SD3 keeps a max-size table and crops each input's grid from its centre; rotary models have none unless
        # the config asks for both (pos_embed="sincos" with rope).
        table = cfg.pos_embed_max_size**2 if cfg.pos_embed_max_size else cfg.num_tokens
        self.pos_embed = (
            None if cfg.pos_embed == "none" else nn.Parameter(torch.zeros(1, table, D), requires_grad=False)
        )
        joint = cfg.text_mixing == "joint"  # the last MMDiT block is context-pre-only
        # Flux: MMDiT double-stream blocks (not pre-only: the stream merges into the single stream) come first.
        double = (
            cfg.replace(text_mixing="joint", arrangement="sequential", double_blocks=0)
            if cfg.double_blocks
            else None
        )
        self.blocks = nn.ModuleList(
            Block(double)
            if i < cfg.double_blocks
            else Block(cfg, context_pre_only=joint and i == cfg.depth - 1)
            for i in range(cfg.depth)
        )
        self.final_layer = FinalLayer(cfg)
        self.pooled_embedder = (
            PooledEmbedder(cfg.pooled_dim, E, cfg.class_dropout_prob) if cfg.pooled_dim else None
        )
        self.adaLN_single = (
            AdaLNSingle(E, D, n=cfg.branches * params_per_branch(cfg.shift, True))
            if cfg.conditioning == "adaln-single"
            else None
        )
        self.text_embedder = (
            TextEmbedder(cfg.text_dim, D, cfg.text_embedder, eps=cfg.norm_eps) if cfg.has_text else None
        )
        self.context_refiner = None  # Z-Image: Blocks without modulation over the text tokens alone
        if cfg.context_refiner:
            refiner = cfg.refiner_config()
            self.context_refiner = nn.ModuleList(Block(refiner) for _ in range(cfg.context_refiner))
        # Z-Image: modulated blocks over the image tokens alone, before the text joins them
        self.noise_refiner = (
            nn.ModuleList(Block(cfg) for _ in range(cfg.noise_refiner)) if cfg.noise_refiner else None
        )
        self._pos_cache: dict[tuple, torch.Tensor | tuple] = {}  # sin-cos tables and rotary (cos, sin) pairs
        self.initialize_weights()
        # Layout models: SPADE's shared conv, made after the seeded init so the other weights stay the plain
        # model's (its own init is PyTorch's conv default; the per-block convs start at zero)
        self.spatial_embedder = (
            SpatialEmbedder(cfg.layout_channels, cfg.patch_size, cfg.spatial_hidden)
            if cfg.spatial_condition == "spade"
            else None
        )
        # ... and, with spatial_entry, SPADE's per-token (shift, scale) of the embedded tokens: the stream's
        # entry has no norm of its own, so without it the layout reaches the stream only through gated branches
        # (its conv starts at zero and draws nothing from the RNG, like the blocks')
        self.spatial_entry = (
            SpatialModulation(cfg.spatial_hidden, D, 1, True, False) if cfg.spatial_entry else None
        )
        # The classical norms as parts, made last for the same reason (their output convs/projections start at
        # zero): an AdaGN conv head at pixel resolution, and a reference image's AdaIN statistics joining c
        self.pixel_head = (
            PixelHead(
                cfg.in_channels,
                cfg.out_channels,
                cfg.pixel_head_width,
                E,
                cfg.layout_channels if cfg.spatial_condition == "spade" else 0,
            )
            if cfg.pixel_head == "adagn"
            else None
        )
        self.reference_style = ReferenceStyle(D, E) if cfg.reference_condition == "adain" else None

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """The official DiT initialisation, in its order, made explicit."""

        def _basic_init(module):  # xavier-uniform every Linear, zero its bias
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(_basic_init)
        if self.pos_embed is not None:
            self.pos_embed.data.copy_(self.position_table().unsqueeze(0))
        w = self.x_embedder.proj.weight.data  # patch embed initialised like a Linear on its (D, C·p·p) view
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.pooled_embedder is not None:
            nn.init.normal_(self.pooled_embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(self.pooled_embedder.mlp[2].weight, std=0.02)
        if self.adaLN_single is not None:  # PixArt-α: shared projection N(0, 0.02)
            nn.init.normal_(self.adaLN_single.t_block[1].weight, std=0.02)
        # adaLN-Zero: every block's modulation outputs zeros, so every gate is 0 and each block is the identity.
        for block in [*self.blocks, *(self.noise_refiner or ())]:
            for modulation in (
                block.adaLN_modulation,
                getattr(block.context_stream, "adaLN_modulation", None),
            ):
                if modulation is not None and modulation.zero_init:
                    modulation.reset_to_zero()
        for part in [*self.blocks, self.final_layer]:  # a layout's per-token terms start at zero
            if part.spatial_modulation is not None:
                part.spatial_modulation.reset_to_zero()
        # The output layer starts at zero: the model's first prediction is exactly 0.
        if self.final_layer.adaLN_modulation is not None:
            self.final_layer.adaLN_modulation.reset_to_zero()
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ------------------------------------------------------------------ helpers
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_class(self) -> int | None:
        """The label that means "no class" (classifier-free guidance), or None if the model has none."""
        return (
            self.config.num_classes
            if self.y_embedder is not None and self.y_embedder.has_null_class
            else None
        )

    @property
    def fast_paths(self) -> bool:
        """The eager speed-ups, settable as one switch (False = the plain model, the benchmarks' eager
        baseline): a contiguous token stream (`PatchEmbed.contiguous`), temporaries reused by modulate and
        the gated residuals (`Block.inplace_ops`) and, without autograd, by the MLPs' activations
        (`Mlp.inplace`, `SwiGLU.inplace`). Outputs agree with the plain model to float rounding
        (the stream's memory layout changes the matmuls' summation order, ~1e-7 relative)."""
        return (
            self.x_embedder.contiguous
            and all(block.inplace_ops for block in self.blocks)
            and all(mlp.inplace for mlp in self._mlps())
        )

    @fast_paths.setter
    def fast_paths(self, enabled: bool) -> None:
        self.x_embedder.contiguous = bool(enabled)
        for block in self.blocks:
            block.inplace_ops = bool(enabled)
        for mlp in self._mlps():  # activations written into their input buffer without autograd
            mlp.inplace = bool(enabled)

    def _mlps(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (Mlp, SwiGLU))]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def position_table(self, gh: int | None = None, gw: int | None = None) -> torch.Tensor:
        """The (T, D) sin-cos table for a grid (default: the stored one, max×max with pos_embed_max_size)."""
        cfg = self.config
        if gh is None:
            M = cfg.pos_embed_max_size
            gh, gw = (M, M) if M else cfg.grid_hw
        return sincos_2d(cfg.hidden_size, gh, gw, cfg.pos_base_size, cfg.pos_interpolation)

    def positions(self, gh: int, gw: int, ref: torch.Tensor) -> torch.Tensor:
        """(1, gh·gw, D) positions: the stored table for the configured grid (or the centre crop of the max-size
        table), else a cached fresh one."""
        M = self.config.pos_embed_max_size
        if M:
            if gh > M or gw > M:
                raise ValueError(
                    f"a {gh}×{gw} token grid exceeds the position table (pos_embed_max_size={M}); use a smaller input"
                )
            top, left = (M - gh) // 2, (M - gw) // 2
            grid = self.pos_embed.view(1, M, M, -1)[:, top : top + gh, left : left + gw]
            return grid.reshape(1, gh * gw, -1)
        if (gh, gw) == self.config.grid_hw:
            return self.pos_embed
        key = (gh, gw, ref.device, ref.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = self.position_table(gh, gw).to(ref.device, ref.dtype)[None]
        return self._pos_cache[key]

    def unpatchify(self, x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """(N, T, p·p·C) -> (N, C, gh·p, gw·p); inside a token the channel varies fastest, as the official DiT."""
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], gh, gw, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, gh * p, gw * p)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"DiT expects images/latents of shape (N, C, H, W); got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channels but the model was built for in_channels={self.in_channels}"
            )
        p = self.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(
                f"input size {tuple(x.shape[2:])} is not a multiple of the patch size {p}; resize or pad it"
            )

    # ------------------------------------------------------------------ conditioning
    def embed_condition(self, t, y=None, pooled=None, force_drop_ids=None, batch: int = 1):
        """-> (c (N, D), tokens [(N, D), ...]): the summed condition and its parts (for in-context/cross-attn)."""
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=self.x_embedder.proj.weight.device)
        if t.dim() == 0:
            t = t.expand(batch)
        parts = [self.t_embedder(t)]  # (N, D)
        if self.y_embedder is not None:
            if y is None:
                if self.null_class is None:
                    raise ValueError(
                        "this model is class-conditional without a null class (class_dropout_prob=0): pass labels y"
                    )
                y = torch.full((batch,), self.null_class, dtype=torch.long, device=t.device)
            parts.append(self.y_embedder(y, self.training, force_drop_ids))
        elif y is not None:
            raise ValueError("this model has no label embedder (num_classes=0); call it without y")
        if self.pooled_embedder is not None:
            if pooled is None:  # the empty condition
                pooled = torch.zeros(batch, self.config.pooled_dim, device=t.device, dtype=parts[0].dtype)
            parts.append(self.pooled_embedder(pooled, self.training))
        elif pooled is not None:
            raise ValueError("this model takes no pooled condition (pooled_dim=0)")
        c = parts[0]
        for part in parts[1:]:
            c = c + part
        return c, parts

    # ------------------------------------------------------------------ forward
    def forward(self, x, t, y=None, pooled=None, force_drop_ids=None, **conditions):
        """x: (N, C, H, W) noisy input, t: (N,) timesteps (original 0…T-1 scale), y: (N,) labels, pooled: (N, P);
        `conditions`, by keyword (see `embed`): text models: text (N, L, text_dim) tokens, text_mask (N, L) True
        where a token exists (None: all); layout models: layout (N, K, H', W') map or (N, H', W') labels (None:
        the empty layout); reference models: reference (N, C, H, W) images in [-1, 1] (None: no reference) and
        reference_keep (N,) bools (None: all kept; False: that sample gets the null reference)."""
        tokens, cond = self.embed(x, t, y, pooled, force_drop_ids, **conditions)
        return self.unembed(self.run_blocks(tokens, cond), cond)

    def embed(
        self,
        x,
        t,
        y=None,
        pooled=None,
        force_drop_ids=None,
        text=None,
        text_mask=None,
        layout=None,
        reference=None,
        reference_keep=None,
    ) -> tuple[torch.Tensor, Condition]:
        """-> tokens (N, T, D) (plus the condition tokens for in-context conditioning, or the text tokens of a
        single-stream model) and the Condition."""
        self._check_input(x)
        N, _, H, W = x.shape
        grid = (H // self.patch_size, W // self.patch_size)
        pixels = x if self.pixel_head is not None else None
        pixel_layout = None if self.pixel_head is None else self.pixel_head.embed_layout(layout, (H, W), N)
        if self.config.spatial_condition == "concat":  # the baseline: the layout joins the input channels
            x = torch.cat([x, layout_channels_for(layout, N, self.config.layout_channels, (H, W), x)], dim=1)
            layout = None  # consumed
        tokens = self.x_embedder(x)  # (N, T, D)
        if self.pos_embed is not None:
            tokens = tokens + self.positions(*grid, x)
        spatial = self.embed_layout(layout, grid, N)  # (N, hidden, gh, gw), or None
        if self.spatial_entry is not None:  # SPADE at the stream's entry: per-token (shift, scale)
            (m,) = self.spatial_entry(spatial)
            tokens = m.apply(tokens)
        c, parts = self.embed_condition(t, y, pooled, force_drop_ids, batch=N)  # (N, D)
        style = self.embed_reference(reference, x, N, reference_keep)
        if style is not None:  # reference models: the reference's AdaIN statistics join the condition
            c = c + style
        shared = self.adaLN_single(c) if self.adaLN_single is not None else None  # (N, 6D)
        conditioning = self.config.conditioning
        context = None
        if conditioning in ("cross-attention", "in-context"):
            context = torch.stack(parts, dim=1)  # (N, S, D): t, y, pooled embeddings as tokens
            if conditioning == "in-context":
                tokens, context = torch.cat([tokens, context], dim=1), None  # (N, T + S, D)
        mask = context_mask = None
        mixing = self.config.text_mixing
        if mixing != "none":
            text_mask = self.check_text(text, text_mask, N)
        elif text is not None or text_mask is not None:
            raise ValueError("this model takes no text tokens (text_dim=0); call it without text")
        T = grid[0] * grid[1]
        L = text.shape[1] if mixing in ("concat", "joint") else 0  # text tokens among the attended ones
        rope = self.rope_tables(grid, tokens.shape[1] - T + L, x.device)
        if mixing != "none":
            text_rope = None if rope is None or not L else tuple(r[T:] for r in rope)
            words = self.embed_text(text, text_mask, c, text_rope)  # (N, L, D)
            if self.noise_refiner is not None:  # Z-Image: the image tokens alone first
                image_rope = None if rope is None else tuple(r[:T] for r in rope)
                for block in self.noise_refiner:
                    tokens = block(tokens, c, shared, rope=image_rope)
            ones = None if text_mask is None else text_mask.new_ones(N, tokens.shape[1])
            if mixing == "concat":  # one sequence: image tokens, then text tokens
                mask = None if text_mask is None else torch.cat([ones, text_mask], dim=1)
                if self.config.double_blocks:  # two streams first; run_blocks merges them (Flux)
                    context, context_mask = words, text_mask
                else:
                    tokens = torch.cat([tokens, words], dim=1)
            elif mixing == "joint":
                context, context_mask = words, text_mask
            elif context is None:  # cross-attention to the text
                context, context_mask = words, text_mask
            else:  # the DiT paper's cross-attention variant: condition tokens, then text tokens
                ones = None if text_mask is None else text_mask.new_ones(N, context.shape[1])
                context_mask = None if text_mask is None else torch.cat([ones, text_mask], dim=1)
                context = torch.cat([context, words], dim=1)
        return tokens, Condition(
            c, parts[0], shared, context, grid, mask, context_mask, rope, spatial, pixels, pixel_layout
        )

    def embed_reference(self, reference, x, batch: int, keep=None):
        """The reference's AdaIN term of c (N, D), or None (a model without references, or no reference).
        The reference goes through the model's own patch embedding (with an empty layout in a concat model).
        `keep` (N,) bools: False rows get no term, the null reference (what reference dropout trains)."""
        if self.reference_style is None:
            if reference is not None or keep is not None:
                raise ValueError(
                    "this model takes no reference image (reference_condition='none'); build it with "
                    "reference_condition='adain', or call it without reference"
                )
            return None
        if reference is None:
            if keep is not None:
                raise ValueError("reference_keep marks which references to use: pass reference as well")
            return None
        C = self.in_channels
        reference = check_reference(reference, batch, C, tuple(x.shape[2:])).to(x.device, x.dtype)
        if x.shape[1] > C:  # the concat baseline's layout channels: empty for the reference
            reference = torch.cat([reference, torch.zeros_like(x[:, C:])], dim=1)
        style = self.reference_style(self.x_embedder(reference))  # (N, D)
        if keep is None:
            return style
        if not torch.is_tensor(keep) or tuple(keep.shape) != (batch,):
            got = tuple(keep.shape) if torch.is_tensor(keep) else type(keep).__name__
            raise ValueError(f"reference_keep must be a (N={batch},) bool tensor, got {got}")
        return style * keep.to(style.device, style.dtype)[:, None]

    def embed_layout(self, layout, grid, batch: int) -> torch.Tensor | None:
        """The layout's shared SPADE features (N, hidden, gh, gw) (None: a model without layouts)."""
        if self.spatial_embedder is None:
            if layout is not None:
                raise ValueError(
                    "this model takes no layout (spatial_condition='none'); build it with "
                    "spatial_condition='spade' and layout_channels=K, or call it without layout"
                )
            return None
        return self.spatial_embedder(layout, grid, batch)

    def check_text(self, text, text_mask, batch: int):
        """Refuse text tokens of the wrong shape; -> the mask as bools (or None)."""
        cfg = self.config
        if text is None:
            raise ValueError(
                "this model is text-conditioned: pass text=(N, L, text_dim) tokens (for guidance, the null "
                "caption's tokens) and text_mask=(N, L)"
            )
        if text.dim() != 3 or text.shape[0] != batch or text.shape[2] != cfg.text_dim:
            raise ValueError(
                f"text tokens must have shape (N={batch}, L, text_dim={cfg.text_dim}); got {tuple(text.shape)}"
            )
        if text_mask is not None:
            if tuple(text_mask.shape) != tuple(text.shape[:2]):
                raise ValueError(
                    f"text_mask must have shape (N, L) = {tuple(text.shape[:2])}; got {tuple(text_mask.shape)}"
                )
            text_mask = text_mask.bool()
        return text_mask

    def embed_text(self, text, text_mask, c, rope=None):
        """Text tokens (N, L, text_dim) -> (N, L, D), through the context refiner (Z-Image) if any."""
        words = self.text_embedder(text.to(self.text_embedder_dtype))
        for block in self.context_refiner or ():
            words = block(words, c, mask=text_mask, rope=rope)
        return words

    @property
    def text_embedder_dtype(self) -> torch.dtype:
        return next(self.text_embedder.parameters()).dtype

    def rope_tables(self, grid, extra: int, device):
        """The rotary (cos, sin) tables of the attended tokens: the image grid, then `extra` others (text)."""
        cfg = self.config
        if not cfg.rope:
            return None
        key = ("rope", *grid, extra, device)  # a sampling loop asks for the same tables at every step
        if key not in self._pos_cache:
            cos, sin = rope_2d(
                cfg.hidden_size // cfg.num_heads,
                *grid,
                extra=extra,
                theta=cfg.rope_theta,
                lead=cfg.rope_lead,
                sequence_axis=cfg.rope_sequence_axis,
            )
            self._pos_cache[key] = (cos.to(device), sin.to(device))
        return self._pos_cache[key]

    def run_blocks(self, x, cond: Condition, routes: list[BlockRoute] | None = None) -> torch.Tensor:
        """The blocks in order, each with its route (None: dense), under the gradient-checkpointing policy."""
        checkpointed = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        options = self._checkpoint_options() if checkpointed else {}
        c, shared, context = cond.c, cond.shared, cond.context
        merge = self.config.double_blocks  # Flux: after the double-stream blocks the two streams become one
        for i, block in enumerate(self.blocks):
            if merge and i == merge:
                x, context = torch.cat([x, context], dim=1), None  # image tokens, then text tokens
            route = None if routes is None else routes[i]
            args = (x, c, shared, context, route, cond.mask, cond.context_mask, cond.rope, cond.spatial)
            if checkpointed:
                out = checkpoint(block, *args, use_reentrant=False, **options)
            else:
                out = block(*args)  # (N, T, D)
            # an MMDiT block returns (x, context): thread the text stream to the next block
            x, context = out if block.context_stream is not None else (out, context)
        return x

    def unembed(self, x, cond: Condition) -> torch.Tensor:
        """Block output tokens -> (N, C_out, H, W): drop in-context tokens, final layer, unpatchify."""
        gh, gw = cond.grid
        if x.shape[1] != gh * gw:
            x = x[:, : gh * gw]  # drop the in-context condition tokens
        x = self.final_layer(x, cond.c, cond.spatial)  # (N, T, p·p·C_out)
        x = self.unpatchify(x, gh, gw)
        if self.pixel_head is not None:  # the AdaGN conv head on pixels (ditlab.nn.pixel_head)
            x = self.pixel_head(x, cond.pixels, cond.c, cond.pixel_layout)
        return x

    def _checkpoint_options(self) -> dict:
        if self.checkpoint_policy not in CHECKPOINT_POLICIES:
            raise ValueError(
                f"unknown checkpoint_policy {self.checkpoint_policy!r}; choose one of: {', '.join(CHECKPOINT_POLICIES)}"
            )
        if self.checkpoint_policy == "selective":
            return {"context_fn": partial(create_selective_checkpoint_contexts, _keep_costly_outputs)}
        return {}

    def forward_with_cfg(self, x, t, y, cfg_scale: float, guidance_channels: int | None = None):
        """The official DiT's guided forward: x and y hold [cond half; null half]; only x's first half is used.

        Returns both halves set to uncond + s·(cond − uncond) on the first `guidance_channels` ε channels
        (all ε channels by default; the official code uses 3 "for exact reproducibility"). The remaining
        channels, including the learned variance, pass through unguided.
        """
        half = x[: len(x) // 2]
        out = self(torch.cat([half, half], dim=0), t, y)
        eps_channels = guidance_channels if guidance_channels is not None else self.in_channels
        eps, rest = out[:, :eps_channels], out[:, eps_channels:]
        cond, uncond = eps.chunk(2, dim=0)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided], dim=0), rest], dim=1)

    def extra_repr(self) -> str:
        cfg = self.config
        return f"conditioning={cfg.conditioning}, norm={cfg.norm}, input_size={cfg.input_size}, patch={cfg.patch_size}"


__all__ = [
    "Block",
    "BlockRoute",
    "CHECKPOINT_POLICIES",
    "Condition",
    "ContextStream",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "FinalLayer",
    "MODULATED",
]
