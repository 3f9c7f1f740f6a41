"""Fine-tuning runs: ditlab's Trainer started from a checkpoint, with only the method's parameters trainable.

    from ditlab.finetune import FinetuneConfig, finetune
    summary = finetune(FinetuneConfig(base="runs/fm04", data="fashion-mnist[5-9]", labels="keep",
                                      method="difffit", steps=2000, batch_size=128, out="runs/ft-difffit"))

Everything a training run has comes with it (checkpoints and exact resume, EMA, metrics, DDP). At the end the
run folder holds `model.safetensors`, the EMA model with the method's modules merged in (a plain DiT any
ditlab tool loads), and `adapter.safetensors`, only the trained parameters plus a reference to the base.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ditlab.data import dataset_shape, describe_shape
from ditlab.finetune.adapter import save_adapter
from ditlab.finetune.config import FinetuneConfig
from ditlab.finetune.methods import get_method, merge, prepare_model, trainable_summary
from ditlab.models.checkpoint import load_model, save_model
from ditlab.train.parallel import SHARDED
from ditlab.train.trainer import Trainer


class FinetuneTrainer(Trainer):
    cfg: FinetuneConfig

    def __init__(self, cfg: FinetuneConfig, resume=None, overwrite: bool = False, force: bool = False):
        if not isinstance(cfg, FinetuneConfig):
            raise TypeError(f"FinetuneTrainer needs a FinetuneConfig, got {type(cfg).__name__}")
        if cfg.parallel in SHARDED:  # the adapter export below reads the whole EMA model on rank 0
            raise ValueError(f"ditlab finetune runs with --parallel ddp (or auto), not {cfg.parallel}")
        super().__init__(cfg, resume=resume, overwrite=overwrite, force=force)

    def build_model(self):
        """The base checkpoint, its label table sized for the data, prepared for the method (frozen elsewhere)."""
        cfg = self.cfg
        model = load_model(cfg.base)
        if model.config.learn_sigma != cfg.learn_sigma:
            raise ValueError(
                f"the base {'predicts' if model.config.learn_sigma else 'does not predict'} the variance "
                f"(learn_sigma={model.config.learn_sigma}) but the run asks learn_sigma={cfg.learn_sigma}; "
                "leave learn_sigma unset to inherit it"
            )
        self._check_data_shape(model)
        num_classes = self.data.num_classes or None  # unlabelled data: keep the table (the null row trains)
        prepare_model(model, cfg.method, num_classes, labels=cfg.labels, seed=cfg.seed, **cfg.method_args)
        model.train()  # load_model returns eval mode; training-time switches (checkpointing) need train mode
        self.trainable = trainable_summary(model)
        if self.dist.is_main:
            t = self.trainable
            print(
                f"finetune {cfg.method}: {t['trainable']:,} of {t['total']:,} parameters trainable "
                f"({t['fraction']:.4%}), lr {cfg.lr:g}, base {cfg.base}",
                flush=True,
            )
        return model

    def _check_data_shape(self, model) -> None:
        """The data must reach the base at its input shape; say in one line when that meant a resize.

        A DiT's patch grid and position embedding fix its input size, so a fine-tune has no other size to
        use: refusing until --image-size repeats the base's size would only make the user type the one value
        that works. The resize is said (8x8 grey digits become 32x32 RGB) because it changes the data.
        """
        base = (*model.config.image_hw, model.in_channels)
        loaded = (*self.data.image_size, self.data.channels)
        if loaded != base:
            raise ValueError(
                f"the base works on {describe_shape(base)} images but --image-size/--channels load "
                f"{self.cfg.data} at {describe_shape(loaded)}; leave them unset to use the base's"
            )
        stored = dataset_shape(self.cfg.data)
        if stored != loaded and self.dist.is_main:
            print(
                f"finetune: {self.cfg.data} holds {describe_shape(stored)} images; they are resized to "
                f"{describe_shape(loaded)}, the base's input size",
                flush=True,
            )

    def compute_loss(self, x0, model_kwargs, t, noise) -> dict:
        return get_method(self.cfg.method).compute_loss(self, x0, model_kwargs, t, noise)

    def run(self) -> dict:
        summary = super().run()
        if self.dist.is_main:
            out = Path(self.cfg.out)
            # The trainer wrote the EMA model with the adapter modules in it; replace it by the merged plain DiT.
            merged = merge(copy.deepcopy(self.ema.model))
            save_model(merged, out / "model.safetensors", objective=self.spec.to_dict())
            adapter = save_adapter(self.ema.model, out / "adapter.safetensors", base=self.cfg.base)
            summary.update(
                adapter=str(adapter),
                adapter_bytes=adapter.stat().st_size,
                method=self.cfg.method,
                **self.trainable,
            )
        return summary


def finetune(cfg: FinetuneConfig, resume=None, overwrite: bool = False, force: bool = False) -> dict:
    """Run (or resume) a fine-tuning run; returns the training summary plus adapter path/size and counts."""
    return FinetuneTrainer(cfg, resume=resume, overwrite=overwrite, force=force).run()


__all__ = ["FinetuneTrainer", "finetune"]
