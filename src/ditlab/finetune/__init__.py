"""Fine-tuning a trained DiT: DiffFit, adaLN-only, LoRA and full fine-tuning, adapter files and merging.

    from ditlab.finetune import prepare_model, trainable_summary, merge, save_adapter, load_adapter
    model = ditlab.load_model("base.safetensors")
    prepare_model(model, "difffit", num_classes=5)     # γ scales added; biases, norms, labels, γ trainable
    ...train...
    save_adapter(model, "adapter.safetensors", base="base.safetensors")
    plain = merge(model)                               # γ folded into the weights: a plain DiT again

`ditlab finetune` runs all of it through the Trainer (see ditlab.finetune.trainer).
"""

from ditlab.finetune.adapter import ADAPTER_KEY, base_sha256, load_adapter, read_adapter, save_adapter
from ditlab.finetune.config import FinetuneConfig, read_base, resolve_base
from ditlab.finetune.layers import BranchScale, DiffFitScale, LoRALinear, MergeableAdapter, merge_adapters
from ditlab.finetune.methods import (
    LABEL_MODES,
    METHODS,
    FinetuneMethod,
    get_method,
    merge,
    prepare_model,
    resize_label_embedding,
    trainable_summary,
)
from ditlab.finetune.trainer import FinetuneTrainer, finetune

__all__ = [
    "ADAPTER_KEY",
    "LABEL_MODES",
    "METHODS",
    "BranchScale",
    "DiffFitScale",
    "FinetuneConfig",
    "FinetuneMethod",
    "FinetuneTrainer",
    "LoRALinear",
    "MergeableAdapter",
    "base_sha256",
    "finetune",
    "get_method",
    "load_adapter",
    "merge",
    "merge_adapters",
    "prepare_model",
    "read_adapter",
    "read_base",
    "resize_label_embedding",
    "resolve_base",
    "save_adapter",
    "trainable_summary",
]
