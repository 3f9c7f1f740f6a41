"""The model registry: the names users already type (`DiT-XL/2` …) plus small configs for tests and demos,
and named conditioning variants for the ablation study.

    create_model("DiT-XL/2")                                         # the paper's model, 256 px latents
    create_model("DiT-S/2", depth=2, hidden_size=64, num_heads=4)   # any field can be overridden
    create_model("DiT-S/4", variant="in-context")                   # a conditioning variant of the paper
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
