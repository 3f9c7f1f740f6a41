"""Cached latents (`ditlab latents`) and training on latents (`ditlab train --vae`): the cache equals on-the-fly
encoding, flipped copies pair with their images, building resumes and splits across ranks, a mismatched cache
is not used, a latent run samples decoded images with no --vae, and `ditlab train --data L` on a cache folder
trains as `--vae V --latents L` does (a bad folder is refused, saying what to do)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from test_autoencoders_ldm import tiny

import ditlab
from ditlab import cli
from ditlab.autoencoders import IdentityAutoencoder, load_autoencoder, save_autoencoder
from ditlab.autoencoders.inputs import CachedLatents, EncodedImages, ImageRecord, folder_inputs
from ditlab.autoencoders.latent_cache import build_latent_shards, load_latent_shards, read_manifest
from ditlab.data import load_dataset, load_npz
from ditlab.train import TrainConfig, Trainer, train


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    """A tiny random KL-VAE (f2, 4 latent channels) for grey 8x8 digits, saved as a ditlab autoencoder."""
    ae = tiny("kl", downsample=2, latent_channels=4, image_channels=1, scale=0.7)
    path = tmp_path_factory.mktemp("vae") / "vae.safetensors"
    save_autoencoder(ae, path)
    return path


def digits(flip=False):
    return load_dataset("digits", split="train", image_size=8, flip=flip)


def test_cache_equals_on_the_fly_encoding(tmp_path, vae_file):
    ae = load_autoencoder(vae_file)
    build_latent_shards(ae, digits(), tmp_path / "L", flip=True, shard_size=300, batch_size=50)
    cached = CachedLatents(ImageRecord.of(digits(flip=True)), ae, load_latent_shards(tmp_path / "L", ae))
    encoded = EncodedImages(digits(flip=True), ae)
    assert (cached.channels, cached.image_size) == (encoded.channels, encoded.image_size) == (4, (4, 4))
    idx = torch.tensor([0, 5, 299, 300, 1000, 7])
    z1, y1 = cached.batch(idx, torch.Generator().manual_seed(3))
    z2, y2 = encoded.batch(idx, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    assert (z1 - z2).abs().max() <= 1e-5  # same flips, same posterior draws, same latents
    z3, _ = cached.batch(idx, torch.Generator().manual_seed(4))
    assert not torch.allclose(z1, z3)  # a fresh posterior draw per step, not one frozen sample


def test_flipped_copies_pair_with_their_images(tmp_path):
    data = digits()
    build_latent_shards(IdentityAutoencoder(1), data, tmp_path / "L", flip=True, shard_size=500)
    cache = load_latent_shards(tmp_path / "L")
    x = data.batch(torch.arange(len(data)))[0]
    assert torch.equal(cache.mean, x) and torch.equal(cache.flip_mean, x.flip(-1))
    assert torch.equal(cache.labels, data.labels)
    build_latent_shards(IdentityAutoencoder(1), data, tmp_path / "W", flip=True, shard_size=500, workers=2)
    assert torch.equal(load_latent_shards(tmp_path / "W").flip_mean, cache.flip_mean)  # DataLoader workers
    manifest = read_manifest(tmp_path / "L")
    assert manifest["flip"] and manifest["count"] == len(data) and len(manifest["shards"]) == 3
    assert np.allclose(manifest["channel_mean"], [x.mean().item()], atol=1e-6)
    assert np.allclose(manifest["channel_std"], [x.std(unbiased=False).item()], atol=1e-5)


def test_building_resumes_and_splits_across_ranks(tmp_path, vae_file):
    ae = load_autoencoder(vae_file)
    data = digits()
    # two "ranks" one after the other: rank 1 builds shards 1, 3; rank 0 builds 0, 2 and the manifest
    assert build_latent_shards(ae, data, tmp_path / "L", shard_size=400, rank=1, world_size=2) is None
    assert not (tmp_path / "L" / "latents.json").exists()
    assert sorted(p.name for p in (tmp_path / "L").iterdir()) == [
        "shard-00001.safetensors",
        "shard-00003.safetensors",
    ]
    build_latent_shards(ae, data, tmp_path / "L", shard_size=400, rank=0, world_size=2)
    build_latent_shards(ae, data, tmp_path / "one", shard_size=400)
    split, single = load_latent_shards(tmp_path / "L"), load_latent_shards(tmp_path / "one")
    assert torch.allclose(split.mean, single.mean, atol=1e-6) and torch.allclose(
        split.std, single.std, atol=1e-6
    )
    # resume: finished shards are kept as they are, a missing one is rebuilt
    kept = tmp_path / "L" / "shard-00000.safetensors"
    os.utime(kept, (1, 1))
    (tmp_path / "L" / "shard-00002.safetensors").unlink()
    build_latent_shards(ae, data, tmp_path / "L", shard_size=400)
    assert kept.stat().st_mtime == 1
    assert torch.equal(load_latent_shards(tmp_path / "L").mean, split.mean)


def test_a_cache_of_another_autoencoder_is_not_used(tmp_path, vae_file):
    other = tiny("kl", downsample=2, latent_channels=4, image_channels=1, seed=5, scale=0.7)
    save_autoencoder(other, tmp_path / "other.safetensors")
    build_latent_shards(load_autoencoder(tmp_path / "other.safetensors"), digits(), tmp_path / "L")
    from ditlab.autoencoders.inputs import latent_inputs

    with pytest.warns(UserWarning, match="does not match: autoencoder"):
        data, _ = latent_inputs(digits(), str(vae_file), "cpu", str(tmp_path / "L"))
    assert isinstance(data, EncodedImages)
    with pytest.raises(ValueError, match="was built with"):
        load_latent_shards(tmp_path / "L", load_autoencoder(vae_file))


def _train_cfg(tmp_path, name, vae, data="digits", **kw):
    return TrainConfig(
        data=str(data),
        image_size=8,
        model="DiT-Nano/2",
        vae=vae and str(vae),
        steps=2,
        batch_size=16,
        log_every=1,
        progress=False,
        threads=1,
        device="cpu",
        sample_steps=2,
        out=str(tmp_path / name),
        **kw,
    )


@pytest.mark.slow
def test_training_from_the_cache_equals_encoding_on_the_fly(tmp_path, vae_file):
    assert (
        cli.main(
            ["latents", "--vae", str(vae_file), "--data", "digits", "--image-size", "8", "--flip"]
            + ["--out", str(tmp_path / "L"), "--device", "cpu", "--no-progress"]
        )
        == 0
    )
    a = train(_train_cfg(tmp_path, "cached", vae_file, latents=str(tmp_path / "L"), flip=True))
    b = train(_train_cfg(tmp_path, "encoded", vae_file, flip=True))
    la = [
        json.loads(line)["loss"] for line in (tmp_path / "cached" / "metrics.jsonl").read_text().splitlines()
    ]
    lb = [
        json.loads(line)["loss"] for line in (tmp_path / "encoded" / "metrics.jsonl").read_text().splitlines()
    ]
    assert np.allclose(la, lb, rtol=1e-4) and a["step"] == b["step"] == 2


def test_a_latent_run_samples_decoded_images_with_no_vae(tmp_path, vae_file, capsys):
    train(_train_cfg(tmp_path, "run", vae_file))
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["vae"] == str(vae_file)
    model = ditlab.load_model(run)
    assert model.in_channels == 4 and model.data_spec["autoencoder"]["scale"] == 0.7
    assert model.data_spec["autoencoder"]["image_size"] == [8, 8] and model.data_spec["image_size"] == [4, 4]
    out = tmp_path / "s"
    args = ["sample", str(run), "--classes", "3", "--per-class", "2", "--steps", "2", "--no-progress"]
    assert cli.main([*args, "--out", str(out)]) == 0
    images, labels = load_npz(f"{out}.npz")
    assert images.shape == (2, 8, 8, 1) and labels.tolist() == [3, 3]  # decoded pixels, not 4-channel latents
    latents, _ = ditlab.generate(model, classes=[3], per_class=2, steps=2, return_tensors=True)
    with torch.no_grad():
        expected = ditlab.data.to_uint8(load_autoencoder(vae_file).decode(latents)).numpy()
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
    assert (run / "samples.png").is_file()


def _encode(vae, out, *extra):
    """`ditlab latents` of the digits at 8x8 into `out` (in this process)."""
    args = ["latents", "--vae", str(vae), "--data", "digits", "--image-size", "8", "--shard-size", "500"]
    assert cli.main([*args, *extra, "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return out


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_on_a_latent_folder_equals_training_with_latents(tmp_path, vae_file, capsys):
    cache = _encode(vae_file, tmp_path / "L", "--flip")
    a = train(_train_cfg(tmp_path, "folder", None, data=cache, flip=True))  # no images, no --vae
    b = train(_train_cfg(tmp_path, "images", vae_file, latents=str(cache), flip=True))
    assert a["step"] == b["step"] == 2
    assert _losses(tmp_path / "folder") == _losses(tmp_path / "images")  # the same batches, bit for bit
    folder_model, images_model = (
        ditlab.load_model(tmp_path / "folder"),
        ditlab.load_model(tmp_path / "images"),
    )
    assert folder_model.data_spec == images_model.data_spec  # name, classes, latent size and autoencoder
    assert folder_model.data_spec["autoencoder"]["source"] == str(vae_file.resolve())
    for k, v in images_model.state_dict().items():
        assert torch.equal(folder_model.state_dict()[k], v), k
    # `ditlab sample RUN` decodes through the autoencoder recorded from the cache's manifest
    out = tmp_path / "s"
    args = ["sample", str(tmp_path / "folder"), "--classes", "3", "--per-class", "2", "--steps", "2"]
    assert cli.main([*args, "--no-progress", "--out", str(out)]) == 0
    assert load_npz(f"{out}.npz")[0].shape == (2, 8, 8, 1)  # decoded grey 8x8 digits, not latents
    # FD during training is measured against the encoded images' test split, not "L:test"
    trainer = Trainer(_train_cfg(tmp_path, "ref", None, data=cache))
    assert trainer.eval_reference() == "digits:test"
    assert len(trainer.data) == len(digits()) and trainer.data.num_classes == 10


def test_an_unconditional_run_on_a_latent_folder_sees_label_zero(tmp_path, vae_file):
    cache = _encode(vae_file, tmp_path / "L")
    labelled, _ = folder_inputs(cache, "cpu")
    data, _ = folder_inputs(cache, "cpu", unconditional=True)
    idx = torch.arange(40)
    assert labelled.num_classes == 10 and labelled.batch(idx)[1].unique().numel() == 10
    assert data.num_classes == 0 and torch.equal(data.batch(idx)[1], torch.zeros(40, dtype=torch.int64))


def test_a_bad_latent_folder_is_refused_saying_what_to_do(tmp_path, vae_file, capsys):
    vae = tmp_path / "vae.safetensors"
    shutil.copy(vae_file, vae)
    cache = _encode(vae, tmp_path / "L")  # no --flip
    train_args = ["train", "--data", str(cache), "--steps", "1", "--batch-size", "16", "--threads", "1"]
    train_args += ["--model", "DiT-Nano/2", "--no-progress", "--out", str(tmp_path / "run")]

    def refused(*extra) -> str:
        assert cli.main([*train_args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error:" in err, err  # one line, no traceback
        return err

    err = refused("--flip")
    assert "has no flipped copy" in err and "rebuild the cache with `ditlab latents ... --flip`" in err
    assert "not --image-size 16" in refused("--image-size", "16")
    assert "drop --latents" in refused("--latents", str(cache))
    other = tiny("kl", downsample=2, latent_channels=4, image_channels=1, seed=5, scale=0.7)
    save_autoencoder(other, tmp_path / "other.safetensors")
    assert "was built with" in refused("--vae", str(tmp_path / "other.safetensors"))
    assert not (tmp_path / "run").exists()
    # an unfinished build (shards, no manifest) and a damaged manifest
    partial = tmp_path / "partial"
    shutil.copytree(cache, partial)
    (partial / "latents.json").unlink()
    with pytest.raises(FileNotFoundError, match="its build did not finish"):
        folder_inputs(partial, "cpu")
    (partial / "latents.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        folder_inputs(partial, "cpu")
    (partial / "latents.json").write_text((cache / "latents.json").read_text())
    (partial / "shard-00001.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shards are missing"):
        folder_inputs(partial, "cpu")
    # the autoencoder that encoded the cache is gone
    data, _ = folder_inputs(cache, "cpu", vae=str(vae))  # --vae naming the very one is accepted
    assert isinstance(data, CachedLatents) and (data.channels, data.image_size) == (4, (4, 4))
    vae.unlink()
    with pytest.raises(FileNotFoundError, match="which no longer exists there: put it back"):
        folder_inputs(cache, "cpu")
