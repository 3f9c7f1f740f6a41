"""evaluate() and `ditlab eval`: metrics against references, the data's floor, caching and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ditlab.cli import main
from ditlab.data import load_dataset, save_npz
from ditlab.eval import (
    evaluate,
    evaluate_model,
    fd_record,
    feature_statistics,
    get_feature_extractor,
    load_classifier,
    parse_features,
)
from ditlab.eval import reference as reference_module
from ditlab.models import create_model
from ditlab.sampling import generate

CLF = "classifier:digits"


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    """One cache folder for every eval test module, so the digits classifier is trained once per session."""
    return tmp_path_factory.getbasetemp() / "ditlab-eval-cache"


@pytest.fixture(scope="module")
def digits_test():
    ds = load_dataset("digits:test")
    return ds.numpy_images(), ds.labels.numpy()


def test_the_reference_scored_against_itself(eval_cache, digits_test):
    images, labels = digits_test
    result = evaluate(images, labels, ref="digits:test", features=[CLF], cache_dir=eval_cache)
    m = result["metrics"][CLF]
    assert result["n_samples"] == 360 and result["ref"] == "digits:test" and m["n_ref"] == 360
    assert abs(m["fd"]) < 1e-6 and m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["class_accuracy"] == pytest.approx(
        load_classifier("digits", cache_dir=eval_cache)[1]["test_accuracy"]
    )
    assert m["floor"]["split"] == "train" and m["floor"]["n"] == 360 and m["floor"]["fd"] > 0
    assert 5 < m["inception_score"] <= 10


def test_the_floor_is_the_score_of_real_training_images(eval_cache):
    train = load_dataset("digits:train")
    subset = reference_module._subset(len(train), 360).numpy()  # the floor's fixed subset
    result = evaluate(train.numpy_images()[subset], ref="digits", features=[CLF], cache_dir=eval_cache)
    m = result["metrics"][CLF]
    assert m["fd"] == pytest.approx(m["floor"]["fd"], rel=1e-9)
    assert "class_accuracy" not in m  # no labels given


def test_noise_scores_far_above_the_floor(eval_cache, digits_test):
    _, labels = digits_test
    noise = np.random.default_rng(0).integers(0, 256, (360, 8, 8, 1), dtype=np.uint8)
    m = evaluate(noise, labels, ref="digits:test", features=[CLF], cache_dir=eval_cache)["metrics"][CLF]
    assert m["fd"] > 10 * m["floor"]["fd"]
    assert m["class_accuracy"] < 0.5 and m["precision"] < 0.5


def test_repeated_calls_reuse_the_cached_reference(eval_cache, digits_test, monkeypatch):
    images, _ = digits_test
    first = evaluate(images[:100], ref="digits:test", features=[CLF], cache_dir=eval_cache)

    def fail(*args, **kwargs):
        raise AssertionError("reference statistics were recomputed")

    monkeypatch.setattr(reference_module, "_stats_of", fail)
    again = evaluate(images[:100], ref="digits:test", features=[CLF], cache_dir=eval_cache)
    assert again["metrics"] == first["metrics"]
    assert list((eval_cache / "reference").glob("digits_test-classifier_digits-*.npz"))


def test_bad_samples_and_labels(eval_cache, digits_test):
    images, labels = digits_test
    with pytest.raises(TypeError, match="to_uint8"):
        evaluate(torch.rand(4, 8, 8, 1) * 2 - 1, ref="digits:test", features=[CLF], cache_dir=eval_cache)
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(360,\)"):
        evaluate(images, labels[:5], ref="digits:test", features=[CLF], cache_dir=eval_cache)
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluate(images, ref="cifar10", features=[CLF], cache_dir=eval_cache)


def test_few_samples_warn_with_the_number_needed(eval_cache, digits_test):
    images, _ = digits_test
    dim = get_feature_extractor(CLF, device="cpu", cache_dir=eval_cache).dim
    with pytest.warns(UserWarning, match=f"use at least {dim + 1}"):
        result = evaluate(images[:20], ref="digits:test", features=[CLF], cache_dir=eval_cache)
    assert any(f"{20} samples give a singular covariance" in w for w in result["warnings"])


class _StandInInception(nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)  # (N, 48)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_adm_style_reference_batches_are_read_as_they_are(eval_cache, digits_test, tmp_path):
    images, _ = digits_test
    model_path = tmp_path / "inception.pt"
    torch.jit.script(_StandInInception()).save(str(model_path))
    inception = f"inception:{model_path}"
    extractor = get_feature_extractor(inception, device="cpu")
    mu, sigma = feature_statistics(extractor.features(images))
    np.savez(tmp_path / "VIRTUAL_ref.npz", mu=mu, sigma=sigma)  # like ADM's: no images, no extractor name
    result = evaluate(images, ref=tmp_path / "VIRTUAL_ref.npz", features=[inception], cache_dir=eval_cache)
    m = result["metrics"][extractor.name]
    assert m["metric"] == "FID" and abs(m["fd"]) < 1e-6 and "precision" not in m
    assert "unavailable" in m["floor"]
    with pytest.raises(ValueError, match="cannot be compared with classifier:digits"):
        evaluate(images, ref=tmp_path / "VIRTUAL_ref.npz", features=[CLF], cache_dir=eval_cache)
    # ditlab's own cache files are references too; they name their extractor, so they match by name.
    evaluate(images, ref="digits:test", features=[CLF], cache_dir=eval_cache)
    cached = sorted((eval_cache / "reference").glob("digits_test-classifier_digits-*.npz"))[0]
    again = evaluate(images, ref=cached, features=[CLF], cache_dir=eval_cache)["metrics"][CLF]
    assert abs(again["fd"]) < 1e-6 and again["recall"] == 1.0


def test_npz_of_images_and_image_folder_references(eval_cache, digits_test, tmp_path):
    images, labels = digits_test
    save_npz(tmp_path / "ref_images.npz", images, labels)
    m = evaluate(images, ref=str(tmp_path / "ref_images.npz"), features=[CLF], cache_dir=eval_cache)
    assert abs(m["metrics"][CLF]["fd"]) < 1e-6 and m["metrics"][CLF]["recall"] == 1.0
    train = load_dataset("digits:train", image_size=16).numpy_images()
    for split, arrays in (("train", train[:40]), ("test", images[:30])):
        for i, img in enumerate(arrays):
            (tmp_path / "tree" / split / "all").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0]).save(tmp_path / "tree" / split / "all" / f"{i}.png")
    samples = load_dataset("digits:test", image_size=16).numpy_images()[:30]  # the folder's test/ at 16x16
    m = evaluate(samples, ref=str(tmp_path / "tree"), features=[CLF], cache_dir=eval_cache)["metrics"][CLF]
    # test/ was resized 8 -> 16 by the same filter and reloaded at 16: the same images. The tolerance is looser
    # because 30 images give a singular covariance, where the eps * I fix shifts the result slightly.
    assert abs(m["fd"]) < 1e-4
    assert m["floor"]["split"] == "train" and m["floor"]["n"] == 30


def test_cli_prints_one_json_line(eval_cache, digits_test, tmp_path, capsys):
    images, labels = digits_test
    save_npz(tmp_path / "samples.npz", images[:200], labels[:200])
    rc = main(
        [
            "eval",
            "--samples",
            str(tmp_path / "samples.npz"),
            "--ref",
            "digits:test",
            "--features",
            CLF,
            "--cache-dir",
            str(eval_cache),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1
    result = json.loads(out[0])
    assert result["n_samples"] == 200 and result["samples"].endswith("samples.npz")
    m = result["metrics"][CLF]
    assert {
        "fd",
        "precision",
        "recall",
        "class_accuracy",
        "inception_score",
        "floor",
        "test_accuracy",
    } <= set(m)
    assert json.loads((tmp_path / "r.json").read_text()) == result


def test_cli_reference_only_and_clear_errors(eval_cache, tmp_path, capsys):
    assert main(["eval", "--ref", "digits:test", "--features", CLF, "--cache-dir", str(eval_cache)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"][CLF]["n_ref"] == 360 and result["metrics"][CLF]["floor"]["n"] == 360
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
    assert main(["eval", "--samples", str(tmp_path / "bad.npz"), "--ref", "digits:test"]) == 2
    assert "no 'arr_0' array" in capsys.readouterr().err
    save_npz(tmp_path / "good.npz", np.zeros((4, 8, 8, 1), np.uint8))
    rc = main(
        [
            "eval",
            "--samples",
            str(tmp_path / "good.npz"),
            "--ref",
            "digits:test",
            "--features",
            f"inception:{tmp_path / 'inception-2015-12-05.pt'}",
        ]
    )
    assert rc == 2 and "Inception file not found" in capsys.readouterr().err


def test_evaluate_model_scores_the_samples_the_model_draws(eval_cache):
    """evaluate_model = sample (classes cycled, noise fixed by the seed) + evaluate; fd_record flattens it."""
    torch.manual_seed(0)
    model = create_model("DiT-Nano/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False)
    model.objective_spec = {"kind": "flow", "schedule": "linear", "steps": 1000, "learn_sigma": False}
    options = dict(sampler="euler", steps=2, seed=3, floor=False, cache_dir=eval_cache)
    result = evaluate_model(model, 20, ref="digits:test", features=[CLF], **options)
    images, labels = generate(model, num_samples=20, sampler="euler", steps=2, seed=3, batch_size=250)
    direct = evaluate(images, labels, ref="digits:test", features=[CLF], floor=False, cache_dir=eval_cache)
    assert result["n_samples"] == 20 and result["metrics"][CLF]["fd"] == direct["metrics"][CLF]["fd"]
    record = fd_record(result)
    assert record == {
        "fd_classifier": direct["metrics"][CLF]["fd"],
        "class_accuracy": pytest.approx(direct["metrics"][CLF]["class_accuracy"]),
    }
    assert parse_features(None) is None and parse_features("default") is None and parse_features("") is None
    assert parse_features("effnet-lite0, classifier:digits") == ("effnet-lite0", "classifier:digits")
