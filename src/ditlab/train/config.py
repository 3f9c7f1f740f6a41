"""TrainConfig: everything a training run needs, saved as `config.json` beside its checkpoints and accepted
back with `ditlab train --config run/config.json` (flags given on the command line override the file).

Defaults are the DiT paper's recipe (AdamW, lr 1e-4, no weight decay, EMA 0.9999, DDPM with a linear
1000-step schedule and learned variance, uniform t); the demo and recipes override what a CPU needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ditlab.configs import DictConfig
from ditlab.data.image_folder import BAD_IMAGE_POLICIES
from ditlab.models.dit import CHECKPOINT_POLICIES
from ditlab.train.guard import NONFINITE_ACTIONS

OBJECTIVES = ("ddpm", "flow")


@dataclass
class TrainConfig(DictConfig):
    _what = "training option"

    # --- data ---
    data: str = "digits"  # "digits", "fashion-mnist[:DIR]", or an ImageFolder path
    image_size: int | None = None  # resize to this side; None keeps the data's size
    channels: int | None = None  # 1 or 3; None keeps the data's
    flip: bool = False  # random horizontal flips (the official recipe flips ImageNet; digits must not)
    unconditional: bool = False  # ignore labels
    bad_images: str = "raise"  # unreadable files in an image folder: raise (stop, naming it) | skip (warn)
    # --- model ---
    model: str = "DiT-S/2"
    variant: str | None = None  # a conditioning variant of ditlab.models.VARIANTS
    model_args: dict = field(default_factory=dict)  # any DiTConfig field, e.g. {"depth": 4}
    # --- objective ---
    objective: str = "ddpm"  # ddpm | flow
    schedule: str = "linear"  # DDPM β schedule
    diffusion_steps: int = 1000
    learn_sigma: bool | None = None  # None: True for ddpm (hybrid loss), False for flow
    timestep_sampling: str = "uniform"  # flow: uniform | logit_normal
    # --- optimisation ---
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear lr warm-up
    grad_clip: float = 0.0  # max grad norm; 0 = off
    batch_size: int = 256  # global batch (split across processes)
    steps: int = 0  # total optimizer steps; 0 = use epochs
    epochs: int = 0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay = min(ema_decay, (1 + step) / (10 + step)): a useful EMA in short runs
    seed: int = 0
    # a step with a NaN/Inf loss or gradient is skipped; this many in a row trigger nonfinite_action
    nonfinite_patience: int = 10  # 0 = skip such steps forever, never act
    nonfinite_action: str = "rollback"  # rollback (to the last good checkpoint, lr reduced) | stop
    nonfinite_lr_factor: float = 0.5  # the learning rate's multiplier at each rollback
    nonfinite_max_rollbacks: int = 3  # then stop
    # --- runtime ---
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    threads: int = 0  # CPU threads; 0 = cores / local processes
    compile: bool = False  # torch.compile the model (falls back to eager if compilation fails)
    fused_optimizer: bool = True  # one-kernel AdamW where the device has it (False: the per-tensor loop)
    gradient_checkpointing: bool = False
    checkpoint_policy: str = "full"  # with gradient_checkpointing: full | selective (see ditlab.models.dit)
    # --- outputs ---
    out: str = "runs/dit"
    ckpt_every: int = 1000
    keep_last: int = 3  # checkpoints kept; older ones are deleted after a successful write
    log_every: int = 50
    sample_every: int = 0  # write a sample grid PNG every N steps (0 = only at the end)
    sampler: str | None = None  # for grids/eval: default ddim (ddpm) or euler (flow)
    sample_steps: int = 50
    guidance_scale: float = 1.0
    eval_every: int = 0  # FD during training every N steps (0 = off)
    eval_samples: int = 500
    eval_ref: str | None = None  # reference for FD, default "<data>:test"
    eval_features: str = (
        "default"  # extractors for --eval-every, comma-separated; default: effnet + classifier
    )
    progress: bool = True

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if self.learn_sigma is None:
            self.learn_sigma = self.objective == "ddpm"
        if self.objective == "flow" and self.learn_sigma:
            raise ValueError("flow matching predicts a velocity only: learn_sigma must be False")
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(
                f"unknown bad_images {self.bad_images!r}; choose one of: {', '.join(BAD_IMAGE_POLICIES)}"
            )
        if self.steps <= 0 and self.epochs <= 0:
            raise ValueError(
                "set the run length: steps > 0 or epochs > 0 (flags: --train-steps N or --epochs N)"
            )
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
        if self.nonfinite_action not in NONFINITE_ACTIONS:
            raise ValueError(
                f"unknown nonfinite_action {self.nonfinite_action!r}; choose one of: {', '.join(NONFINITE_ACTIONS)}"
            )
        if (
            not 0 < self.nonfinite_lr_factor <= 1
            or self.nonfinite_patience < 0
            or self.nonfinite_max_rollbacks < 0
        ):
            raise ValueError(
                "nonfinite_lr_factor must be in (0, 1], nonfinite_patience and nonfinite_max_rollbacks >= 0 "
                f"(got {self.nonfinite_lr_factor}, {self.nonfinite_patience}, {self.nonfinite_max_rollbacks})"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.checkpoint_policy not in CHECKPOINT_POLICIES:
            raise ValueError(
                f"unknown checkpoint_policy {self.checkpoint_policy!r}; choose one of: {', '.join(CHECKPOINT_POLICIES)}"
            )
