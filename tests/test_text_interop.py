"""diffusers text-to-image checkpoints both ways: SD3Transformer2DModel (MMDiT), PixArtTransformer2DModel
(cross-attention, adaLN-single), FluxTransformer2DModel (double-stream then single-stream blocks) and
ZImageTransformer2DModel (S3-DiT: refiners, then one stream with sandwich norms and tanh gates).

Each direction is checked on tiny random models: a diffusers model read by ditlab, and a ditlab model written
for diffusers, give the same outputs for the same inputs (fp32, ≤ 1e-5), in memory, through folders (also a
pipeline root), through `ditlab.load_model` and `ditlab convert`. Where ditlab differs on purpose, a test says
where and why."""

import json
import warnings

import pytest
import torch

import ditlab
from ditlab.models import create_model
from ditlab.models.convert_cli import convert
from ditlab.models.interop_text import (
    FLUX,
    PIXART,
    SD3,
    ZIMAGE,
    from_text_diffusers,
    pack_latents,
    save_text_diffusers,
    to_text_diffusers,
    unpack_latents,
)

diffusers = pytest.importorskip("diffusers")

TOL = dict(atol=1e-5, rtol=1e-5)
TEXT_DIM, POOLED_DIM, L = 12, 10, 5
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)

TINY_DIFFUSERS = {
    SD3: dict(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        caption_projection_dim=16,
        pooled_projection_dim=POOLED_DIM,
        out_channels=4,
        pos_embed_max_size=12,
        qk_norm="rms_norm",
    ),
    PIXART: dict(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=16,
        sample_size=8,
        patch_size=2,
        caption_channels=TEXT_DIM,
    ),
    FLUX: dict(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=POOLED_DIM,
        axes_dims_rope=(4, 6, 6),
    ),
    ZIMAGE: dict(  # width 320 so that its condition (min(dim, 256) = 256) is narrower than the tokens
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=320,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=4,
        n_kv_heads=4,
        cap_feat_dim=TEXT_DIM,
        axes_dims=(16, 32, 32),
        axes_lens=(128, 64, 64),
    ),
}
ALL = [SD3, PIXART, FLUX, ZIMAGE]
# (trained size, another size, text tokens); Z-Image pads image and caption tokens to multiples of 32 with
# learned pad tokens, so its parity inputs have 64 / 32 image tokens and 32 text tokens (see test below)
SHAPES = {SD3: ((8, 8), (12, 12), L), PIXART: ((8, 8), (12, 12), L), FLUX: ((8, 8), (12, 12), L)}
SHAPES[ZIMAGE] = ((16, 16), (8, 16), 32)
# ditlab models of each architecture (zoo presets at Nano size) for the export direction
TINY_DITLAB = {
    SD3: (
        "MMDiT-Nano/2",
        dict(learn_sigma=False, pooled_dim=POOLED_DIM, pos_embed_max_size=6, pos_base_size=4, qk_norm=True),
    ),
    PIXART: ("PixArt-Nano/2", dict(pos_base_size=4)),
    FLUX: (
        "Flux-Nano/2",
        dict(learn_sigma=False, pooled_dim=POOLED_DIM, depth=3, double_blocks=1, rope_lead=4),
    ),
    ZIMAGE: ("ZImage-Nano/2", dict(learn_sigma=False, context_refiner=1, noise_refiner=1)),  # the preset
}


def randomized(module, scale=0.1, seed=1):
    """Every parameter drawn at random (zero-initialised gates and outputs would hide mapping mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def tiny_diffusers(name, **overrides):
    torch.manual_seed(0)
    return randomized(getattr(diffusers, name)(**{**TINY_DIFFUSERS[name], **overrides}))


def tiny_ditlab(name, **overrides):
    preset, fields = TINY_DITLAB[name]
    torch.manual_seed(0)
    model = create_model(preset, input_size=8, in_channels=4, text_dim=TEXT_DIM, **{**fields, **overrides})
    return randomized(model, seed=3)


def inputs(name, size=None, seed=2):
    trained, _, length = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(2, 4, *(size or trained), generator=g),
        t=torch.tensor([0.003, 0.7]),  # Flux's and Z-Image's scale; SD3 and PixArt are given t·1000
        text=torch.randn(2, length, TEXT_DIM, generator=g),
        pooled=torch.randn(2, POOLED_DIM, generator=g),
    )


def run_diffusers(name, transformer, x, t, text, pooled, mask=None):
    """The diffusers forward of each class, on ditlab's (N, C, H, W) latents."""
    with torch.no_grad():
        if name == SD3:
            return transformer(
                hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t * 1000
            ).sample
        if name == PIXART:
            return transformer(
                x,
                encoder_hidden_states=text,
                timestep=t * 1000,
                encoder_attention_mask=None if mask is None else mask.long(),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            ).sample
        if name == ZIMAGE:  # lists of (C, F=1, H, W) latents and (L, cap_dim) captions; t ∈ [0, 1]
            out = transformer([xi[:, None] for xi in x], t, list(text)).sample
            return torch.stack(out)[:, :, 0]
        tokens, ids = pack_latents(x)  # Flux reads packed 2×2 patches with (0, row, col) ids, σ ∈ [0, 1]
        out = transformer(
            hidden_states=tokens,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=t,
            img_ids=ids,
            txt_ids=torch.zeros(text.shape[1], 3),
        ).sample
        return unpack_latents(out, *x.shape[-2:])


def run_ditlab(model, x, t, text, pooled, mask=None):
    with torch.no_grad():
        kw = {"pooled": pooled} if model.config.pooled_dim else {}
        # t·1000: the 0…1000 scale SD3 and PixArt take, and what Flux and Z-Image compute inside
        return model(x, t * 1000, text=text, text_mask=mask, **kw)


def masked(name):
    """PixArt takes a caption mask; the others attend to every text token (see test_sd3_and_flux_take_no_mask)."""
    return MASK if name == PIXART else None


@pytest.mark.parametrize("name", ALL)
def test_a_diffusers_model_read_by_ditlab_gives_the_same_outputs(name):
    transformer = tiny_diffusers(name)
    model = from_text_diffusers(transformer)
    for size in SHAPES[name][:2]:  # the trained size and another (cropped / recomputed positions)
        data = inputs(name, size)
        expected = run_diffusers(name, transformer, **data, mask=masked(name))
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(run_ditlab(model, **data, mask=masked(name)), expected, **TOL)


@pytest.mark.parametrize("name", ALL)
def test_a_ditlab_model_written_for_diffusers_gives_the_same_outputs(name):
    model = tiny_ditlab(name)
    transformer = to_text_diffusers(model)
    assert type(transformer).__name__ == name
    data = inputs(name)
    expected = run_ditlab(model, **data, mask=masked(name))
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(run_diffusers(name, transformer, **data, mask=masked(name)), expected, **TOL)


@pytest.mark.parametrize("name", ALL)
def test_folders_both_ways_and_load_model(name, tmp_path):
    transformer = tiny_diffusers(name)
    transformer.save_pretrained(tmp_path / "pipe" / "transformer")
    data = inputs(name)
    expected = run_diffusers(name, transformer, **data, mask=masked(name))
    for folder in (
        tmp_path / "pipe",
        tmp_path / "pipe" / "transformer",
    ):  # a pipeline root or its transformer/
        model = ditlab.load_model(folder)
        torch.testing.assert_close(run_ditlab(model, **data, mask=masked(name)), expected, **TOL)
    out = save_text_diffusers(model, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["_class_name"] == name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' notes about accelerate
        again = getattr(diffusers, name).from_pretrained(out).eval()
    torch.testing.assert_close(run_diffusers(name, again, **data, mask=masked(name)), expected, **TOL)


@pytest.mark.parametrize("name", ALL)
def test_convert_cli_round_trip_is_exact(name, tmp_path):
    model = tiny_ditlab(name)
    model.objective_spec = {"kind": "flow"}
    ditlab.save_model(model, tmp_path / "native.safetensors")
    assert convert(tmp_path / "native.safetensors", tmp_path / "folder", fmt="diffusers") == "diffusers"
    assert convert(tmp_path / "folder", tmp_path / "back.safetensors") == "native"
    back = ditlab.load_model(tmp_path / "back.safetensors")
    assert back.config == model.config and back.objective_spec == {"kind": "flow"}  # the record survives
    data = inputs(name)
    torch.testing.assert_close(run_ditlab(back, **data), run_ditlab(model, **data), atol=1e-6, rtol=1e-6)


def test_sd3_last_block_context_queries_are_unread_so_ditlab_does_not_build_them():
    """Intentional difference: SD3's last block computes context queries whose attention output it discards;
    ditlab's pre-only JointAttention has no `add_q_proj` (every ditlab parameter reaches the output)."""
    transformer = tiny_diffusers(SD3)
    data = inputs(SD3)
    before = run_diffusers(SD3, transformer, **data)
    with torch.no_grad():
        transformer.transformer_blocks[-1].attn.add_q_proj.weight.normal_()
    assert torch.equal(run_diffusers(SD3, transformer, **data), before)  # they cannot change the output
    model = from_text_diffusers(transformer)
    assert not hasattr(model.blocks[-1].attn, "context_qkv") and hasattr(model.blocks[-1].attn, "context_kv")
    exported = to_text_diffusers(model).state_dict()
    assert not exported["transformer_blocks.2.attn.add_q_proj.weight"].any()  # written as zeros


def test_sd3_and_flux_take_no_mask():
    """Intentional difference: SD3Transformer2DModel and FluxTransformer2DModel attend to every text token,
    padding included (they take no caption mask); ditlab's MMDiT / single stream honour `text_mask`. Without a
    mask both compute the same (the parity tests above); with one, ditlab ignores the padding."""
    for name in (SD3, FLUX):
        transformer = tiny_diffusers(name)
        model = from_text_diffusers(transformer)
        data = inputs(name)
        unmasked = run_diffusers(name, transformer, **data)
        torch.testing.assert_close(run_ditlab(model, **data), unmasked, **TOL)
        assert not torch.allclose(run_ditlab(model, **data, mask=MASK), unmasked, atol=1e-3)


def test_flux_single_block_output_projection_is_split_and_its_bias_sums():
    """Intentional difference: Flux's single block projects cat(attention, MLP) with one Linear; ditlab's
    parallel Block has attn.proj and mlp.fc2 (the same function). Import puts the bias in attn.proj and zero
    in fc2; export sums them (exact either way up to float rounding)."""
    model = from_text_diffusers(tiny_diffusers(FLUX))
    block = model.blocks[2]  # the first single-stream block
    assert block.parallel and not block.mlp.fc2.bias.any() and block.attn.proj.bias.any()


def test_zimage_pads_to_multiples_of_32_with_learned_tokens_where_ditlab_masks():
    """Intentional difference: ZImageTransformer2DModel pads the image and caption sequences to multiples of 32
    with learned pad tokens (`x_pad_token`, `cap_pad_token`) that then take part in attention, so its output
    depends on how much padding a length needs; ditlab pads nothing (a batch's padding is masked out). At
    lengths of 32·k (the parity tests) the pad tokens are unused and both agree; at others they differ."""
    transformer = tiny_diffusers(ZIMAGE)
    model = from_text_diffusers(transformer)
    data = inputs(ZIMAGE)
    data["text"] = data["text"][:, :20]  # 20 caption tokens: diffusers adds 12 pad tokens
    assert not torch.allclose(
        run_ditlab(model, **data), run_diffusers(ZIMAGE, transformer, **data), atol=1e-3
    )
    assert "x_pad_token" in to_text_diffusers(model).state_dict()  # exported as zeros


def test_exports_refuse_what_the_diffusers_class_cannot_express():
    with pytest.raises(ValueError, match="rope=True"):
        to_text_diffusers(tiny_ditlab(SD3, pos_embed_max_size=0, rope=True))
    with pytest.raises(ValueError, match="cross_norm=True"):
        to_text_diffusers(tiny_ditlab(PIXART, cross_norm=True))
    with pytest.raises(ValueError, match="neither an MMDiT"):
        to_text_diffusers(create_model("Pooled-Nano/2", input_size=8))
    with pytest.warns(UserWarning, match="at other sizes diffusers stretches"):
        to_text_diffusers(tiny_ditlab(PIXART, pos_base_size=0))  # same at the trained size, differs elsewhere


def test_folders_diffusers_cannot_be_read_are_refused(tmp_path):
    with pytest.raises(ValueError, match="additional conditions"):
        from_text_diffusers(tiny_diffusers(PIXART, sample_size=128, patch_size=16))
    with pytest.raises(ValueError, match="dual_attention_layers"):
        from_text_diffusers(tiny_diffusers(SD3, dual_attention_layers=(0,)))
    with pytest.raises(ValueError, match="guidance_embeds"):
        from_text_diffusers(tiny_diffusers(FLUX, guidance_embeds=True))
    with pytest.raises(ValueError, match="SigLIP"):
        from_text_diffusers(tiny_diffusers(ZIMAGE, siglip_feat_dim=8))
    with pytest.raises(
        ValueError, match="ZImageTransformer2DModel only implements"
    ):  # the plain preset is not its block
        to_text_diffusers(create_model("ZImage-Nano/2", input_size=8))
