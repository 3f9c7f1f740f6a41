"""`ditlab vae train`: a tiny KL / VQ run, exact resume (a run resumed from its checkpoint equals one never
interrupted), the trainer's outputs, the losses (perceptual, discriminator), and export to diffusers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ditlab import cli
from ditlab.autoencoders import load_autoencoder
from ditlab.train.vae import VAETrainConfig, reconstruction_quality, ssim, train_autoencoder
from ditlab.train.vae_losses import PatchDiscriminator, PerceptualLoss

TINY = dict(
    data="digits",
    image_size=8,
    downsample=2,
    latent_channels=3,
    width=8,
    norm_groups=4,
    layers_per_block=1,
    batch_size=8,
    perceptual_weight=0.0,
    ckpt_every=2,
    log_every=1,
    progress=False,
    threads=1,
    device="cpu",
    scale_images=64,
    codebook_size=16,
)


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,extra", [("kl", dict(disc_weight=0.5, disc_start=1)), ("vq", dict(codebook_ema=True))]
)
def test_resume_equals_an_uninterrupted_run(tmp_path, kind, extra):
    full = train_autoencoder(VAETrainConfig(kind=kind, steps=4, out=str(tmp_path / "a"), **TINY, **extra))
    train_autoencoder(VAETrainConfig(kind=kind, steps=2, out=str(tmp_path / "b"), **TINY, **extra))
    resumed = train_autoencoder(
        VAETrainConfig(kind=kind, steps=4, out=str(tmp_path / "b"), **TINY, **extra), resume="auto"
    )
    assert full["step"] == resumed["step"] == 4 and resumed["steps_run"] == 2
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "autoencoder.safetensors"))
    b = load_file(str(tmp_path / "b" / "autoencoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ae = load_autoencoder(tmp_path / "a")  # the run folder loads as its autoencoder, with the estimated scale
    assert ae.scale == pytest.approx(full["scale"]) and ae.scale != 1.0
    for name in ("samples.png", "loss.png", "config.json", "checkpoints/0000004.pt"):
        assert (tmp_path / "a" / name).is_file()


def test_vq_run_logs_codebook_usage_and_perplexity(tmp_path):
    train_autoencoder(
        VAETrainConfig(kind="vq", steps=2, out=str(tmp_path / "r"), eval_every=2, eval_images=16, **TINY)
    )
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert all({"perplexity", "codebook_usage", "restarts", "vq_loss", "rec"} <= r.keys() for r in steps)
    assert any("psnr" in r and "ssim" in r for r in records)


def test_cli_trains_resumes_and_exports_to_diffusers(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    run = tmp_path / "run"
    argv = ["vae", "train", "--data", "digits", "--image-size", "8", "--kind", "kl", "--downsample", "2"]
    argv += ["--latent-channels", "4", "--width", "8", "--norm-groups", "4", "--layers-per-block", "1"]
    argv += ["--batch-size", "8", "--perceptual-weight", "0", "--no-progress", "--threads", "1"]
    argv += ["--device", "cpu", "--out", str(run)]
    assert cli.main([*argv, "--train-steps", "2"]) == 0
    assert cli.main([*argv, "--train-steps", "3", "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["steps_run"] == 1
    assert cli.main(["vae", "export", str(run), "--out", str(tmp_path / "d")]) == 0
    theirs = diffusers.AutoencoderKL.from_pretrained(tmp_path / "d", low_cpu_mem_usage=False).eval()
    ours = load_autoencoder(run)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert (theirs.encode(x).latent_dist.mean - ours.raw_latents(x)).abs().max() <= 1e-5
    assert theirs.config.scaling_factor == pytest.approx(ours.scale)
    assert cli.main(["vae", "train", "--data", "digits", "--kind", "gan", "--train-steps", "1"]) == 2
    assert "unknown kind 'gan'" in capsys.readouterr().err


def test_perceptual_loss_is_zero_for_equal_images_and_differentiable():
    pytest.importorskip("efficientnet_lite_pytorch")
    loss = PerceptualLoss()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6)
    d = loss(x, y)
    assert (d > 0).all()
    d.sum().backward()
    assert y.grad.abs().sum() > 0
    assert not any(p.grad is not None for p in loss.parameters())  # frozen


def test_patch_discriminator_fits_small_images():
    for size in (8, 16, 64):
        out = PatchDiscriminator(3, size)(torch.zeros(2, 3, size, size))
        assert out.shape[:2] == (2, 1) and out.shape[-1] >= 1


def test_psnr_and_ssim_of_a_perfect_and_a_noisy_reconstruction():
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-5)
    assert (ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1)) < 0.9).all()

    class Identity(torch.nn.Module):  # raw_latents/decode_raw of a perfect autoencoder
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def raw_latents(self, x):
            return x

        def decode_raw(self, z):
            return z

    q = reconstruction_quality(Identity(), x * 2 - 1)
    assert q["psnr"] >= 90 and q["ssim"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    """The global batch's images and posterior noise are drawn on every rank and sliced: DDP == one process."""
    args = ["-m", "ditlab", "vae", "train", "--data", "digits", "--image-size", "8", "--kind", "kl"]
    args += ["--downsample", "2", "--latent-channels", "4", "--width", "8", "--norm-groups", "4"]
    args += ["--layers-per-block", "1", "--batch-size", "8", "--perceptual-weight", "0", "--train-steps", "3"]
    args += ["--log-every", "1", "--no-progress", "--threads", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, env=env
    )
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = [str(torchrun), "--standalone", "--nproc_per_node", "2", *args, "--out", str(tmp_path / "two")]
    result = subprocess.run(two, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), rel=1e-5)
    a = load_file(str(tmp_path / "one" / "autoencoder.safetensors"))
    b = load_file(str(tmp_path / "two" / "autoencoder.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)  # gradient all-reduce rounding


def test_overwrite_moves_the_previous_autoencoder_aside(tmp_path):
    cfg = VAETrainConfig(kind="kl", steps=1, out=str(tmp_path / "r"), **TINY)
    train_autoencoder(cfg)
    with pytest.raises(ValueError, match="already holds a run"):
        train_autoencoder(cfg)
    train_autoencoder(cfg, overwrite=True)
    moved = list((tmp_path / "r" / "previous-runs").glob("*/autoencoder.safetensors"))
    assert len(moved) == 1 and (tmp_path / "r" / "autoencoder.safetensors").is_file()
