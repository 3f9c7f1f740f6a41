"""Feature extractors: real EfficientNet-Lite0 weights, TorchScript Inception plumbing, the digits classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ditlab.data import load_dataset, resize_images
from ditlab.eval import get_feature_extractor, load_classifier


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    """One cache folder for every eval test module, so the digits classifier is trained once per session."""
    return tmp_path_factory.getbasetemp() / "ditlab-eval-cache"


# --- EfficientNet-Lite0 -------------------------------------------------------------------------------------


def _sklearn_photos() -> np.ndarray:
    from sklearn.datasets import load_sample_images

    return np.stack(load_sample_images().images)  # (2, 427, 640, 3): china.jpg, flower.jpg


def test_effnet_weights_and_preprocessing_recognise_real_photos():
    extractor = get_feature_extractor("effnet-lite0:224", device="cpu")
    feats = extractor.features(_sklearn_photos())  # centre crop + PIL bicubic to 224, (x - 127) / 128
    assert feats.shape == (2, 1280)
    with torch.no_grad():
        logits = extractor.model._fc(torch.from_numpy(feats).float())  # the network's own ImageNet head
    top5 = logits.topk(5).indices.tolist()
    assert top5[0][0] in (442, 663, 698)  # bell cote / monastery / palace: the Chinese temple photo
    assert top5[1][0] == 985  # daisy: the flower photo


def test_effnet_grey_equals_repeated_rgb_and_is_deterministic():
    extractor = get_feature_extractor("effnet-lite0", device="cpu")
    assert extractor.name == "effnet-lite0:64" and extractor.metric == "FD-EffNetLite0"
    grey = load_dataset("digits:test").numpy_images()[:4]
    f1 = extractor.features(grey)
    np.testing.assert_array_equal(f1, extractor.features(np.repeat(grey, 3, axis=-1)))
    assert np.abs(f1[0] - f1[1]).max() > 1e-3  # different digits, different features


# --- Inception (TorchScript stand-in with the clean-fid / StyleGAN interface) ------------------------------


class _StandInInception(nn.Module):
    """Same call signature as inception-2015-12-05.pt: forward(x (N, 3, 299, 299) in [0, 255], return_features)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = F.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)  # (N, 48)
        if return_features:
            return features
        return features.softmax(dim=1)


def test_inception_plumbing_with_a_torchscript_stand_in(tmp_path):
    path = tmp_path / "inception-stand-in.pt"
    torch.jit.script(_StandInInception()).save(str(path))
    extractor = get_feature_extractor(f"inception:{path}", device="cpu")
    assert extractor.metric == "FID" and extractor.dim == 48 and extractor.resolution == (299, 299)
    images = load_dataset("digits:test").numpy_images()[:3]
    x = resize_images(images, 299, output="float32").repeat(3, axis=-1)  # what ditlab must feed it
    expected = F.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2) / 255.0, 4).flatten(1)
    np.testing.assert_allclose(extractor.features(images), expected.double().numpy(), rtol=1e-6)


def test_inception_bad_files_have_clear_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot download it.*inception-2015-12-05.pt"):
        get_feature_extractor(f"inception:{tmp_path / 'missing.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        get_feature_extractor(f"inception:{tmp_path / 'junk.pt'}")
    with pytest.raises(ValueError, match="unknown feature extractor 'clip'.*effnet-lite0"):
        get_feature_extractor("clip")


# --- the in-domain classifier -------------------------------------------------------------------------------


def test_digits_classifier_is_accurate_cached_and_reused(eval_cache):
    model, info = load_classifier("digits", cache_dir=eval_cache)
    assert info["test_accuracy"] >= 0.97 and info["test_images"] == 360
    files = list((eval_cache / "classifiers").glob("digits-*.safetensors"))
    assert len(files) == 1
    again, info2 = load_classifier("digits", cache_dir=eval_cache)  # from disk, not retrained
    assert info2 == info
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    extractor = get_feature_extractor("classifier:digits", device="cpu", cache_dir=eval_cache)
    test = load_dataset("digits:test")
    feats, logits = extractor.run(test.numpy_images(), want_logits=True)
    assert feats.shape == (360, extractor.dim) and logits.shape == (360, 10)
    assert np.mean(logits.argmax(1) == test.labels.numpy()) == pytest.approx(info["test_accuracy"])
    # Upscaled RGB digits are brought back to the classifier's 8x8 grey input.
    big = load_dataset("digits:test", image_size=32, channels=3).numpy_images()
    assert np.mean(extractor.run(big, want_logits=True)[1].argmax(1) == test.labels.numpy()) > 0.9


def test_classifier_training_is_seeded_and_leaves_the_global_rng_alone():
    from ditlab.eval import train_classifier

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, _ = train_classifier("digits", steps=5)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    b, _ = train_classifier("digits", steps=5)
    c, _ = train_classifier("digits", steps=5, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.embed.weight, c.embed.weight)
