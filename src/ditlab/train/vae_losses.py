"""The VAE trainer's losses beyond pixels: a perceptual distance and a patch discriminator.

LDM trains its autoencoders with L1 + LPIPS + a small KL (or the VQ losses) and, after a warm-up, a PatchGAN
discriminator with the hinge loss, its weight balanced against the reconstruction loss by the gradient norms
at the decoder's last layer. ditlab has no LPIPS weights offline, so the perceptual term is the LPIPS recipe
(channel-normalised feature maps at several depths, squared differences averaged) on the ImageNet
EfficientNet-Lite0 that ``ditlab.eval.features`` already ships for FD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ditlab.eval.features import EffNetLite0Features

__all__ = ["PerceptualLoss", "PatchDiscriminator", "adaptive_weight", "hinge_d_loss"]

PERCEPTUAL_RESOLUTION = 64  # images are resized to at least this side, as the FD features are computed


class PerceptualLoss(nn.Module):
    """Mean over depths of ||n(f(x)) - n(f(y))||^2, f = EfficientNet-Lite0 stages, n = unit norm per pixel.

    Frozen; gradients flow to the inputs. Images in [-1, 1], 1 or 3 channels, any size (resized to >= 64).
    """

    def __init__(self, device=None) -> None:
        super().__init__()
        self.net = EffNetLite0Features(resolution=PERCEPTUAL_RESOLUTION, device=device).model
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.net.eval()  # frozen BatchNorm statistics
        return self

    def _stages(self, x: Tensor) -> list[Tensor]:
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(x)))
        feats = []
        for idx, block in enumerate(net._blocks):
            h = block(h)
            if idx in (1, 3, 5, 10, len(net._blocks) - 1):  # the ends of resolution stages
                feats.append(h)
        return feats

    def _prepare(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        side = min(x.shape[-2:])
        if side < PERCEPTUAL_RESOLUTION:
            x = F.interpolate(
                x, scale_factor=PERCEPTUAL_RESOLUTION / side, mode="bilinear", align_corners=False
            )
        return ((x + 1) * 127.5 - 127.0) / 128.0  # EfficientNet-Lite's (u8 - 127) / 128

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample distance (N,) between image batches x and y (N, C, H, W)."""
        both = self._stages(self._prepare(torch.cat([x, y])))
        total = 0.0
        for f in both:
            f = f / (f.norm(dim=1, keepdim=True) + 1e-10)
            fx, fy = f.chunk(2)
            total = total + (fx - fy).square().sum(1).mean(dim=(1, 2))
        return total / len(both)


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix, as LDM): stride-2 4x4 convs, then two stride-1, one logit per overlapping patch.

    ``layers`` stride-2 stages are used, fewer when the images are too small for them (each halves the side).
    """

    def __init__(self, channels: int, image_size: int, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        layers = max(1, min(layers, (image_size // 3).bit_length() - 1))  # keep >= 1 output patch
        mods: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, layers + 1):
            nc = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(c, nc, 4, stride, 1, bias=False), nn.BatchNorm2d(nc), nn.LeakyReLU(0.2)]
            c = nc
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.main = nn.Sequential(*mods)
        for m in self.modules():  # DCGAN initialisation, as LDM
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)  # (N, 1, h', w') logits


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """LDM's balance: ||grad rec|| / ||grad adversarial|| at the decoder's last layer, clamped, no gradient."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()
