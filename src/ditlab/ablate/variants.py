"""What the conditioning study trains: the variants it compares, the settings every run shares, and
`AblationConfig`, which turns a study's options into one `TrainConfig` per (variant, seed).

Two studies (`study`): "conditioning", the DiT paper's blocks (`ditlab.models.VARIANTS`), and "text", the
text-conditioning architectures on `shapes` (TEXT_VARIANTS: SD3's pooled text into adaLN-Zero, PixArt-α's
cross-attention, SD3's MMDiT joint attention, Flux's single stream). In the text study `model` names the
budget: every architecture runs at that model's size and patch, with its depth chosen so that its Gflops is
the closest to the model's (`matched_depth`), so the runs compare at (nearly) equal compute.

Every run of a study is identical except for its conditioning variant, its seed and its folder, so a given
seed draws the same images, timesteps and noise at every step for every variant (the trainer derives them
from (seed, step) only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ditlab.configs import DictConfig
from ditlab.data.shapes import BASE_SIZE, is_shapes_spec, parse_shapes_spec
from ditlab.models.flops import flops
from ditlab.models.zoo import MODELS, VARIANTS, model_config
from ditlab.train.config import TrainConfig

# The DiT paper's four blocks (Figure 3), compared in its Table 4.
PAPER_VARIANTS = ("in-context", "cross-attention", "adaln", "adaln-zero")
# DiT paper, Table 4: DiT-XL/2, 400K steps, no guidance -> (Gflops, parameters, FID-50K).
PAPER_TABLE4 = {
    "in-context": (119.37, "449M", 35.24),
    "cross-attention": (137.62, "598M", 26.14),
    "adaln": (118.56, "600M", 25.21),
    "adaln-zero": (118.64, "675M", 19.47),
}

# What every run shares unless the config's `train` says otherwise: the optimisation and sampler of ditlab's
# Fashion-MNIST recipe (rectified flow with logit-normal t, clipped AdamW, EMA with warm-up, 16 Heun steps),
# tuned to learn in CPU-sized budgets. Guidance stays off, as in the paper's ablation.
TRAIN_DEFAULTS = dict(
    objective="flow",
    timestep_sampling="logit_normal",
    grad_clip=1.0,
    ema_decay=0.9995,
    ema_warmup=True,
    sampler="heun",
    sample_steps=16,
    guidance_scale=1.0,
)
# Options a run may change between sessions without invalidating what it has done so far.

# The study's model: DiT-Ti/4 cut to 4 blocks (49 tokens of width 192 at 28×28), so that each of its 12 runs
# trains in CPU minutes, not hours (`ditlab ablate --estimate` prints the projected time on this machine).
DEFAULT_MODEL = "DiT-Ti/4"


def default_model_args(model: str) -> dict:
    """DiTConfig overrides used when none are given: depth 4 for the default model, none for any other."""
    return {"depth": 4} if model == DEFAULT_MODEL else {}


# `--quick`: the whole pipeline on the bundled digits in a few CPU minutes (numbers are not meaningful).
QUICK = dict(
    data="digits",
    model="DiT-Nano/2",
    steps=300,
    batch_size=64,
    lr=2e-3,
    seeds=[0],
    extra_seeds=None,
    eval_every=100,
    eval_samples=100,
    final_samples=200,
    train={"sample_steps": 8},
    out="runs/ablation-quick",
)


STUDIES = ("conditioning", "text")
# The text study's architectures -> the zoo prefix of each (`{prefix}-{size}/{patch}`, ditlab.models.zoo).
TEXT_VARIANTS = {"pooled": "Pooled", "cross-attention": "PixArt", "mmdit": "MMDiT", "single-stream": "Flux"}
# What the text study changes in the defaults: shapes, MiniLM captions (16 tokens hold every caption of the
# grammar), the MMDiT-Ti/4 budget, and the shapes recipe's objective and sampler (x0 prediction, euler_sde
# 50 steps, guidance 2 on the null caption: with velocity prediction and Heun no arm draws outlines the
# evaluator accepts at this budget, benchmarks/text.md). The final 400 samples are the recipe's evaluation
# (100 each of seen/held-out one-/two-object prompts); FD curves during training are off (--eval-every).
TEXT_STUDY = dict(
    data="shapes",
    model="MMDiT-Ti/4",
    steps=2000,
    seeds=[0],
    extra_seeds=None,
    eval_every=0,
    final_samples=400,
    train={
        "text_encoder": "minilm",
        "text_max_length": 16,
        "prediction": "x0",
        "sampler": "euler_sde",
        "sample_steps": 50,
        "guidance_scale": 2.0,
    },
    out="runs/ablation-text",
)
# `--study text --quick`: the pipeline in seconds (numbers are not meaningful).
TEXT_QUICK = dict(
    TEXT_STUDY,
    model="MMDiT-Nano/4",
    steps=6,
    batch_size=8,
    eval_every=0,
    eval_samples=8,
    final_samples=8,
    train={"text_encoder": "minilm", "text_max_length": 12, "guidance_scale": 2.0, "sample_steps": 2},
    out="runs/ablation-text-quick",
)


def study_defaults(study: str, quick: bool) -> dict:
    """The options a study starts from (before a --config file and flags)."""
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; choose one of: {', '.join(STUDIES)}")
    if study == "text":
        return {**(TEXT_QUICK if quick else TEXT_STUDY), "study": "text"}
    return dict(QUICK) if quick else {}


def shapes_side(data: str, image_size: int | None) -> int:
    """The side in pixels the text study's models see (its Gflops depend on it)."""
    if not is_shapes_spec(data):
        raise ValueError(
            f"the text study trains on shapes (its evaluator reads the prompts back), not {data!r}"
        )
    resolution, _ = parse_shapes_spec(data, ("train", "test"))
    return int(image_size or resolution or BASE_SIZE)


def _gflops(name: str, model_args: dict, side: int, text_len: int) -> float:
    """Gflops of a zoo model with overrides, at `side` px, counting `text_len` tokens where it reads text."""
    extra = {"text_len": text_len} if MODELS[name].get("text_dim") else {}
    return flops(model_config(name, **{**model_args, "input_size": side, **extra}))


def matched_depth(prefix: str, reference: str, model_args: dict, side: int, text_len: int) -> int:
    """The depth of architecture `prefix` at `reference`'s size whose Gflops is the closest to `reference`'s
    (with `model_args`, at `side` px and `text_len` text tokens); ties go to the shallower model."""
    budget = _gflops(reference, model_args, side, text_len)
    name = f"{prefix}-{reference.split('-', 1)[1]}"
    base = MODELS[reference]["depth"]
    costs = {d: _gflops(name, {**model_args, "depth": d}, side, text_len) for d in range(1, 4 * base + 1)}
    return min(costs, key=lambda d: (abs(costs[d] - budget), d))


@dataclass
class AblationConfig(DictConfig):
    _what = "ablation option"

    # Defaults: the Fashion-MNIST study (8 variants, the paper's four with 2 seeds; `--estimate` prints its time).
    study: str = "conditioning"  # conditioning (the DiT paper's blocks) | text (TEXT_VARIANTS on shapes)
    variants: list[str] | None = None  # None: every variant of the study
    data: str = "fashion-mnist"
    model: str = DEFAULT_MODEL
    model_args: dict | None = None  # DiTConfig overrides; None = default_model_args(model)
    steps: int = 1200
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int | None = None  # linear lr warm-up; None = steps // 10
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    extra_seeds: list[int] | None = field(default_factory=lambda: [0])  # variants beyond the paper's four
    eval_every: int | None = None  # FD during training every N steps; None = steps // 5, 0 = off
    eval_samples: int = 250  # samples per FD point of the curves
    final_samples: int = 1500  # samples for the final scores (> 1280 effnet features: a full-rank covariance)
    eval_ref: str | None = None  # reference for FD; None = the data's test split
    train: dict = field(default_factory=dict)  # any other TrainConfig field, over TRAIN_DEFAULTS
    threads: int = 0  # CPU threads; 0 = all cores
    device: str = "auto"
    out: str = "runs/ablation"

    def __post_init__(self):
        if self.study not in STUDIES:
            raise ValueError(f"unknown study {self.study!r}; choose one of: {', '.join(STUDIES)}")
        known = TEXT_VARIANTS if self.study == "text" else VARIANTS
        if self.variants is None:
            self.variants = ["all"]
        text = self.variants if isinstance(self.variants, str) else ",".join(map(str, self.variants))
        self.variants = parse_variants(text, list(known))
        bad = [v for v in self.variants if v not in known]
        if bad or not self.variants:
            raise ValueError(
                f"unknown or no variant(s) {bad} for the {self.study} study; choose from: {', '.join(known)} "
                "(or 'all'" + (", 'paper')" if self.study == "conditioning" else ")")
            )
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid names: {', '.join(MODELS)}")
        if self.model_args is None:
            self.model_args = default_model_args(self.model)
        self.seeds = parse_seeds(self.seeds)
        if self.extra_seeds is not None:
            self.extra_seeds = parse_seeds(self.extra_seeds)
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")
        for name in ("eval_samples", "final_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2 (a Fréchet distance needs a covariance)")
        if self.eval_every is not None and self.eval_every < 0:
            raise ValueError("eval_every must be >= 0 (0 = no FD during training)")
        clash = sorted(set(self.train) & {f.name for f in fields(AblationConfig)})
        if clash:
            raise ValueError(f"set {clash} as top-level ablation options, not inside 'train'")
        per_run = sorted(set(self.train) & {"variant", "seed"})
        if per_run:
            raise ValueError(f"'train' may not set {per_run}: the study sets them per run")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValueError(
                f"unknown training option(s) {unknown} in 'train'; valid: {', '.join(sorted(known))}"
            )

    def seeds_of(self, variant: str) -> list[int]:
        if variant in PAPER_VARIANTS or self.extra_seeds is None:
            return self.seeds
        return self.extra_seeds

    def runs(self) -> list[tuple[str, int]]:
        """(variant, seed) of every run, seed-major so a stopped study has every variant of the first seed."""
        seed_order = list(dict.fromkeys(self.seeds + (self.extra_seeds or [])))
        return [(v, s) for s in seed_order for v in self.variants if s in self.seeds_of(v)]

    def architecture(self, variant: str) -> tuple[str, dict]:
        """(zoo model, model_args) of a variant: the study's model for the conditioning study; for the text
        study the variant's architecture at the model's size, its depth matched to the model's Gflops."""
        if self.study != "text":
            return self.model, dict(self.model_args)
        prefix, size = TEXT_VARIANTS[variant], self.model.split("-", 1)[1]
        train = {**TEXT_STUDY["train"], **self.train}
        side = shapes_side(self.data, train.get("image_size"))
        depth = matched_depth(prefix, self.model, self.model_args, side, int(train["text_max_length"]))
        return f"{prefix}-{size}", {**self.model_args, "depth": depth}

    def train_config(self, variant: str, seed: int) -> TrainConfig:
        """The TrainConfig of one run: identical for every variant except `variant` and the folder (and, in
        the text study, the architecture and its depth)."""
        eval_every = self.steps // 5 if self.eval_every is None else self.eval_every
        model, model_args = self.architecture(variant)
        options = dict(
            TRAIN_DEFAULTS,
            data=self.data,
            model=model,
            variant=None if self.study == "text" else variant,
            model_args=model_args,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.steps // 10 if self.warmup_steps is None else self.warmup_steps,
            seed=seed,
            eval_every=eval_every,
            eval_samples=self.eval_samples,
            eval_ref=self.eval_ref,
            threads=self.threads,
            device=self.device,
            out=str(run_dir(self.out, variant, seed)),
            log_every=max(1, self.steps // 20),
            ckpt_every=max(1, self.steps // 10),
            keep_last=1,
            progress=False,
        )
        options.update(self.train)
        return TrainConfig.from_dict(options)

    @property
    def ref(self) -> str:
        return self.eval_ref or f"{self.data}:test"


def parse_variants(text: str, every: list[str] | None = None) -> list[str]:
    """ "all", "paper" or a comma-separated list of variant names (`every`: what "all" means; VARIANTS)."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            names += list(VARIANTS) if every is None else every
        elif part == "paper":
            names += list(PAPER_VARIANTS)
        elif part:
            names.append(part)
    return list(dict.fromkeys(names))


def parse_seeds(seeds) -> list[int]:
    """ "0,1" / [0, 1] / 3 -> [0, 1] / [0, 1] / [3]."""
    if isinstance(seeds, int):
        seeds = [seeds]
    elif isinstance(seeds, str):
        seeds = [s.strip() for s in seeds.split(",") if s.strip()]
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError) as err:
        raise ValueError(f"seeds must be integers such as 0 1; got {seeds!r}") from err
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, at least one; got {seeds!r}")
    return out


def run_dir(out: str | Path, variant: str, seed: int) -> Path:
    return Path(out) / "runs" / variant / f"seed{seed}"
