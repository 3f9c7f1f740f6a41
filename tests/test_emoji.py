"""The emoji set: shapes, captions, the glyphs left out, the split, the cache, the spec syntax, training on it,
and the message when the font is missing (the other tests skip without the font)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ditlab.data import EMOJI_FONT, dataset_shape, load_dataset, parse_spec
from ditlab.data import emoji as emoji_module
from ditlab.eval.cache import cache_dir
from ditlab.train import TrainConfig, Trainer

needs_font = pytest.mark.skipif(
    not Path(EMOJI_FONT).is_file(), reason="install the font: apt-get install fonts-noto-color-emoji"
)


@needs_font
def test_emoji_are_rgb_unconditional_and_captioned_with_their_names():
    train, test = load_dataset("emoji"), load_dataset("emoji:test")
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert train.num_classes == 0 and not train.class_names
    assert len(train.captions) == len(train) and len(test.captions) == len(test)
    assert 1000 < len(train) + len(test) < 2000 and len(test) == (len(train) + len(test)) // 10
    everything = set(train.captions) | set(test.captions)
    assert {"teddy bear", "tropical fish", "money bag"} <= everything
    assert all(c == c.lower() and c for c in everything)
    assert not set(train.captions) & set(test.captions)  # the held-out split is disjoint
    # the plain background: the corners of (almost) every emoji are white
    corners = train.images[:, :, 0, 0].float().mean()
    assert corners > 240


@needs_font
def test_skin_tones_hair_components_and_regional_indicators_are_left_out():
    captions = load_dataset("emoji:all").captions
    for prefix in ("regional indicator", "emoji modifier fitzpatrick", "emoji component"):
        assert not [c for c in captions if c.startswith(prefix)], prefix
    assert emoji_module.is_left_out(0x1F1E6) and emoji_module.is_left_out(0x1F3FD)
    assert emoji_module.is_left_out(0x1F9B0) and not emoji_module.is_left_out(0x1F600)


@needs_font
def test_emoji_64_and_an_image_size_render_at_that_size():
    big = load_dataset("emoji[64]")
    assert big.images.shape[1:] == (3, 64, 64) and big.name == "emoji[64]:train"
    assert load_dataset("emoji", image_size=64).images.shape[1:] == (3, 64, 64)
    assert torch.equal(load_dataset("emoji", image_size=64).images, big.images)  # rendered at 64, not resized
    assert dataset_shape("emoji[64]") == (64, 64, 3) and dataset_shape("emoji") == (32, 32, 3)


@needs_font
def test_the_set_is_rendered_once_and_then_read_from_the_cache(monkeypatch):
    first = load_dataset("emoji")
    files = list((cache_dir() / "emoji").glob("emoji-32px-*.npz"))
    assert len(files) == 1

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(emoji_module, "render_emoji", no_rendering)
    again = load_dataset("emoji")
    assert torch.equal(again.images, first.images) and again.captions == first.captions


def test_the_cache_folder_is_the_evaluation_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path))
    assert emoji_module._cache_root() == cache_dir() == tmp_path
    monkeypatch.delenv("DITLAB_CACHE")
    assert emoji_module._cache_root() == cache_dir()


def test_emoji_specs_parse_sizes_and_splits_and_reject_class_lists():
    assert str(parse_spec("emoji[64]:test")) == "emoji[64]:test"
    assert parse_spec("emoji").kind == "emoji" and parse_spec("emoji").resolution is None
    assert parse_spec("emoji:test").split == "test"
    with pytest.raises(ValueError, match=r"the bracket holds the image size in px, e\.g\. emoji\[64\]"):
        parse_spec("emoji[0-4]")
    with pytest.raises(ValueError, match="emoji size must be an integer from 1 to 128"):
        parse_spec("emoji[512]")
    with pytest.raises(ValueError, match="bad emoji spec 'emoji:val'"):
        parse_spec("emoji:val")


def test_a_missing_font_names_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setenv("DITLAB_EMOJI_FONT", str(tmp_path / "nope.ttf"))
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="sudo apt-get install fonts-noto-color-emoji"):
        load_dataset("emoji")


@needs_font
@pytest.mark.slow
def test_a_dit_trains_on_emoji_unconditionally(tmp_path):
    cfg = TrainConfig(
        data="emoji",
        model="DiT-Nano/4",
        batch_size=8,
        steps=2,
        log_every=1,
        sample_steps=2,
        progress=False,
        threads=1,
        flip=True,
        out=str(tmp_path / "run"),
    )
    trainer = Trainer(cfg)
    assert trainer.model.num_classes == 0 and trainer.model.data_spec["channels"] == 3
    summary = trainer.run()
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
