"""REPA, representation alignment (Yu et al., 2024, arXiv:2410.06940): the DiT's tokens after block k,
through a trainable MLP projector, are pulled towards a frozen image encoder's patch features of the clean
image x0. The loss added to the objective's, per sample, is λ · mean over tokens of (1 − cos(h_φ(z_k), y)):
REPA's negative cosine similarity shifted by 1, so that its minimum, perfectly aligned features, is 0.

Encoders (frozen, no gradient ever reaches them), each giving an (N, C_enc, h, w) map that is average-pooled
or bilinearly resized to the DiT's token grid:
- "effnet-lite0": the ImageNet-pretrained EfficientNet-Lite0 of the offline wheel (as ditlab.eval.features),
  its stride-16 map after block 10 (112 channels), with the image resized to 16 px per token so that map is
  the token grid (at most 256 px; 28x28 Fashion-MNIST with patch 2 -> 224 px -> 14x14).
- "classifier": ditlab's in-domain classifier of the training data (ditlab.eval.classifier, trained once and
  cached), its second conv stage before the last pooling (64 channels at half the image size).

Block k's tokens come from a forward hook on `model.blocks[k - 1]` armed only inside `REPA.loss`, so the DiT's
forward is not copied or changed, and the EMA model (copied before the hook exists) never carries it.
The projector is not part of the DiT: its weights are in training checkpoints (`repa`) and never in the
exported sampling model (model.safetensors). It trains with the DiT's optimizer (same lr and betas); its
gradients are averaged across torchrun processes before each step (it sits outside DDP) and are not part of
the logged or clipped `grad_norm`, which stays the DiT's.

Caching: in-memory data is the same images every epoch, so each image's features (keyed by its pixels, a flip
being another image) are computed once and kept, as float16, up to `cache_mb`; the images beyond the budget
and streamed data are encoded on the fly each step.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ditlab.distributed import mean_across_ranks
from ditlab.eval.classifier import load_classifier
from ditlab.eval.features import get_feature_extractor

EFFNET_BLOCK = 10  # last block at stride 16 (112 channels): mid-level features, REPA's sweet spot
EFFNET_PX_PER_TOKEN = 16
EFFNET_MAX_SIDE = 256


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, T, C) projected tokens and (N, T, C) encoder features -> (N,) mean of 1 − cosine similarity."""
    if projected.shape != target.shape:
        raise ValueError(
            f"REPA: projected tokens {tuple(projected.shape)} and encoder features {tuple(target.shape)} differ"
        )
    cos = F.cosine_similarity(projected.float(), target.float(), dim=-1)  # (N, T)
    return (1.0 - cos).mean(dim=1)


def to_grid(fmap: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) -> (N, gh·gw, C): average-pooled when larger than the grid, bilinear when smaller."""
    gh, gw = grid
    if fmap.shape[-2:] != (gh, gw):
        if fmap.shape[-2] >= gh and fmap.shape[-1] >= gw:
            fmap = F.adaptive_avg_pool2d(fmap, (gh, gw))
        else:
            fmap = F.interpolate(fmap, size=(gh, gw), mode="bilinear", align_corners=False)
    return fmap.flatten(2).transpose(1, 2)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, channels, H, W): grey repeated to RGB, RGB to grey by ITU-R 601 luma."""
    if x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if channels == 1 and x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
        return (x * weights[None, :, None, None]).sum(1, keepdim=True)
    raise ValueError(f"REPA: cannot convert {x.shape[1]}-channel images to {channels} channels")


class EffNetEncoder(nn.Module):
    """EfficientNet-Lite0 (ImageNet) up to its stride-16 stage: x0 in [-1, 1] -> (N, 112, H'/16, W'/16)."""

    name = "effnet-lite0"
    dim = 112

    def __init__(self, grid: tuple[int, int], device=None):
        super().__init__()
        net = get_feature_extractor("effnet-lite0", device=device).model  # loaded from the offline wheel
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: EFFNET_BLOCK + 1])
        scale = EFFNET_PX_PER_TOKEN * max(grid)
        factor = min(1.0, EFFNET_MAX_SIDE / scale)
        self.size = tuple(max(32, round(EFFNET_PX_PER_TOKEN * g * factor)) for g in grid)
        self.eval().requires_grad_(False)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = (x0.float() + 1.0) * 127.5  # [-1, 1] -> [0, 255], then the network's own (x - 127) / 128
        x = F.interpolate(match_channels(x, 3), size=self.size, mode="bicubic", align_corners=False)
        x = self.stem((x.clamp(0, 255) - 127.0) / 128.0)
        for block in self.blocks:
            x = block(x)
        return x


class ClassifierEncoder(nn.Module):
    """ditlab's in-domain classifier of `dataset`, its conv body up to the last pooling: (N, 64, H/2, W/2)."""

    name = "classifier"

    def __init__(self, dataset: str, device=None):
        super().__init__()
        model, info = load_classifier(dataset, device=device)
        self.body = model.body[:3]  # conv stage 1, pool, conv stage 2 (see SmallConvNet)
        self.size = tuple(info["image_size"])
        self.channels = int(info["channels"])
        self.dim = int(model.body[2][0].out_channels)
        self.eval().requires_grad_(False)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = match_channels(x0.float(), self.channels)
        if tuple(x.shape[-2:]) != self.size:  # a run at another --image-size: back to the classifier's
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.body(x)


def build_encoder(name: str, dataset: str, grid: tuple[int, int], device=None) -> nn.Module:
    if name == "effnet-lite0":
        return EffNetEncoder(grid, device=device)
    if name == "classifier":
        return ClassifierEncoder(dataset, device=device)
    raise ValueError(f"unknown REPA encoder {name!r}; choose effnet-lite0 or classifier")


def projector(hidden: int, width: int, out: int) -> nn.Sequential:
    """REPA's projector h_φ: Linear → SiLU → Linear → SiLU → Linear, applied to each token."""
    return nn.Sequential(
        nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out)
    )


class FeatureCache:
    """Encoder features by image content, float16 on the CPU, up to `budget_bytes` (0 = off)."""

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.used = 0
        self.entries: dict[bytes, torch.Tensor] = {}

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        return hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=16).digest()  # a CPU image

    def features(self, x0: torch.Tensor, encode) -> torch.Tensor:
        """(N, T, C) float32 features of x0 (N, C, H, W): cached rows, the rest from `encode` (kept if room)."""
        if self.budget <= 0:
            return encode(x0).float()
        keys = [self.key(image) for image in x0.detach().cpu()]  # one device-to-host copy per batch
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        fresh = encode(x0[missing]).float() if missing else None
        rows: list[torch.Tensor | None] = [self.entries.get(k) for k in keys]
        for j, i in enumerate(missing):
            rows[i] = fresh[j]
            stored = fresh[j].detach().to("cpu", torch.float16)
            if self.used + stored.numel() * 2 <= self.budget:
                self.entries[keys[i]] = stored
                self.used += stored.numel() * 2
        return torch.stack([row.to(x0.device, torch.float32) for row in rows])


class REPA(nn.Module):
    """The alignment term of one run: frozen `encoder`, trainable `projector`, the hook on block `depth`.

    `loss(net, x0, run)` runs `run()` (the objective's forward and loss) with the hook armed and returns its
    terms plus "repa" (N,), the alignment loss, with "loss" increased by weight · repa."""

    def __init__(self, model, encoder: nn.Module, depth: int, weight: float, width: int, cache_mb: int = 0):
        super().__init__()
        if not 1 <= depth <= len(model.blocks):
            raise ValueError(
                f"repa_depth must be in 1..{len(model.blocks)} (the model's blocks), got {depth}"
            )
        self.encoder = encoder.requires_grad_(False)
        self.projector = projector(model.config.hidden_size, width, encoder.dim)
        self.depth, self.weight = depth, float(weight)
        self.grid = model.config.grid_hw
        self.cache = FeatureCache(cache_mb * 2**20)
        self._armed = False
        self._tokens: torch.Tensor | None = None
        self._hook = model.blocks[depth - 1].register_forward_hook(self._capture)

    def train(self, mode: bool = True):
        """The projector's mode; the encoder stays in eval mode (its batch norms must never update: the
        EfficientNet is the same module the evaluations use)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def _capture(self, module, args, output) -> None:
        if self._armed:
            self._tokens = output[0] if isinstance(output, tuple) else output

    def remove(self) -> None:
        self._hook.remove()

    @torch.no_grad()
    def share_first_process_weights(self, dist_info) -> None:
        """Under torchrun: every process starts from process 0's projector (each seeds its RNG by its rank;
        DDP makes the same broadcast for the DiT's weights)."""
        if dist_info.enabled:
            for p in self.projector.parameters():
                torch.distributed.broadcast(p.data, src=0)

    @torch.no_grad()
    def average_gradients(self, dist_info) -> None:
        """Under torchrun: the projector's gradients averaged over the processes, as DDP does for the DiT's
        (the projector is outside the DDP-wrapped model). Called before each optimizer step."""
        for p in self.projector.parameters():
            if p.grad is not None:
                p.grad.copy_(mean_across_ranks(p.grad, dist_info))

    def trainable_state(self) -> dict:
        """What a training checkpoint keeps: the projector (the encoder is frozen and rebuilt)."""
        return self.projector.state_dict()

    def load_trainable_state(self, state: dict) -> None:
        self.projector.load_state_dict(state)

    @torch.no_grad()
    def _encode(self, x0: torch.Tensor) -> torch.Tensor:
        return to_grid(self.encoder(x0), self.grid)  # (N, T, C_enc)

    def target(self, x0: torch.Tensor) -> torch.Tensor:
        return self.cache.features(x0, self._encode)

    def loss(self, x0: torch.Tensor, run) -> dict:
        self._armed, self._tokens = True, None
        try:
            terms = dict(run())
        finally:
            self._armed = False
        tokens, self._tokens = self._tokens, None
        if tokens is None:
            raise RuntimeError(f"REPA: block {self.depth} did not run in the forward pass")
        target = self.target(x0)
        repa = alignment_loss(self.projector(tokens[:, : target.shape[1]]), target)
        terms["repa"] = repa
        terms["loss"] = terms["loss"] + self.weight * repa.to(terms["loss"].dtype)
        return terms


def build_repa(cfg, model, device=None, cache: bool = True) -> REPA | None:
    """The REPA term a TrainConfig asks for (None when repa_weight is 0), on `device`. `cache`: the data is
    in memory (features kept up to repa_cache_mb); False for streamed data (encoded on the fly)."""
    if not cfg.repa_weight:
        return None
    with torch.random.fork_rng(devices=[]):  # a first load builds (randomly initialised) networks: the run's
        encoder = build_encoder(cfg.repa_encoder, cfg.data, model.config.grid_hw, device=device)  # RNG stays
    cache_mb = cfg.repa_cache_mb if cache else 0
    repa = REPA(model, encoder, cfg.repa_depth, cfg.repa_weight, cfg.repa_projector_width, cache_mb)
    return repa.to(device)


__all__ = [
    "REPA",
    "ClassifierEncoder",
    "EffNetEncoder",
    "FeatureCache",
    "alignment_loss",
    "build_encoder",
    "build_repa",
    "projector",
    "to_grid",
]
