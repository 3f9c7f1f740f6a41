"""The one Block's parts: unused parts are None fields, the attention and MLP modules take DyDiT's masks and
sliced weights themselves, and DiffFit's scale keeps DiffFit's parameter name."""

import pytest
import torch

from ditlab.finetune import BranchScale, DiffFitScale, prepare_model
from ditlab.finetune.adapter import adapter_parameter_names
from ditlab.models import create_model
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
    names = adapter_parameter_names(model)  # the tensor names adapter files were written with
    assert (
        f"blocks.1.{scaled}.gamma" in names
        and f"blocks.1.{'mlp' if scaled == 'attn' else 'post_norm2'}.gamma" in names
    )
