"""DyDiT (Zhao et al., ICLR 2025): a DiT whose width follows the timestep and whose MLPs skip easy tokens.

    model = DyDiT.from_dit(trained_dit)          # same weights, heads/channels sorted, routers all on
    out = model(x, t, y)                         # training: Gumbel-sigmoid masks; eval: the deployed path

A DyDiT *is* the DiT (a subclass sharing its modules and parameter names) plus a `routers` list with, per block,
a head router and an MLP channel-group router on the timestep embedding E_t (H−1 logits each: unit 0 is always
on), and a token router before the MLP. Three ways to run it:

- training (`model.train()`): masks from Gumbel-sigmoid with a straight-through estimator multiply each head's
  attention output, each MLP group's fc1 output and each token's MLP branch; pass `aux={}` to receive the
  differentiable per-sample FLOPs ratio (`aux["flops_ratio"]`, (N,));
- `complete=True`: every unit and token on, i.e. exactly the dense DiT (DyDiT's complete-model loss);
- inference (`model.eval()`): width masks depend only on t, so when the batch shares t (sampling, CFG) each block
  runs on weights sliced to its active heads and groups (cached per distinct mask, see `WidthPlanner`), and the
  MLP runs only on the gathered kept tokens. `masked=True` instead multiplies by the hard masks (the public
  DyDiT code's way, which saves nothing); it is the reference the deployed path is tested against.

Every path runs the DiT's own Block (ditlab.models.dit): this module only decides, per block, a `BlockRoute`
(head and group masks or sliced weights, and a token decision the block asks for after its attention branch)
and accounts for what the routes cost.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from functools import partial

import torch

from ditlab.configs import DictConfig
from ditlab.dydit.flops import block_flops_ratio
from ditlab.dydit.importance import reorder_by_importance
from ditlab.dydit.planner import WidthPlanner
from ditlab.dydit.routers import BlockRouters, gumbel_sigmoid, with_unit_zero
from ditlab.models.config import MODULATED, DiTConfig
from ditlab.models.dit import BlockRoute, DiT
from ditlab.models.flops import flop_breakdown


@dataclass
class DeployedRoute(BlockRoute):
    """A block's route at deployment, with the active heads and groups it was sliced to (for the records)."""

    heads: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()


@dataclass
class DyDiTOptions(DictConfig):
    """DyDiT's own knobs (paper/author-code defaults)."""

    _what = "DyDiT option"

    tau: float = 5.0  # Gumbel-sigmoid temperature
    width_bias: float = 15.0  # initial head/group router bias: σ(15) ≈ 1, every unit starts on
    token_bias: float = 35.0  # initial token-router output bias: every token starts through the MLP
    token_reduction: int = 16  # token router hidden width = D / token_reduction
    token_routing: bool = True  # False: timestep-wise dynamic width only

    def __post_init__(self):
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.token_reduction < 1:
            raise ValueError(f"token_reduction must be >= 1, got {self.token_reduction}")


class DyDiT(DiT):
    """A DiT with timestep-wise dynamic width and spatial-wise dynamic tokens; see the module docstring."""

    def __init__(self, config: DiTConfig | None = None, options: DyDiTOptions | None = None, **overrides):
        super().__init__(config, **overrides)
        self.check_config(self.config)
        # Routers are created after the DiT's modules: a seeded DyDiT has the same DiT weights as a seeded DiT.
        self._add_dynamic_parts(options)

    @staticmethod
    def check_config(cfg: DiTConfig) -> None:
        if cfg.conditioning not in MODULATED:
            raise ValueError(
                f"DyDiT needs an adaLN-family DiT (one of {', '.join(MODULATED)}), got conditioning="
                f"{cfg.conditioning!r}"
            )
        if cfg.arrangement != "sequential":
            raise ValueError(
                f"DyDiT routes tokens between a block's attention and its MLP, so it needs "
                f"arrangement='sequential', got {cfg.arrangement!r}"
            )
        if cfg.mlp_hidden % cfg.num_heads:
            raise ValueError(
                f"the MLP width {cfg.mlp_hidden} must split into num_heads={cfg.num_heads} equal groups; "
                "choose mlp_ratio so that hidden_size·mlp_ratio is a multiple of num_heads"
            )

    def _add_dynamic_parts(
        self, options: DyDiTOptions | None, generator: torch.Generator | None = None
    ) -> None:
        cfg, ref = self.config, next(self.parameters())
        self.options = options or DyDiTOptions()
        self.routers = torch.nn.ModuleList(
            BlockRouters(
                cfg.hidden_size, cfg.num_heads, self.options.token_reduction, self.options.token_routing
            )
            for _ in range(cfg.depth)
        ).to(ref.device, ref.dtype)
        for r in self.routers:
            r.reset_parameters(self.options.width_bias, self.options.token_bias, generator)
        self.planner = WidthPlanner()
        self.records: list[dict] | None = None  # set by `recording()`
        self._macs: dict[tuple[int, int], tuple[float, float]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def convert_(
        cls,
        dit: DiT,
        options: DyDiTOptions | None = None,
        reorder: bool = True,
        generator: torch.Generator | None = None,
    ) -> DyDiT:
        """Turn `dit` itself into a DyDiT, in place: its parameters stay the same tensors (heads and MLP
        channels sorted by importance when `reorder`, which leaves the function unchanged), all-on routers are
        added (initialised from `generator` if given). For code that holds the model object, such as a
        fine-tuning method's `prepare`; `from_dit` is the copying form."""
        cls._check_source(dit)
        dit.__class__ = cls
        dit._add_dynamic_parts(options, generator)
        if reorder:
            reorder_by_importance(dit)
        return dit

    @classmethod
    def from_dit(cls, dit: DiT, options: DyDiTOptions | None = None, reorder: bool = True) -> DyDiT:
        """A DyDiT holding a copy of `dit`'s weights (reordered by importance when `reorder`) and fresh all-on
        routers; `dit` is left as it was."""
        cls._check_source(dit)
        return cls.convert_(copy.deepcopy(dit), options, reorder)

    @classmethod
    def _check_source(cls, dit) -> None:
        if isinstance(dit, DyDiT):
            raise TypeError(
                "this is already a DyDiT; use it as it is (reordering it would scramble its routers)"
            )
        if type(dit) is not DiT:
            raise TypeError(f"a DyDiT is made from a plain DiT, got {type(dit).__name__}")
        cls.check_config(dit.config)

    def dense_state_dict(self) -> dict:
        """The DiT's own weights (router weights dropped): loads into a plain `DiT(self.config)`."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("routers.")}

    # ------------------------------------------------------------------ accounting
    def block_macs(self, hw: tuple[int, int]) -> tuple[float, float]:
        """(attention, MLP) MACs of one dense block for one image of size hw."""
        if hw not in self._macs:
            b = flop_breakdown(self.config, hw)
            self._macs[hw] = (b["per_block_attention"], b["per_block_mlp"])
        return self._macs[hw]

    @contextlib.contextmanager
    def recording(self):
        """Collect one record per inference forward: {"t", "heads", "groups", "tokens"} (per-block active heads,
        groups and mean kept-token fraction). Feed them to `dynamic_flop_breakdown` for FLOPs per timestep."""
        previous, self.records = self.records, []
        try:
            yield self.records
        finally:
            self.records = previous

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x,
        t,
        y=None,
        pooled=None,
        force_drop_ids=None,
        *,
        complete: bool = False,
        masked: bool = False,
        generator: torch.Generator | None = None,
        aux: dict | None = None,
    ):
        """x: (N, C, H, W), t: (N,) timesteps, y: (N,) labels. `complete`: all units and tokens on (the dense DiT).
        `masked` (inference): multiply by hard masks instead of slicing/gathering. `generator`: for the training
        masks' noise (drawn on the CPU). `aux`: a dict that receives "flops_ratio" (N,) in training."""
        if complete:
            return super().forward(x, t, y, pooled, force_drop_ids)
        tokens, cond = self.embed(x, t, y, pooled, force_drop_ids)
        t_value = None if self.training or masked else self._shared_timestep(t)
        if t_value is None:  # training, the masked reference, or per-sample widths (mixed timesteps)
            tokens = self._run_masked(tokens, cond, tuple(x.shape[-2:]), generator, aux)
        else:
            tokens = self._run_deployed(tokens, cond, t_value)
        return self.unembed(tokens, cond)

    @staticmethod
    def _shared_timestep(t) -> float | None:
        """The batch's one timestep value, or None when its samples have different ones."""
        t_values = (t if torch.is_tensor(t) else torch.tensor(t)).reshape(-1)
        return float(t_values[0]) if t_values.numel() <= 1 or bool((t_values == t_values[0]).all()) else None

    def _run_masked(self, tokens, cond, hw, generator, aux) -> torch.Tensor:
        routes, kept = self._masked_routes(tokens, cond.timestep, generator if self.training else None)
        tokens = self.run_blocks(tokens, cond, routes)
        heads = torch.stack([r.head_mask.mean(1) for r in routes])  # (depth, N) fractions of active units
        groups = torch.stack([r.group_mask.mean(1) for r in routes])
        if aux is not None:
            attn_macs, mlp_macs = self.block_macs(hw)
            aux["flops_ratio"] = block_flops_ratio(attn_macs, mlp_macs, heads, groups, torch.stack(kept))
        if not self.training:
            H = self.num_heads
            self._record(
                None, [float(f) * H for f in heads.mean(1)], [float(f) * H for f in groups.mean(1)], kept
            )
        return tokens

    def _run_deployed(self, tokens, cond, t_value: float) -> torch.Tensor:
        routes, kept = self._deployed_routes(cond.timestep, t_value)
        tokens = self.run_blocks(tokens, cond, routes)
        self._record(
            t_value, [float(len(r.heads)) for r in routes], [float(len(r.groups)) for r in routes], kept
        )
        return tokens

    def _record(self, t_value, heads: list[float], groups: list[float], tokens: list) -> None:
        """One record of `recording()`: per-block active heads, groups and kept-token fraction."""
        if self.records is not None:
            tokens = [float(k.mean()) if torch.is_tensor(k) else k for k in tokens]
            self.records.append({"t": t_value, "heads": heads, "groups": groups, "tokens": tokens})

    def _decide(self, logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:  # inference: σ(logit) > 0.5
            return (logits > 0).to(logits.dtype)
        return gumbel_sigmoid(logits, noise, self.options.tau)

    def _masked_routes(self, x, e_t, generator) -> tuple[list[BlockRoute], list[torch.Tensor]]:
        """Per-block masks on heads, groups and token updates: noisy and straight-through in training (one
        uniform draw per routed unit and token, per block), hard at inference. Returns the routes and the
        per-block kept-token fractions (N,), filled in as the blocks run."""
        N, T, _ = x.shape
        Hn, depth = self.num_heads, len(self.blocks)
        noise = None
        if self.training:
            shape = (depth, N, 2 * (Hn - 1) + T)
            noise = (
                torch.rand(shape, generator=generator).to(x.device)
                if generator is not None
                else torch.rand(shape, device=x.device)
            )
        routes, kept = [], [torch.ones(N, device=x.device, dtype=x.dtype)] * depth
        for i, router in enumerate(self.routers):
            u = noise[i] if noise is not None else None  # (N, 2(H-1) + T)
            head_logits, group_logits = router.width_logits(e_t)  # (N, H-1) each
            route = BlockRoute(
                head_mask=with_unit_zero(self._decide(head_logits, None if u is None else u[:, : Hn - 1])),
                group_mask=with_unit_zero(
                    self._decide(group_logits, None if u is None else u[:, Hn - 1 : 2 * (Hn - 1)])
                ),
            )
            if router.tokens is not None:
                route.token_mask = partial(
                    self._token_mask, router, None if u is None else u[:, 2 * (Hn - 1) :], kept, i
                )
            routes.append(route)
        return routes, kept

    def _token_mask(self, router, noise, kept: list, i: int, x: torch.Tensor) -> torch.Tensor:
        keep = self._decide(router.tokens(x).squeeze(-1), noise)  # (N, T): a skipped token keeps its residual
        kept[i] = keep.mean(1)
        return keep

    def _deployed_routes(self, e_t, t_value: float) -> tuple[list[DeployedRoute], list[float]]:
        """The batch shares t: each block runs on its precomputed sliced weights, the MLP on kept tokens only.
        Returns the routes and the per-block kept-token fractions, filled in as the blocks run."""
        plan = self.planner.plan(self, t_value, e_t[:1])  # per block (heads, groups, attn slice, mlp slice)
        routes, kept = [], [1.0] * len(self.blocks)
        for i, (router, (heads, groups, attn_w, mlp_w)) in enumerate(zip(self.routers, plan)):
            route = DeployedRoute(attn_weights=attn_w, mlp_weights=mlp_w, heads=heads, groups=groups)
            if router.tokens is not None:
                route.token_index = partial(self._kept_tokens, router, kept, i)
            routes.append(route)
        return routes, kept

    @staticmethod
    def _kept_tokens(router, kept: list, i: int, x: torch.Tensor) -> torch.Tensor | None:
        keep = router.tokens(x).squeeze(-1) > 0  # (N, T)
        index = keep.reshape(-1).nonzero().squeeze(1)  # (K,)
        kept[i] = index.numel() / keep.numel()
        return None if index.numel() == keep.numel() else index  # None: every token, the plain MLP

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dydit={self.options.to_dict()}"


@torch.no_grad()
def calibrate_token_routers(model: DyDiT, x, t, y=None, keep: float = 0.5) -> list[float]:
    """Shift each token router's output bias so that, on this batch, about a fraction `keep` of the tokens run
    each block's MLP (block by block, in one inference forward: later blocks see the calibrated earlier ones).
    For benchmarks and tests of token skipping on untrained routers; returns the kept fraction per block."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if not model.options.token_routing:
        raise ValueError("this DyDiT has no token routers (token_routing=False)")

    def shift(module, args, logits):  # logits (N, T, 1)
        v = logits.flatten().sort(descending=True).values
        k = max(1, round(keep * len(v)))
        # threshold halfway between the k-th and (k+1)-th largest logit: exactly k tokens pass unless they tie
        q = v[-1] - 1 if k >= len(v) else (v[k - 1] + v[k]) / 2
        module[2].bias.sub_(q)
        return logits - q

    was_training = model.training
    hooks = [r.tokens.register_forward_hook(shift) for r in model.routers]
    try:
        with model.recording() as records:
            model.eval()(x, t, y, masked=True)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return records[0]["tokens"]


__all__ = ["DyDiT", "DyDiTOptions", "calibrate_token_routers"]
