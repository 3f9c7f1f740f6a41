"""`ditlab vae train`: ditlab's KL-VAE or VQ-VAE trained as LDM trains them, on the DiT trainer's loop.

    from ditlab.train.vae import VAETrainConfig, train_autoencoder
    train_autoencoder(VAETrainConfig(data="digits", kind="kl", downsample=4, steps=2000, out="runs/vae"))

:class:`VAETrainer` subclasses :class:`ditlab.train.Trainer` and reuses its run loop (progress bar,
metrics.jsonl, checkpoint cadence and retention, atomic checkpoints, interrupt handling, run-folder rules,
`--resume auto`), replacing only what is specific to an autoencoder: the model and optimizers, one step, the
state in a checkpoint, the grids (originals above reconstructions) and the final outputs. Exact resume holds
for the same reason as in the DiT trainer: every draw of step s (images, flips, posterior noise, codebook
restarts) comes from a generator seeded by (seed, s). Under torchrun every rank draws the global batch's
randomness and keeps its slice, so without a discriminator a multi-process run follows the single-process
one (the discriminator's BatchNorm and LDM's adaptive weight are per process, as in LDM).

Loss per step: L1 or L2 reconstruction + ``perceptual_weight`` x the EfficientNet-Lite0 perceptual distance
+ ``kl_weight`` x KL (per image element, LDM's 1e-6 convention) or the VQ commitment/codebook loss, and from
``disc_start`` on ``disc_weight`` x the adaptive-weighted PatchGAN generator loss; the discriminator trains
with the hinge loss. At the end the latent scale is estimated from the training images (1 / std) and saved.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ditlab import distributed as D
from ditlab.autoencoders.checkpoint import AUTOENCODER_FILE, save_autoencoder
from ditlab.autoencoders.interop import estimate_scale
from ditlab.autoencoders.ldm import AUTOENCODER_KINDS, AutoencoderConfig, build_autoencoder, default_widths
from ditlab.configs import DictConfig
from ditlab.data import load_dataset, save_grid
from ditlab.data.dataset import uint8_to_unit
from ditlab.data.image_folder import BAD_IMAGE_POLICIES
from ditlab.data.images import to_uint8
from ditlab.runtime import (
    autocast,
    matmul_peak_gflops,
)
from ditlab.train.guard import NonFiniteGuard
from ditlab.train.metrics import plot_curves
from ditlab.train.parallel import Parallel
from ditlab.train.state import resume_checkpoint
from ditlab.train.trainer import Trainer, step_generator
from ditlab.train.vae_losses import PatchDiscriminator, PerceptualLoss, adaptive_weight, hinge_d_loss

__all__ = ["VAETrainConfig", "VAETrainer", "reconstruction_quality", "train_autoencoder"]

ADAM_BETAS = (0.5, 0.9)  # LDM's autoencoder optimizers
REC_LOSSES = ("l1", "l2")


@dataclass
class VAETrainConfig(DictConfig):
    _what = "autoencoder training option"

    # --- data ---
    data: str = "digits"
    image_size: int | None = None
    channels: int | None = None
    flip: bool = False
    bad_images: str = "raise"
    # --- model ---
    kind: str = "kl"  # kl | vq
    downsample: int = 4
    latent_channels: int = 4
    width: int = 64  # channels of the first level; later levels 2x, then 4x
    layers_per_block: int = 2
    norm_groups: int = 32
    mid_attention: bool = True
    codebook_size: int = 256
    codebook_ema: bool = True
    commitment: float = 0.25
    # --- losses ---
    rec_loss: str = "l1"
    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0
    disc_weight: float = 0.0  # 0: no discriminator (LDM uses 0.5)
    disc_start: int = 0  # the adversarial loss starts at this step (LDM: after tens of thousands)
    # --- optimisation ---
    lr: float = 1e-4
    batch_size: int = 32
    steps: int = 0
    epochs: int = 0
    seed: int = 0
    # --- runtime ---
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    # --- outputs ---
    out: str = "runs/vae"
    ckpt_every: int = 1000
    keep_last: int = 3
    log_every: int = 50
    sample_every: int = 0  # reconstruction grid every N steps (0 = only at the end)
    eval_every: int = 0  # PSNR / SSIM on held-out images every N steps (0 = off)
    eval_images: int = 256
    scale_images: int = 512  # training images the latent scale is estimated from
    progress: bool = True
    warmup_steps: int = 0
    grad_clip: float = 0.0
    max_time: str | None = None  # stop (checkpoint, exit 75) after this wall time, as `ditlab train`

    def __post_init__(self) -> None:
        if self.kind not in AUTOENCODER_KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of: {', '.join(AUTOENCODER_KINDS)}")
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"unknown rec_loss {self.rec_loss!r}; choose one of: {', '.join(REC_LOSSES)}")
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(
                f"unknown bad_images {self.bad_images!r}; choose one of: {', '.join(BAD_IMAGE_POLICIES)}"
            )
        if self.steps <= 0 and self.epochs <= 0:
            raise ValueError("set the run length: --train-steps N (or --epochs N)")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
        for name in ("kl_weight", "perceptual_weight", "disc_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.autoencoder_config(3)  # architecture errors now, not after the data loaded

    @property
    def model(self) -> str:  # the name the trainer's progress bar and plots show
        return f"{self.kind.upper()}-VAE f{self.downsample}c{self.latent_channels}"

    def autoencoder_config(self, image_channels: int) -> AutoencoderConfig:
        return AutoencoderConfig(
            kind=self.kind,
            image_channels=image_channels,
            latent_channels=self.latent_channels,
            downsample=self.downsample,
            block_out_channels=default_widths(self.downsample, self.width),
            layers_per_block=self.layers_per_block,
            norm_groups=self.norm_groups,
            mid_attention=self.mid_attention,
            codebook_size=self.codebook_size,
            codebook_ema=self.codebook_ema,
            commitment=self.commitment,
        )


class _Reconstruct(nn.Module):
    """The training forward (reconstruct) as a module's forward, so DistributedDataParallel syncs it."""

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, images: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None):
        return self.autoencoder.reconstruct(images, generator, noise)


def _adam(params, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(list(params), lr=lr, betas=ADAM_BETAS)


class VAETrainer(Trainer):
    """One autoencoder training run into ``cfg.out`` (see the module docstring; ``resume`` and
    ``overwrite`` as for :class:`ditlab.train.Trainer`)."""

    process_group_holders = (*Trainer.process_group_holders, "disc_net")  # the discriminator's DDP wrapper

    def __init__(
        self,
        cfg: VAETrainConfig,
        resume: str | Path | None = None,
        overwrite: bool = False,
        force: bool = False,
    ):
        # in memory: the step's images are an index lookup of a seeded permutation (`images_for_step`)
        self.open_run(cfg, resume, overwrite, force, loader="memory", unconditional=True)
        self.size_run()
        self._check_divisible()
        # the DiT trainer's checkpoint writer consults its non-finite guard; this loop never trips it
        self.guard = NonFiniteGuard(0, "stop", 1.0, 0, self.device)

        self.model = build_autoencoder(cfg.autoencoder_config(self.data.channels)).to(self.device)
        self.opt = _adam((p for p in self.model.parameters() if p.requires_grad), cfg.lr)
        self.perceptual = PerceptualLoss(self.device) if cfg.perceptual_weight > 0 else None
        self.disc = self.disc_opt = None
        if cfg.disc_weight > 0:
            size = min(self.data.image_size)
            self.disc = PatchDiscriminator(self.data.channels, size).to(self.device)
            self.disc_opt = _adam(self.disc.parameters(), cfg.lr)
        self.step, self.resumed_from = 0, None
        found = resume_checkpoint(self.out, resume)
        if found is not None:
            self._load(*found)
        self.net = _Reconstruct(self.model)
        self.settle_precision(self._timed_step, self.step)  # --precision auto on a native-bf16 CPU
        self.disc_net = self.disc
        self.parallel = Parallel.create("ddp", self.dist, self.device, self.precision)  # DDP under torchrun
        self.net = self.parallel.wrap(self.net)
        if self.disc is not None:
            self.disc_net = self.parallel.wrap(self.disc)
        self.gflops_per_image = self._gmacs_per_image()
        self.peak = matmul_peak_gflops(self.device.type) if self.dist.is_main else float("nan")

    def open_data(self, **data_options):
        """An autoencoder learns on the images themselves: no latents, no autoencoder under it."""
        return self.training_images(**data_options), None

    def final_model(self):
        """Nothing to gather: an autoencoder run exports the trained model itself (`write_outputs`)."""
        return None

    def _check_divisible(self) -> None:
        h, w = self.data.image_size
        f = self.cfg.downsample
        if h % f or w % f:
            raise ValueError(
                f"images are {h}x{w}, not divisible by the downsample factor {f}: pass --image-size a multiple of {f}"
            )

    def _gmacs_per_image(self) -> float:
        """Multiply-adds of one encode + decode (what the trainer's 6 x Gflops x img/s MFU estimate wants)."""
        x = torch.zeros(1, self.data.channels, *self.data.image_size, device=self.device)
        counter = FlopCounterMode(display=False)
        self.model.eval()  # a training-mode pass would update the codebook statistics
        with torch.no_grad(), counter:
            self.model.decode_raw(self.model.raw_latents(x))
        self.model.train()
        return counter.get_total_flops() / 2 / 1e9

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": {},  # no weight average (LDM's default for its autoencoders); the checkpoint layout has one
            "args": self.cfg.to_dict(),
            "config": self._arch(),
            "step": self.step,
            "rng": torch.get_rng_state(),
        }
        if self.disc is not None:
            state.update(disc=self.disc.state_dict(), disc_opt=self.disc_opt.state_dict())
        return state

    def _arch(self) -> dict:
        """The architecture (config without the latent normalisation, which is only set at the end)."""
        return {k: v for k, v in self.model.config.to_dict().items() if k not in ("scale", "shift")}

    def _load(self, path: Path, state: dict) -> None:
        if state.get("config") != self._arch():
            raise ValueError(
                f"{path} holds a different autoencoder than this run's options: {state.get('config')} vs "
                f"{self._arch()}; resume with the same --kind/--downsample/--latent-channels/--width"
            )
        if ("disc" in state) != (self.disc is not None):
            raise ValueError(f"{path}: the discriminator (--disc-weight) must stay on or off across a resume")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])
        self.step = int(state["step"])
        if self.step > self.total_steps:
            raise ValueError(f"{path} is at step {self.step}, past this run's {self.total_steps} steps")
        torch.set_rng_state(state["rng"])
        self.resumed_from = Path(path)

    # ------------------------------------------------------------------ one step
    def images_for_step(self, step: int) -> tuple[Tensor, Tensor, torch.Generator]:
        """This rank's images (B / world, C, H, W) of ``step``, its slice of the global batch's posterior
        noise (B / world, c, h, w), and the step's generator (for later draws such as codebook restarts).
        Every rank draws the global batch's randomness and keeps its slice, as the DiT trainer does."""
        cfg, B = self.cfg, self.cfg.batch_size
        epoch, i = divmod(step, self.batches_per_epoch)
        order = torch.randperm(
            len(self.data), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        )
        g = step_generator(cfg.seed, step)
        x, _ = self.data.batch(order[i * B : (i + 1) * B], generator=g)  # (B, C, H, W) in [-1, 1]
        noise = torch.randn((B, *self.model.latent_shape(x.shape)), generator=g)  # (B, c, h, w)
        r, W = self.dist.rank, self.dist.world_size
        part = slice(r * B // W, (r + 1) * B // W)
        return x[part].to(self.device), noise[part].to(self.device), g

    def _generator_loss(
        self, x: Tensor, recon: Tensor, terms: dict, adversarial: bool
    ) -> tuple[Tensor, dict]:
        cfg = self.cfg
        diff = (recon - x).abs() if cfg.rec_loss == "l1" else (recon - x).square()
        rec = diff.mean()
        out = {"rec": rec.detach()}
        loss = rec
        if self.perceptual is not None:
            perceptual = self.perceptual(x, recon).mean()
            loss = loss + cfg.perceptual_weight * perceptual
            out["perceptual"] = perceptual.detach()
        if "kl" in terms:  # per image element, so kl_weight means what it means in LDM's summed losses
            kl = terms["kl"].mean() / x[0].numel()
            loss = loss + cfg.kl_weight * kl
            out["kl"] = kl.detach()
        if "vq_loss" in terms:
            loss = loss + terms["vq_loss"]
            out.update({k: torch.as_tensor(v).detach() for k, v in terms.items()})
        if self.disc is not None:
            g_loss, weight = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
            if adversarial:
                g_loss = -self.disc_net(recon).mean()
                weight = adaptive_weight(loss, g_loss, self.model.decoder.last_layer) * cfg.disc_weight
                loss = loss + weight * g_loss
            out.update(g_loss=g_loss.detach(), d_weight=weight)
        return loss, out

    def _timed_step(self, precision: str, step: int) -> None:
        """One forward and backward of the autoencoder's loss on step `step`'s images under `precision`
        (what `settle_precision` times), gradients dropped."""
        x, noise, g = self.images_for_step(step)
        self.model.train()
        with autocast(self.device, precision):
            recon, terms = self.net(x, g, noise)
            loss, _ = self._generator_loss(x, recon.float(), terms, adversarial=False)
        loss.backward()
        self.model.zero_grad(set_to_none=True)

    def train_step(self) -> dict:
        cfg = self.cfg
        lr = cfg.lr * min(1.0, (self.step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for opt in (self.opt, self.disc_opt):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr
        x, noise, g = self.images_for_step(self.step)
        adversarial = self.disc is not None and self.step >= cfg.disc_start
        self.model.train()
        with autocast(self.device, self.precision):
            recon, terms = self.net(x, g, noise)
            loss, out = self._generator_loss(x, recon.float(), terms, adversarial)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        self.opt.step()
        if self.disc is not None:
            d_loss = torch.zeros((), device=x.device)
            if adversarial:
                with autocast(self.device, self.precision):
                    logits = self.disc_net(torch.cat([x, recon.detach()])).float()
                d_loss = hinge_d_loss(*logits.chunk(2))
                self.disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                self.disc_opt.step()
            out["d_loss"] = d_loss.detach()
        self.step += 1
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), "lr": lr, **out}

    # ------------------------------------------------------------------ outputs
    def _fixed_images(self, n: int, split: str = "train") -> Tensor:
        """The first ``n`` images of a split, unflipped: grids and estimates that compare across steps."""
        data = self.data if split == "train" else self._test_data()
        idx = torch.arange(min(n, len(data)))
        return uint8_to_unit(data.images[idx])  # (n, C, H, W) in [-1, 1]

    def _test_data(self):
        if not hasattr(self, "_test"):
            cfg = self.cfg
            try:
                self._test = load_dataset(
                    cfg.data,
                    split="test",
                    image_size=cfg.image_size,
                    channels=cfg.channels,
                    unconditional=True,
                )
            except (ValueError, FileNotFoundError) as err:  # e.g. an image folder with no test split
                warnings.warn(
                    f"no test split of {cfg.data} ({err}): PSNR / SSIM are measured on training images",
                    stacklevel=2,
                )
                self._test = self.data
        return self._test

    @torch.no_grad()
    def write_samples(self, name: str | None = None) -> Path | None:
        """Originals (top rows) above their reconstructions (posterior means, decoded)."""
        if not self.dist.is_main:
            return None
        x = self._fixed_images(16).to(self.device)
        was = self.model.training
        self.model.eval()
        recon = self.model.decode_raw(self.model.raw_latents(x)).clamp(-1, 1)
        self.model.train(was)
        grid = torch.cat([x, recon]).float().cpu()
        return save_grid(to_uint8(grid).numpy(), self.out / (name or f"samples_{self.step:07d}.png"), nrow=8)

    def _evaluate(self, log) -> None:
        if self.dist.is_main:
            quality = reconstruction_quality(self.model, self._fixed_images(self.cfg.eval_images, "test"))
            if log is not None:
                log.log({"step": self.step, **quality})
        D.barrier(self.dist)

    def write_outputs(self, final=None) -> dict:
        """The end of a run: the autoencoder (its latent scale estimated from data), loss curves and
        reconstructions. `final` (the DiT trainer's gathered EMA model) does not apply: an autoencoder run
        saves its trained model."""
        cfg = self.cfg
        self.model.eval()
        self.model.scale = estimate_scale(self.model, self._fixed_images(cfg.scale_images).to(self.device))
        path = save_autoencoder(self.model, self.out / AUTOENCODER_FILE)
        plot_curves(self.out / "metrics.jsonl", self.out / "loss.png", title=f"{cfg.model} on {cfg.data}")
        grid = self.write_samples("samples.png")
        return {"model": str(path), "samples": str(grid), "scale": self.model.scale}


@torch.no_grad()
def reconstruction_quality(autoencoder, images: Tensor, batch_size: int = 64) -> dict:
    """Mean PSNR (dB, images in [0, 1]) and SSIM (Gaussian window 11, sigma 1.5) of deterministic
    reconstructions (posterior mean / pre-quantisation latents, decoded) of ``images`` in [-1, 1]."""
    device = next(autoencoder.parameters()).device
    was = autoencoder.training
    autoencoder.eval()
    psnrs, ssims = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        y = autoencoder.decode_raw(autoencoder.raw_latents(x)).clamp(-1, 1)
        a, b = (x.float() + 1) / 2, (y.float() + 1) / 2
        mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-10)
        psnrs.append(10 * torch.log10(1.0 / mse))
        ssims.append(ssim(a, b))
    autoencoder.train(was)
    return {"psnr": float(torch.cat(psnrs).mean()), "ssim": float(torch.cat(ssims).mean())}


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM (N,) of images in [0, 1] (Wang et al. 2004 constants), channels averaged."""
    size = min(window, *a.shape[-2:])
    coords = torch.arange(size, dtype=a.dtype, device=a.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, size, size)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def train_autoencoder(
    cfg: VAETrainConfig, resume: str | Path | None = None, overwrite: bool = False, force: bool = False
) -> dict:
    """Run (or resume) an autoencoder training run; returns the trainer's summary (autoencoder path in
    ``"model"``, the estimated latent ``"scale"``)."""
    return VAETrainer(cfg, resume=resume, overwrite=overwrite, force=force).run()
