"""REPA (representation alignment): the loss is 0 exactly for aligned features, its gradient reaches the
projector and the blocks up to k but never the frozen encoder (nor the blocks after k), the hook captures
block k's tokens without changing the forward, and cached features equal computed ones."""

import pytest
import torch
from torch import nn

import ditlab
from ditlab.diffusion.objective import ObjectiveSpec
from ditlab.train.repa import REPA, EffNetEncoder, FeatureCache, alignment_loss, to_grid


def trained_like(seed=0, **kw):
    model = ditlab.create_model("DiT-Nano/2", **{"input_size": 8, "in_channels": 1, "num_classes": 3, **kw})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


class ConvEncoder(nn.Module):
    """A frozen stand-in encoder: (N, 1, 8, 8) -> (N, 6, 4, 4)."""

    name, dim = "conv", 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_alignment_loss_is_zero_exactly_when_aligned_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 16, 8, generator=g)
    scale = torch.rand(3, 16, 1, generator=g) + 0.5  # cosine ignores each token's norm
    assert torch.allclose(alignment_loss(target * scale, target), torch.zeros(3), atol=1e-6)
    other = alignment_loss(torch.randn(3, 16, 8, generator=g), target)
    assert bool((other > 0.1).all()) and bool((other <= 2).all())
    assert torch.allclose(alignment_loss(-target, target), torch.full((3,), 2.0))  # the maximum
    with pytest.raises(ValueError, match="differ"):
        alignment_loss(target, target[:, :4])


def test_repa_loss_is_zero_when_the_projector_reproduces_the_target():
    model = trained_like().eval()  # no label dropout: both forwards see the same labels
    repa = REPA(model, ConvEncoder(), depth=1, weight=0.5, width=8)
    x0, t, y = torch.randn(2, 1, 8, 8), torch.full((2,), 100), torch.tensor([0, 1])
    target = repa.target(x0)
    repa.projector = nn.Identity()  # tokens -> themselves; aligned when the target is those tokens
    repa.target = lambda x: tokens_after(model, 1, x0, t, y).detach()
    terms = repa.loss(x0, lambda: {"loss": model(x0, t, y).square().mean((1, 2, 3))})
    assert torch.allclose(terms["repa"], torch.zeros(2), atol=1e-6)
    assert target.shape == (2, 16, 6)


def tokens_after(model, k, x, t, y):
    tokens, cond = model.embed(x, t, y)
    for block in model.blocks[:k]:
        tokens = block(tokens, cond.c, cond.shared, cond.context)
    return tokens


def test_hook_captures_block_k_tokens_and_leaves_the_forward_unchanged():
    model = trained_like().eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.full((2,), 400), torch.tensor([2, 0])
    with torch.no_grad():
        before = model(x, t, y)
    repa = REPA(model, ConvEncoder(), depth=1, weight=1.0, width=8)  # block 2 runs after the captured one
    captured = {}

    def run():
        captured["out"] = model(x, t, y)
        captured["tokens"] = repa._tokens
        return {"loss": captured["out"].mean((1, 2, 3))}

    with torch.no_grad():
        repa.loss(x, run)
        torch.testing.assert_close(captured["tokens"], tokens_after(model, 1, x, t, y), rtol=0, atol=0)
        assert torch.equal(captured["out"], before)
        model(x, t, y)  # outside the loss the hook is disarmed: nothing is kept
    assert repa._tokens is None
    with pytest.raises(ValueError, match="repa_depth"):
        REPA(model, ConvEncoder(), depth=9, weight=1.0, width=8)


def test_gradient_reaches_only_the_trainable_parts():
    model = trained_like(learn_sigma=False)
    encoder = ConvEncoder().requires_grad_(True)  # REPA must freeze it even if handed trainable
    repa = REPA(model, encoder, depth=1, weight=1.0, width=8)
    objective = ObjectiveSpec(kind="flow", learn_sigma=False).build()
    x0, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    t = torch.rand(4, generator=torch.Generator().manual_seed(0))
    terms = repa.loss(
        x0, lambda: objective.loss(model, x0, model_kwargs={"y": y}, t=t, noise=torch.randn_like(x0))
    )
    terms["repa"].mean().backward()  # the alignment term alone
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in repa.projector.parameters())
    assert model.x_embedder.proj.weight.grad.abs().sum() > 0  # it reaches the DiT below block k
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.blocks[0].parameters())
    assert all(p.grad is None for p in model.blocks[1].parameters())  # and nothing above it
    assert all(p.grad is None for p in model.final_layer.parameters())
    assert terms["loss"].shape == (4,) and torch.allclose(
        terms["loss"] - terms["mse"], terms["repa"].detach()
    )


def test_feature_cache_encodes_each_image_once_and_respects_its_budget():
    calls = []
    encoder = ConvEncoder().requires_grad_(False)

    def encode(x):
        calls.append(x.shape[0])
        return to_grid(encoder(x), (4, 4))

    x = torch.randn(6, 1, 8, 8)
    cache = FeatureCache(budget_bytes=10**6)
    first = cache.features(x[:4], encode)
    second = cache.features(x[2:], encode)  # two seen, two new
    assert calls == [4, 2]
    torch.testing.assert_close(second[:2], first[2:], atol=1e-2, rtol=1e-2)  # float16 storage
    torch.testing.assert_close(second, encode(x[2:]), atol=1e-2, rtol=1e-2)
    small = FeatureCache(budget_bytes=2 * 16 * 6 * 2)  # room for two images
    small.features(x[:4], encode)
    assert len(small.entries) == 2 and small.used <= small.budget
    assert torch.equal(FeatureCache(0).features(x, encode), encode(x))  # off: always computed


def test_effnet_encoder_gives_a_map_on_the_token_grid():
    encoder = EffNetEncoder((4, 4))
    assert encoder.size == (64, 64)  # 16 px per token
    fmap = encoder(torch.rand(2, 1, 8, 8) * 2 - 1)
    assert fmap.shape == (2, EffNetEncoder.dim, 4, 4)
    assert not any(p.requires_grad for p in encoder.parameters())
    repa = REPA(trained_like(), encoder, depth=1, weight=1.0, width=8).train()
    assert repa.projector.training and not any(m.training for m in repa.encoder.modules())
    assert EffNetEncoder((14, 14)).size == (224, 224) and EffNetEncoder((32, 32)).size == (256, 256)
