"""Guidance options (issue 18): an interval that is everything is plain guidance, autoguidance with the model
as its own guide is no guidance, autoguidance's formula, CFG rescale (Lin et al.), and clear errors."""

import numpy as np
import pytest
import torch

import ditlab
from ditlab.diffusion import GuidedModel, run_sampler
from ditlab.diffusion.guidance import rescaled
from ditlab.diffusion.objective import ObjectiveSpec


def trained_like(seed=0, **kw):
    """A small DiT with random (non-zero) weights: outputs depend on every input."""
    model = ditlab.create_model("DiT-Nano/2", **{"input_size": 8, "in_channels": 1, "num_classes": 3, **kw})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def labelled(model, n=4):
    y = torch.arange(n) % model.num_classes
    return {"y": y}, {"y": torch.full_like(y, model.null_class)}


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_interval_guidance_over_every_time_is_plain_guidance(kind):
    model = trained_like(learn_sigma=kind == "ddpm")
    objective = ObjectiveSpec(kind=kind, learn_sigma=kind == "ddpm").build()
    cond, uncond = labelled(model)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sampler = "ddim" if kind == "ddpm" else "euler"
    plain = run_sampler(sampler, GuidedModel(model, cond, uncond, scale=2.5), x, objective, steps=4)
    everything = GuidedModel(model, cond, uncond, scale=2.5, interval=(0.0, 1000.0))
    torch.testing.assert_close(run_sampler(sampler, everything, x, objective, steps=4), plain, rtol=0, atol=0)
    # and an interval that excludes every step is no guidance at all
    nowhere = GuidedModel(model, cond, uncond, scale=2.5, interval=(2000.0, 3000.0))
    unguided = run_sampler(sampler, GuidedModel(model, cond), x, objective, steps=4)
    torch.testing.assert_close(run_sampler(sampler, nowhere, x, objective, steps=4), unguided, rtol=0, atol=0)


def test_autoguidance_with_the_model_as_its_own_guide_is_no_guidance():
    model = trained_like()
    kw = dict(classes=[0, 1, 2], per_class=2, sampler="ddim", steps=4, seed=1)
    unguided = ditlab.generate(model, **kw)
    self_guided = ditlab.generate(model, guidance_scale=4.0, guide_model=model, **kw)
    assert np.array_equal(self_guided.images, unguided.images)
    other = ditlab.generate(model, guidance_scale=4.0, guide_model=trained_like(seed=5), **kw)
    assert not np.array_equal(other.images, unguided.images)  # a different guide does guide


def test_autoguidance_pushes_away_from_the_guide_on_the_conditional_branch():
    model, guide = trained_like(), trained_like(seed=7)
    cond, _ = labelled(model)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 300)
    out = GuidedModel(model, cond, scale=3.0, guide=guide)(x, t)
    with torch.no_grad():
        main, weak = model(x, t, **cond), guide(x, t, **cond)
    k = model.in_channels  # the learned variance comes from the model's own (conditional) output
    expected = torch.cat([weak[:, :k] + 3.0 * (main[:, :k] - weak[:, :k]), main[:, k:]], dim=1)
    torch.testing.assert_close(out, expected)


def test_autoguidance_needs_a_guide_of_the_same_kind():
    model = trained_like()
    with pytest.raises(ValueError, match="guide model"):
        ditlab.generate(
            model, classes=[0], steps=2, guidance_scale=2.0, guide_model=trained_like(num_classes=4)
        )
    with pytest.raises(TypeError, match="guide"):
        GuidedModel(model, {}, scale=2.0, guide="not a model")


def test_cfg_rescale_matches_the_conditional_std_and_zero_is_plain():
    model = trained_like()
    cond, uncond = labelled(model)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 500)
    plain = GuidedModel(model, cond, uncond, scale=5.0)(x, t)
    torch.testing.assert_close(GuidedModel(model, cond, uncond, scale=5.0, rescale=0.0)(x, t), plain)
    full = GuidedModel(model, cond, uncond, scale=5.0, rescale=1.0)(x, t)
    with torch.no_grad():
        c = model(x, t, **cond)[:, :1]
    dims = (1, 2, 3)
    torch.testing.assert_close(full[:, :1].std(dim=dims), c.std(dim=dims))  # φ = 1: the conditional std
    assert not torch.allclose(plain[:, :1].std(dim=dims), c.std(dim=dims))  # which plain CFG does not keep
    half = GuidedModel(model, cond, uncond, scale=5.0, rescale=0.7)(x, t)
    torch.testing.assert_close(half[:, :1], 0.7 * full[:, :1] + 0.3 * plain[:, :1])
    torch.testing.assert_close(half[:, 1:], plain[:, 1:])  # variance channels are never guided
    with pytest.raises(ValueError, match="guidance_rescale"):
        GuidedModel(model, cond, uncond, scale=2.0, rescale=1.5)


def test_rescaled_formula():
    guided = torch.tensor([[[1.0, -1.0, 3.0, -3.0]]])
    cond = torch.tensor([[[0.5, -0.5, 1.5, -1.5]]])
    torch.testing.assert_close(rescaled(guided, cond, 1.0), cond)  # same shape, half the std
    torch.testing.assert_close(rescaled(guided, cond, 0.5), 0.75 * guided)
