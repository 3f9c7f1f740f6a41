"""The model registry: the names users already type (`DiT-XL/2` …) plus small configs for tests and demos,
and named conditioning variants for the ablation study.

    create_model("DiT-XL/2")                                         # the paper's model, 256 px latents
    create_model("DiT-S/2", depth=2, hidden_size=64, num_heads=4)   # any field can be overridden
    create_model("DiT-S/4", variant="in-context")                   # a conditioning variant of the paper
    create_model("MMDiT-S/2")                                        # a text-to-image architecture, same sizes

Text-to-image architectures (`TEXT_ARCHITECTURES`, each at every DiT size): Pooled (SD3's pooled text into
adaLN-Zero), PixArt (cross-attention with adaLN-single), MMDiT (SD3's dual stream), Flux (Flux's single-stream
parallel block) and ZImage (Z-Image's S3-DiT block with its context refiner). They take the default text
encoder's tokens and pooled vector (all-MiniLM-L6-v2: 384-d), `text_len` tokens counted in Gflops.
"""

from __future__ import annotations

from ditlab.models.config import DiTConfig
from ditlab.models.dit import DiT

# size -> (depth, hidden_size, num_heads), the DiT paper's Table 1.
SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

# Small named configs (not in the paper) for tests, the demo and CPU recipes. Their input geometry is set by
# the data (input_size, in_channels, num_classes are usually overridden).
SMALL = {
    "Nano": (2, 64, 4),  # unit tests
    "Ti": (6, 192, 3),  # DeiT-Ti width: demos on digits / Fashion-MNIST on a laptop CPU
    "Mini": (8, 256, 4),
}

MODELS: dict[str, dict] = {}
for _size, (_depth, _hidden, _heads) in {**SIZES, **SMALL}.items():
    for _p in (1, 2, 4, 8) if _size in SMALL else (2, 4, 8):
        MODELS[f"DiT-{_size}/{_p}"] = dict(depth=_depth, hidden_size=_hidden, num_heads=_heads, patch_size=_p)

# The default text encoder's width (all-MiniLM-L6-v2's token states and pooled vector) and the token count
# Gflops are quoted at (captions of the shapes / emoji sets fit in 32 tokens); both are config fields.
TEXT_DIM = 384
TEXT_LEN = 32
_TEXT_COMMON = dict(num_classes=0, class_dropout_prob=0.0, text_len=TEXT_LEN)  # captions, not labels
TEXT_ARCHITECTURES: dict[str, dict] = {
    "Pooled": dict(pooled_dim=TEXT_DIM, text_len=0),
    "PixArt": dict(
        conditioning="adaln-single",
        text_dim=TEXT_DIM,
        text_mixing="cross-attention",
        text_embedder="mlp",
        cross_norm=False,
    ),
    "MMDiT": dict(pooled_dim=TEXT_DIM, text_dim=TEXT_DIM, text_mixing="joint"),
    "Flux": dict(
        pooled_dim=TEXT_DIM,
        text_dim=TEXT_DIM,
        text_mixing="concat",
        arrangement="parallel",
        qk_norm=True,
        rope=True,
    ),
    # Z-Image's own block, as its diffusers checkpoints hold it (export also needs learn_sigma=False)
    "ZImage": dict(
        text_dim=TEXT_DIM,
        text_mixing="concat",
        text_embedder="rms-linear",
        norm="rmsnorm",
        norm_affine=True,
        norm_eps=1e-5,
        shift=False,
        gate_fn="tanh",
        sandwich_norm=True,
        mlp="swiglu",
        mlp_ratio=8 / 3,
        attn_bias=False,
        qk_norm=True,
        qk_norm_eps=1e-5,
        timestep_mid=1024,
        adaln_act=False,
        final_norm="layernorm",
        rope=True,
        rope_theta=256.0,
        rope_sequence_axis=True,
        context_refiner=2,
        noise_refiner=2,
    ),
}


def _sized(arch: str, hidden: int, heads: int) -> dict:
    """The fields of an architecture that depend on the width (Z-Image's condition and rotary axes)."""
    if arch != "ZImage":
        return {}
    # Z-Image: a min(dim, 256) condition; rotary axes (32, 48, 48) of 128 channels, i.e. a quarter of each
    # head on the sequence axis (a multiple of 4), the rest split between rows and columns
    return dict(cond_dim=min(hidden, 256), rope_lead=4 * round(hidden // heads / 16))


for _arch, _fields in TEXT_ARCHITECTURES.items():
    for _size, (_depth, _hidden, _heads) in {**SIZES, **SMALL}.items():
        for _p in (1, 2, 4, 8) if _size in SMALL else (2, 4, 8):
            MODELS[f"{_arch}-{_size}/{_p}"] = dict(
                depth=_depth,
                hidden_size=_hidden,
                num_heads=_heads,
                patch_size=_p,
                **{**_TEXT_COMMON, **_fields, **_sized(_arch, _hidden, _heads)},
            )

# Conditioning variants compared by the DiT paper (Fig. 3 / Table 4) and later models, as config overrides.
VARIANTS: dict[str, dict] = {
    "in-context": dict(conditioning="in-context"),
    "cross-attention": dict(conditioning="cross-attention"),
    "adaln": dict(conditioning="adaln"),
    "adaln-zero": dict(conditioning="adaln-zero"),
    # The "Zero" question alone: the same block, modulation projection initialised like any Linear.
    "adaln-zero-normal-init": dict(conditioning="adaln-zero", zero_init=False),
    "adaln-zero-rmsnorm": dict(conditioning="adaln-zero", norm="rmsnorm"),
    # Lumina-Next / Z-Image: shift-free scale, tanh gates, RMSNorm before and after each branch.
    "adaln-tanh-rms": dict(
        conditioning="adaln-zero", norm="rmsnorm", shift=False, gate_fn="tanh", sandwich_norm=True
    ),
    "adaln-single": dict(conditioning="adaln-single"),
}

# Names a variant list may use for a set: the DiT paper's four blocks (Figure 3, Table 4), or every variant.
VARIANT_GROUPS: dict[str, tuple[str, ...]] = {
    "paper": ("in-context", "cross-attention", "adaln", "adaln-zero"),
    "all": tuple(VARIANTS),
}


def expand_variants(names) -> list[str]:
    """Variant names and group names (paper, all) -> variant names, in order, each once; unknown is an error."""
    out: list[str] = []
    for name in names:
        if name not in VARIANTS and name not in VARIANT_GROUPS:
            raise ValueError(
                f"unknown variant {name!r}; choose from: {', '.join(VARIANTS)} (or {', '.join(VARIANT_GROUPS)})"
            )
        out += VARIANT_GROUPS.get(name, (name,))
    return list(dict.fromkeys(out))


def text_widths(name: str, encoder) -> dict:
    """The overrides that size text preset `name` to a text encoder (its `dim`, `pooled_dim`, `max_length`):
    pooled_dim for presets that read the pooled vector, text_dim and text_len for those that read tokens;
    {} for a model that reads no text."""
    preset, widths = MODELS.get(name, {}), {}
    if preset.get("pooled_dim"):
        widths["pooled_dim"] = encoder.pooled_dim
    if preset.get("text_dim"):
        widths.update(text_dim=encoder.dim, text_len=encoder.max_length)
    return widths


def model_config(name: str, variant: str | None = None, **overrides) -> DiTConfig:
    """The DiTConfig for a registry name, a variant and overrides (later ones win)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    fields = dict(MODELS[name])
    if variant is not None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        fields.update(VARIANTS[variant])
    fields.update(overrides)
    return DiTConfig().replace(**fields)


def create_model(name: str = "DiT-XL/2", variant: str | None = None, **overrides) -> DiT:
    """Build a registry model; keyword overrides may set any DiTConfig field (official names where they exist)."""
    return DiT(model_config(name, variant, **overrides))
