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

from ditlab.finetune.adapter import save_adapter
from ditlab.finetune.config import FinetuneConfig
from ditlab.finetune.methods import get_method, merge, prepare_model, trainable_summary
from ditlab.models.checkpoint import load_model, save_model
from ditlab.train.trainer import Trainer


class FinetuneTrainer(Trainer):
    cfg: FinetuneConfig

    def __init__(self, cfg: FinetuneConfig, resume=None, overwrite: bool = False):
        if not isinstance(cfg, FinetuneConfig):
            raise TypeError(f"FinetuneTrainer needs a FinetuneConfig, got {type(cfg).__name__}")
        super().__init__(cfg, resume=resume, overwrite=overwrite)

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


def finetune(cfg: FinetuneConfig, resume=None, overwrite: bool = False) -> dict:
    """Run (or resume) a fine-tuning run; returns the training summary plus adapter path/size and counts."""
    return FinetuneTrainer(cfg, resume=resume, overwrite=overwrite).run()


__all__ = ["FinetuneTrainer", "finetune"]
