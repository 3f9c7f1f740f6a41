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

# How the timestep/label condition enters the blocks (the DiT paper's Figure 3, plus PixArt-α's adaLN-single).
CONDITIONINGS = ("in-context", "cross-attention", "adaln", "adaln-zero", "adaln-single")
GATE_FNS = ("identity", "tanh")
# How a block's two mixers are arranged: one after the other (DiT) or side by side on the same normalised
# tokens with one modulation and one gated residual (Flux's single-stream blocks).
ARRANGEMENTS = ("sequential", "parallel")
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

    def __post_init__(self):
        if isinstance(self.input_size, list):
            self.input_size = tuple(self.input_size)
        if self.zero_init is None:
            self.zero_init = self.conditioning == "adaln-zero"
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
        return int(self.hidden_size * self.mlp_ratio)

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
        d.update(overrides)
        return DiTConfig.from_dict(d)
