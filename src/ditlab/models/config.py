"""DiTConfig: every architectural choice of a DiT in one dataclass, saved with the model as JSON.

Field names follow the official `DiT(...)` constructor where one exists (input_size, patch_size, in_channels,
hidden_size, depth, num_heads, mlp_ratio, class_dropout_prob, num_classes, learn_sigma); the rest are
ditlab's own knobs for the conditioning study.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from ditlab.configs import DictConfig
from ditlab.nn.norms import NORMS
from ditlab.nn.pixel_head import PIXEL_HEADS
from ditlab.nn.reference import REFERENCE_CONDITIONS
from ditlab.nn.spatial import SPATIAL_CONDITIONS

# How the timestep/label condition enters the blocks (the DiT paper's Figure 3, plus PixArt-α's adaLN-single).
CONDITIONINGS = ("in-context", "cross-attention", "adaln", "adaln-zero", "adaln-single")
GATE_FNS = ("identity", "tanh")
# How a block's two mixers are arranged: one after the other (DiT) or side by side on the same normalised
# tokens with one modulation and one gated residual (Flux's single-stream blocks).
ARRANGEMENTS = ("sequential", "parallel")
# How text tokens (N, L, text_dim) enter the blocks, once embedded to the hidden size:
#   none             no text tokens (a pooled text vector can still join c through `pooled_dim`, SD3-style)
#   cross-attention  a cross-attention layer after self-attention reads them (PixArt-α)
#   joint            a second stream with its own weights, one joint attention over both (SD3's MMDiT)
#   concat           appended to the image tokens: one sequence, the same weights (Flux single, Z-Image)
TEXT_MIXINGS = ("none", "cross-attention", "joint", "concat")
# How text tokens are embedded to the hidden size: one Linear (SD3, Flux, Z-Image's context embedder) or
# Linear → GELU(tanh) → Linear (PixArt-α's caption projection).
TEXT_EMBEDDERS = ("linear", "mlp", "rms-linear")  # rms-linear: RMSNorm then Linear (Z-Image's cap_embedder)
MLPS = ("gelu", "swiglu")
# Absolute positions: the fixed additive 2-D sin-cos table (DiT) or none (rotary-only models, Flux, Z-Image).
POS_EMBEDS = ("sincos", "none")
# Conditionings that produce per-branch modulation, and those whose modulation includes residual gates.
MODULATED = ("adaln", "adaln-zero", "adaln-single")
GATED = ("adaln-zero", "adaln-single")


@dataclass
class DiTConfig(DictConfig):
    _what = "DiT config field"

    # --- the official constructor's arguments (defaults = DiT-XL/2 at 256 px, a 32×32×4 latent) ---
    input_size: int | tuple[int, int] = 32  # latent H (= W) or (H, W)
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1  # label dropout for classifier-free guidance; > 0 adds the null class row
    num_classes: int = 1000  # 0 = no label embedder (unconditional or timestep-only, Z-Image-style)
    learn_sigma: bool = True  # output 2C channels: ε and the variance interpolation v
    # --- conditioning and norm variants ---
    conditioning: str = "adaln-zero"  # one of CONDITIONINGS
    norm: str = "layernorm"  # token norm in blocks and final layer: layernorm | rmsnorm
    norm_eps: float = 1e-6  # block norms (the official DiT: 1e-6)
    mlp_norm_eps: float | None = None  # the norm before the MLP, if different (diffusers' DiT port: 1e-5)
    shift: bool = True  # modulation predicts a shift; False = shift-free (Lumina, Z-Image)
    gate_fn: str = "identity"  # how residual gates act: identity (DiT) or tanh (Lumina, Z-Image)
    sandwich_norm: bool = False  # also RMSNorm each branch's output before the gate (Lumina)
    zero_init: bool | None = None  # zero-init per-block modulation; None = True for adaln-zero, else False
    pooled_dim: int = (
        0  # > 0: a pooled condition vector of this size (e.g. a text embedding) joins c, SD3-style
    )
    timestep_freq_shift: int = (
        0  # 0 = official DiT timestep sinusoid, 1 = diffusers' (downscale_freq_shift=1)
    )
    arrangement: str = "sequential"  # one of ARRANGEMENTS: attention then MLP, or both on the same tokens
    # --- text conditioning (text-to-image models; all off for the DiT zoo) ---
    text_dim: int = 0  # > 0: the model takes text tokens (N, L, text_dim) and their mask
    text_mixing: str = "none"  # one of TEXT_MIXINGS: where the embedded text tokens enter the blocks
    text_embedder: str = "linear"  # one of TEXT_EMBEDDERS
    text_len: int = 0  # the text encoder's fixed token count, for Gflops only (the forward takes any L)
    cross_norm: bool = True  # a norm before the cross-attention layer (DiT paper); PixArt-α has none
    qk_norm: bool = False  # RMSNorm (learned weight) on each head's queries and keys (SD3.5, Flux, Z-Image)
    context_refiner: int = 0  # Z-Image: unmodulated blocks run over the text tokens alone before the blocks
    rope: bool = False  # 2-D rotary positions on each head's queries and keys (LightningDiT, Flux, Z-Image)
    pos_embed: str | None = None  # one of POS_EMBEDS; None = "none" with rope, else "sincos" (both can be on)
    rope_lead: int = 0  # rotary: head channels left unrotated before the row and column axes (Flux: 16)
    double_blocks: int = (
        0  # concat (Flux): the first N blocks are MMDiT double-stream blocks, then one stream
    )
    # --- Z-Image's block and condition details (defaults: DiT's) ---
    mlp: str = "gelu"  # one of MLPS: DiT's GELU MLP or a SwiGLU (w1, w3 -> w2, no biases)
    # SwiGLU's hidden width int(2/3 · int(mlp_ratio · D)), LightningDiT's rule: its three D×F matrices then hold
    # the GELU MLP's two matrices' parameters (the GELU MLP's biases aside). False: mlp_ratio · D (Z-Image).
    mlp_two_thirds: bool = False
    attn_bias: bool = True  # biases in the self-attention's qkv and output projections
    norm_affine: bool = (
        False  # a learned weight (and bias, LayerNorm) in the block norms (Z-Image's RMSNorms)
    )
    qk_norm_eps: float = 1e-6
    cond_dim: int = 0  # width of the condition c (0 = hidden_size); Z-Image: 256
    timestep_mid: int = 0  # hidden width of the timestep MLP (0 = cond width); Z-Image: 1024
    adaln_act: bool = True  # SiLU before each block's adaLN projection (Z-Image's blocks project c as it is)
    final_norm: str = ""  # the final layer's norm ("" = norm); Z-Image: layernorm after RMSNorm blocks
    noise_refiner: int = 0  # Z-Image: modulated blocks over the image tokens alone before the text joins
    rope_theta: float = 10000.0
    rope_sequence_axis: bool = (
        False  # Z-Image: the rope_lead channels turn with the token's sequence position
    )
    # --- fixed sin-cos positions as diffusers builds them (defaults: the official DiT's token indices) ---
    pos_embed_max_size: int = 0  # > 0 (SD3): a max×max table, an input's grid cropped from its centre
    pos_base_size: int = 0  # > 0 (PixArt, SD3): a grid of g tokens spans base positions (index·base/g)
    pos_interpolation: float = 1.0  # positions divided by this (diffusers' interpolation_scale)
    # --- spatial conditioning from a map (layout-to-image; off for the DiT zoo; ditlab.nn.spatial) ---
    spatial_condition: str = "none"  # one of SPATIAL_CONDITIONS: "spade" per-token modulation, "concat" input
    layout_channels: int = 0  # K: channels of the layout map (shapes: background + 12 classes = 13)
    spatial_hidden: int = 64  # width of SPADE's shared conv
    spatial_entry: bool = False  # SPADE also modulates the embedded tokens per token (shift, scale) before
    # the first block: the layout reaches the residual stream itself, not only the blocks' branches
    # --- the classical conditional norms in the model (ditlab.nn.pixel_head, ditlab.nn.reference) ---
    pixel_head: str = "none"  # one of PIXEL_HEADS: "adagn" a conv head after the unpatchify (AdaGN; per pixel
    # from the layout in SPADE layout models)
    pixel_head_width: int = 32  # channels of that head (and of its pixel-resolution layout conv)
    reference_condition: str = (
        "none"  # one of REFERENCE_CONDITIONS: "adain" a reference image's statistics join c
    )

    def __post_init__(self):
        if isinstance(self.input_size, list):
            self.input_size = tuple(self.input_size)
        if self.zero_init is None:
            self.zero_init = self.conditioning == "adaln-zero"
        if self.pos_embed is None:  # rotary models carry no additive table unless asked for one
            self.pos_embed = "none" if self.rope else "sincos"
        self.validate()

    # --- derived quantities ---
    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.input_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def grid_hw(self) -> tuple[int, int]:
        h, w = self.image_hw
        return h // self.patch_size, w // self.patch_size

    @property
    def num_tokens(self) -> int:
        gh, gw = self.grid_hw
        return gh * gw

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.hidden_size * self.mlp_ratio)
        return int(2 / 3 * hidden) if self.mlp_two_thirds else hidden

    @property
    def gated(self) -> bool:
        return self.conditioning in GATED

    @property
    def branches(self) -> int:
        """Residual branches per block, each with its own modulation: 2 sequential, 1 parallel."""
        return 1 if self.arrangement == "parallel" else 2

    def validate(self) -> None:
        def choose(name, value, options):
            if value not in options:
                raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")

        choose("conditioning", self.conditioning, CONDITIONINGS)
        choose("norm", self.norm, NORMS)
        choose("gate_fn", self.gate_fn, GATE_FNS)
        choose("arrangement", self.arrangement, ARRANGEMENTS)
        choose("text_mixing", self.text_mixing, TEXT_MIXINGS)
        choose("text_embedder", self.text_embedder, TEXT_EMBEDDERS)
        choose("mlp", self.mlp, MLPS)
        choose("pos_embed", self.pos_embed, POS_EMBEDS)
        self.validate_flags()
        if self.mlp_two_thirds and self.mlp != "swiglu":
            raise ValueError("mlp_two_thirds sizes a SwiGLU MLP's hidden width; set mlp='swiglu' or drop it")
        choose("spatial_condition", self.spatial_condition, SPATIAL_CONDITIONS)
        self.validate_spatial()
        choose("pixel_head", self.pixel_head, PIXEL_HEADS)
        choose("reference_condition", self.reference_condition, REFERENCE_CONDITIONS)
        self.validate_norm_parts()
        if self.final_norm:
            choose("final_norm", self.final_norm, NORMS)
        self.validate_text()
        if self.arrangement == "parallel" and (self.conditioning == "cross-attention" or self.sandwich_norm):
            raise ValueError(
                "arrangement='parallel' (one branch of attention + MLP) has no place for a cross-attention "
                "layer or sandwich norms; use arrangement='sequential' for those"
            )
        for name in ("patch_size", "in_channels", "hidden_size", "depth", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.num_classes < 0 or self.pooled_dim < 0:
            raise ValueError("num_classes and pooled_dim must be >= 0")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(
                f"hidden_size must be divisible by 4 for 2-D sin-cos positions, got {self.hidden_size}"
            )
        h, w = self.image_hw
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}"
            )
        if not 0 <= self.class_dropout_prob < 1:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")

    def validate_flags(self) -> None:
        """On/off fields must be booleans: `--model-args qk_norm=True` reads as the text 'True' (JSON spells
        it true), and any text, 'false' too, would switch the option on."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(
                    f"{f.name} must be true or false, got {value!r}; on the command line write "
                    f"--model-args {f.name}=true (JSON, lower case)"
                )

    def validate_spatial(self) -> None:
        if (self.spatial_condition != "none") != (self.layout_channels > 0):
            raise ValueError(
                f"spatial_condition={self.spatial_condition!r} with layout_channels={self.layout_channels}: a "
                "layout needs both a way in (spatial_condition='spade') and its channel count K > 0, or neither"
            )
        if self.spatial_condition == "spade" and self.conditioning not in MODULATED:
            raise ValueError(
                f"spatial_condition={self.spatial_condition!r} adds per-token terms to an adaLN-family "
                f"modulation; use conditioning in {', '.join(MODULATED)} (not {self.conditioning!r})"
            )
        if self.spatial_entry and self.spatial_condition != "spade":
            raise ValueError(
                f"spatial_entry=True is SPADE's modulation of the embedded tokens; it needs "
                f"spatial_condition='spade', got {self.spatial_condition!r}"
            )
        if self.spatial_hidden < 1:
            raise ValueError(f"spatial_hidden must be a positive integer, got {self.spatial_hidden}")

    def validate_norm_parts(self) -> None:
        if self.pixel_head != "none" and self.pixel_head_width < 1:
            raise ValueError(f"pixel_head_width must be a positive integer, got {self.pixel_head_width}")
        if self.reference_condition != "none" and self.conditioning not in MODULATED:
            raise ValueError(
                f"reference_condition={self.reference_condition!r} adds the reference's statistics to the "
                f"condition that drives adaLN; use conditioning in {', '.join(MODULATED)} (not {self.conditioning!r})"
            )

    def validate_text(self) -> None:
        if (self.text_dim > 0) != (self.text_mixing != "none"):
            raise ValueError(
                f"text_dim={self.text_dim} with text_mixing={self.text_mixing!r}: text tokens need both a size "
                "(text_dim > 0) and a way into the blocks (text_mixing other than 'none'), or neither"
            )
        if min(self.text_len, self.context_refiner, self.pos_embed_max_size, self.pos_base_size) < 0:
            raise ValueError("text_len, context_refiner, pos_embed_max_size and pos_base_size must be >= 0")
        if self.pos_interpolation <= 0:
            raise ValueError(f"pos_interpolation must be > 0, got {self.pos_interpolation}")
        if self.double_blocks and (self.text_mixing != "concat" or self.double_blocks > self.depth):
            raise ValueError(
                f"double_blocks={self.double_blocks}: Flux's double-stream blocks precede the single stream "
                "(text_mixing='concat') and number at most depth"
            )
        if self.double_blocks and self.conditioning not in ("adaln", "adaln-zero"):
            raise ValueError("double_blocks (MMDiT) need conditioning='adaln' or 'adaln-zero'")
        if self.rope and ((self.hidden_size // self.num_heads - self.rope_lead) % 4 or self.rope_lead < 0):
            raise ValueError(
                f"rotary positions split each head's {self.hidden_size // self.num_heads} channels (less "
                f"rope_lead={self.rope_lead}) into row and column pairs: that must be a multiple of 4"
            )
        if (
            self.cond_dim
            and self.cond_dim != self.hidden_size
            and self.conditioning in ("in-context", "cross-attention")
        ):
            raise ValueError(
                f"cond_dim={self.cond_dim}: in-context and cross-attention conditioning use the condition "
                "vectors as tokens of the hidden size; leave cond_dim=0"
            )
        if self.noise_refiner and self.text_mixing != "concat":
            raise ValueError(
                "noise_refiner refines the image tokens before the text joins them: text_mixing='concat'"
            )
        if self.context_refiner and self.text_mixing == "none":
            raise ValueError("context_refiner refines text tokens: set text_dim and text_mixing too")
        if self.text_mixing == "joint" and (
            self.conditioning not in ("adaln", "adaln-zero") or self.arrangement != "sequential"
        ):
            raise ValueError(
                "text_mixing='joint' (MMDiT) modulates each stream with its own adaLN projection: use "
                "conditioning='adaln' or 'adaln-zero' and arrangement='sequential'"
            )
        if self.text_mixing == "joint" and self.sandwich_norm:
            raise ValueError(
                "text_mixing='joint' has no sandwich norms in its text stream; set sandwich_norm=False"
            )
        if self.text_mixing == "cross-attention" and self.arrangement == "parallel":
            raise ValueError("text_mixing='cross-attention' needs arrangement='sequential'")
        if self.text_mixing == "concat" and self.conditioning == "in-context":
            raise ValueError("in-context conditioning with concatenated text: use an adaLN conditioning")
        gh, gw = self.grid_hw
        if self.pos_embed_max_size and max(gh, gw) > self.pos_embed_max_size:
            raise ValueError(
                f"the {gh}×{gw} token grid does not fit pos_embed_max_size={self.pos_embed_max_size}"
            )

    def refiner_config(self) -> DiTConfig:
        """The config of a context-refiner block (Z-Image): this block without modulation or text."""
        return self.replace(
            conditioning="in-context",
            text_dim=0,
            text_mixing="none",
            arrangement="sequential",
            context_refiner=0,
            noise_refiner=0,
            double_blocks=0,
            cond_dim=0,
            spatial_condition="none",
            layout_channels=0,
            spatial_entry=False,
            pixel_head="none",
            reference_condition="none",
        )

    @property
    def cond_width(self) -> int:
        """The width of the condition vector c."""
        return self.cond_dim or self.hidden_size

    @property
    def has_text(self) -> bool:
        return self.text_mixing != "none"

    # --- (de)serialisation ---
    def to_dict(self) -> dict:
        d = super().to_dict()
        if isinstance(d["input_size"], tuple):
            d["input_size"] = list(d["input_size"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **overrides) -> DiTConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown DiT config field(s) {unknown}; valid fields: {', '.join(sorted(known))}"
            )
        d = self.to_dict()
        if "conditioning" in overrides and "zero_init" not in overrides:
            d["zero_init"] = None  # re-derive the conditioning's default
        if "rope" in overrides and "pos_embed" not in overrides:
            d["pos_embed"] = None  # re-derive: switching rotary positions on drops the table unless asked
        d.update(overrides)
        return DiTConfig.from_dict(d)
