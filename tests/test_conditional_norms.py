"""Defining properties of the classical conditional norms: AdaIN, CBN, FiLM, SPADE, AdaGN."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ditlab.nn.conditional_norms import (
    SPADE,
    AdaGN,
    AdaIN,
    ClassConditionalBatchNorm2d,
    ConditionalBatchNorm2d,
    FiLM,
    StyleAdaIN,
    adain,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(module: nn.Module) -> None:
    """Give every parameter non-trivial values so that zero-initialized projections do something."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def _channel_stats(x):
    var, mean = torch.var_mean(x, dim=(2, 3), correction=0)
    return mean, var.sqrt()


# ---------------------------------------------------------------------------------------------- AdaIN


def test_adain_output_has_style_channel_mean_and_std():
    x = torch.randn(3, 5, 8, 8) * 2 + 1
    style = torch.randn(3, 5, 6, 10) * torch.rand(3, 5, 1, 1) * 3 - 2  # other spatial size, other stats
    out = AdaIN(eps=1e-8)(x, style)
    assert out.shape == x.shape
    out_mean, out_std = _channel_stats(out)
    style_mean, style_std = _channel_stats(style)
    torch.testing.assert_close(out_mean, style_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_std, style_std, atol=1e-5, rtol=1e-4)


def test_adain_is_instance_norm_then_style_affine_and_broadcasts_one_style():
    x = torch.randn(4, 3, 5, 5)
    style = torch.randn(1, 3, 7, 7)
    s_mean, s_std = _channel_stats(style)
    expected = F.instance_norm(x, eps=1e-5) * s_std[..., None, None] + s_mean[..., None, None]
    torch.testing.assert_close(adain(x, style), expected, atol=1e-5, rtol=1e-5)
    assert list(AdaIN().parameters()) == []


def test_adain_validates_inputs():
    with pytest.raises(ValueError, match="channels"):
        adain(torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="style batch"):
        adain(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        adain(torch.randn(2, 3, 4), torch.randn(2, 3, 4, 4))


def test_style_adain_formula_and_instance_norm_at_zero_style():
    layer = StyleAdaIN(num_features=6, w_dim=4)
    x = torch.randn(2, 6, 5, 5)
    # Zero style vector: the y_s bias starts at 1, y_b at 0, so the layer is plain instance norm.
    torch.testing.assert_close(layer(x, torch.zeros(2, 4)), F.instance_norm(x, eps=1e-5))
    _randomize(layer)
    w = torch.randn(2, 4)
    y = w @ layer.affine.weight.T + layer.affine.bias
    y_s, y_b = y[:, :6, None, None], y[:, 6:, None, None]
    torch.testing.assert_close(layer(x, w), y_s * F.instance_norm(x, eps=1e-5) + y_b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        layer(x, torch.randn(2, 5))


# ---------------------------------------------------------------------------------------------- CBN


@pytest.mark.parametrize("hidden_dim", [None, 16])
def test_cbn_starts_equal_to_batchnorm_in_train_and_eval(hidden_dim):
    cbn = ConditionalBatchNorm2d(4, cond_dim=8, hidden_dim=hidden_dim)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():  # same non-trivial base gamma, beta in both
        cbn.weight.copy_(torch.randn(4))
        cbn.bias.copy_(torch.randn(4))
        bn.weight.copy_(cbn.weight)
        bn.bias.copy_(cbn.bias)
    cond = torch.randn(5, 8)
    for _ in range(3):  # train mode: batch statistics, running stats updated identically
        x = torch.randn(5, 4, 6, 6) * 3 + 2
        torch.testing.assert_close(cbn(x, cond), bn(x))
    torch.testing.assert_close(cbn.bn.running_mean, bn.running_mean)
    torch.testing.assert_close(cbn.bn.running_var, bn.running_var)
    cbn.eval(), bn.eval()
    x = torch.randn(5, 4, 6, 6)
    torch.testing.assert_close(cbn(x, cond), bn(x))


@pytest.mark.parametrize("training", [True, False])
def test_cbn_condition_shifts_gamma_beta_exactly_as_projected(training):
    cbn = ConditionalBatchNorm2d(4, cond_dim=8, hidden_dim=16)
    _randomize(cbn)
    with torch.no_grad():
        cbn.bn.running_mean.copy_(torch.randn(4))
        cbn.bn.running_var.copy_(torch.rand(4) + 0.5)
    cbn.train(training)
    x, cond = torch.randn(5, 4, 6, 6), torch.randn(5, 8)
    lin1, lin2 = cbn.delta[0], cbn.delta[2]
    delta = torch.relu(cond @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias  # (N, 2C)
    gamma = (cbn.weight + delta[:, :4])[:, :, None, None]
    beta = (cbn.bias + delta[:, 4:])[:, :, None, None]
    rm, rv = cbn.bn.running_mean.clone(), cbn.bn.running_var.clone()
    normed = F.batch_norm(x, rm, rv, training=training, eps=1e-5)
    torch.testing.assert_close(cbn(x, cond), normed * gamma + beta, atol=1e-5, rtol=1e-5)
    # Different conditions in one batch give different outputs for the same input.
    same_x = x[:1].expand(2, -1, -1, -1)
    cbn.eval()
    out = cbn(same_x, torch.randn(2, 8))
    assert not torch.allclose(out[0], out[1])


def test_class_conditional_bn_uses_per_class_tables():
    cbn = ClassConditionalBatchNorm2d(3, num_classes=4)
    x, labels = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    torch.testing.assert_close(cbn(x, labels), F.batch_norm(x, None, None, training=True, eps=1e-5))
    _randomize(cbn)
    table = cbn.delta.weight  # (num_classes, 2C)
    gamma = (cbn.weight + table[labels, :3])[:, :, None, None]
    beta = (cbn.bias + table[labels, 3:])[:, :, None, None]
    expected = F.batch_norm(x, None, None, training=True, eps=1e-5) * gamma + beta
    torch.testing.assert_close(cbn(x, labels), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cbn(x, torch.tensor([0, 1, 2, 3, 4, 0]))
    with pytest.raises(TypeError, match="integer"):
        cbn(x, labels.float())


def test_cbn_validates_inputs():
    cbn = ConditionalBatchNorm2d(4, cond_dim=8)
    with pytest.raises(ValueError, match="4"):
        cbn(torch.randn(2, 3, 4, 4), torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        cbn(torch.randn(2, 4, 4, 4), torch.randn(2, 7))
    with pytest.raises(ValueError, match="batch"):
        cbn(torch.randn(2, 4, 4, 4), torch.randn(3, 8))


# ---------------------------------------------------------------------------------------------- FiLM


def test_film_exact_formula_and_identity_at_init():
    film = FiLM(5, cond_dim=3)
    x, cond = torch.randn(2, 5, 4, 4), torch.randn(2, 3)
    torch.testing.assert_close(film(x, cond), x)  # identity_init
    _randomize(film)
    gb = cond @ film.proj.weight.T + film.proj.bias
    gamma, beta = gb[:, :5, None, None], gb[:, 5:, None, None]
    torch.testing.assert_close(film(x, cond), gamma * x + beta)
    # Also applies to (N, C) vectors and (N, C, L) sequences: per channel, broadcast over the rest.
    v = torch.randn(2, 5)
    torch.testing.assert_close(film(v, cond), gb[:, :5] * v + gb[:, 5:])
    assert film(torch.randn(2, 5, 7), cond).shape == (2, 5, 7)


def test_film_validates_inputs():
    film = FiLM(5, cond_dim=3)
    with pytest.raises(ValueError, match=r"\(N, 5, \.\.\.\)"):
        film(torch.randn(2, 4, 3, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        film(torch.randn(2, 5, 3, 3), torch.randn(2, 3, 1))


# ---------------------------------------------------------------------------------------------- SPADE


def test_spade_defaults_hidden_128_and_3x3():
    spade = SPADE(16, label_nc=3)
    assert spade.shared[0].out_channels == 128
    assert spade.shared[0].kernel_size == (3, 3)
    assert spade.gamma.in_channels == spade.beta.in_channels == 128
    assert spade.gamma.out_channels == spade.beta.out_channels == 16
    assert spade.param_free_norm.weight is None  # parameter-free


def test_spade_modulation_follows_the_mask_regions():
    spade = SPADE(4, label_nc=2, hidden=8)
    _randomize(spade)
    # Inputs constant over space (different per sample) so the normalized map is spatially constant and any
    # spatial variation of the output comes from gamma(m), beta(m).
    x = torch.randn(2, 4, 1, 1).expand(-1, -1, 16, 16).contiguous()
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, :, 8:] = 1  # left half class 0, right half class 1
    out = spade(x, labels)
    # Receptive field of the two 3x3 convs is 5x5: pick interior points at least 3 px from any edge/boundary.
    left, right = out[:, :, 3:13, 3:5], out[:, :, 3:13, 11:13]
    torch.testing.assert_close(left, left[:, :, :1, :1].expand_as(left))
    torch.testing.assert_close(right, right[:, :, :1, :1].expand_as(right))
    assert (left[:, :, 0, 0] - right[:, :, 0, 0]).abs().min() > 1e-4
    # Float one-hot map gives the same result as the integer label map.
    onehot = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(spade(x, onehot), out)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_spade_resizes_mask_nearest_and_formula(norm):
    spade = SPADE(4, label_nc=3, hidden=8, norm=norm)
    _randomize(spade)
    x = torch.randn(2, 4, 16, 16)
    small = torch.randint(0, 3, (2, 8, 8))
    big = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # nearest 2x upsampling by hand
    out = spade(x, small)
    torch.testing.assert_close(out, spade(x, big))
    # Formula: paramfree_norm(x) * (1 + gamma) + beta.
    m = F.one_hot(big, 3).permute(0, 3, 1, 2).float()
    actv = torch.relu(spade.shared[0](m))
    if norm == "batch":
        normed = F.batch_norm(x, None, None, training=True, eps=1e-5)
    else:
        normed = F.instance_norm(x, eps=1e-5)
    torch.testing.assert_close(out, normed * (1 + spade.gamma(actv)) + spade.beta(actv))
    # A larger mask than the feature map also works (downsampled).
    assert spade(x, torch.randint(0, 3, (2, 40, 24))).shape == x.shape


def test_spade_validates_inputs():
    spade = SPADE(4, label_nc=3, hidden=8)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        spade(x, torch.rand(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        spade(x, torch.full((2, 8, 8), 3))
    with pytest.raises(ValueError, match="batch"):
        spade(x, torch.zeros(3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown norm 'group'; valid: batch, instance"):
        SPADE(4, 3, norm="group")


# ---------------------------------------------------------------------------------------------- AdaGN


def test_adagn_equals_groupnorm_at_zero_projection_and_matches_formula():
    layer = AdaGN(64, emb_dim=10, zero_init=True)
    assert layer.norm.num_groups == 32
    _randomize(layer.norm)
    h, emb = torch.randn(2, 64, 5, 5), torch.randn(2, 10)
    gn = nn.GroupNorm(32, 64)
    gn.load_state_dict(layer.norm.state_dict())
    torch.testing.assert_close(layer(h, emb), gn(h))
    _randomize(layer.proj)
    lin = layer.proj[1]
    ss = F.silu(emb) @ lin.weight.T + lin.bias
    scale, shift = ss[:, :64, None, None], ss[:, 64:, None, None]
    torch.testing.assert_close(layer(h, emb), gn(h) * (1 + scale) + shift, atol=1e-5, rtol=1e-5)


def test_adagn_group_count_must_divide_channels():
    with pytest.raises(ValueError, match="num_groups=32 does not divide num_features=48.*num_groups=24"):
        AdaGN(48, emb_dim=8)
    assert AdaGN(48, emb_dim=8, num_groups=24).norm.num_groups == 24
    with pytest.raises(ValueError, match=r"shape \(N, 8\)"):
        AdaGN(64, emb_dim=8)(torch.randn(2, 64, 4, 4), torch.randn(2, 9))


def test_adagn_keeps_input_dtype():
    layer = AdaGN(32, emb_dim=4).to(torch.bfloat16)
    out = layer(torch.randn(2, 32, 4, 4, dtype=torch.bfloat16), torch.randn(2, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "make, cond",
    [
        (lambda: StyleAdaIN(8, 6), lambda: torch.randn(2, 6)),
        (lambda: ConditionalBatchNorm2d(8, 6, hidden_dim=12), lambda: torch.randn(2, 6)),
        (lambda: ClassConditionalBatchNorm2d(8, 3), lambda: torch.tensor([0, 2])),
        (lambda: FiLM(8, 6), lambda: torch.randn(2, 6)),
        (lambda: SPADE(8, 3, hidden=16), lambda: torch.randint(0, 3, (2, 4, 4))),
        (lambda: AdaGN(8, 6, num_groups=4, zero_init=True), lambda: torch.randn(2, 6)),
    ],
)
def test_gradient_reaches_every_conditioning_parameter(make, cond):
    layer = make()
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    # A loss that is not invariant to the affine part (normalized outputs have fixed mean/var per channel).
    (layer(x, cond()) * torch.randn(2, 8, 6, 6)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Zero-initialized output layers block the gradient to layers before them at step 0, so check the
    # parameters that receive it at initialization: every layer's own weights feeding the output directly.
    grads = {n: p.grad for n, p in layer.named_parameters()}
    assert grads, "layer has parameters"
    direct = [n for n in grads if not n.startswith("delta.0")]  # CBN's hidden layer sits behind a zero layer
    for name in direct:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
