"""Issue 14 items 3, 5, 6, 7 and 9: mistakes a new user makes are refused early, by name, with what to do.

Latent models without an autoencoder, CUDA asked for on a CPU machine, invalid --steps, samples that do not
match the reference's size, fine-tuning data of another size than the base, corrupt images in a folder, and
the one-time cost of the in-domain classifier said while it is paid.
"""

import re

import numpy as np
import pytest
import torch

import ditlab
from ditlab.cli import main as cli


def tiny_model(**kw):
    args = dict(input_size=8, in_channels=1, num_classes=3)
    args.update(kw)
    torch.manual_seed(0)
    return ditlab.create_model("DiT-Nano/2", **args).eval()


# --- item 3: a latent model sampled without --vae ---------------------------------------------------------


def test_latent_model_without_vae_is_refused_before_the_first_step(monkeypatch):
    model = tiny_model(in_channels=4)
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))  # no sampler step may run
    with pytest.raises(ValueError, match="4-channel latents: pass --vae"):
        ditlab.generate(model, classes=[0], steps=2)
    assert calls == []
    latents, _ = ditlab.generate(tiny_model(in_channels=4), classes=[0], steps=2, return_tensors=True)
    assert latents.shape == (1, 4, 8, 8)  # raw latents stay available to code that asks for them


def test_sample_cli_refuses_a_latent_model_without_vae(tmp_path, capsys):
    ckpt = tmp_path / "latent.safetensors"
    ditlab.save_model(tiny_model(in_channels=4), ckpt)
    out = tmp_path / "s"
    assert cli(["sample", str(ckpt), "--steps", "2", "--out", str(out), "--no-progress"]) == 2
    assert "4-channel latents: pass --vae" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


# --- item 6: --steps validated at parse time; one device check everywhere ----------------------------------


@pytest.mark.parametrize("bad", ["-3", "0", "abc", "ddim", "ddim-5", "25,0", "10,x"])
def test_sample_steps_are_validated_when_parsed(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        cli(["sample", str(tmp_path / "missing.safetensors"), f"--steps={bad}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "is not a number of sampling steps" in err


def test_sample_steps_accept_counts_and_respacings():
    from ditlab.cli_args import sample_steps

    assert sample_steps("50") == 50 and sample_steps(" 7 ") == 7
    assert sample_steps("ddim25") == "ddim25" and sample_steps("25,25,50") == "25,25,50"


def test_eval_device_cuda_without_a_gpu_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["eval", "--ref", "digits:test", "--features", "classifier:digits", "--device", "cuda"]
    assert cli(args) == 2  # was an uncaught AssertionError: Torch not compiled with CUDA enabled
    assert "torch sees no CUDA GPU; use --device cpu or auto" in capsys.readouterr().err
    from ditlab.eval import evaluate

    images = np.zeros((4, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        evaluate(images, ref="digits:test", features=["classifier:digits"], device="cuda")


# --- item 7: a corrupt image in a folder names the CLI flag that skips it ----------------------------------

TINY_RUN = [
    "--model", "DiT-Nano/2", "--batch-size", "4", "--steps", "1", "--sample-steps", "1", "--threads", "1",
    "--no-progress", "--log-every", "1",
]  # fmt: skip


@pytest.fixture
def folder_with_a_corrupt_image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                tmp_path / "data" / name / f"{i}.png"
            )
    (tmp_path / "data" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path / "data"


def test_corrupt_image_message_names_the_flag_and_the_flag_skips_it(
    folder_with_a_corrupt_image, tmp_path, capsys
):
    data = str(folder_with_a_corrupt_image)
    assert (
        cli(["train", "--data", data, *TINY_RUN, "--bad-images", "raise", "--out", str(tmp_path / "refused")])
        == 2
    )
    assert re.search(r"^ditlab train: error: .*broken\.png.*--bad-images skip", capsys.readouterr().err)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert (
            cli(["train", "--data", data, *TINY_RUN, "--bad-images", "skip", "--out", str(tmp_path / "r")])
            == 0
        )
    assert (tmp_path / "r" / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as exit_info:  # the flag lists its choices and refuses others when parsed
        cli(["train", "--data", data, *TINY_RUN, "--bad-images", "ignore", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    from ditlab.train.config import TrainConfig

    with pytest.raises(ValueError, match="unknown bad_images 'ignore'; choose one of: raise, skip"):
        TrainConfig(data=data, steps=1, bad_images="ignore")  # a config file is checked the same way


# --- item 5: samples and reference of different sizes; fine-tuning data of another size than the base ------


def test_eval_refuses_samples_of_another_size_than_the_reference(tmp_path, capsys):
    from ditlab.data import save_npz

    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)  # 16x16 RGB vs digits' 8x8 grey
    save_npz(tmp_path / "s.npz", samples, np.arange(20) % 10)
    args = [
        "eval",
        "--samples",
        str(tmp_path / "s.npz"),
        "--ref",
        "digits:test",
        "--features",
        "classifier:digits",
    ]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert (
        "the samples are 16x16 RGB but the reference digits:test is 8x8 grey" in err and "--resize-ref" in err
    )
    assert cli([*args, "--resize-ref", "--no-floor"]) == 0  # asked for: scored, and the JSON says both shapes
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"image_size": [16, 16], "channels": 3' in out and '"ref_shape": [8, 8, 1]' in out


def test_evaluate_api_warns_about_a_size_mismatch_and_can_refuse():
    from ditlab.eval import evaluate

    samples = np.zeros((4, 16, 16, 1), np.uint8)
    with pytest.raises(ValueError, match="16x16 grey but the reference digits:test is 8x8 grey"):
        evaluate(samples, ref="digits:test", features=["classifier:digits"], resize_ref=False)
    with pytest.warns(UserWarning, match="16x16 grey but the reference digits:test is 8x8 grey"):
        evaluate(samples, ref="digits:test", features=["classifier:digits"], floor=False)


def test_reference_shape_reads_headers_only(tmp_path):
    from ditlab.data import save_npz
    from ditlab.eval.reference import reference_shape

    save_npz(tmp_path / "imgs.npz", np.zeros((3, 12, 10, 3), np.uint8), np.zeros(3, np.int64))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    assert reference_shape(str(tmp_path / "imgs.npz")) == (12, 10, 3)
    assert reference_shape(str(tmp_path / "stats.npz")) is None
    assert reference_shape("fashion-mnist:test") == (28, 28, 1) and reference_shape("digits") == (8, 8, 1)


def test_finetune_says_in_one_line_that_it_resizes_the_data_to_the_base(tmp_path, capsys):
    from ditlab.finetune import FinetuneConfig, FinetuneTrainer

    base = ditlab.create_model("DiT-Nano/2", input_size=16, in_channels=3, num_classes=10, learn_sigma=False)
    ditlab.save_model(base, tmp_path / "base.safetensors", objective={"kind": "flow", "learn_sigma": False})
    cfg = dict(
        base=str(tmp_path / "base.safetensors"), data="digits", steps=1, batch_size=8, progress=False,
        threads=1, sample_steps=1, log_every=1, labels="keep",
    )  # fmt: skip
    FinetuneTrainer(FinetuneConfig(**cfg, out=str(tmp_path / "ft")))  # the data and model are set up here
    lines = [line for line in capsys.readouterr().out.splitlines() if "resized" in line]
    assert lines == [
        "finetune: digits holds 8x8 grey images; they are resized to 16x16 RGB, the base's input size"
    ]
    with pytest.raises(
        ValueError, match="the base works on 16x16 RGB images but --image-size/--channels load"
    ):
        FinetuneTrainer(FinetuneConfig(**cfg, image_size=8, out=str(tmp_path / "ft8")))


# --- item 9: the one-time classifier training and long feature extraction show progress ---------------------


def test_classifier_training_and_feature_extraction_show_progress(tmp_path, monkeypatch, capsys):
    from ditlab.eval import classifier as clf

    real_train = clf.train_classifier
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: real_train(*a, **{**k, "steps": 5}))  # fast
    extractor = clf.ClassifierFeatures("digits", cache_dir=tmp_path)
    err = capsys.readouterr().err
    cached = clf.classifier_file("digits", tmp_path)
    assert "training classifier:digits: 100%" in err and "5/5" in err  # the bar of the training steps
    assert "classifier:digits trained in " in err and f"and cached at {cached}" in err and cached.is_file()
    clf.ClassifierFeatures("digits", cache_dir=tmp_path)  # from the cache: silent
    assert capsys.readouterr().err == ""
    extractor.run(np.zeros((100, 8, 8, 1), np.uint8))
    assert capsys.readouterr().err == ""  # small sets (in-training evaluation) stay quiet
    extractor.run(np.zeros((extractor.progress_min_images, 8, 8, 1), np.uint8))
    err = capsys.readouterr().err
    assert "classifier:digits features:" in err and f"/{extractor.progress_min_images} " in err  # a bar
