"""Token norms and the adaLN family: each layer's defining property."""

import pytest
import torch

from ditlab.nn import (
    AdaLNModulation,
    AdaLNSingle,
    AdaptiveNorm,
    RMSNorm,
    ScaleShiftTable,
    make_norm,
    modulate,
)


def test_modulate_formula_and_shift_free():
    x, shift, scale = torch.randn(2, 5, 8), torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])
    torch.testing.assert_close(modulate(x, None, scale), x * (1 + scale[:, None]))


def test_layernorm_has_no_affine_and_rmsnorm_formula():
    ln = make_norm("layernorm", 8)
    assert sum(p.numel() for p in ln.parameters()) == 0
    x = torch.randn(3, 4, 8) * 5 + 2
    y = ln(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    rms = RMSNorm(8, eps=0.0)
    with torch.no_grad():
        rms.weight.copy_(torch.linspace(0.5, 2, 8))
    expect = x / x.pow(2).mean(-1, keepdim=True).sqrt() * rms.weight
    torch.testing.assert_close(rms(x), expect)
    # RMSNorm does not centre: a constant input maps to ±1, not 0
    torch.testing.assert_close(
        RMSNorm(8, elementwise_affine=False)(torch.full((1, 8), 3.0)), torch.ones(1, 8)
    )
    with pytest.raises(ValueError, match="layernorm, rmsnorm"):
        make_norm("batchnorm", 8)


def test_adaln_scale_shift_come_from_the_condition():
    torch.manual_seed(0)
    layer = AdaptiveNorm(8, cond_dim=4)  # adaLN: shift and scale, no gate, ordinary init
    x, c = torch.randn(2, 5, 8), torch.randn(2, 4)
    y, gate = layer(x, c)
    assert gate is None
    proj = layer.modulation[1](torch.nn.functional.silu(c))
    shift, scale = proj.chunk(2, dim=1)
    torch.testing.assert_close(
        y, torch.nn.functional.layer_norm(x, (8,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    )
    # two different conditions give two different outputs for the same x
    y2, _ = layer(x, c.flip(0))
    assert not torch.allclose(y, y2)


def test_adaln_zero_is_zero_at_init_and_orders_chunks_like_dit():
    mod = AdaLNModulation(4, 8, branches=2, shift=True, gate=True, zero_init=True)
    (m1, m2) = mod(torch.randn(3, 4))
    for m in (m1, m2):
        assert torch.equal(m.shift, torch.zeros(3, 8)) and torch.equal(m.gate, torch.zeros(3, 8))
    # with a bias only, chunks are shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
    with torch.no_grad():
        mod[1].bias.copy_(torch.arange(6).repeat_interleave(8).float())
    (m1, m2) = mod(torch.randn(3, 4))
    assert [v[0, 0].item() for v in (*m1, *m2)] == [0, 1, 2, 3, 4, 5]
    assert m1.gated(torch.ones(3, 2, 8)).unique().item() == 2


def test_lumina_modulation_is_shift_free_with_tanh_gates():
    layer = AdaptiveNorm(8, cond_dim=4, norm="rmsnorm", shift=False, gate=True, zero_init=True)
    assert layer.modulation[1].out_features == 2 * 8  # scale and gate only
    x, c = torch.randn(2, 5, 8), torch.randn(2, 4)
    y, gate = layer(x, c)
    torch.testing.assert_close(y, RMSNorm(8, elementwise_affine=False)(x))  # scale 0 at init
    mod = AdaLNModulation(4, 8, branches=1, shift=False, gate=True, zero_init=False)
    (m,) = mod(c)
    assert m.shift is None
    h = torch.randn(2, 5, 8)
    torch.testing.assert_close(m.gated(h, "tanh"), torch.tanh(m.gate)[:, None] * h)
    assert m.gated(h * 1e6, "tanh").abs().max() <= 1e6 * h.abs().max()  # tanh keeps gates in (-1, 1)


def test_adaln_single_shares_one_projection_across_blocks():
    torch.manual_seed(0)
    shared_proj = AdaLNSingle(cond_dim=4, dim=8, n=6)
    tables = [ScaleShiftTable(8), ScaleShiftTable(8)]
    c = torch.randn(3, 4)
    shared = shared_proj(c)  # computed once
    assert shared.shape == (3, 48)
    for table in tables:
        m_attn, m_mlp = table(shared)
        rows = table.scale_shift_table
        torch.testing.assert_close(m_attn.shift, rows[0] + shared[:, :8])
        torch.testing.assert_close(m_mlp.gate, rows[5] + shared[:, 40:])
    # blocks differ only through their tables; the parameters of the projection exist once
    assert sum(p.numel() for p in shared_proj.parameters()) == 4 * 48 + 48
    assert sum(p.numel() for p in tables[0].parameters()) == 6 * 8
