"""The text-to-image architectures, as parts of the one Block and one backbone: pooled (SD3's pooled text into
adaLN-Zero), PixArt (cross-attention, adaLN-single), MMDiT (SD3's dual stream), Flux (single stream, parallel
block; optionally after double-stream blocks) and Z-Image (shift-free tanh gates, sandwich RMSNorm, context
refiner). Shapes, identity at init, gradients to every parameter, padding masks, presets' counts and Gflops."""

import pytest
import torch
from torch.utils import flop_counter

from ditlab.models import DiT, create_model, flop_breakdown, flops
from ditlab.models.dit import Block, ContextStream
from ditlab.nn.attention import JointAttention

TEXT_DIM, POOLED_DIM, L = 10, 12, 5
S3DIT_ONLY = dict(
    mlp="gelu",
    mlp_ratio=4.0,
    attn_bias=True,
    norm_affine=False,
    cond_dim=0,
    timestep_mid=0,
    adaln_act=True,
    final_norm="",
    text_embedder="linear",
    noise_refiner=0,
    rope=False,
    rope_lead=0,
    rope_sequence_axis=False,
)
# Nano sizes (2 blocks, width 64, 4 heads) of each zoo architecture, on 8×8 two-channel inputs.
ARCHS = {
    "pooled": ("Pooled-Nano/2", dict(pooled_dim=POOLED_DIM)),
    "pixart": ("PixArt-Nano/2", dict(text_dim=TEXT_DIM)),
    "mmdit": ("MMDiT-Nano/2", dict(pooled_dim=POOLED_DIM, text_dim=TEXT_DIM, qk_norm=True)),
    "flux": ("Flux-Nano/2", dict(pooled_dim=POOLED_DIM, text_dim=TEXT_DIM)),
    "flux-double": ("Flux-Nano/2", dict(pooled_dim=POOLED_DIM, text_dim=TEXT_DIM, depth=3, double_blocks=1)),
    "zimage": ("ZImage-Nano/2", dict(text_dim=TEXT_DIM, context_refiner=1, noise_refiner=1)),
    # the S3-DiT block alone (GELU MLP, biases, unweighted norms, no noise refiner, no rotary positions)
    "s3dit": ("ZImage-Nano/2", dict(text_dim=TEXT_DIM, context_refiner=1, **S3DIT_ONLY)),
    # the DiT paper's cross-attention block reading [t, pooled] tokens and the text tokens after them
    "dit-cross": (
        "DiT-Nano/2",
        dict(
            conditioning="cross-attention",
            num_classes=0,
            pooled_dim=POOLED_DIM,
            text_dim=TEXT_DIM,
            text_mixing="cross-attention",
        ),
    ),
    # a condition narrower than the tokens (Z-Image: 256-d), with a wider timestep MLP
    "zimage-narrow": (
        "ZImage-Nano/2",
        dict(text_dim=TEXT_DIM, context_refiner=1, cond_dim=32, timestep_mid=48),
    ),
}
ZERO_INIT = (
    "pooled",
    "mmdit",
    "flux",
    "flux-double",
    "zimage",
    "s3dit",
    "zimage-narrow",
)  # zero gates at init
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)


def tiny(arch: str, **overrides) -> DiT:
    name, fields = ARCHS[arch]
    torch.manual_seed(0)
    return create_model(name, input_size=8, in_channels=2, **{**fields, **overrides})


def inputs(model: DiT, seed: int = 1) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(3, 2, 8, 8, generator=g), torch.tensor([3.0, 400.0, 999.0])
    kw = {}
    if model.config.pooled_dim:
        kw["pooled"] = torch.randn(3, POOLED_DIM, generator=g)
    if model.config.has_text:
        kw["text"], kw["text_mask"] = torch.randn(3, L, TEXT_DIM, generator=g), MASK
    return (x, t), kw


def perturbed(model: DiT) -> DiT:
    """Every weight moved off its init (zero-initialised gates and outputs would block gradients)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_forward_shapes(arch):
    model = tiny(arch).eval()
    args, kw = inputs(model)
    with torch.no_grad():
        out = model(*args, **kw)
    assert out.shape == (3, 4, 8, 8)  # ε and the learned variance
    assert torch.equal(out, torch.zeros_like(out))  # the output layer starts at zero
    with torch.no_grad():
        assert perturbed(model)(*args, **kw).abs().sum() > 0


@pytest.mark.parametrize("arch", ZERO_INIT)
def test_blocks_start_as_the_identity(arch):
    model = tiny(arch).eval()
    args, kw = inputs(model)
    with torch.no_grad():
        tokens, cond = model.embed(*args, **kw)
        assert torch.equal(model.run_blocks(tokens, cond)[:, : tokens.shape[1]], tokens)
        if model.noise_refiner is not None:  # Z-Image's image-only blocks start as the identity too
            image = model.x_embedder(args[0])
            assert torch.equal(model.noise_refiner[0](image, cond.c, rope=None), image)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_parameter_gets_a_gradient(arch):
    model = perturbed(tiny(arch)).train()
    args, kw = inputs(model)
    model(*args, **kw).square().sum().backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert missing == []


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - {"pooled"}))
def test_padding_tokens_do_not_change_the_output(arch):
    model = perturbed(tiny(arch)).eval()
    args, kw = inputs(model)
    with torch.no_grad():
        out = model(*args, **kw)
        padded = kw["text"].clone()
        padded[~MASK] = 100 * torch.randn(int((~MASK).sum()), TEXT_DIM)  # change only the padding
        torch.testing.assert_close(model(*args, **{**kw, "text": padded}), out, atol=1e-5, rtol=1e-5)
        real = kw["text"].clone()
        real[0, 0] += 1.0  # a real token of sample 0 changes sample 0 only
        moved = model(*args, **{**kw, "text": real})
        assert not torch.allclose(moved[0], out[0], atol=1e-4)
        torch.testing.assert_close(moved[1:], out[1:], atol=1e-6, rtol=1e-6)
        # without a mask the padding is attended to
        assert not torch.allclose(model(*args, **{**kw, "text_mask": None}), out, atol=1e-4)


def test_mmdit_is_the_one_block_with_a_context_stream_and_a_pre_only_last_block():
    model = tiny("mmdit")
    first, last = model.blocks
    assert isinstance(first, Block) and isinstance(first.context_stream, ContextStream)
    assert isinstance(first.attn, JointAttention) and first.attn.context_proj is not None
    assert first.context_stream.adaLN_modulation[1].out_features == 6 * 64  # 6 + 6 modulations
    assert (
        last.attn.context_pre_only and last.context_stream.mlp is None and last.context_stream.norm2 is None
    )
    assert last.context_stream.adaLN_modulation[1].out_features == 2 * 64  # shift, scale only
    assert first.attn.q_norm is not None and first.attn.context_q_norm is not None  # QK RMSNorm
    assert last.attn.context_q_norm is None  # no context queries in the pre-only block


def test_pixart_shares_one_projection_and_reads_text_after_self_attention():
    model = tiny("pixart")
    assert model.adaLN_single.t_block[1].out_features == 6 * 64
    for block in model.blocks:
        assert block.adaLN_table.scale_shift_table.shape == (6, 64) and block.adaLN_modulation is None
        assert block.cross_attn is not None and block.norm_cross is None  # PixArt: no norm before it
    assert model.text_embedder.kind == "mlp"  # caption projection: Linear, GELU(tanh), Linear


def test_single_stream_blocks():
    flux, zimage, double = tiny("flux"), tiny("zimage"), tiny("flux-double")
    for block in flux.blocks:
        assert block.parallel and block.norm2 is None
        assert block.adaLN_modulation[1].out_features == 3 * 64  # shift, scale, gate
    assert flux.pos_embed is None  # rotary positions
    for block in zimage.blocks:
        assert block.adaLN_modulation[1].out_features == 4 * 64  # scale, gate × 2: no shift
        assert block.gate_fn == "tanh" and block.post_norm1 is not None and block.post_norm2 is not None
    assert len(zimage.context_refiner) == 1 and zimage.context_refiner[0].adaLN_modulation is None
    assert double.blocks[0].context_stream is not None and not double.blocks[0].attn.context_pre_only
    assert double.blocks[1].parallel and double.blocks[1].context_stream is None


def test_text_inputs_are_checked():
    model = tiny("mmdit")
    args, kw = inputs(model)
    with pytest.raises(ValueError, match="text-conditioned: pass text="):
        model(*args, pooled=kw["pooled"])
    with pytest.raises(ValueError, match="text_dim=10"):
        model(*args, pooled=kw["pooled"], text=torch.randn(3, L, 7))
    with pytest.raises(ValueError, match="text_mask must have shape"):
        model(*args, **{**kw, "text_mask": MASK[:, :2]})
    plain = tiny("pooled")
    args, kw = inputs(plain)
    with pytest.raises(ValueError, match="takes no text tokens"):
        plain(*args, **kw, text=torch.randn(3, L, TEXT_DIM))


def test_configs_refuse_what_they_cannot_hold():
    with pytest.raises(ValueError, match="text tokens need both"):
        create_model("DiT-Nano/2", text_dim=8)
    with pytest.raises(ValueError, match="text_mixing='joint'"):
        create_model("MMDiT-Nano/2", conditioning="adaln-single")
    with pytest.raises(ValueError, match="double_blocks"):
        create_model("MMDiT-Nano/2", double_blocks=1)
    with pytest.raises(ValueError, match="unknown text_mixing"):
        create_model("MMDiT-Nano/2", text_mixing="sideways")
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        create_model("MMDiT-Nano/2", input_size=32, pos_embed_max_size=8)


def test_rotary_positions_move_with_the_image_grid():
    """With rope the model has no position table; a token's position changes its output (not permutation-blind)."""
    model = perturbed(tiny("flux")).eval()
    args, kw = inputs(model)
    with torch.no_grad():
        out = model(*args, **kw)
        flipped = model(args[0].flip(-1), args[1], **kw).flip(-1)
    assert not torch.allclose(out, flipped, atol=1e-4)


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


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_analytic_flops_equal_the_counted_multiply_adds(arch):
    model = tiny(arch).eval()
    args, kw = inputs(model)
    kw.pop("text_mask", None)  # the count is of full-length captions
    with torch.no_grad():
        macs = count_macs(lambda: model(*args, **kw))
    b = flop_breakdown(model, text_len=L)
    # the counter sees every matmul, conv and attention, no norm (the paper's one op per norm element)
    assert macs == pytest.approx(3 * (b["total"] - b["norms"]), rel=1e-12)


# name -> (parameters, Gflops at 256 px with 32 text tokens of 384 dims)
PRESETS = {
    "Pooled-S/2": (32_874_656, 6.058),
    "PixArt-S/2": (29_946_272, 7.152),
    "MMDiT-S/2": (62_873_504, 6.859),
    "Flux-S/2": (27_603_488, 6.899),
    "ZImage-S/2": (34_656_032, 8.026),
    "MMDiT-XL/2": (1_326_943_904, 133.820),
    "PixArt-XL/2": (606_874_784, 140.409),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_parameter_counts_and_gflops(name):
    params, gflops = PRESETS[name]
    with torch.device("meta"):  # shapes only
        model = create_model(name)
    assert model.num_parameters() == params
    assert flops(model) == pytest.approx(gflops, abs=5e-4)


@pytest.mark.parametrize("arch", ["mmdit", "flux-double", "zimage"])
def test_gradient_checkpointing_and_fast_paths_change_nothing(arch):
    """The text stream threads through checkpointed blocks; the in-place fast paths equal the plain path."""
    model = perturbed(tiny(arch)).train()
    args, kw = inputs(model)
    model(*args, **kw).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing = True
    model(*args, **kw).square().sum().backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)
    model.eval()
    with torch.no_grad():
        fast = model(*args, **kw)
        model.fast_paths = False
        torch.testing.assert_close(model(*args, **kw), fast, atol=1e-6, rtol=1e-6)
