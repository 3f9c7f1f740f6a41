"""ditlab.generate and `ditlab sample`: reproducible images, the ADM .npz format, guidance, latent models
decoded through a local diffusers AutoencoderKL, and clear errors."""

import json

import numpy as np
import pytest
import torch

import ditlab
from ditlab.cli import main as cli
from ditlab.data import load_npz


def trained_like(seed=0, **kw):
    """A small DiT with random (non-zero) weights: outputs depend on every input."""
    args = dict(input_size=8, in_channels=1, num_classes=3)
    args.update(kw)
    model = ditlab.create_model("DiT-Nano/2", **args)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def test_same_seed_same_images_and_labels():
    model = trained_like()
    a = ditlab.generate(model, per_class=2, sampler="ddim", steps=5, seed=3)
    b = ditlab.generate(model, per_class=2, sampler="ddim", steps=5, seed=3)
    c = ditlab.generate(model, per_class=2, sampler="ddim", steps=5, seed=4)
    assert a.images.dtype == np.uint8 and a.images.shape == (6, 8, 8, 1)
    assert a.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    # stochastic samplers too
    d1 = ditlab.generate(model, classes=[1], per_class=3, sampler="ddpm", steps=5, seed=0)
    d2 = ditlab.generate(model, classes=[1], per_class=3, sampler="ddpm", steps=5, seed=0)
    assert np.array_equal(d1.images, d2.images)


def test_guidance_changes_samples_and_needs_a_null_class():
    model = trained_like()
    plain = ditlab.generate(model, classes=[0], per_class=2, steps=4, seed=0)
    guided = ditlab.generate(model, classes=[0], per_class=2, steps=4, seed=0, guidance_scale=3.0)
    assert not np.array_equal(plain.images, guided.images)
    no_null = trained_like(class_dropout_prob=0.0)
    with pytest.raises(ValueError, match="label dropout"):
        ditlab.generate(no_null, classes=[0], steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="out of range"):
        ditlab.generate(model, classes=[7], steps=2)
    with pytest.raises(ValueError, match="unknown sampler"):
        ditlab.generate(model, sampler="plms", steps=2)


def test_sample_cli_writes_grid_and_adm_npz(tmp_path, capsys):
    model = trained_like()
    ckpt = tmp_path / "m.safetensors"
    ditlab.save_model(model, ckpt)
    out = tmp_path / "s" / "run"
    args = ["sample", str(ckpt), "--per-class", "2", "--steps", "3", "--out", str(out), "--no-progress"]
    assert cli(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["samples"] == 6
    images, labels = load_npz(f"{out}.npz")
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert (tmp_path / "s" / "run.png").is_file()
    again = tmp_path / "again"
    assert cli([*args[:-3], "--out", str(again), "--no-progress"]) == 0
    assert np.array_equal(load_npz(f"{again}.npz")[0], images)  # same seed, same images


def test_latent_model_decodes_through_a_local_vae(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        sample_size=16,
    ).eval()
    vae.save_pretrained(tmp_path / "vae")
    model = trained_like(in_channels=4)  # 8×8×4 latents -> 16×16×3 images
    ckpt = tmp_path / "latent.safetensors"
    ditlab.save_model(model, ckpt)
    out = tmp_path / "decoded"
    args = ["sample", str(ckpt), "--vae", str(tmp_path / "vae"), "--classes", "2", "--per-class", "2"]
    assert cli([*args, "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    images, labels = load_npz(f"{out}.npz")
    assert images.shape == (2, 16, 16, 3) and labels.tolist() == [2, 2]
    # the pixels are the VAE's decoding of the sampled latents (scale 0.18215)
    latents, _ = ditlab.generate(model, classes=[2], per_class=2, steps=2, return_tensors=True)
    with torch.no_grad():
        expected = vae.decode(latents / 0.18215).sample
    reference = ditlab.data.to_uint8(expected).numpy()
    assert np.abs(images.astype(int) - reference.astype(int)).max() <= 1


def test_deprecated_sample_alias_warns_and_gives_the_same_images():
    model = trained_like()
    kw = dict(classes=[0, 2], per_class=2, sampler="ddpm", steps=4, seed=1, guidance_scale=2.0)
    with pytest.deprecated_call(match="ditlab.generate"):
        old = ditlab.sample(model, **kw)
    new = ditlab.generate(model, **kw)
    assert np.array_equal(old.images, new.images) and np.array_equal(old.labels, new.labels)
    # One default sampler per objective, declared on the objective: DDIM for DDPM models.
    default = ditlab.generate(model, classes=[1], steps=4, seed=2, return_tensors=True)[0]
    ddim = ditlab.generate(model, classes=[1], steps=4, seed=2, sampler="ddim", return_tensors=True)[0]
    assert torch.equal(default, ddim)
