"""Fine-tuning methods: which parameters of a trained DiT learn, and which modules are added for them.

    model = load_model("base.safetensors")
    prepare_model(model, "difffit", num_classes=5)      # new label table, γ scales, only those + biases train
    trainable_summary(model)                            # {"trainable": ..., "total": ..., "fraction": ...}

METHODS maps a name to a `FinetuneMethod`; a method adds its modules (`add_modules`), names the parameters
that train (`trainable_parameters`), gives its default learning rate as a multiple of the pre-training rate
(`lr_scale`) and folds its modules back into plain layers for inference (`merge`). A new method registers
one instance here and is then available to `ditlab finetune --method`, to adapter files and to merging.

| method   | trains                                                                   | default lr   |
|----------|--------------------------------------------------------------------------|--------------|
| difffit  | biases, norm weights, label table, γ (ones) on attention and MLP branches | 10× pretrain |
|          | of the first half of the blocks (Xie et al. 2023, "DiffFit")              |              |
| adaln    | the adaLN modulation projections (blocks and final layer), label table   | 10× pretrain |
| lora     | rank-r adapters on attn.qkv, attn.proj, mlp.fc1, mlp.fc2, label table    | 10× pretrain |
| full     | every parameter (the fixed position table excepted)                      | 1× pretrain  |

Label tables: fine-tuning to a new label set replaces `y_embedder` by a table for the new classes (plus the
null class), re-initialised N(0, 0.02) as DiffFit does (`labels="reset"`). `labels="keep"` instead keeps the
trained rows and the null row and appends fresh rows for extra classes: with ditlab's class subsets
(`fashion-mnist[5-9]` keeps ids 5..9) a model pretrained on classes 0-4 of a 10-class table learns 5-9 and
can still be asked for 0-4, which is how forgetting is measured.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ditlab.dydit.method import DyDiTMethod
from ditlab.finetune.layers import DiffFitScale, LoRALinear, merge_adapters
from ditlab.nn.embed import LabelEmbedder
from ditlab.nn.modulation import AdaLNModulation, AdaLNSingle, ScaleShiftTable
from ditlab.nn.norms import RMSNorm

LABEL_MODES = ("reset", "keep")
NORM_TYPES = (RMSNorm, nn.LayerNorm, nn.GroupNorm)
FROZEN_ALWAYS = ("pos_embed",)  # the fixed sin-cos position table never trains


def _param_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def label_parameters(model) -> list[nn.Parameter]:
    return list(model.y_embedder.parameters()) if getattr(model, "y_embedder", None) is not None else []


def resize_label_embedding(model, num_classes: int, mode: str = "reset", generator=None) -> None:
    """Give `model` a label table for `num_classes` classes (plus its null row), in place.

    mode "reset": every row new, N(0, 0.02) (DiffFit). mode "keep": the trained rows for classes below
    min(old, new) and the null row are kept, rows for new classes are N(0, 0.02); shrinking is refused.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; choose one of: {', '.join(LABEL_MODES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 for a label table, got {num_classes}")
    cfg = model.config
    old = model.y_embedder
    if mode == "keep" and old is not None and num_classes < old.num_classes:
        raise ValueError(
            f"labels='keep' cannot shrink the label table from {old.num_classes} to {num_classes} classes; "
            "use labels='reset' for a new label set"
        )
    device, dtype = _param_device(model)
    new = LabelEmbedder(num_classes, cfg.hidden_size, cfg.class_dropout_prob).to(device=device, dtype=dtype)
    table = new.embedding_table.weight
    init = torch.randn(table.shape, generator=generator) * 0.02  # the DiT label-table init
    with torch.no_grad():
        table.copy_(init.to(dtype))
        if mode == "keep" and old is not None:
            kept = old.num_classes
            table[:kept].copy_(old.embedding_table.weight[:kept])
            if old.has_null_class and new.has_null_class:
                table[num_classes].copy_(old.embedding_table.weight[kept])
    model.y_embedder = new
    model.config = cfg.replace(num_classes=num_classes)


class FinetuneMethod:
    """One way to fine-tune a DiT. Subclasses set `name`, `help`, and where they differ from these defaults
    `lr_scale` and `options` (name -> default), and override `add_modules` and/or `trainable_parameters`."""

    name: str = ""
    help: str = ""
    lr_scale: float = 10.0  # default lr = lr_scale × the base model's pre-training lr
    options: dict = {}

    def resolve_options(self, options: dict) -> dict:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise ValueError(f"unknown option(s) {unknown} for method {self.name!r}; valid options: {valid}")
        return {**self.options, **options}

    def add_modules(self, model, generator: torch.Generator, **options) -> None:
        """Add the method's new modules (in place). The default adds none."""

    def trainable_parameters(self, model, **options) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def prepare(self, model, generator: torch.Generator | None = None, **options) -> dict:
        """Add modules, then freeze everything except the method's parameters; returns the resolved options."""
        opts = self.resolve_options(options)
        self.add_modules(model, generator if generator is not None else torch.Generator(), **opts)
        model.requires_grad_(False)
        for p in self.trainable_parameters(model, **opts):
            p.requires_grad_(True)
        for name in FROZEN_ALWAYS:
            if hasattr(model, name):
                getattr(model, name).requires_grad_(False)
        return opts

    def merge(self, model):
        """Fold the method's modules into plain layers (in place): the base architecture again."""
        return merge_adapters(model)

    def compute_loss(self, trainer, x0, model_kwargs, t, noise) -> dict:
        """Per-sample loss terms of one fine-tuning batch (the Trainer's objective by default); a method
        with extra terms (e.g. a FLOPs constraint) overrides this."""
        return trainer.objective.loss(trainer.net, x0, model_kwargs=model_kwargs, t=t, noise=noise)


def gamma_block_indices(depth: int, blocks) -> list[int]:
    """Which blocks get γ: "half" (the first depth // 2, DiffFit's best), "all", "none", N (the first N), or ids."""
    if blocks == "half":
        return list(range(depth // 2))
    if blocks == "all":
        return list(range(depth))
    if blocks in ("none", None):
        return []
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        if not 0 <= blocks <= depth:
            raise ValueError(f"gamma_blocks={blocks} is outside 0..{depth} (the model has {depth} blocks)")
        return list(range(blocks))
    if isinstance(blocks, (list, tuple)) and all(isinstance(b, int) for b in blocks):
        bad = [b for b in blocks if not 0 <= b < depth]
        if bad:
            raise ValueError(f"gamma_blocks {bad} out of range: block ids are 0..{depth - 1}")
        return sorted(set(blocks))
    raise ValueError(
        f"gamma_blocks must be 'half', 'all', 'none', a count or a list of block ids, got {blocks!r}"
    )


class DiffFit(FinetuneMethod):
    name = "difffit"
    help = "biases, norm weights, label table and per-block γ scales (Xie et al. 2023)"
    lr_scale = 10.0  # "a learning rate 10× greater than pre-training yields the best result"
    options = {"gamma_blocks": "half"}

    def add_modules(self, model, generator, gamma_blocks="half") -> None:
        D = model.config.hidden_size
        for i in gamma_block_indices(len(model.blocks), gamma_blocks):
            block = model.blocks[i]
            # γ scales what the gate multiplies: the branch output, after the post-norm when there is one.
            for branch, post in (("attn", "post_norm1"), ("mlp", "post_norm2")):
                name = post if getattr(block, post) is not None else branch
                setattr(block, name, DiffFitScale(getattr(block, name), D))

    def trainable_parameters(self, model, **options):
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if name in ("bias", "gamma") or isinstance(module, NORM_TYPES):
                    yield p
        yield from label_parameters(model)


class AdaLN(FinetuneMethod):
    name = "adaln"
    help = "only the adaLN modulation projections (and the label table)"

    def trainable_parameters(self, model, **options):
        mods = [m for m in model.modules() if isinstance(m, (AdaLNModulation, ScaleShiftTable, AdaLNSingle))]
        if not mods:
            raise ValueError(
                f"method 'adaln' needs adaLN modulation, but this model uses conditioning "
                f"{model.config.conditioning!r}; use difffit, lora or full"
            )
        for m in mods:
            yield from m.parameters()
        yield from label_parameters(model)


class LoRA(FinetuneMethod):
    name = "lora"
    help = "low-rank adapters on the attention and MLP projections (and the label table)"
    options = {"rank": 8, "alpha": None, "targets": "qkv,proj,fc1,fc2"}

    def add_modules(self, model, generator, rank=8, alpha=None, targets="qkv,proj,fc1,fc2") -> None:
        names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
        valid = ("qkv", "proj", "fc1", "fc2")
        bad = [t for t in names if t not in valid]
        if bad or not names:
            raise ValueError(f"unknown LoRA target(s) {bad or names}; choose from: {', '.join(valid)}")
        for block in model.blocks:
            for parent in (block.attn, block.mlp):
                for t in names:
                    layer = getattr(parent, t, None)
                    if isinstance(layer, nn.Linear):
                        setattr(
                            parent, t, LoRALinear(layer, rank=int(rank), alpha=alpha, generator=generator)
                        )

    def trainable_parameters(self, model, **options):
        for m in model.modules():
            if isinstance(m, LoRALinear):
                yield m.lora_A
                yield m.lora_B
        yield from label_parameters(model)


class Full(FinetuneMethod):
    name = "full"
    help = "every parameter: the full fine-tuning baseline"
    lr_scale = 1.0

    def trainable_parameters(self, model, **options):
        yield from model.parameters()


METHODS: dict[str, FinetuneMethod] = {m.name: m for m in (DiffFit(), AdaLN(), LoRA(), Full(), DyDiTMethod())}


def get_method(name: str) -> FinetuneMethod:
    if name not in METHODS:
        raise ValueError(f"unknown fine-tuning method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def prepare_model(
    model,
    method: str,
    num_classes: int | None = None,
    labels: str = "reset",
    seed: int = 0,
    **options,
):
    """Ready a loaded DiT for fine-tuning with `method`, in place; returns the model.

    num_classes: size the label table for this many classes (None: leave the table as it is).
    labels: "reset" (a new N(0, 0.02) table, DiffFit) or "keep" (keep trained rows, append new ones).
    seed: seeds every new tensor (label rows, LoRA A), so all processes of a run build the same model.
    options: the method's options (difffit: gamma_blocks; lora: rank, alpha, targets).
    The model records what was done in `model.finetune_info` (saved in adapter files).
    """
    m = get_method(method)
    if labels not in LABEL_MODES:
        raise ValueError(f"unknown label mode {labels!r}; choose one of: {', '.join(LABEL_MODES)}")
    if getattr(model, "finetune_info", None) is not None:
        raise ValueError("this model is already prepared for fine-tuning; merge it or load a fresh base")
    generator = torch.Generator().manual_seed(seed)
    if num_classes is not None:
        resize_label_embedding(model, num_classes, labels, generator)
    opts = m.prepare(model, generator, **options)
    model.finetune_info = {
        "method": m.name,
        "options": opts,
        "labels": labels,
        "num_classes": model.config.num_classes,
        "resized": num_classes is not None,  # a new label table was made (replayed when loading an adapter)
        "seed": seed,
    }
    return model


def merge(model):
    """Fold a prepared model's added modules into its weights (in place): a plain DiT computing the same
    function (up to float rounding), with every parameter trainable again; returns the model."""
    info = getattr(model, "finetune_info", None)
    method = get_method(info["method"]) if info else None
    merged = method.merge(model) if method is not None else merge_adapters(model)
    merged.finetune_info = None
    merged.requires_grad_(True)
    for name in FROZEN_ALWAYS:
        if hasattr(merged, name):
            getattr(merged, name).requires_grad_(False)
    return merged


def trainable_summary(model) -> dict:
    """{"trainable", "total", "fraction"}: parameters that train, all parameters (added modules included)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}


__all__ = [
    "LABEL_MODES",
    "METHODS",
    "FinetuneMethod",
    "gamma_block_indices",
    "get_method",
    "merge",
    "prepare_model",
    "resize_label_embedding",
    "trainable_summary",
]
