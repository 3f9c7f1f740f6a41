"""The one Block's parts: unused parts are None fields, the attention and MLP modules take DyDiT's masks and
sliced weights themselves, DiffFit's scale keeps DiffFit's parameter name, the parallel arrangement (Flux's
single-stream block) is a part of the same Block, and the DyDiT package holds no block body."""

from pathlib import Path

import pytest
import torch
from torch.utils import flop_counter

import ditlab.dydit
from ditlab.dydit import DyDiT
from ditlab.finetune import BranchScale, DiffFitScale, prepare_model
from ditlab.models import create_model, flop_breakdown
from ditlab.nn.attention import Attention, Mlp

PARTS = ("adaLN_modulation", "adaLN_table", "norm_cross", "cross_attn", "post_norm1", "post_norm2")
USED = {
    "adaln-zero": {"adaLN_modulation"},
    "adaln-single": {"adaLN_table"},
    "adaln-tanh-rms": {"adaLN_modulation", "post_norm1", "post_norm2"},
    "cross-attention": {"norm_cross", "cross_attn"},
    "in-context": set(),
}


def tiny(variant="adaln-zero", **kw):
    torch.manual_seed(0)
    return create_model("DiT-Nano/2", variant=variant, input_size=8, in_channels=1, num_classes=10, **kw)


@pytest.mark.parametrize("variant", sorted(USED))
def test_parts_a_config_does_not_use_are_none_fields(variant):
    model = tiny(variant)
    for block in model.blocks:
        assert {name for name in PARTS if getattr(block, name) is not None} == USED[variant]
    final = model.final_layer
    assert (final.adaLN_modulation is not None) == (variant in ("adaln-zero", "adaln-tanh-rms"))
    assert (final.adaLN_table is not None) == (variant == "adaln-single")


def test_attention_takes_head_masks_and_sliced_heads():
    torch.manual_seed(0)
    attn, x = Attention(32, 4), torch.randn(2, 5, 32)
    with torch.no_grad():
        plain = attn(x)
        assert torch.equal(attn(x, head_mask=torch.ones(2, 4)), plain)
        assert torch.equal(attn(x, weights=attn.sliced((0, 1, 2, 3))), plain)
        mask = torch.tensor([[1.0, 0, 1, 0], [1, 0, 1, 0]])
        sliced = attn.sliced((0, 2))
        assert sliced.heads == 2 and sliced.qkv_weight.shape == (3 * 2 * 8, 32)
        torch.testing.assert_close(attn(x, weights=sliced), attn(x, head_mask=mask), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(attn(x, head_mask=mask), plain, atol=1e-3)


def test_mlp_takes_group_masks_and_sliced_groups():
    torch.manual_seed(0)
    mlp, x = Mlp(16, 64), torch.randn(2, 5, 16)
    with torch.no_grad():
        plain = mlp(x)
        assert torch.equal(mlp(x, group_mask=torch.ones(2, 4)), plain)
        assert torch.equal(mlp(x, weights=mlp.sliced((0, 1, 2, 3), 4)), plain)
        mask = torch.tensor([[0.0, 1, 0, 1], [0, 1, 0, 1]])
        sliced = mlp.sliced((1, 3), 4)
        assert sliced.fc1_weight.shape == (32, 16)
        torch.testing.assert_close(mlp(x, weights=sliced), mlp(x, group_mask=mask), atol=1e-6, rtol=1e-6)
        assert not torch.allclose(mlp(x, group_mask=mask), plain, atol=1e-3)


@pytest.mark.parametrize("variant", ["adaln-zero", "adaln-tanh-rms"])
def test_difffit_scale_is_named_for_difffit_and_keeps_its_saved_names(variant):
    model = prepare_model(tiny(variant), "difffit", gamma_blocks="all")
    scaled = "attn" if variant == "adaln-zero" else "post_norm1"  # γ sits right before the gate
    assert isinstance(getattr(model.blocks[1], scaled), DiffFitScale) and BranchScale is DiffFitScale
    names = [n for n, _ in model.named_parameters()]  # adapter files store γ under these names
    assert (
        f"blocks.1.{scaled}.gamma" in names
        and f"blocks.1.{'mlp' if scaled == 'attn' else 'post_norm2'}.gamma" in names
    )


# ---------------------------------------------------------------- the parallel arrangement (Flux single stream)
def perturbed(model, std=0.2):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", ["adaln-zero", "adaln-single", "in-context"])
def test_parallel_block_adds_one_gated_branch_of_attention_plus_mlp(variant):
    model = perturbed(tiny(variant, arrangement="parallel")).eval()
    block = model.blocks[0]
    assert block.norm2 is None and block.parallel
    x, c = torch.randn(2, 16, 64), torch.randn(2, 64)
    shared = model.adaLN_single(c) if model.adaLN_single is not None else None
    with torch.no_grad():
        (m,) = block.modulations(c, shared)
        h = m.apply(block.norm1(x))
        expected = x + m.gated(block.attn(h) + block.mlp(h))  # the MLP reads h, not the attention-updated x
        assert torch.equal(block(x, c, shared), expected)
        sequential = x + m.gated(block.attn(h))
        assert not torch.allclose(expected, sequential + m.gated(block.mlp(m.apply(block.norm1(sequential)))))


def test_parallel_adaln_zero_starts_as_identity_and_trains_every_parameter():
    model = tiny("adaln-zero", arrangement="parallel")
    assert model.blocks[0].adaLN_modulation[1].weight.shape == (3 * 64, 64)  # shift, scale, gate: one branch
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    with torch.no_grad():
        tokens, cond = model.embed(x, t, y)
        assert torch.equal(model.run_blocks(tokens, cond), tokens)  # every gate starts at 0
    model = perturbed(model).train()
    model(x, t, y).square().sum().backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert missing == []


def count_macs(fn) -> float:
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: (
            flop_counter.sdpa_flop_count(q, k, v)
        )
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("arrangement", ["sequential", "parallel"])
def test_analytic_flops_count_the_arrangement(arrangement):
    model = tiny("adaln-zero", arrangement=arrangement).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        macs = count_macs(lambda: model(x, t, y))
    b = flop_breakdown(model)
    # the counter sees every matmul, conv and attention, no norm; the label lookup is no matmul either
    assert macs == pytest.approx(3 * (b["total"] - b["norms"]), rel=1e-12)
    assert b["norms"] == 2 * (model.config.branches * 16 * 64) + 16 * 64


@pytest.mark.parametrize(
    "options",
    [
        dict(mlp="swiglu"),
        dict(mlp="swiglu", mlp_two_thirds=True),
        dict(qk_norm=True),
        dict(rope=True),
        dict(rope=True, pos_embed="sincos", qk_norm=True, mlp="swiglu"),
    ],
    ids=["swiglu", "swiglu-two-thirds", "qk-norm", "rope", "all"],
)
def test_analytic_flops_count_each_block_option(options):
    """The counter sees every matmul (SwiGLU's three), none of the rotations or norms; the analytic norms add
    the q and k RMSNorms (one op per element of 2·T·D per block) to the token norms."""
    model = tiny("adaln-zero", **options).eval()
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        macs = count_macs(lambda: model(x, t, y))
    b = flop_breakdown(model)
    assert macs == pytest.approx(3 * (b["total"] - b["norms"]), rel=1e-12)
    qk = 2 * 16 * 64 if options.get("qk_norm") else 0
    assert b["norms"] == 2 * (2 * 16 * 64 + qk) + 16 * 64
    assert b["mlp"] == 2 * 16 * 64 * model.config.mlp_hidden * (3 if options.get("mlp") else 2)


def test_parallel_arrangement_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="cross-attention layer or sandwich norms"):
        tiny("cross-attention", arrangement="parallel")
    with pytest.raises(ValueError, match="unknown arrangement 'diagonal'"):
        tiny(arrangement="diagonal")
    with pytest.raises(ValueError, match="arrangement='sequential'"):
        DyDiT.from_dit(tiny(arrangement="parallel"))


def test_the_dydit_package_holds_no_block_body():
    """DyDiT decides routes; the norms, modulation, attention, MLP and residuals run in the Block only."""
    body = ("scaled_dot_product_attention", "F.linear", "F.gelu", ".norm1(", ".norm2(", ".apply(", ".gated(")
    for path in Path(ditlab.dydit.__file__).parent.glob("*.py"):
        source = path.read_text()
        assert [s for s in body if s in source] == [], path.name
