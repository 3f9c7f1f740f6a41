"""The Autoencoder interface, load_vae parity with diffusers' AutoencoderKL, its errors, the latent cache."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from ditlab.autoencoders import (
    DIT_LATENT_SCALE,
    IdentityAutoencoder,
    cache_latents,
    load_latent_cache,
    load_vae,
    sample_from_moments,
)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """A random 2-level AutoencoderKL (factor 2, 4 latent channels) saved in the save_pretrained layout."""
    diffusers = pytest.importorskip("diffusers")  # the optional extra; the identity tests run without it
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        sample_size=16,
    ).eval()
    folder = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(folder)
    return vae, folder


@pytest.fixture
def images():
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_importing_the_package_does_not_import_diffusers():
    code = "import sys, ditlab.autoencoders; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_identity_autoencoder_passes_pixels_through(images):
    ae = IdentityAutoencoder(channels=3)
    assert (ae.latent_channels, ae.downsample_factor, ae.scale, ae.shift) == (3, 1, 1.0, 0.0)
    assert ae.encode(images, sample=True) is images
    assert ae.decode(images) is images
    assert ae.latent_shape((5, 3, 16, 12)) == (3, 16, 12)
    with pytest.raises(ValueError, match="3-channel"):
        ae.encode(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="float"):
        ae.encode(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_load_vae_shapes_attributes_and_frozen(tiny_vae, images):
    _, folder = tiny_vae
    ae = load_vae(folder)
    assert (ae.image_channels, ae.latent_channels, ae.downsample_factor) == (3, 4, 2)
    assert ae.scale == DIT_LATENT_SCALE and ae.shift == 0.0 and ae.sample
    assert ae.source == str(folder.resolve())
    z = ae.encode(images)
    assert z.shape == (2, 4, 8, 8) == (2, *ae.latent_shape(images.shape))
    assert ae.decode(z).shape == images.shape
    assert not any(p.requires_grad for p in ae.parameters())
    ae.train()
    assert not ae.vae.training


def test_encode_without_sampling_is_diffusers_mean_times_scale(tiny_vae, images):
    ref, folder = tiny_vae
    ae = load_vae(folder, sample=False)
    with torch.no_grad():
        expected = ref.encode(images).latent_dist.mean * 0.18215
        torch.testing.assert_close(ae.encode(images), expected)
        # Round trip: our decode of our latents == diffusers' decode of the unscaled mean.
        torch.testing.assert_close(ae.decode(ae.encode(images)), ref.decode(expected / 0.18215).sample)


def test_encode_with_sampling_matches_diffusers_sample(tiny_vae, images):
    ref, folder = tiny_vae
    ae = load_vae(folder)  # sample=True, as the official DiT trainer
    with torch.no_grad():
        dist = ref.encode(images).latent_dist
        expected = dist.sample(torch.Generator().manual_seed(3)) * 0.18215
        ours = ae.encode(images, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(ours, expected)
        assert not torch.allclose(ours, dist.mean * 0.18215)
        other = ae.encode(images, generator=torch.Generator().manual_seed(4))
        assert not torch.allclose(ours, other)
        torch.testing.assert_close(ae.encode(images, sample=False), dist.mean * 0.18215)


def test_decode_divides_by_the_scale(tiny_vae):
    ref, folder = tiny_vae
    ae = load_vae(folder)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ae.decode(z), ref.decode(z / 0.18215).sample)


def test_scale_comes_from_config_else_dit_default_and_can_be_overridden(tiny_vae, tmp_path, images):
    ref, folder = tiny_vae
    with torch.no_grad():
        mean = ref.encode(images).latent_dist.mean
    half = load_vae(_edit_config(folder, tmp_path / "half", scaling_factor=0.5), sample=False)
    assert half.scale == 0.5
    torch.testing.assert_close(half.encode(images), mean * 0.5)
    assert load_vae(_edit_config(folder, tmp_path / "none", scaling_factor=None)).scale == DIT_LATENT_SCALE
    assert load_vae(folder, scale=1.0).scale == 1.0
    with pytest.raises(ValueError, match="positive"):
        load_vae(folder, scale=-1.0)
    # A shift_factor in the config (SD3-style VAEs) is subtracted before scaling and added back on decode.
    shifted = load_vae(_edit_config(folder, tmp_path / "shift", shift_factor=0.1), sample=False)
    z = shifted.encode(images)
    torch.testing.assert_close(z, (mean - 0.1) * 0.18215)
    with torch.no_grad():
        torch.testing.assert_close(shifted.decode(z), ref.decode(mean).sample, atol=1e-5, rtol=1e-4)


def test_load_vae_errors(tiny_vae, tmp_path, monkeypatch):
    _, folder = tiny_vae
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vae(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        load_vae(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_vae(tmp_path / "empty")
    shutil.copytree(folder, tmp_path / "pipeline" / "vae")
    with pytest.raises(ValueError, match="pipeline folder, pass .*vae"):
        load_vae(tmp_path / "pipeline")
    with pytest.raises(ValueError, match="'UNet2DModel'.*not an 'AutoencoderKL'"):
        load_vae(_edit_config(folder, tmp_path / "unet", _class_name="UNet2DModel"))
    no_weights = _edit_config(folder, tmp_path / "noweights")
    (no_weights / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_vae(no_weights)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `from diffusers import ...` fail
    with pytest.raises(ImportError, match=r'pip install "ditlab\[diffusers\]"'):
        load_vae(folder)


def test_vae_input_validation(tiny_vae):
    ae = load_vae(tiny_vae[1])
    with pytest.raises(ValueError, match="not divisible by the downsample factor 2"):
        ae.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="3-channel"):
        ae.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 4, h, w\)"):
        ae.decode(torch.zeros(1, 3, 8, 8))


def test_latent_cache_roundtrip_and_resampling(tiny_vae, tmp_path, images):
    ae = load_vae(tiny_vae[1])
    labels = torch.tensor([3, 7])
    path = tmp_path / "cache" / "latents.safetensors"
    built = cache_latents(ae, images, path, labels=labels, batch_size=1)
    cache = load_latent_cache(path, autoencoder=ae)
    mean, std = ae.encode_moments(images)
    torch.testing.assert_close(cache.mean, mean)
    torch.testing.assert_close(cache.std, std)
    torch.testing.assert_close(built.mean, cache.mean)
    assert torch.equal(cache.labels, labels) and len(cache) == 2
    assert cache.source == ae.source and cache.scale == ae.scale
    # Each call draws a fresh posterior sample, exactly as encode() would with the same generator.
    z = cache.latents(torch.tensor([1]), generator=torch.Generator().manual_seed(5))
    expected = sample_from_moments(mean[1:], std[1:], torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, expected)
    assert not torch.allclose(cache.latents(), cache.latents())


def test_latent_cache_is_keyed_by_the_autoencoder(tiny_vae, tmp_path, images):
    path = tmp_path / "pixels.safetensors"
    cache = cache_latents(IdentityAutoencoder(3), images, path)
    assert cache.std is None and torch.equal(cache.latents(), images)
    with pytest.raises(ValueError, match="was built with"):
        load_latent_cache(path, autoencoder=load_vae(tiny_vae[1]))
    vae_path = tmp_path / "vae.safetensors"
    cache_latents(load_vae(tiny_vae[1]), images, vae_path)
    with pytest.raises(ValueError, match="was built with"):  # same VAE folder, another scale
        load_latent_cache(vae_path, autoencoder=load_vae(tiny_vae[1], scale=1.0))
    with pytest.raises(FileNotFoundError):
        load_latent_cache(tmp_path / "nope.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a ditlab latent cache"):
        load_latent_cache(tmp_path / "other.safetensors")
