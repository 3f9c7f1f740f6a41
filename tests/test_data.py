"""ditlab.data: the named sets, ImageFolder trees, specs and the in-memory dataset."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.data import (
    FASHION_MNIST_DIR,
    DatasetSpec,
    ImageDataset,
    load_dataset,
    parse_spec,
)

FMNIST_FILES = Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz"
needs_fmnist = pytest.mark.skipif(not FMNIST_FILES.exists(), reason="Fashion-MNIST is not installed")


# --- digits ------------------------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_disjoint():
    from sklearn.datasets import load_digits

    from ditlab.data.builtin import digits_split_indices

    train, test = digits_split_indices("train"), digits_split_indices("test")
    assert (len(train), len(test)) == (1437, 360)
    assert not set(train) & set(test)
    assert sorted(np.concatenate([train, test])) == list(range(1797))
    y = load_digits().target
    for c in range(10):  # stratified: every class keeps ~20% of its images in test
        share = np.sum(y[test] == c) / np.sum(y == c)
        assert abs(share - 0.2) < 0.01
    np.testing.assert_array_equal(test, digits_split_indices("test"))  # same split every call


def test_digits_pixels_scale_0_16_to_0_255():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", split="all")
    raw = load_digits().images  # floats 0..16
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), np.rint(raw * 255 / 16).astype(np.uint8))
    assert ds.num_classes == 10 and ds.class_names[7] == "7" and ds.image_size == (8, 8) and ds.channels == 1


def test_items_and_batches_are_floats_in_unit_range():
    ds = load_dataset("digits:test")
    x, y = ds[3]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    assert x.min() >= -1 and x.max() <= 1
    xb, yb = ds.batch([0, 3, 5])
    torch.testing.assert_close(xb[1], x)
    assert yb.tolist() == [int(ds.labels[i]) for i in (0, 3, 5)]
    # Every stored value maps to the exact inverse of the DiT quantisation.
    assert torch.equal(torch.clamp(127.5 * xb + 128, 0, 255).to(torch.uint8), ds.images[[0, 3, 5]])


def test_flipped_batches_are_mirrors_and_seeded():
    ds = load_dataset("digits", flip=True)
    idx = torch.arange(64)
    x1, _ = ds.batch(idx, torch.Generator().manual_seed(0))
    x2, _ = ds.batch(idx, torch.Generator().manual_seed(0))
    plain, _ = load_dataset("digits").batch(idx)
    assert torch.equal(x1, x2)
    same = (x1 == plain).flatten(1).all(1)
    mirrored = (x1 == plain.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 10 < int((mirrored & ~same).sum()) < 54  # about half of them flipped


def test_resize_and_channels_options():
    ds = load_dataset("digits:test", image_size=(16, 12), channels=3)
    assert ds.images.shape == (360, 3, 16, 12)
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])
    un = load_dataset("digits:test", unconditional=True)
    assert un.num_classes == 0 and un.class_names == [] and int(un.labels.abs().sum()) == 0


# --- Fashion-MNIST -----------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fmnist(root: Path, n_train: int = 12, n_test: int = 5) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)


def test_fashion_mnist_reader_on_idx_files(tmp_path):
    _fake_fmnist(tmp_path)
    train = load_dataset(f"fashion-mnist:{tmp_path}")
    test = load_dataset(f"fashion-mnist:{tmp_path}:test")
    both = load_dataset(f"fashion-mnist:{tmp_path}", split="all")
    assert (len(train), len(test), len(both)) == (12, 5, 17)
    assert train.images.shape == (12, 1, 28, 28) and test.labels.tolist() == [0, 1, 2, 3, 4]
    assert train.class_names[9] == "Ankle boot"
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read(), np.uint8, offset=16)[: 28 * 28]
    np.testing.assert_array_equal(train.images[0, 0].flatten().numpy(), first)


def test_fashion_mnist_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*apt-get install dataset-fashion-mnist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz not found"):
        load_dataset(f"fashion-mnist:{tmp_path}")
    _fake_fmnist(tmp_path)
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is truncated"):
        load_dataset(f"fashion-mnist:{tmp_path}:test")


@needs_fmnist
def test_fashion_mnist_test_split_from_debian_files():
    ds = load_dataset("fashion-mnist:test")
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


# --- ImageFolder -------------------------------------------------------------------------------------------


def _png(path: Path, color, size=(6, 4), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    _png(tmp_path / "cat" / "a.png", (255, 0, 0))
    _png(tmp_path / "cat" / "deeper" / "b.png", (200, 0, 0))
    _png(tmp_path / "dog" / "c.jpg", (0, 0, 255))
    (tmp_path / ".hidden").mkdir()
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    assert ds.images.shape == (3, 3, 4, 6)  # (N, C, H, W): PIL sizes are (W, H)
    assert ds.images[0, :, 0, 0].tolist() == [255, 0, 0]


def test_image_folder_unconditional_and_grey(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", 40 * i, size=(5, 5), mode="L")
    ds = load_dataset(str(tmp_path))
    assert ds.num_classes == 0 and ds.channels == 1 and ds.images.shape == (3, 1, 5, 5)
    assert ds.images[2, 0, 0, 0] == 80


def test_image_folder_transparency_becomes_black(tmp_path):
    _png(tmp_path / "x.png", (255, 255, 255, 0), size=(3, 3), mode="RGBA")
    _png(tmp_path / "y.png", (255, 255, 255, 255), size=(3, 3), mode="RGBA")
    ds = load_dataset(tmp_path)
    assert ds.images[0].max() == 0 and ds.images[1].min() == 255


def test_image_folder_splits_are_subfolders(tmp_path):
    _png(tmp_path / "train" / "a" / "0.png", (1, 1, 1))
    _png(tmp_path / "train" / "b" / "0.png", (2, 2, 2))
    _png(tmp_path / "test" / "a" / "0.png", (3, 3, 3))
    _png(tmp_path / "test" / "b" / "0.png", (4, 4, 4))
    assert load_dataset(f"{tmp_path}:test").images[:, 0, 0, 0].tolist() == [3, 4]
    assert load_dataset(tmp_path).images[:, 0, 0, 0].tolist() == [1, 2]
    assert load_dataset(tmp_path, split="test").class_names == ["a", "b"]


def test_image_folder_sizes_resize_and_center_crop(tmp_path):
    _png(tmp_path / "small.png", (10, 10, 10), size=(4, 4))
    wide = np.zeros((4, 12, 3), np.uint8)
    wide[:, 4:8] = 200  # the middle third is bright, the sides dark
    Image.fromarray(wide).save(tmp_path / "wide.png")
    with pytest.raises(ValueError, match=r"different sizes.*image_size"):
        load_dataset(tmp_path)
    cropped = load_dataset(tmp_path, image_size=4)
    assert cropped.images.shape == (2, 3, 4, 4)
    assert int(cropped.images[1].min()) == 200  # the centre crop kept only the bright middle
    stretched = load_dataset(tmp_path, image_size=4, center_crop=False)
    assert int(stretched.images[1].min()) < 50


def test_bad_image_raises_with_path_or_is_skipped_with_count(tmp_path):
    _png(tmp_path / "good.png", (9, 9, 9))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"broken\.png.*bad_images='skip'"):
        load_dataset(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*broken\.png"):
        ds = load_dataset(tmp_path, bad_images="skip")
    assert len(ds) == 1


def test_missing_and_empty_folders_give_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no images found in .*put images in it"):
        load_dataset(tmp_path)
    (tmp_path / "empty_class").mkdir()
    _png(tmp_path / "full_class" / "0.png", (0, 0, 0))
    with pytest.raises(ValueError, match=r"empty_class has no images"):
        load_dataset(tmp_path, unconditional=False)
    with pytest.raises(ValueError, match=r"unknown dataset .*digits, fashion-mnist"):
        load_dataset(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*missing"):
        load_dataset(f"folder:{tmp_path / 'missing'}")


# --- specs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("digits", DatasetSpec("digits")),
        ("digits:test", DatasetSpec("digits", None, "test")),
        ("fashion-mnist", DatasetSpec("fashion-mnist")),
        ("fashion-mnist:test", DatasetSpec("fashion-mnist", None, "test")),
        ("fashion-mnist:/data/fm", DatasetSpec("fashion-mnist", "/data/fm")),
        ("fashion-mnist:/data/fm:train", DatasetSpec("fashion-mnist", "/data/fm", "train")),
        ("folder:/data/x:test", DatasetSpec("folder", "/data/x", "test")),
    ],
)
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed
    if parsed.kind != "folder":  # str() gives back a spec that parses to the same thing
        assert parse_spec(str(parsed)) == parsed


def test_split_in_spec_and_argument_must_agree():
    with pytest.raises(ValueError, match="give one"):
        load_dataset("digits:test", split="train")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("digits", split="val")


def test_dataset_validates_its_tensors():
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="labels must have shape"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3))
