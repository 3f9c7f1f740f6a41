"""TrainConfig: everything a training run needs, saved as `config.json` beside its checkpoints and accepted
back with `ditlab train --config run/config.json` (flags given on the command line override the file).

Defaults are the DiT paper's recipe (AdamW, lr 1e-4, no weight decay, EMA 0.9999, DDPM with a linear
1000-step schedule and learned variance, uniform t); the demo and recipes override what a CPU needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ditlab.configs import DictConfig
from ditlab.data.image_folder import BAD_IMAGE_POLICIES
from ditlab.data.streaming import DATA_LOADERS
from ditlab.diffusion.flow import FLOW_LOSS_WEIGHTINGS, FLOW_PREDICTIONS
from ditlab.models.dit import CHECKPOINT_POLICIES
from ditlab.text.encoders import DEFAULT_MAX_LENGTH
from ditlab.text.null import DEFAULT_CAPTION_DROPOUT
from ditlab.train.guard import NONFINITE_ACTIONS
from ditlab.train.parallel import PARALLELS
from ditlab.train.preempt import parse_duration
from ditlab.train.schedule import LR_SCHEDULES

OBJECTIVES = ("ddpm", "flow")
CONDITIONS = ("none", "layout", "reference")  # what besides labels the model is trained on
REPA_ENCODERS = ("effnet-lite0", "classifier")
MAX_SIGMA_REL = 0.28  # σ_rel of the power EMA with γ -> 0 (a uniform average) is 1/√12 ≈ 0.289


@dataclass
class TrainConfig(DictConfig):
    _what = "training option"

    # --- data ---
    data: str = (
        "digits"  # "digits", "fashion-mnist[:DIR]", "emoji[SIZE]", an ImageFolder or latent-cache path
    )
    image_size: int | None = None  # resize to this side; None keeps the data's size
    channels: int | None = None  # 1 or 3; None keeps the data's
    flip: bool = False  # random horizontal flips (the official recipe flips ImageNet; digits must not)
    unconditional: bool = False  # ignore labels
    bad_images: str = "skip"  # unreadable files in a folder: skip (warn once per file) | raise (stop)
    data_loader: str = "auto"  # auto: image folders stream, the named sets stay in memory | memory | stream
    num_workers: int = 2  # DataLoader processes decoding a streamed folder (0 = in the trainer's)
    vae: str | None = None  # train on this autoencoder's latents (ditlab autoencoder, or diffusers folder)
    latents: str | None = None  # with vae: a `ditlab latents` cache folder, used when it matches
    condition: str = "none"  # one of CONDITIONS: "layout" trains mask -> image (shapes; ditlab.nn.spatial),
    # "reference": each image is its own reference (AdaIN statistics, ditlab.nn.reference)
    layout_dropout: float = 0.1  # layout runs: share of samples trained on the empty layout (for guidance)
    reference_dropout: float = 0.1  # reference runs: share of samples trained without one (for guidance)
    # --- text conditioning (text-to-image runs; ditlab.text) ---
    text_encoder: str = ""  # "" = none (class-conditional); "minilm" or a local Hugging Face encoder folder
    text_max_length: int = DEFAULT_MAX_LENGTH  # tokens per caption (special tokens included)
    caption_dropout: float = DEFAULT_CAPTION_DROPOUT  # share of captions replaced by the null caption
    # --- model ---
    model: str = "DiT-S/2"
    variant: str | None = None  # a conditioning variant of ditlab.models.VARIANTS
    model_args: dict = field(default_factory=dict)  # any DiTConfig field, e.g. {"depth": 4}
    # --- objective ---
    objective: str = "ddpm"  # ddpm | flow
    schedule: str = "linear"  # DDPM β schedule
    diffusion_steps: int = 1000
    learn_sigma: bool | None = None  # None: True for ddpm (hybrid loss), False for flow
    timestep_sampling: str = "uniform"  # flow: uniform | logit_normal | mode
    timestep_shift: float = 1.0  # flow: training times warped t -> s·t / (1 + (s − 1)·t) (SD3); 1 = off
    loss_weighting: str = "velocity"  # flow: velocity (plain MSE) | x0 (× t²) | epsilon (× (1 − t)²)
    prediction: str = "velocity"  # flow: the network outputs velocity | x0 (the clean image; JiT)
    # --- optimisation ---
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear lr warm-up
    lr_schedule: str = "constant"  # constant | cosine (after the warm-up; ditlab.train.schedule)
    lr_min: float = 0.0  # cosine: the lr of the last step
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999  # DiT's; LightningDiT uses 0.95
    grad_clip: float = 0.0  # max grad norm; 0 = off
    batch_size: int = 256  # global batch (split across processes)
    steps: int = 0  # total optimizer steps; 0 = use epochs
    epochs: int = 0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay = min(ema_decay, (1 + step) / (10 + step)): a useful EMA in short runs
    posthoc_ema: str = ""  # EDM2 post-hoc EMA: σ_rel of the tracked profiles, comma-separated ("" = off)
    posthoc_ema_every: int = 500  # write a snapshot of every profile each N steps (ema-snapshots/)
    seed: int = 0
    # --- representation alignment (REPA; ditlab.train.repa) ---
    repa_weight: float = 0.0  # λ of the alignment loss; 0 = off
    repa_depth: int = 2  # align the tokens after this block (1-based)
    repa_encoder: str = "effnet-lite0"  # effnet-lite0 (ImageNet) | classifier (in-domain, of the data)
    repa_projector_width: int = 256  # hidden width of the 3-layer MLP projector
    repa_cache_mb: int = 1024  # memory for cached encoder features of in-memory data; 0 = compute each step
    # a step with a NaN/Inf loss or gradient is skipped; this many in a row trigger nonfinite_action
    nonfinite_patience: int = 10  # 0 = skip such steps forever, never act
    nonfinite_action: str = "rollback"  # rollback (to the last good checkpoint, lr reduced) | stop
    nonfinite_lr_factor: float = 0.5  # the learning rate's multiplier at each rollback
    nonfinite_max_rollbacks: int = 3  # then stop
    # --- runtime ---
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA; on CPU bf16 where native and timed faster (ditlab.runtime)
    threads: int = 0  # CPU threads; 0 = cores / local processes
    compile: bool = False  # torch.compile the model (falls back to eager if compilation fails)
    fused_optimizer: bool = True  # one-kernel AdamW where the device has it (False: the per-tensor loop)
    gradient_checkpointing: bool = False
    checkpoint_policy: str = "full"  # with gradient_checkpointing: full | selective (see ditlab.models.dit)
    parallel: str = "auto"  # under torchrun: auto (= ddp) | ddp | fsdp | hsdp (ditlab.train.parallel)
    fsdp_cpu_offload: bool = False  # fsdp/hsdp on CUDA: sharded states in host memory
    ddp_bucket_view: bool = False  # ddp: gradients live in DDP's all-reduce buckets (one copy, not two)
    hsdp_shard_size: int = 0  # hsdp: processes per shard group; 0 = one node's (LOCAL_WORLD_SIZE)
    max_time: str | None = (
        None  # stop, checkpoint and exit 75 after this long, e.g. "3h50m" (ditlab.train.preempt)
    )
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
        if self.data_loader not in DATA_LOADERS:
            raise ValueError(
                f"unknown data_loader {self.data_loader!r}; choose one of: {', '.join(DATA_LOADERS)}"
            )
        if self.num_workers < 0:
            raise ValueError(
                f"num_workers must be >= 0 (0 decodes in the training process), got {self.num_workers}"
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
        self._check_quality_options()
        if self.parallel not in PARALLELS:
            raise ValueError(f"unknown parallel {self.parallel!r}; choose one of: {', '.join(PARALLELS)}")
        parse_duration(self.max_time)  # a bad duration fails here, not hours into the run
        if self.condition not in CONDITIONS:
            raise ValueError(f"unknown condition {self.condition!r}; choose one of: {', '.join(CONDITIONS)}")
        if not 0 <= self.layout_dropout < 1:
            raise ValueError(f"layout_dropout must be in [0, 1), got {self.layout_dropout}")
        if not 0 <= self.reference_dropout < 1:
            raise ValueError(f"reference_dropout must be in [0, 1), got {self.reference_dropout}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if self.text_max_length < 2:
            raise ValueError(f"text_max_length must be >= 2 tokens, got {self.text_max_length}")
        if self.checkpoint_policy not in CHECKPOINT_POLICIES:
            raise ValueError(
                f"unknown checkpoint_policy {self.checkpoint_policy!r}; choose one of: {', '.join(CHECKPOINT_POLICIES)}"
            )

    def _check_quality_options(self) -> None:
        """The training options of issue 18: schedule, betas, timestep warp, post-hoc EMA, REPA."""
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown lr_schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}"
            )
        if not 0 <= self.lr_min <= self.lr:
            raise ValueError(f"lr_min must be in [0, lr={self.lr}], got {self.lr_min}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.timestep_shift <= 0:
            raise ValueError(f"timestep_shift must be > 0, got {self.timestep_shift}")
        if self.timestep_shift != 1.0 and self.objective != "flow":
            raise ValueError("timestep_shift warps flow-matching times: use it with objective=flow")
        if self.loss_weighting not in FLOW_LOSS_WEIGHTINGS:
            raise ValueError(
                f"unknown loss_weighting {self.loss_weighting!r}; choose one of: {', '.join(FLOW_LOSS_WEIGHTINGS)}"
            )
        if self.loss_weighting != "velocity" and self.objective != "flow":
            raise ValueError("loss_weighting weights the flow-matching loss: use it with objective=flow")
        if self.prediction not in FLOW_PREDICTIONS:
            raise ValueError(
                f"unknown prediction {self.prediction!r}; choose one of: {', '.join(FLOW_PREDICTIONS)}"
            )
        if self.prediction != "velocity" and self.objective != "flow":
            raise ValueError(
                "prediction chooses what a flow-matching network outputs: use it with objective=flow "
                "(DDPM predicts the noise, as DiT does)"
            )
        posthoc_sigmas(self.posthoc_ema)  # raises on a bad list
        if self.posthoc_ema and self.posthoc_ema_every < 1:
            raise ValueError("posthoc_ema_every must be >= 1 step when posthoc_ema is set")
        if self.repa_weight < 0:
            raise ValueError(f"repa_weight must be >= 0, got {self.repa_weight}")
        if self.repa_weight > 0:
            if self.repa_encoder not in REPA_ENCODERS:
                raise ValueError(
                    f"unknown repa_encoder {self.repa_encoder!r}; choose one of: {', '.join(REPA_ENCODERS)}"
                )
            if self.repa_depth < 1 or self.repa_projector_width < 1:
                raise ValueError("repa_depth and repa_projector_width must be >= 1")


def posthoc_sigmas(text: str) -> tuple[float, ...]:
    """ "0.05,0.1" -> (0.05, 0.1): the σ_rel of the post-hoc EMA profiles (each in (0, 0.28])."""
    if not text:
        return ()
    try:
        sigmas = tuple(float(part) for part in str(text).split(",") if part.strip())
    except ValueError as err:
        raise ValueError(
            f"posthoc_ema must be comma-separated σ_rel values such as 0.05,0.1, got {text!r}"
        ) from err
    bad = [s for s in sigmas if not 0 < s <= MAX_SIGMA_REL]
    if bad:
        raise ValueError(f"posthoc_ema σ_rel values must be in (0, {MAX_SIGMA_REL}], got {bad}")
    return sigmas
