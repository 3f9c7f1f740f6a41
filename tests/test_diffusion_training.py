"""A tiny model trained for a few hundred steps on a toy 2-D distribution, under each objective: the loss falls
and its samples move onto the data (with classifier-free guidance picking the requested class)."""

import math

import pytest
import torch
from torch import nn

from ditlab.diffusion import FlowMatching, GaussianDiffusion, GuidedModel, run_sampler

CENTERS = torch.tensor([[1.5, 0.0], [-1.5, 0.0]])  # class 0, class 1
NULL = 2  # the unconditional label
STD = 0.15


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Hundreds of tiny ops per step: on a busy 2-core machine intra-op threads only add synchronisation stalls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyDenoiser(nn.Module):
    """MLP on (x, sinusoidal t/1000 features, label embedding) for x of shape (N, 2)."""

    def __init__(self, out_dim: int, width: int = 96):
        super().__init__()
        self.freqs = torch.exp(torch.linspace(0, math.log(100.0), 8))
        self.label = nn.Embedding(3, width)
        self.inp = nn.Linear(2 + 16, width)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out_dim))

    def forward(self, x, t, y):
        args = (t.float() / 1000)[:, None] * self.freqs[None]  # (N, 8)
        h = self.inp(torch.cat([x, torch.sin(args), torch.cos(args)], 1)) + self.label(y)  # (N, width)
        return self.net(h)


def data(n: int, generator: torch.Generator):
    y = torch.randint(0, 2, (n,), generator=generator)
    return CENTERS[y] + STD * torch.randn(n, 2, generator=generator), y


def train(objective, out_dim: int, steps: int = 400, batch: int = 256):
    torch.manual_seed(0)
    model = TinyDenoiser(out_dim)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x0, y = data(batch, g)
        y = torch.where(torch.rand(batch, generator=g) < 0.2, NULL, y)  # label dropout for CFG
        loss = objective.loss(model, x0, {"y": y}, generator=g)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def distance_to_class(x, cls: int):
    return (x - CENTERS[cls]).norm(dim=1)


@pytest.mark.parametrize(
    "name, objective, out_dim, sampler, steps",
    [
        ("ddpm-hybrid", GaussianDiffusion.from_schedule("linear", 1000), 4, "ddim", 50),
        ("flow-logit-normal", FlowMatching("logit_normal"), 2, "euler", 50),
    ],
)
def test_tiny_model_learns_toy_data(name, objective, out_dim, sampler, steps):
    model, losses = train(objective, out_dim)
    first, last = sum(losses[:40]) / 40, sum(losses[-40:]) / 40
    assert last < 0.75 * first, (name, first, last)

    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(2))
    y = torch.zeros(512, dtype=torch.long)  # ask for class 0
    with torch.no_grad():
        guided = GuidedModel(model, {"y": y}, {"y": torch.full_like(y, NULL)}, scale=2.0)
        x = run_sampler(sampler, guided, noise, objective, steps=steps)
    before, after = distance_to_class(noise, 0).median().item(), distance_to_class(x, 0).median().item()
    # Noise sits ~1.8 from the class-0 centre; samples land on it, about STD away.
    assert after < 0.25 * before and after < 4 * STD, (name, before, after)
    assert (distance_to_class(x, 0) < distance_to_class(x, 1)).float().mean().item() > 0.95
