"""An in-domain judge: a small CNN ditlab trains once on a dataset's real training split and caches.

Its global-pooled penultimate features (like Inception's pool3) give an in-domain Fréchet distance, its logits
the class accuracy of class-conditional samples (is a sample recognised as the class it was asked for?) and an
Inception Score. It works at the dataset's native size (8x8 digits, 28x28 Fashion-MNIST); samples of another
size or channel count are converted with the same resize and luma as everything else.

Training is seeded and deterministic on a given machine: Adam with a one-cycle schedule, batch 128, light
random shifts, a step budget that gives ~27 epochs on digits and 4 on Fashion-MNIST. The weights and the
test-split accuracy are cached in `<cache>/classifiers/` (safetensors), keyed by the dataset and the recipe.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ditlab.atomic import atomic_write
from ditlab.data import load_dataset, parse_spec
from ditlab.eval.cache import cache_key, cache_path, dataset_fingerprint
from ditlab.eval.features import FeatureExtractor, default_device, register_extractor

# Bump when the architecture or the training recipe changes, so cached classifiers are retrained.
CLASSIFIER_RECIPE = 2


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallConvNet(nn.Module):
    """Two conv-BN-ReLU + 2x max-pool stages, a linear embedding (the features), ReLU, linear -> logits.

    The features are the embedding before its ReLU: no dead (constant) dimensions, closer to Gaussian.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 32,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        h, w = image_size
        if h < 4 or w < 4:
            raise ValueError(f"the classifier needs images of at least 4x4, got {h}x{w}")
        self.body = nn.Sequential(
            _block(in_channels, width),
            nn.MaxPool2d(2),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.embed = nn.Linear(2 * width * (h // 4) * (w // 4), feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(feature_dim, num_classes))
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) in [-1, 1] -> (features (N, feature_dim), logits (N, num_classes))."""
        features = self.embed(self.body(x))  # (N, 2w * H/4 * W/4) -> (N, feature_dim)
        return features, self.head(features)


def _to_input(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0  # uint8 (N, C, H, W) -> [-1, 1]


def _random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels (edge padding): cheap augmentation against over-fitting."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator)
    rows = dy[:, None] + torch.arange(h)[None]  # (N, H)
    cols = dx[:, None] + torch.arange(w)[None]  # (N, W)
    batch = torch.arange(n)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def accuracy(
    model: SmallConvNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Top-1 accuracy on uint8 images (N, C, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = _to_input(images[start : start + batch_size].to(device))
            correct += int((model(x)[1].argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / len(images)


def _fit(
    model, train, steps: int, batch_size: int, max_shift: int, gen: torch.Generator, name: str, progress: bool
) -> None:
    """Adam + one-cycle schedule over shuffled epochs of `train` (drawn from `gen`), with random shifts.

    A progress bar on stderr: on Fashion-MNIST this is minutes of a 2-core CPU, paid once per cache.
    """
    dev = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    model.train()
    order, pos = torch.randperm(len(train), generator=gen), 0
    bar = tqdm(
        range(steps), desc=f"training classifier:{name}", unit="step", file=sys.stderr, disable=not progress
    )
    for step in bar:
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(train), generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        x = _random_shift(_to_input(train.images[idx]), gen, max_shift).to(dev)
        loss = F.cross_entropy(model(x)[1], train.labels[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")


def train_classifier(
    dataset: str,
    *,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int = 128,
    width: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[SmallConvNet, dict]:
    """Train the judge on `dataset`'s train split; returns (model in eval mode, info with test accuracy).

    `steps` defaults to max(300, 4 epochs): ~27 epochs on digits, 4 on Fashion-MNIST.
    """
    train = load_dataset(dataset, split="train")
    test = load_dataset(dataset, split="test")
    if train.num_classes < 2:
        raise ValueError(f"classifier:{dataset} needs a labelled dataset with >= 2 classes")
    dev = default_device(device)
    steps = steps or max(300, 4 * math.ceil(len(train) / batch_size))
    max_shift = max(1, train.image_size[0] // 14)  # 1 px on 8x8 and 14..27 px images, 2 px on 28x28
    # Seed everything the run draws (init, dropout) without disturbing the caller's global RNG state.
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        model = SmallConvNet(train.channels, train.num_classes, train.image_size, width).to(dev)
        _fit(
            model, train, steps, batch_size, max_shift, torch.Generator().manual_seed(seed), dataset, progress
        )
    model.eval()
    info = {
        "dataset": dataset,
        "recipe": CLASSIFIER_RECIPE,
        "seed": seed,
        "steps": steps,
        "train_images": len(train),
        "test_images": len(test),
        "test_accuracy": accuracy(model, test.images, test.labels),
        "train_seconds": round(time.perf_counter() - started, 1),
        "image_size": list(train.image_size),
        "channels": train.channels,
        "num_classes": train.num_classes,
        "width": width,
        "class_names": train.class_names,
    }
    return model, info


def _dataset_fingerprint(dataset: str) -> list:
    if parse_spec(dataset).split is not None:
        raise ValueError(f"classifier:{dataset} names a split; the classifier always trains on 'train'")
    return dataset_fingerprint(dataset)


def classifier_file(dataset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the cached classifier for `dataset` lives."""
    key = cache_key("classifier", CLASSIFIER_RECIPE, _dataset_fingerprint(dataset))
    return cache_path("classifiers", dataset, key, ".safetensors", cache_dir)


def load_classifier(
    dataset: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    log=None,
) -> tuple[SmallConvNet, dict]:
    """The cached classifier for `dataset`, trained (and cached) first if there is none."""
    from safetensors.torch import load_file, safe_open, save

    dev = default_device(device)
    path = classifier_file(dataset, cache_dir)
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            info = json.loads(f.metadata()["info"])
        model = SmallConvNet(info["channels"], info["num_classes"], tuple(info["image_size"]), info["width"])
        model.load_state_dict(load_file(str(path)))
        return model.eval().to(dev), info
    log = log or (lambda msg: print(msg, file=sys.stderr))
    log(f"classifier:{dataset} is not cached yet: training it once (a one-time cost; later runs load it)")
    model, info = train_classifier(dataset, device=dev)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(state, metadata={"info": json.dumps(info)})))
    log(
        f"classifier:{dataset} trained in {info['train_seconds']} s (test accuracy "
        f"{info['test_accuracy']:.4f}) and cached at {path}"
    )
    return model, info


class ClassifierFeatures(FeatureExtractor):
    """Features and logits of ditlab's cached classifier for a dataset (`classifier:DATASET`)."""

    has_logits = True

    def __init__(self, dataset: str, device=None, batch_size: int = 500, cache_dir=None) -> None:
        super().__init__(device, batch_size)
        self.model, self.info = load_classifier(dataset, cache_dir=cache_dir, device=self.device)
        self.dataset = dataset
        self.name = f"classifier:{dataset}"
        self.metric = f"FD-Classifier[{dataset}]"
        self.dim = self.model.feature_dim
        self.resolution = tuple(self.info["image_size"])
        self.channels = self.info["channels"]
        self.num_classes = self.info["num_classes"]

    def cache_id(self) -> list:
        return [*super().cache_id(), CLASSIFIER_RECIPE, _dataset_fingerprint(self.dataset)]

    def settings(self) -> dict:
        return {
            **super().settings(),
            "test_accuracy": self.info["test_accuracy"],
            "recipe": CLASSIFIER_RECIPE,
        }

    def _forward(self, x):
        return self.model(x / 127.5 - 1.0)  # [0, 255] -> [-1, 1], as in training


def _classifier(arg: str, device, cache_dir) -> ClassifierFeatures:
    if not arg:
        raise ValueError("classifier needs a dataset: classifier:digits or classifier:fashion-mnist")
    return ClassifierFeatures(arg, device=device, cache_dir=cache_dir)


register_extractor("classifier", _classifier)
