"""The one home for scoring generated images: `evaluate` a set of samples, or `evaluate_model` (sample a
model, then evaluate), against a reference, with the settings that produced the numbers.

    from ditlab.eval import evaluate, evaluate_model
    result = evaluate(to_uint8(samples), labels, ref="digits:test", features=("effnet-lite0", "classifier:digits"))
    result["metrics"]["classifier:digits"]["fd"], result["metrics"]["effnet-lite0:64"]["floor"]["fd"]
    result = evaluate_model(model, 500, ref="digits:test", steps=16)  # `ditlab train --eval-every`

Extractors, reference statistics and floors are cached in memory and on disk, so a trainer can call this
every N steps (`ditlab train --eval-every`, `ditlab ablate`) and pay only for the samples' own features.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from ditlab.data import RESIZE_FILTER, check_images, describe_shape
from ditlab.eval.distributed import rank_zero_first, summarize
from ditlab.eval.features import get_feature_extractor
from ditlab.eval.frechet import frechet_distance, warn_if_singular
from ditlab.eval.label_scores import class_accuracy, inception_score
from ditlab.eval.precision_recall import precision_recall
from ditlab.eval.reference import (
    MAX_PR_FEATURES,
    floor_fd,
    parse_reference,
    reference_shape,
    reference_stats,
)
from ditlab.sampling import generate

DEFAULT_FEATURES = ("effnet-lite0",)


def default_features(ref) -> tuple[str, ...]:
    """effnet-lite0, plus the in-domain classifier when the reference is digits or Fashion-MNIST."""
    spec = parse_reference(ref)
    if spec.dataset is not None and spec.dataset.kind in ("digits", "fashion-mnist"):  # the labelled sets
        dataset = (
            spec.dataset.kind if spec.dataset.path is None else f"{spec.dataset.kind}:{spec.dataset.path}"
        )
        return (*DEFAULT_FEATURES, f"classifier:{dataset}")
    return DEFAULT_FEATURES


def check_reference_shape(samples_shape, ref, resize_ref: bool | None) -> tuple[int, int, int] | None:
    """The reference's stored (H, W, C); when it differs from the samples', refuse (resize_ref=False),
    warn (None) or accept (True). Returns the reference shape (None when unknown).

    Across sizes the real images are resized (a dataset reference to the samples' size) and channels are
    converted before any feature is computed: the score then measures the samples against interpolated
    images, which is seldom what was meant (32x32 RGB samples against 28x28 grey Fashion-MNIST come from a
    model of other data). Training at --image-size compares with its own resized test split on purpose.
    """
    ref_shape = reference_shape(ref)
    if ref_shape is None or tuple(ref_shape) == tuple(samples_shape) or resize_ref:
        return ref_shape
    message = (
        f"the samples are {describe_shape(samples_shape)} but the reference {ref} is "
        f"{describe_shape(ref_shape)}: a score across sizes or channels compares the samples with resized, "
        "channel-converted real images"
    )
    if resize_ref is False:
        raise ValueError(
            f"{message}; sample at the reference's size, or pass --resize-ref (Python: resize_ref=True) to "
            "compare anyway"
        )
    warnings.warn(f"{message} (resize_ref=True accepts this, resize_ref=False refuses it)", stacklevel=2)
    return ref_shape


def parse_features(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated extractor list (`TrainConfig.eval_features`); None for "", "default" or None,
    which `evaluate` reads as `default_features(ref)`."""
    if text is None or text.strip() in ("", "default"):
        return None
    return tuple(f.strip() for f in text.split(",") if f.strip())


def evaluate(
    images,
    labels=None,
    ref: str | os.PathLike = "digits:test",
    features: Sequence[str] | None = None,
    *,
    k: int = 3,
    floor: bool = True,
    device=None,
    cache_dir: str | os.PathLike | None = None,
    resize_ref: bool | None = None,
    vae=None,
    dist=None,
) -> dict:
    """Score uint8 samples (N, H, W, C) against `ref` with each feature extractor.

    Args:
        images: uint8 (N, H, W, C), C in {1, 3} (convert model outputs with `ditlab.data.to_uint8`).
        labels: the class each sample was generated for (N,), or None; enables class accuracy.
        ref: reference spec (`digits:test`, `fashion-mnist:test`, a folder, an `.npz`; see
            `ditlab.eval.reference`).
        features: extractor names (`effnet-lite0[:RES]`, `inception:PATH`, `classifier:DATASET`); None =
            `default_features(ref)`.
        k: neighbours for precision/recall (computed on at most 10k samples and 10k reference vectors).
        floor: also report the FD of real held-out data against the reference, with as many images.
        resize_ref: when the reference's images have another size or channel count than the samples:
            None warns and resizes, True resizes silently, False refuses (`ditlab eval` without --resize-ref).
        dist: under torchrun, the process group (`ditlab.distributed.DistInfo`): every rank calls
            this with the same arguments, extracts the features of its share of the samples, the reference
            and the floor, and returns the same result (`ditlab.eval.distributed`; `ditlab eval` under
            torchrun does this).

    Returns:
        a JSON-ready dict: `n_samples`, `image_size`, `ref`, `ref_shape` (its stored H, W, C or None), `k`,
        `resize`, `metrics` (one entry per extractor: `metric` name, `fd`, `n_ref`, `precision`, `recall`,
        `floor`, extractor settings; for classifiers also `inception_score`, `class_accuracy`), and
        `warnings` (also issued as warnings).
    """
    images = check_images(images, what="samples")
    n, height, width, channels = images.shape
    if labels is not None:
        labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    spec = parse_reference(ref)
    if features is None:
        names = default_features(spec)
    else:
        names = (features,) if isinstance(features, str) else tuple(features)
    result = {
        "n_samples": n,
        "image_size": [height, width],
        "channels": channels,
        "ref": str(spec),
        "ref_shape": None,
        "k": k,
        "resize": RESIZE_FILTER,
        "metrics": {},
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref_shape = check_reference_shape((height, width, channels), spec, resize_ref)  # before any work
        result["ref_shape"] = list(ref_shape) if ref_shape is not None else None
        for name in names:
            # the in-domain classifier trains on first use: once, on rank 0, the others then load it
            extractor = rank_zero_first(
                lambda name=name: get_feature_extractor(name, device=device, cache_dir=cache_dir), dist
            )
            keep = np.arange(min(n, MAX_PR_FEATURES))
            fake = summarize(extractor, images, keep=keep, want_logits=True, what="samples", dist=dist)
            logits = fake.logits
            reference = reference_stats(
                spec, extractor, image_size=(height, width), cache_dir=cache_dir, dist=dist
            )
            warn_if_singular(reference.n, extractor.dim, "reference images")  # also on cache hits
            entry = {
                "metric": extractor.metric,
                "fd": frechet_distance(fake.mu, fake.sigma, reference.mu, reference.sigma),
                "n_ref": reference.n if reference.n >= 0 else None,  # ADM batches do not record it
                **extractor.settings(),
            }
            if reference.features is not None and n > k and len(reference.features) > k:
                precision, recall = precision_recall(reference.features, fake.kept, k=k)
                entry.update(precision=precision, recall=recall)
            if logits is not None:
                entry["inception_score"], entry["inception_score_std"] = inception_score(logits)
                if labels is not None:
                    entry["class_accuracy"] = class_accuracy(logits, labels)
            if floor:
                entry["floor"] = floor_fd(
                    spec, extractor, n, image_size=(height, width), cache_dir=cache_dir, dist=dist
                )
            result["metrics"][extractor.name] = entry
    messages = list(dict.fromkeys(str(w.message) for w in caught))  # once each, in order
    result["warnings"] = messages
    for message in messages:
        warnings.warn(message, stacklevel=2)
    return result


def evaluate_model(
    model,
    num_samples: int,
    *,
    ref: str | os.PathLike,
    features: Sequence[str] | None = None,
    floor: bool = True,
    cache_dir: str | os.PathLike | None = None,
    resize_ref: bool | None = None,
    **generate_options,
) -> dict:
    """Sample `num_samples` images of `model` (classes cycled; the noise fixed by `seed`) and `evaluate`
    them against `ref` with `features`. `generate_options` are `ditlab.generate`'s (sampler, steps (default
    50), guidance_scale, seed, batch_size (default 250), device: where the model samples, the feature extractors
    pick their own; vae: a latent model is scored on decoded images). Returns `evaluate`'s dict."""
    options = {"steps": 50, "batch_size": 250, **generate_options}
    images, labels = generate(model, num_samples=num_samples, **options)
    labels = labels if model.num_classes else None
    return evaluate(
        images, labels, ref=ref, features=features, floor=floor, cache_dir=cache_dir, resize_ref=resize_ref
    )


def fd_record(result: dict) -> dict:
    """`evaluate`'s result as flat log fields: `fd_<extractor>` (e.g. `fd_effnet_lite0`, `fd_classifier`)
    per extractor, and `class_accuracy` where a classifier scored the labels."""
    record = {}
    for name, entry in result["metrics"].items():
        record[f"fd_{name.split(':')[0].replace('-', '_')}"] = entry["fd"]
        if "class_accuracy" in entry:
            record["class_accuracy"] = entry["class_accuracy"]
    return record
