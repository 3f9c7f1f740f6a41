"""ditlab's KL-VAE and VQ-VAE: shapes, the latent scale applied once, the VQ straight-through gradient, codebook
EMA and dead-code restarts, saving/loading, and parity with diffusers' AutoencoderKL / VQModel both ways."""

import json

import pytest
import torch

import ditlab
from ditlab.autoencoders import (
    AutoencoderConfig,
    DiffusersVAE,
    KLAutoencoder,
    VectorQuantizer,
    VQAutoencoder,
    build_autoencoder,
    estimate_scale,
    export_diffusers,
    import_diffusers,
    load_autoencoder,
    save_autoencoder,
)


def tiny(kind="kl", downsample=4, latent_channels=4, seed=0, **kw):
    """A small autoencoder with random (non-zero) weights everywhere, so every path carries signal."""
    torch.manual_seed(seed)
    cfg = AutoencoderConfig(
        kind=kind,
        downsample=downsample,
        latent_channels=latent_channels,
        block_out_channels=[8 * min(2**i, 4) for i in range(downsample.bit_length())],
        layers_per_block=1,
        norm_groups=4,
        codebook_size=16,
        **kw,
    )
    ae = build_autoencoder(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return ae


def images(n=2, channels=3, size=16, seed=1):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("kind,f,c", [("kl", 4, 4), ("kl", 8, 3), ("vq", 4, 3), ("vq", 8, 4)])
def test_round_trip_shapes(kind, f, c):
    ae = tiny(kind, f, c)
    x = images(size=16)
    z = ae.encode(x)
    assert z.shape == (2, c, 16 // f, 16 // f) == (2, *ae.latent_shape(x.shape))
    assert ae.decode(z).shape == x.shape
    assert ae.sample == (kind == "kl")
    with pytest.raises(ValueError, match="not divisible by the downsample factor"):
        ae.encode(images(size=12 if f == 8 else 10))


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="power of 2"):
        AutoencoderConfig(downsample=6)
    with pytest.raises(ValueError, match="factor 4, not downsample 8"):
        AutoencoderConfig(downsample=8, block_out_channels=[32, 32, 32])
    with pytest.raises(ValueError, match="unknown autoencoder kind"):
        AutoencoderConfig(kind="gan")


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_scale_and_shift_are_applied_exactly_once(kind):
    ae = tiny(kind, scale=2.0, shift=0.5)
    x = images()
    with torch.no_grad():
        raw = ae.raw_latents(x)
        mean, std = ae.encode_moments(x)
        assert torch.allclose(mean, (raw - 0.5) * 2.0, atol=1e-6)
        assert torch.allclose(ae.decode(mean), ae.decode_raw(raw), atol=1e-6)  # decode undoes it once
        if kind == "kl":
            _, logvar = ae.posterior(x)
            assert torch.allclose(std, torch.exp(0.5 * logvar) * 2.0, atol=1e-6)
        else:
            assert std is None and torch.equal(ae.encode(x), mean)


def test_vq_straight_through_gradient_and_nearest_codes():
    q = VectorQuantizer(8, 3, ema=False, decay=0.99, beta=0.25, dead_threshold=0.0).train()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    quant, stats = q(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    expected = q.embedding.weight[torch.cdist(flat, q.embedding.weight).argmin(1)]
    assert torch.allclose(quant.detach().permute(0, 2, 3, 1).reshape(-1, 3), expected, atol=1e-6)
    weight = torch.randn(quant.shape)
    (quant * weight).sum().backward()
    assert torch.allclose(z.grad, weight)  # the decoder's gradient passes to the encoder unchanged
    z.grad = None
    stats["vq_loss"].backward()  # commitment + codebook: gradients to both sides
    assert z.grad.abs().sum() > 0 and q.embedding.weight.grad.abs().sum() > 0
    assert 1.0 <= float(stats["perplexity"]) <= 8.0


def test_dead_codes_restart_on_encoder_outputs():
    q = VectorQuantizer(8, 3, ema=True, decay=0.5, beta=0.25, dead_threshold=0.5).train()
    with torch.no_grad():
        q.embedding.weight[2:] = 100.0  # far away: never chosen
        q.ema_sum.copy_(q.embedding.weight)
    z = torch.randn(1, 3, 4, 4) * 0.01
    g = torch.Generator().manual_seed(0)
    # usage of the unused codes halves each step, 1 -> 0.5 -> 0.25: below the threshold on the second step
    assert q(z, generator=g)[1]["restarts"] == 0
    assert q(z, generator=g)[1]["restarts"] == 6
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    for code in q.embedding.weight[2:]:
        assert torch.isclose(flat, code).all(1).any()  # each restarted code sits on an encoder output
    assert (q.usage[2:] >= 0.5).all()


def test_ema_codebook_moves_to_the_mean_of_its_vectors():
    q = VectorQuantizer(2, 2, ema=True, decay=0.0, beta=0.25, dead_threshold=0.0).train()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
        q.ema_sum.copy_(q.embedding.weight)
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]).t().reshape(1, 2, 1, 3)
    q(z)
    assert torch.allclose(q.embedding.weight[0], torch.tensor([2.0, 3.0]), atol=1e-3)
    assert torch.allclose(q.embedding.weight[1], torch.tensor([9.0, 9.0]), atol=1e-3)
    assert not q.embedding.weight.requires_grad  # updated by statistics, never by the optimizer


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_save_and_load_keep_weights_scale_and_shift(tmp_path, kind):
    ae = tiny(kind, scale=0.3, shift=-0.1)
    save_autoencoder(ae, tmp_path / "ae.safetensors")
    back = load_autoencoder(tmp_path / "ae.safetensors")
    assert type(back) is type(ae) and back.config == ae.config and (back.scale, back.shift) == (0.3, -0.1)
    assert not any(p.requires_grad for p in back.parameters()) and not back.training
    x = images()
    with torch.no_grad():
        assert torch.equal(back.encode(x, sample=False), ae.encode(x, sample=False))
    assert ditlab.load_model(tmp_path / "ae.safetensors").config == ae.config  # one registry for all formats


def test_load_autoencoder_refuses_a_dit_checkpoint(tmp_path):
    model = ditlab.create_model("DiT-Nano/2", input_size=8, in_channels=4, num_classes=2)
    ditlab.save_model(model, tmp_path / "dit.safetensors")
    with pytest.raises(ValueError, match="not an autoencoder"):
        load_autoencoder(tmp_path / "dit.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_autoencoder(tmp_path / "missing")


def test_scale_estimate_is_one_over_the_latent_std():
    ae = tiny("vq")
    x = images(8)
    with torch.no_grad():
        expected = 1.0 / ae.raw_latents(x).std().item()
    assert estimate_scale(ae, x) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------ diffusers
def _diffusers_model(kind, seed=0):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    common = dict(
        block_out_channels=(8, 16, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
    )
    if kind == "kl":
        model = diffusers.AutoencoderKL(**common)
    else:
        model = diffusers.VQModel(**common, num_vq_embeddings=16)
    with torch.no_grad():  # diffusers initialises some layers to zero; random everywhere tests every path
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def _diffusers_pair(model, kind, x):
    """(raw latents, decoded images) through a diffusers model."""
    with torch.no_grad():
        if kind == "kl":
            z = model.encode(x).latent_dist.mean
        else:
            z = model.encode(x).latents
        return z, model.decode(z).sample


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_parity_diffusers_to_ditlab(tmp_path, kind):
    theirs = _diffusers_model(kind)
    theirs.save_pretrained(tmp_path / "d")
    ours = import_diffusers(tmp_path / "d")
    assert isinstance(ours, KLAutoencoder if kind == "kl" else VQAutoencoder)
    assert ours.scale == theirs.config.scaling_factor
    x = images(size=16)
    z, dec = _diffusers_pair(theirs, kind, x)
    with torch.no_grad():
        assert (ours.raw_latents(x) - z).abs().max() <= 1e-5
        assert (ours.decode_raw(z) - dec).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_parity_ditlab_to_diffusers(tmp_path, kind):
    diffusers = pytest.importorskip("diffusers")
    ours = tiny(kind, downsample=4, latent_channels=4, scale=0.25)
    export_diffusers(ours, tmp_path / "d")
    cls = diffusers.AutoencoderKL if kind == "kl" else diffusers.VQModel
    theirs = cls.from_pretrained(tmp_path / "d", low_cpu_mem_usage=False).eval()
    assert theirs.config.scaling_factor == 0.25
    x = images(size=16)
    z, dec = _diffusers_pair(theirs, kind, x)
    with torch.no_grad():
        assert (ours.raw_latents(x) - z).abs().max() <= 1e-5
        assert (ours.decode_raw(z) - dec).abs().max() <= 1e-5


def test_diffusers_folders_load_through_load_autoencoder(tmp_path):
    _diffusers_model("kl").save_pretrained(tmp_path / "kl")
    _diffusers_model("vq").save_pretrained(tmp_path / "vq")
    assert isinstance(load_autoencoder(tmp_path / "kl"), DiffusersVAE)  # diffusers' own module: DiT + SD-VAE
    vq = load_autoencoder(tmp_path / "vq")
    assert isinstance(vq, VQAutoencoder) and vq.source == str((tmp_path / "vq").resolve())


def test_import_estimates_the_scale_when_the_folder_states_none(tmp_path):
    _diffusers_model("vq").save_pretrained(tmp_path / "vq")
    config = json.loads((tmp_path / "vq" / "config.json").read_text())
    del config["scaling_factor"]
    (tmp_path / "vq" / "config.json").write_text(json.dumps(config))
    x = images(8, size=16)
    ae = import_diffusers(tmp_path / "vq", images=x)
    with torch.no_grad():
        assert ae.scale == pytest.approx(1.0 / ae.raw_latents(x).std().item(), rel=1e-6)


def test_cli_imports_a_diffusers_folder_into_a_ditlab_file(tmp_path, capsys):
    from ditlab import cli

    _diffusers_model("vq").save_pretrained(tmp_path / "vq")
    assert cli.main(["vae", "import", str(tmp_path / "vq"), "--out", str(tmp_path / "vq.safetensors")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ours, direct = load_autoencoder(tmp_path / "vq.safetensors"), import_diffusers(tmp_path / "vq")
    assert printed["scale"] == ours.scale == direct.scale
    x = images(size=16)
    with torch.no_grad():
        assert torch.equal(ours.decode(ours.encode(x)), direct.decode(direct.encode(x)))
    assert (
        cli.main(["vae", "import", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.safetensors")]) == 2
    )
    assert "no config.json" in capsys.readouterr().err
