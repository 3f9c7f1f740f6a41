"""The classical conditional norms as model parts (issue 21, item 3): the AdaGN pixel head after the
unpatchify (per pixel from the layout in SPADE layout models) and AdaIN reference-style conditioning."""

import json
import re

import numpy as np
import pytest
import torch
from tiny_runs import TINY_SHAPES
from torch.utils import flop_counter

from ditlab.models.dit import DiT, DiTConfig
from ditlab.models.flops import flop_breakdown
from ditlab.models.formats import load_model
from ditlab.nn.conditional_norms import AdaGN
from ditlab.nn.reference import token_statistics
from ditlab.sampling import generate
from ditlab.train import TrainConfig, Trainer

SMALL = dict(in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=5, input_size=16)
SPADE = dict(spatial_condition="spade", layout_channels=4)
HEAD = dict(pixel_head="adagn", pixel_head_width=8)
REFERENCE = dict(reference_condition="adain")


def pair(extra, seed=0, **kw):
    """The same seeded model without and with the `extra` parts."""
    torch.manual_seed(seed)
    plain = DiT(DiTConfig(**{**SMALL, **kw}))
    torch.manual_seed(seed)
    return plain, DiT(DiTConfig(**{**SMALL, **kw, **extra}))


def inputs(n=2, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), {
        "t": torch.tensor([3, 700])[:n],
        "y": torch.tensor([1, 4])[:n],
    }


def layout(n=2, size=16):
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 2:9, 3:10] = 1
    labels[1, 10:, 10:] = 3
    return labels


def perturb(*modules, seed=1, scale=0.1):
    """Give zero-initialised weights values, as training would."""
    g = torch.Generator().manual_seed(seed)
    for module in modules:
        for p in module.parameters():
            p.data = torch.randn(p.shape, generator=g) * scale


@pytest.mark.parametrize(
    "extra, base",
    [(HEAD, {}), ({**HEAD, **SPADE}, SPADE), (REFERENCE, {}), ({**HEAD, **REFERENCE}, {})],
    ids=["head", "head-spade", "reference", "both"],
)
@pytest.mark.parametrize("conditioning", ["adaln-zero", "adaln-single"])
def test_a_fresh_model_with_the_parts_is_the_model_without_them_bit_exactly(extra, base, conditioning):
    plain, model = pair({k: v for k, v in extra.items() if k not in base}, conditioning=conditioning, **base)
    state = model.state_dict()
    for name, value in plain.state_dict().items():  # same names, same seeded values
        assert torch.equal(state[name], value), name
    assert set(state) - set(plain.state_dict())  # the parts are there
    x, cond = inputs()
    kw = {"layout": layout()} if base else {}
    perturb(plain.final_layer.linear)  # a zero output layer would hide every difference
    model.final_layer.linear.load_state_dict(plain.final_layer.linear.state_dict())
    with torch.no_grad():
        out = plain(x, **cond, **kw)
        assert torch.equal(model(x, **cond, **kw), out)
        if "reference_condition" in extra:
            assert torch.equal(model(x, **cond, **kw, reference=torch.rand(2, 3, 16, 16)), out)


def test_default_config_has_neither_part():
    model = DiT(DiTConfig(**SMALL))
    assert model.pixel_head is None and model.reference_style is None
    assert not any(k.startswith(("pixel_head.", "reference_style.")) for k in model.state_dict())


def test_the_pixel_head_follows_the_layout_inside_a_patch():
    """SPADE's per-token modulation gives a 4×4 patch one value; the head's is per pixel: changing ONE layout
    pixel changes the output within that pixel's 5×5 neighbourhood only (3×3 layout conv, 1×1 modulation,
    3×3 output conv), not along the patch grid."""
    _, model = pair({**HEAD, **SPADE}, patch_size=4)
    perturb(model.pixel_head)  # the blocks' SPADE convs stay zero: the head alone reads the layout here
    x, cond = inputs()
    labels = layout()
    moved = labels.clone()
    moved[:, 6, 9] = 0  # one object pixel (row 6, column 9: inside the patch of rows 4-7, columns 8-11)
    with torch.no_grad():
        diff = (model(x, **cond, layout=labels) - model(x, **cond, layout=moved)).abs().amax(dim=(0, 1))
    assert diff[6, 9] > 1e-4
    changed = (diff > 0).nonzero()
    assert changed[:, 0].min() >= 4 and changed[:, 0].max() <= 8  # rows 6 ± 2
    assert changed[:, 1].min() >= 7 and changed[:, 1].max() <= 11  # columns 9 ± 2


def test_the_pixel_head_reads_the_condition_and_the_noisy_input():
    _, model = pair(HEAD)
    perturb(model.pixel_head)
    x, cond = inputs()
    with torch.no_grad():
        out = model(x, **cond)
        assert not torch.allclose(out, model(x, t=cond["t"], y=torch.tensor([2, 0])))  # AdaGN: c
        assert out.shape == (2, 6, 16, 16)
    model.train()
    model(x, **cond).square().sum().backward()
    missing = [n for n, p in model.pixel_head.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_the_reference_enters_through_its_adain_statistics_only():
    _, model = pair(REFERENCE)
    perturb(model.reference_style, model.final_layer)  # its adaLN: c reaches the output
    x, cond = inputs()
    g = torch.Generator().manual_seed(3)
    reference = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    # the same patches in another order: the same per-channel token statistics, the same output
    patches = reference.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 3, 16, 4, 4)
    order = torch.randperm(16, generator=g)
    shuffled = patches[:, :, order].reshape(2, 3, 4, 4, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 16, 16)
    with torch.no_grad():
        out = model(x, **cond, reference=reference)
        assert torch.allclose(model(x, **cond, reference=shuffled), out, atol=1e-5)
        assert not torch.allclose(model(x, **cond, reference=-reference), out, atol=1e-3)  # other colours
        stats = token_statistics(model.x_embedder(reference))
    assert stats.shape == (2, 64)
    model.train()
    model(x, **cond, reference=reference).square().sum().backward()
    assert model.reference_style.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "extra",
    [
        HEAD,
        {**HEAD, **SPADE},
        REFERENCE,
        {**REFERENCE, "spatial_condition": "concat", "layout_channels": 4},
        {**SPADE, "spatial_entry": True},
    ],
    ids=["head", "head-spade", "reference", "reference-concat", "spade-entry"],
)
def test_analytic_flops_count_the_parts(extra):
    model = DiT(DiTConfig(**SMALL, **extra)).eval()
    x, cond = inputs(n=2)
    kw = {"reference": x} if "reference_condition" in extra else {}
    mapping = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: (
            flop_counter.sdpa_flop_count(q, k, v)
        )
    }
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x, **cond, **kw)
    b = flop_breakdown(model)
    assert b["pixel_head"] + b["reference"] + b["spatial_modulation"] > 0
    # the counter sees every matmul and conv, no norm; the label lookup is no matmul either
    assert counter.get_total_flops() / 2 == pytest.approx(2 * (b["total"] - b["norms"]), rel=1e-12)


def test_adagn_adds_the_per_pixel_scale_and_shift():
    layer = AdaGN(8, 4, num_groups=4, zero_init=True)
    h, emb = torch.randn(2, 8, 5, 5), torch.randn(2, 4)
    scale, shift = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    plain = layer(h, emb)  # zero projection: GroupNorm
    assert torch.allclose(layer(h, emb, (scale, shift)), plain * (1 + scale) + shift, atol=1e-6)
    with pytest.raises(ValueError, match="pixel scale must have h's shape"):
        layer(h, emb, (scale[:, :, :4], shift))


def test_bad_references_and_configs_give_clear_errors():
    _, model = pair(REFERENCE)
    x, cond = inputs()
    for bad, match in [
        (torch.zeros(2, 3, 8, 8), "resize it to the input's size"),
        (torch.zeros(3, 3, 16, 16), "N=2"),
        (torch.zeros(2, 1, 16, 16), "C=3"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "float tensor"),
    ]:
        with pytest.raises(ValueError, match=match):
            model(x, **cond, reference=bad)
    plain = DiT(DiTConfig(**SMALL))
    with pytest.raises(ValueError, match="takes no reference image"):
        plain(x, **cond, reference=x)
    with pytest.raises(ValueError, match="takes no reference image"):
        generate(plain, num_samples=2, references=x, steps=1)
    with pytest.raises(ValueError, match="references must be"):
        generate(model, num_samples=2, references=x[:, :, :8], steps=1)
    with pytest.raises(ValueError, match="unknown pixel_head 'unet'"):
        DiTConfig(**SMALL, pixel_head="unet")
    with pytest.raises(ValueError, match="pixel_head_width"):
        DiTConfig(**SMALL, pixel_head="adagn", pixel_head_width=0)
    with pytest.raises(ValueError, match="unknown reference_condition"):
        DiTConfig(**SMALL, reference_condition="clip")
    with pytest.raises(ValueError, match="drives adaLN"):
        DiTConfig(**SMALL, reference_condition="adain", conditioning="in-context")


def test_a_reference_run_trains_and_samples_with_references(tmp_path):
    cfg = TrainConfig(
        **TINY_SHAPES,
        condition="reference",
        model_args={"pixel_head": "adagn", "pixel_head_width": 8},
        out=str(tmp_path / "run"),
    )
    trainer = Trainer(cfg)
    assert trainer.model.config.reference_condition == "adain"
    trainer.run()
    # both parts learned: their zero-initialised outputs moved
    assert trainer.model.reference_style.proj.weight.abs().sum() > 0
    assert trainer.model.pixel_head.conv_out.weight.abs().sum() > 0
    x0 = trainer.batch_for_step(0)[0][:2]
    images, _ = generate(trainer.ema.model, num_samples=2, references=x0, steps=2)
    assert images.shape == (2, 32, 32, 3)
    loaded = load_model(tmp_path / "run" / "model.safetensors")  # the parts' weights load back
    again, _ = generate(loaded, num_samples=2, references=x0, steps=2)
    assert (loaded.config.pixel_head, loaded.config.reference_condition) == ("adagn", "adain")
    assert np.array_equal(again, images)


def test_a_dropped_reference_is_no_reference():
    _, model = pair(REFERENCE)
    perturb(model.reference_style, model.final_layer)
    x, cond = inputs()
    reference = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        with_ref, without = model(x, **cond, reference=reference), model(x, **cond)
        mixed = model(x, **cond, reference=reference, reference_keep=torch.tensor([True, False]))
    assert not torch.allclose(with_ref, without, atol=1e-3)  # the reference matters here
    assert torch.allclose(mixed[0], with_ref[0], atol=1e-6) and torch.allclose(
        mixed[1], without[1], atol=1e-6
    )
    for bad in (torch.tensor([True]), [True, False]):
        with pytest.raises(ValueError, match="reference_keep must be a"):
            model(x, **cond, reference=reference, reference_keep=bad)
    with pytest.raises(ValueError, match="pass reference as well"):
        model(x, **cond, reference_keep=torch.tensor([True, False]))


def test_guidance_contrasts_the_reference_with_the_null_reference():
    """An unconditional reference model guides (no label dropout needed): the unconditional branch is the
    same references with reference_keep False, batched with the conditional branch."""
    _, model = pair(REFERENCE, num_classes=0, class_dropout_prob=0.0)
    perturb(model.reference_style, model.final_layer)
    seen = []
    forward = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("reference_keep"))
        return forward(*args, **kwargs)

    model.forward = spy
    references = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    guided, _ = generate(model, num_samples=2, references=references, steps=2, guidance_scale=3.0)
    assert seen and all(k is not None and k.tolist() == [True, True, False, False] for k in seen)
    seen.clear()
    plain, _ = generate(model, num_samples=2, references=references, steps=2)
    assert seen == [None, None]  # no guidance: one branch, every reference kept
    assert not np.array_equal(guided, plain)


def test_reference_dropout_is_its_own_seeded_draw(tmp_path):
    cfg = TrainConfig(
        data="shapes", condition="reference", reference_dropout=0.5, model="DiT-Nano/4", batch_size=16,
        steps=1, progress=False, threads=1, out=str(tmp_path / "run"),
    )  # fmt: skip
    trainer = Trainer(cfg)
    x0 = trainer.batch_for_step(3)[0]
    a, b = trainer.reference_kwargs(3, x0), trainer.reference_kwargs(3, x0)
    assert torch.equal(a["reference"], x0) and torch.equal(a["reference_keep"], b["reference_keep"])
    keep = a["reference_keep"]
    assert keep.dtype == torch.bool and keep.shape == (16,) and 0 < int(keep.sum()) < 16
    assert not torch.equal(keep, trainer.reference_kwargs(4, x0)["reference_keep"])
    with pytest.raises(ValueError, match="reference_dropout"):
        TrainConfig(data="shapes", condition="reference", reference_dropout=1.0, steps=1)


def write_image(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)
    return str(path)


def test_sample_reference_reaches_generate_and_bad_references_name_the_fix(tmp_path, capsys, monkeypatch):
    import ditlab
    import ditlab.sample_shards
    from ditlab.cli import main as cli

    torch.manual_seed(0)
    model = DiT(
        DiTConfig(**{**SMALL, "num_classes": 0, "class_dropout_prob": 0.0, "learn_sigma": False, **REFERENCE})
    )
    perturb(model.reference_style, model.final_layer)
    ckpt = tmp_path / "ref.safetensors"
    ditlab.save_model(model, ckpt, objective={"kind": "flow", "learn_sigma": False})
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 220
    blue = np.zeros((16, 16, 3), np.uint8)
    blue[..., 2] = 220
    refs = [write_image(tmp_path / "red.png", red), write_image(tmp_path / "blue.png", blue)]
    calls = []
    real = ditlab.sample_shards.generate_across_ranks

    def spy(model, info, prefix, **kwargs):
        calls.append(kwargs)
        return real(model, info, prefix, **kwargs)

    monkeypatch.setattr(ditlab.sample_shards, "generate_across_ranks", spy)
    out = tmp_path / "samples"
    argv = ["sample", str(ckpt), "--sample-steps", "2", "--no-progress", "--out", str(out)]
    assert cli([*argv, "--reference", *refs, "--per-class", "2", "--guidance-scale", "2"]) == 0
    (kwargs,) = calls
    references = kwargs["references"]
    assert references.shape == (4, 3, 16, 16) and kwargs["num_samples"] == 4
    assert torch.allclose(references[1, 0], torch.full((16, 16), 220 / 127.5 - 1))  # red.png, twice
    assert torch.allclose(references[2, 2], torch.full((16, 16), 220 / 127.5 - 1))  # then blue.png
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 4
    with np.load(f"{out}.npz") as data:
        images = data["arr_0"]
    assert images.shape == (4, 16, 16, 3) and not np.array_equal(images[0], images[2])  # follows the ref
    grey = write_image(tmp_path / "grey.png", np.zeros((16, 16), np.uint8))
    small = write_image(tmp_path / "small.png", red[:8, :8])
    for bad, message in [
        (str(tmp_path / "missing.png"), "no reference image"),
        (grey, r"has 1 channel\(s\) \(mode L\) but the model takes 3-channel \(RGB\) references; convert it"),
        (small, r"is 8x8 \(HxW\) but the model generates 16x16 images; resize it to 16x16"),
    ]:
        assert cli([*argv, "--reference", bad]) == 2
        assert re.search(message, capsys.readouterr().err)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert cli([*argv, "--reference", str(tmp_path / "junk.png")]) == 2
    assert "cannot read the reference" in capsys.readouterr().err
    plain = tmp_path / "plain.safetensors"
    ditlab.save_model(DiT(DiTConfig(**SMALL)), plain, objective={"kind": "flow", "learn_sigma": False})
    assert cli(["sample", str(plain), "--reference", refs[0], "--sample-steps", "1", "--out", str(out)]) == 2
    assert "takes no reference image" in capsys.readouterr().err
