"""`ditlab train --eval-every N`: Fréchet distance of EMA samples during training, the DiT paper's
FD-versus-steps curves. Each evaluation samples `eval_samples` images (classes cycled), scores them with
`ditlab.eval.evaluate` against `eval_ref` (default: the training data's test split) and logs one number
per feature extractor (`fd_<extractor>`), class accuracy where a classifier exists, and the wall time."""

from __future__ import annotations

import time

from ditlab.eval import default_features, evaluate
from ditlab.sampling import sample


def eval_settings(cfg) -> tuple[str, tuple[str, ...]]:
    ref = cfg.eval_ref or f"{cfg.data}:test"
    if cfg.eval_features in ("", "default"):
        return ref, default_features(ref)
    return ref, tuple(f.strip() for f in cfg.eval_features.split(",") if f.strip())


def evaluate_during_training(trainer) -> dict:
    cfg = trainer.cfg
    ref, features = eval_settings(cfg)
    start = time.perf_counter()
    model = trainer.ema.model
    images, labels = sample(
        model,
        num_samples=cfg.eval_samples,
        sampler=cfg.sampler,
        steps=cfg.sample_steps,
        guidance_scale=cfg.guidance_scale,
        seed=cfg.seed + 12345,  # fixed noise across evaluations: the curve shows the model, not the draw
        batch_size=250,
        vae=getattr(trainer, "autoencoder", None),  # latent models: FD on decoded images
        device=trainer.device,
    )
    labels = labels if model.num_classes else None
    # resize_ref: a run at --image-size is compared with its test split resized the way its data was
    result = evaluate(images, labels, ref=ref, features=features, floor=False, resize_ref=True)
    record = {}
    for name, entry in result["metrics"].items():
        key = name.split(":")[0].replace("-", "_")
        record[f"fd_{key}"] = entry["fd"]
        if "class_accuracy" in entry:
            record["class_accuracy"] = entry["class_accuracy"]
    record["eval_seconds"] = time.perf_counter() - start
    return record
