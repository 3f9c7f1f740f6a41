"""What the four diffusers text-to-image classes share: the `Link` table entries that tie ditlab tensors to
diffusers tensors, the blocks two classes have in common (SD3's and Flux's MMDiT block, their time-and-text
embedders), and `TextClass`, which holds one class's config rules and tables.

A class's config crosses in three parts: `fixed`, the DiTConfig fields the class always has (set on import,
required on export: one table serves both directions), `to_config`, the fields read off a diffusers config,
and `from_config`, the diffusers arguments written from a DiTConfig.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from ditlab.models.config import DiTConfig
from ditlab.models.interop import _grid_fields, _require, _with_defaults, diffusers_class

# Flux and Z-Image have no sample size (rotary positions only); ditlab records this nominal latent size
# (1024 px latents), for Gflops only (override freely).
NOMINAL_INPUT_SIZE = 128


@dataclass(frozen=True)
class Link:
    """ditlab tensor(s) `ours` = the diffusers tensor(s) `theirs`, as `kind` says:

    same       one tensor as it is
    cat        one ditlab tensor = the diffusers tensors stacked along rows (qkv = [to_q; to_k; to_v])
    cols       the ditlab tensors side by side = one diffusers tensor (Flux's proj_out = [attn.proj | fc2])
    bias_sum   ditlab's two biases add up to one diffusers bias (import: all in the first, 0 in the second)
    swap       one tensor, its two row halves exchanged ((scale, shift) vs (shift, scale))
    patch_in   a conv patch embedding (D, C, p, p) = a Linear on packed patches (D, C·p·p), channel slowest
    patch_out  output rows: ditlab's token layout (py, px, c) vs Flux's packed (c, py, px), `arg` = p·p
    patch_last a conv patch embedding (D, C, p, p) = a Linear on patches laid out (py, px, c) (Z-Image)
    """

    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    kind: str = "same"
    arg: int = 0

    def to_ours(self, state: Mapping, own: Mapping) -> dict[str, torch.Tensor]:
        """ditlab tensors from a diffusers state (`own`: the ditlab model's state, for shapes)."""
        t = [state[k] for k in self.theirs]
        if self.kind == "cat":
            return {self.ours[0]: torch.cat(t, dim=0)}
        if self.kind == "cols":
            widths = [own[k].shape[1] for k in self.ours]
            return dict(zip(self.ours, (p.contiguous() for p in t[0].split(widths, dim=1)), strict=True))
        if self.kind == "bias_sum":
            return {self.ours[0]: t[0], self.ours[1]: torch.zeros_like(own[self.ours[1]])}
        if self.kind == "swap":
            return {self.ours[0]: _swap_halves(t[0])}
        if self.kind == "patch_in":
            return {self.ours[0]: t[0].reshape(own[self.ours[0]].shape)}
        if self.kind == "patch_out":  # rows (c, q) -> (q, c), q = the arg = p·p positions in a patch
            return {self.ours[0]: _swap_row_axes(t[0], -1, self.arg)}
        if self.kind == "patch_last":  # (D, p·p·C), channel fastest -> (D, C, p, p)
            D, C, p, _ = own[self.ours[0]].shape
            return {self.ours[0]: t[0].reshape(D, p, p, C).permute(0, 3, 1, 2).contiguous()}
        return {self.ours[0]: t[0]}

    def to_theirs(self, state: Mapping) -> dict[str, torch.Tensor]:
        """diffusers tensors (each with its own storage) from a ditlab state."""
        t = [state[k] for k in self.ours]
        if self.kind == "cat":
            return {
                k: p.clone() for k, p in zip(self.theirs, t[0].chunk(len(self.theirs), dim=0), strict=True)
            }
        if self.kind == "cols":
            return {self.theirs[0]: torch.cat(t, dim=1)}
        if self.kind == "bias_sum":
            return {self.theirs[0]: t[0] + t[1]}
        if self.kind == "swap":
            return {self.theirs[0]: _swap_halves(t[0])}
        if self.kind == "patch_in":
            return {self.theirs[0]: t[0].reshape(t[0].shape[0], -1).clone()}
        if self.kind == "patch_out":  # rows (q, c) -> (c, q)
            return {self.theirs[0]: _swap_row_axes(t[0], self.arg, -1)}
        if self.kind == "patch_last":
            return {self.theirs[0]: t[0].permute(0, 2, 3, 1).reshape(t[0].shape[0], -1).contiguous()}
        return {self.theirs[0]: t[0].clone()}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _swap_row_axes(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Rows viewed as an (a, b) grid (one of them -1), transposed to (b, a): a permutation of the rows."""
    return t.reshape(a, b, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


# ---------------------------------------------------------------------------------------------- table entries
def linear(ours: str, *theirs: str, kind: str | None = None, arg: int = 0) -> list[Link]:
    """The weight and bias links of a Linear (several diffusers Linears: cat)."""
    kind = kind or ("cat" if len(theirs) > 1 else "same")
    bias_kind = "same" if kind in ("patch_in", "patch_last") else kind
    return [
        Link((f"{ours}.weight",), tuple(f"{t}.weight" for t in theirs), kind, arg),
        Link((f"{ours}.bias",), tuple(f"{t}.bias" for t in theirs), bias_kind, arg),
    ]


def weight(ours: str, *theirs: str) -> Link:
    """A bias-free Linear (several diffusers Linears: cat)."""
    return Link(
        (f"{ours}.weight",), tuple(f"{t}.weight" for t in theirs), "cat" if len(theirs) > 1 else "same"
    )


def norm(ours: str, theirs: str) -> Link:
    return Link((f"{ours}.weight",), (f"{theirs}.weight",))


def mlp(ours: str, theirs: str) -> list[Link]:
    """ditlab's Mlp (fc1, GELU, fc2) = diffusers' FeedForward (net.0.proj, GELU, net.2)."""
    return linear(f"{ours}.fc1", f"{theirs}.net.0.proj") + linear(f"{ours}.fc2", f"{theirs}.net.2")


def timestep(theirs: str) -> list[Link]:
    return linear("t_embedder.mlp.0", f"{theirs}.linear_1") + linear("t_embedder.mlp.2", f"{theirs}.linear_2")


def time_text_embedders() -> list[Link]:
    """SD3's and Flux's condition: the timestep and pooled-text MLPs (time_text_embed) and the Linear that
    embeds text tokens (context_embedder)."""
    return [
        *timestep("time_text_embed.timestep_embedder"),
        *linear("pooled_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
        *linear("pooled_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
        *linear("text_embedder.proj", "context_embedder"),
    ]


def mmdit_block(b: str, d: str, qk_norm: bool, context_pre_only: bool = False) -> list[Link]:
    """One MMDiT block (SD3's JointTransformerBlock, Flux's double-stream block) = ditlab's joint Block:
    image stream, then the text stream (`context_stream`), one joint attention over both.

    context_pre_only (SD3's last block): the text stream only gives keys and values, and its
    AdaLayerNormContinuous chunks (scale, shift) where ditlab's one-branch modulation is (shift, scale)."""
    ctx = f"{b}.context_stream"
    links = linear(f"{b}.adaLN_modulation.1", f"{d}.norm1.linear")  # both: shift, scale, gate × 2
    links += linear(f"{b}.attn.qkv", *(f"{d}.attn.to_{n}" for n in "qkv"))
    links += linear(f"{b}.attn.proj", f"{d}.attn.to_out.0")
    links += mlp(f"{b}.mlp", f"{d}.ff")
    heads = [("q_norm", "norm_q"), ("k_norm", "norm_k"), ("context_k_norm", "norm_added_k")]
    if context_pre_only:
        links += linear(f"{b}.attn.context_kv", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
        links += linear(f"{ctx}.adaLN_modulation.1", f"{d}.norm1_context.linear", kind="swap")
    else:
        links += linear(f"{b}.attn.context_qkv", *(f"{d}.attn.add_{n}_proj" for n in "qkv"))
        links += linear(f"{b}.attn.context_proj", f"{d}.attn.to_add_out")
        links += linear(f"{ctx}.adaLN_modulation.1", f"{d}.norm1_context.linear")
        links += mlp(f"{ctx}.mlp", f"{d}.ff_context")
        heads.append(("context_q_norm", "norm_added_q"))
    if qk_norm:
        links += [norm(f"{b}.attn.{o}", f"{d}.attn.{t}") for o, t in heads]
    return links


# ---------------------------------------------------------------------------------------------- classes
def no_unread_tensors(cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """`unread` of a class whose every tensor changes its output."""
    return {}


@dataclass(frozen=True)
class TextClass:
    """One diffusers class: its fixed fields, config both ways, the tensor links and the diffusers-only
    tensors.

    fixed: the DiTConfig fields every model of the class has (import sets them, export requires them).
    identified_by: the fixed fields that tell a ditlab config of this class.
    to_config(c): the other DiTConfig fields, read off a diffusers config with its defaults filled in
    (refusing what ditlab lacks).
    from_config(cfg): the diffusers constructor arguments (refusing what the class lacks beyond `fixed`).
    unread(cfg): diffusers tensors that cannot change its output (dropped on import) -> the value an export
    writes for each.
    defaults: the constructor defaults of the fields that decide the forward."""

    name: str
    defaults: Mapping
    fixed: Mapping
    identified_by: tuple[str, ...]
    to_config: Callable[[Mapping], dict]
    from_config: Callable[[DiTConfig], dict]
    links: Callable[[DiTConfig], list[Link]]
    unread: Callable[[DiTConfig], dict[str, torch.Tensor]]

    @classmethod
    def of(cls, module) -> TextClass:
        """The class a module of this package describes: its NAME (its table entry, `diffusers_class`) and
        the functions to_config, from_config, links and unread (see the fields)."""
        entry = diffusers_class(module.NAME)
        return cls(
            module.NAME,
            MappingProxyType(entry["defaults"]),
            MappingProxyType(entry["fixed"]),
            tuple(entry["identified_by"]),
            module.to_config,
            module.from_config,
            module.links,
            module.unread,
        )

    @property
    def sized(self) -> bool:
        """Whether the class has a sample size (Flux and Z-Image: none; ditlab's input_size is nominal)."""
        return "sample_size" in self.defaults

    def matches(self, cfg: DiTConfig) -> bool:
        """Whether a ditlab config has this class's architecture (the class an export writes)."""
        return all(getattr(cfg, f) == self.fixed[f] for f in self.identified_by)

    def config_fields(self, dconf: Mapping) -> dict:
        """The DiTConfig fields of a diffusers config of this class."""
        # diffusers' text models hold no label table and drop no condition themselves
        fields = self.to_config(_with_defaults(dconf, self.defaults))
        return {**fields, **self.fixed, "class_dropout_prob": 0.0}

    def export_config(self, cfg: DiTConfig) -> dict:
        """The diffusers constructor arguments of `cfg`, or ValueError naming what the class cannot express."""
        _require(cfg, self.name, self.fixed)
        h, w = cfg.image_hw
        if h != w:
            raise ValueError(
                f"cannot export to diffusers {self.name}: input_size={cfg.input_size} is not square"
            )
        return self.from_config(cfg)


def sized_fields(c: Mapping, what: str) -> dict:
    """The grid fields of a class with a sample size (SD3, PixArt), whose positions span base_size =
    sample_size / patch_size."""
    return dict(_grid_fields(c, what), pos_base_size=int(c["sample_size"]) // int(c["patch_size"]))


def rope_axes(axes, head_dim: int, what: str, field_name: str) -> int:
    """The rope_lead of diffusers' rotary axes (lead, n, n) summing to the head size, else ValueError."""
    axes = tuple(int(a) for a in axes)
    if len(axes) != 3 or axes[1] != axes[2] or sum(axes) != head_dim:
        raise ValueError(
            f"{what} config has {field_name}={axes}; ditlab's 2-D rotary positions need (lead, n, n) summing "
            f"to the head size {head_dim}"
        )
    return axes[0]


def export_rope_axes(cfg: DiTConfig) -> tuple[int, int, int]:
    """diffusers' rotary axes (lead, n, n) of a ditlab config: the head's channels after rope_lead, split in
    rows and columns."""
    n = (cfg.hidden_size // cfg.num_heads - cfg.rope_lead) // 2
    return (cfg.rope_lead, n, n)


def need_pooled(cfg: DiTConfig, cls: str) -> None:
    if cfg.pooled_dim < 1:
        raise ValueError(
            f"cannot export to diffusers {cls}: it always takes a pooled text vector (pooled_dim=0)"
        )
