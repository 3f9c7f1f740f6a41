"""Spatial conditioning from a layout (issue 21): SPADE per-token modulation in the one Block, the concat
baseline, shapes masks as layouts (palette PNG / npz), layout-to-image training and `sample --layout`."""

import json

import numpy as np
import pytest
import torch
from tiny_runs import TINY_SHAPES

from ditlab.cli import main as cli
from ditlab.data.layouts import (
    LAYOUT_PALETTE,
    NUM_LAYOUT_CLASSES,
    labels_to_png,
    png_to_labels,
    read_layout,
    shapes_layouts,
)
from ditlab.data.shapes import make_shapes
from ditlab.eval.shapes import layout_iou, segment
from ditlab.models.dit import DiT, DiTConfig
from ditlab.sampling import generate
from ditlab.train import TrainConfig, Trainer

SMALL = dict(in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=5)
CONDITIONINGS = [
    dict(conditioning="adaln-zero"),
    dict(conditioning="adaln"),
    dict(conditioning="adaln-single"),
    dict(conditioning="adaln-zero", arrangement="parallel"),
    dict(conditioning="adaln-zero", norm="rmsnorm", shift=False, gate_fn="tanh", sandwich_norm=True),
    dict(conditioning="adaln-single", text_dim=8, text_mixing="cross-attention"),
    dict(conditioning="adaln-zero", text_dim=8, text_mixing="joint"),
    dict(conditioning="adaln-zero", text_dim=8, text_mixing="concat"),
]


def pair(seed=0, **kw):
    """The same seeded model without and with a SPADE layout path."""
    torch.manual_seed(seed)
    plain = DiT(DiTConfig(**{**SMALL, **kw}))
    torch.manual_seed(seed)
    spade = DiT(DiTConfig(**{**SMALL, **kw}, spatial_condition="spade", layout_channels=4))
    return plain, spade


def inputs(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = model.config.image_hw
    x = torch.randn(n, 3, H, W, generator=g)
    kw = {"t": torch.tensor([3, 700])[:n], "y": torch.tensor([1, 4])[:n]}
    if model.config.text_dim:
        kw["text"] = torch.randn(n, 5, model.config.text_dim, generator=g)
    return x, kw


def square_layout(H, W, n=2):
    labels = torch.zeros(n, H, W, dtype=torch.long)
    labels[:, 2 : H // 2, 2 : W // 2] = 1
    labels[1, H // 2 + 1 :, W // 2 + 1 :] = 3
    return labels


@pytest.mark.parametrize("kw", CONDITIONINGS, ids=lambda kw: "-".join(map(str, kw.values())))
def test_fresh_spade_model_is_the_unconditioned_model_bit_exactly(kw):
    plain, spade = pair(input_size=16, **kw)
    state = spade.state_dict()
    for name, value in plain.state_dict().items():  # same names, same seeded values
        assert torch.equal(state[name], value), name
    extra = set(state) - set(plain.state_dict())
    assert extra and all(k.startswith("spatial_embedder.") or ".spatial_modulation." in k for k in extra)
    x, cond = inputs(plain)
    with torch.no_grad():
        out = plain(x, **cond)
        assert torch.equal(spade(x, **cond, layout=square_layout(16, 16)), out)
        assert torch.equal(spade(x, **cond), out)  # no layout: the empty layout


@pytest.mark.parametrize("kw", CONDITIONINGS[:3] + CONDITIONINGS[4:5], ids=["zero", "adaln", "single", "z"])
def test_spade_at_the_stream_entry_starts_at_zero_and_then_shifts_the_tokens_with_the_mask(kw):
    plain, _ = pair(input_size=16, **kw)
    torch.manual_seed(0)
    model = DiT(DiTConfig(**SMALL, **kw, input_size=16, spatial_condition="spade", layout_channels=4,
                          spatial_entry=True))  # fmt: skip
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert {"spatial_entry.conv.weight", "spatial_entry.conv.bias"} <= extra
    x, cond = inputs(plain, n=1)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 2:6, 2:6] = 2  # an object on tokens (1..2, 1..2) of the 8×8 grid
    moved = torch.roll(labels, shifts=(4, 4), dims=(1, 2))  # on tokens (3..4, 3..4)
    with torch.no_grad():
        assert torch.equal(model(x, **cond, layout=labels), plain(x, **cond))  # fresh: the plain model
        perturb(model.spatial_entry)
        a = model.embed(x, **cond, layout=labels)[0].view(8, 8, -1)
        b = model.embed(x, **cond, layout=moved)[0].view(8, 8, -1)
    changed = (a - b).abs().amax(-1) > 0  # (8, 8): tokens the move changed
    # the shared 3×3 conv sees one token around: the move changes tokens within one of either object, and no
    # other (the entry is per token)
    near = torch.zeros(8, 8, dtype=torch.bool)
    near[0:4, 0:4] = near[2:6, 2:6] = True
    assert changed[1, 1] and changed[4, 4] and torch.equal(changed, changed & near)
    assert not changed[7].any() and not changed[:, 7].any()
    with pytest.raises(ValueError, match="spatial_entry"):
        DiTConfig(**SMALL, spatial_condition="concat", layout_channels=4, spatial_entry=True)


def test_default_config_has_no_layout_path():
    model = DiT(DiTConfig(**SMALL, input_size=8))
    assert model.spatial_embedder is None and all(b.spatial_modulation is None for b in model.blocks)
    assert not any("spatial" in name for name in model.state_dict())


def trained_like(model, seed=1):
    """Give the zero-initialised per-layer convs values, as training would."""
    g = torch.Generator().manual_seed(seed)
    for block in model.blocks:
        conv = block.spatial_modulation.conv
        conv.weight.data = torch.randn(conv.weight.shape, generator=g) * 0.1
        conv.bias.data = torch.randn(conv.bias.shape, generator=g) * 0.1
    linear = model.final_layer.linear  # a zero output layer would hide every difference
    linear.weight.data = torch.randn(linear.weight.shape, generator=g) * 0.1
    return model


def perturb(module, seed=1, scale=0.1):
    """Give a zero-initialised part values, as training would."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=g) * scale


def test_per_token_modulation_varies_across_space_and_follows_the_mask():
    _, model = pair(input_size=16, patch_size=1)
    trained_like(model)
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 3:11, 3:11] = 2  # an 8×8 object on background
    features = model.spatial_embedder(labels, (16, 16), 1)  # (1, hidden, 16, 16)
    (m_attn, _) = model.blocks[0].spatial_modulation(features)
    scale = m_attn.scale[0].view(16, 16, -1)  # (gh, gw, D)
    inside, outside = scale[6, 6], scale[13, 13]
    # tokens whose 3×3 neighbourhood is all object (or all background, away from the zero-padded border)
    # get the same modulation ...
    assert torch.allclose(scale[5, 5], inside) and torch.allclose(scale[8, 7], inside)
    assert torch.allclose(scale[13, 2], outside) and torch.allclose(scale[1, 12], outside)
    # ... and object and background tokens different ones: it varies across space, with the mask
    assert (inside - outside).abs().max() > 1e-3
    moved = torch.roll(labels, shifts=(2, 3), dims=(1, 2))  # the object moves: so does the modulation
    (m2, _) = model.blocks[0].spatial_modulation(model.spatial_embedder(moved, (16, 16), 1))
    assert torch.allclose(m2.scale[0].view(16, 16, -1)[8, 9], inside)
    x, cond = inputs(model, n=1)
    with torch.no_grad():
        assert not torch.allclose(model(x, **cond, layout=labels), model(x, **cond, layout=moved))


@pytest.mark.parametrize("patch", [1, 2, 4, 8])
@pytest.mark.parametrize("size", [(16, 16), (16, 24)], ids=["square", "non-square"])
def test_the_layout_is_resized_to_every_token_grid(patch, size):
    _, model = pair(input_size=size, patch_size=patch)
    trained_like(model)
    gh, gw = size[0] // patch, size[1] // patch
    x, cond = inputs(model)
    for layout_size in (size, (size[0] * 2, size[1] * 2), (8, 8)):  # the input's, finer, coarser
        labels = square_layout(*layout_size)
        features = model.spatial_embedder(labels, (gh, gw), 2)
        assert features.shape == (2, model.config.spatial_hidden, gh, gw)
        mods = model.blocks[0].spatial_modulation(features)
        assert mods[0].shift.shape == (2, gh * gw, 32) and mods[1].gate.shape == (2, gh * gw, 32)
        with torch.no_grad():
            assert model(x, **cond, layout=labels).shape == (2, 6, *size)


def test_a_float_map_equals_its_one_hot_labels():
    _, model = pair(input_size=8)
    trained_like(model)
    labels = square_layout(8, 8)
    one_hot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    x, cond = inputs(model)
    with torch.no_grad():
        assert torch.equal(model(x, **cond, layout=labels), model(x, **cond, layout=one_hot))


def test_concat_baseline_adds_the_layout_channels_to_the_patch_embedding():
    model = DiT(DiTConfig(**SMALL, input_size=8, spatial_condition="concat", layout_channels=4))
    assert model.x_embedder.proj.in_channels == 3 + 4 and model.spatial_embedder is None
    x, cond = inputs(model)
    torch.nn.init.normal_(model.final_layer.linear.weight)
    with torch.no_grad():
        a, b = model(x, **cond, layout=square_layout(8, 8)), model(x, **cond)
    assert a.shape == (2, 6, 8, 8) and not torch.allclose(a, b)


@pytest.mark.parametrize(
    "layout, match",
    [
        (torch.zeros(2, 5, 8, 8), "layout_channels=4"),  # K channels
        (torch.zeros(3, 4, 8, 8), "N=2"),  # batch
        (torch.zeros(2, 8, 8), "layout must have shape"),  # a float map without channels
        (torch.full((2, 8, 8), 4), r"\[0, 4\)"),  # an unknown class
        (torch.zeros(2, 1, 8, 8, dtype=torch.long), "label map"),
        ("mask.png", "torch tensor"),
    ],
)
def test_bad_layouts_give_a_clear_error(layout, match):
    _, model = pair(input_size=8)
    x, cond = inputs(model)
    with pytest.raises(ValueError, match=match):
        model(x, **cond, layout=layout)


def test_layout_config_errors():
    with pytest.raises(ValueError, match="adaLN-family"):
        DiTConfig(**SMALL, conditioning="in-context", spatial_condition="spade", layout_channels=4)
    with pytest.raises(ValueError, match="layout_channels"):
        DiTConfig(**SMALL, spatial_condition="spade")
    with pytest.raises(ValueError, match="spatial_condition"):
        DiTConfig(**SMALL, spatial_condition="controlnet", layout_channels=4)
    plain = DiT(DiTConfig(**SMALL, input_size=8))
    x, cond = inputs(plain)
    with pytest.raises(ValueError, match="takes no layout"):
        plain(x, **cond, layout=square_layout(8, 8))


def test_mask_png_palette_round_trip_and_bad_masks(tmp_path):
    masks = make_shapes("train", 4).masks
    assert len({tuple(c) for c in LAYOUT_PALETTE}) == NUM_LAYOUT_CLASSES == 13
    path = labels_to_png(masks[1], tmp_path / "mask.png")
    assert np.array_equal(read_layout(path, (32, 32))[0], masks[1])
    with pytest.raises(ValueError, match="is 32x32 but the model generates 64x64"):
        read_layout(path, (64, 64))
    rgb = LAYOUT_PALETTE[masks[1]].copy()
    rgb[5, 7] = (1, 2, 3)  # a colour of no class
    with pytest.raises(ValueError, match=r"\(1, 2, 3\) at \(x=7, y=5\)"):
        png_to_labels(rgb, "mask.png")
    np.savez(tmp_path / "bad.npz", layout=np.full((32, 32), 13))
    with pytest.raises(ValueError, match="0..12"):
        read_layout(tmp_path / "bad.npz", (32, 32))
    np.savez(tmp_path / "many.npz", layout=masks.astype(np.int64))
    assert read_layout(tmp_path / "many.npz", (32, 32)).shape == (4, 32, 32)


def test_segmentation_reads_the_rendered_masks_back():
    shapes = make_shapes("test", 12)
    assert all(np.array_equal(segment(im), m) for im, m in zip(shapes.images, shapes.masks))
    report = layout_iou(shapes.images, shapes.masks)
    assert report["mean_iou"] == 1.0 and report["pixel_accuracy"] == 1.0
    grey = np.full_like(shapes.images, 128)  # nothing drawn: every object class has IoU 0
    empty = layout_iou(grey, shapes.masks)
    assert empty["mean_iou"] == 0.0 and 0 < empty["per_class"]["background"] < 1


def test_shapes_layouts_are_the_images_masks():
    assert np.array_equal(shapes_layouts("shapes", 5, (32, 32)), make_shapes("train", 5).masks)
    assert shapes_layouts("shapes", 3, (16, 16)).shape == (3, 16, 16)  # resized with the images
    with pytest.raises(ValueError, match="--data shapes"):
        shapes_layouts("digits", 3, (8, 8))


LAYOUT_RUN = dict(TINY_SHAPES, condition="layout")


@pytest.mark.slow
def test_a_tiny_layout_run_trains_and_samples_follow_a_mask_png(tmp_path, capsys):
    trainer = Trainer(TrainConfig(**LAYOUT_RUN, out=str(tmp_path / "run")))
    assert trainer.model.config.spatial_condition == "spade"
    assert trainer.model.config.layout_channels == 13
    kwargs = trainer.layout_kwargs(0)
    assert kwargs["layout"].shape == (8, 13, 32, 32)
    trainer.run()
    # the layout path learned: its zero-initialised convs moved
    assert any(b.spatial_modulation.conv.weight.abs().sum() > 0 for b in trainer.model.blocks)
    mask = labels_to_png(make_shapes("train", 1).masks[0], tmp_path / "mask.png")
    out = tmp_path / "samples"
    argv = ["sample", str(tmp_path / "run"), "--layout", str(mask), "--per-class", "2"]
    assert (
        cli([*argv, "--sample-steps", "2", "--guidance-scale", "2", "--out", str(out), "--no-progress"]) == 0
    )
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["samples"] == 2
    with np.load(f"{out}.npz") as data:
        assert data["arr_0"].shape == (2, 32, 32, 3)
    np.savez(tmp_path / "small.npz", layout=np.zeros((16, 16), np.int64))
    argv = ["sample", str(tmp_path / "run"), "--layout", str(tmp_path / "small.npz"), "--out", str(out)]
    assert cli([*argv, "--sample-steps", "2"]) == 2
    assert "is 16x16 but the model generates 32x32" in capsys.readouterr().err


@pytest.mark.slow
def test_layout_dropout_is_its_own_seeded_draw(tmp_path):
    cfg = TrainConfig(**{**LAYOUT_RUN, "layout_dropout": 0.5}, out=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    a, b = trainer.layout_kwargs(4)["layout"], trainer.layout_kwargs(4)["layout"]
    assert torch.equal(a, b)
    per_sample = a.sum(dim=(1, 2, 3))  # a kept one-hot map sums to H·W, a dropped one to 0
    assert set(per_sample.tolist()) <= {0.0, 32.0 * 32.0} and 0 in per_sample.tolist()
    with pytest.raises(ValueError, match="layout_dropout"):
        TrainConfig(**{**LAYOUT_RUN, "layout_dropout": 1.0}, out=str(tmp_path / "x"))


def test_generate_with_layouts_guides_on_the_empty_layout():
    _, model = pair(input_size=8, num_classes=0, class_dropout_prob=0.0)
    trained_like(model)
    labels = square_layout(8, 8)
    images, _ = generate(model, num_samples=2, layouts=labels, steps=2, guidance_scale=3.0)
    assert images.shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="model generates"):
        generate(model, num_samples=2, layouts=square_layout(16, 16), steps=2)
    plain = DiT(DiTConfig(**SMALL, input_size=8))
    with pytest.raises(ValueError, match="takes no layout"):
        generate(plain, num_samples=2, layouts=labels, steps=2)
