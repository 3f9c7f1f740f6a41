"""The two real image sets ditlab knows by name: scikit-learn's digits and Fashion-MNIST.

digits: the 1,797 8x8 hand-written digits bundled with scikit-learn. Pixel values 0..16 become uint8 by
`round(v * 255 / 16)` (16 -> 255). The set has no official split, so ditlab defines one: a stratified 80/20
split with `random_state=0` (1,437 train / 360 test images), the same on every machine.

fashion-mnist: Zalando's 70k 28x28 grey images (10 classes) from the standard IDX `.gz` files (Debian package
`dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist); uncompressed IDX files work too.
Splits: train = the 60k training file, test = the 10k `t10k` file.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGITS_CLASSES = tuple(str(d) for d in range(10))
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
SPLITS = ("train", "test", "all")
NATIVE_SHAPES = {"digits": (8, 8, 1), "fashion-mnist": (28, 28, 1)}  # (H, W, C) as the files store them

_IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803: uint8 3-d array; 0x0801: uint8 1-d array
_FMNIST_FILES = {"train": "train", "test": "t10k"}


def _check_split(split: str, dataset: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {dataset}; choose one of: {', '.join(SPLITS)}")


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into `sklearn.datasets.load_digits()` for ditlab's fixed stratified 80/20 split (sorted)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split, "digits")
    y = load_digits().target
    idx = np.arange(len(y))
    if split == "all":
        return idx
    train, test = train_test_split(
        idx, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_SPLIT_SEED, shuffle=True
    )
    return np.sort(train if split == "train" else test)


def load_digits_arrays(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits -> (images uint8 (N, 8, 8, 1), labels int64 (N,))."""
    from sklearn.datasets import load_digits

    data = load_digits()
    idx = digits_split_indices(split)
    images = np.rint(data.images[idx] * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    return images, data.target[idx].astype(np.int64)


def _open_idx(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}; re-download or reinstall it") from e


def read_idx(path: str | os.PathLike, kind: str) -> np.ndarray:
    """Read an IDX file of uint8 `images` (N, H, W) or `labels` (N,), checking its header."""
    path = Path(path)
    raw = _open_idx(path)
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != _IDX_MAGIC[kind]:
        raise ValueError(f"{path} is not an IDX {kind} file (bad magic number); expected MNIST IDX")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: header says {dims}, file holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}.gz not found in {root}; install it with "
        "`sudo apt-get install dataset-fashion-mnist` or pass fashion-mnist:/folder/with/the/idx/files"
    )


def load_fashion_mnist_arrays(
    root: str | os.PathLike | None = None, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST IDX files in `root` -> (images uint8 (N, 28, 28, 1), labels int64 (N,))."""
    _check_split(split, "fashion-mnist")
    root = Path(root or FASHION_MNIST_DIR)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST folder not found: {root}; install it with "
            "`sudo apt-get install dataset-fashion-mnist` or pass fashion-mnist:/folder/with/the/idx/files"
        )
    parts = ("train", "test") if split == "all" else (split,)
    images, labels = [], []
    for part in parts:
        prefix = _FMNIST_FILES[part]
        x = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"), "images")
        y = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"), "labels")
        if len(x) != len(y):
            msg = f"{len(x)} images, {len(y)} labels"
            raise ValueError(f"Fashion-MNIST {part} files in {root} disagree: {msg}")
        images.append(x[..., None])  # (N, 28, 28, 1)
        labels.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)
