"""FinetuneConfig: a TrainConfig that starts from a trained checkpoint with a fine-tuning method.

What the base already decides is inherited unless given: the objective (kind, schedule, steps, variance), the
image size and channels, and the learning rate, which defaults to the method's multiple of the base's own
pre-training rate (DiffFit: 10×; read from the run that made the base, else the DiT paper's 1e-4). The
resolved values are saved in the run's config.json, so a resumed run never has to read the base again.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from ditlab.finetune.methods import LABEL_MODES, get_method
from ditlab.models.checkpoint import CONFIG_KEY, OBJECTIVE_KEY, load_model, read_torch_file
from ditlab.models.config import DiTConfig
from ditlab.train.config import TrainConfig

DIT_PRETRAIN_LR = 1e-4  # the DiT paper's AdamW rate, assumed when a base does not record its own


def resolve_base(path: str | Path) -> Path:
    """The checkpoint file of a base: a file as given, or a ditlab run folder's model.safetensors."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "model.safetensors").is_file():
        return (path / "model.safetensors").resolve()
    if not path.exists():
        raise FileNotFoundError(
            f"base checkpoint {path} does not exist; pass a .safetensors/.pt file, a diffusers folder or a "
            "ditlab run folder (with model.safetensors)"
        )
    return path.resolve()


@dataclass(frozen=True)
class BaseInfo:
    config: DiTConfig
    objective: dict | None  # ObjectiveSpec dict; None = unknown (official DiT: linear DDPM)
    lr: float | None  # the pre-training learning rate, when the base records it


def _run_lr(folder: Path) -> float | None:
    """The lr in a ditlab run folder's config.json, if there is one."""
    try:
        return float(json.loads((folder / "config.json").read_text())["lr"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_base(path: str | Path) -> BaseInfo:
    """Config, objective and pre-training lr of a base checkpoint, reading as little of it as possible."""
    p = resolve_base(path)
    return _read_base(p, p.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_base(p: Path, mtime_ns: int) -> BaseInfo:  # keyed by mtime: a rewritten base is read again
    if p.suffix == ".safetensors":
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
        if CONFIG_KEY in meta:
            objective = json.loads(meta[OBJECTIVE_KEY]) if OBJECTIVE_KEY in meta else None
            return BaseInfo(DiTConfig.from_dict(json.loads(meta[CONFIG_KEY])), objective, _run_lr(p.parent))
    if p.suffix == ".pt":
        obj = read_torch_file(p)
        if isinstance(obj, dict) and isinstance(obj.get("config"), dict):  # a ditlab training checkpoint
            args = obj.get("args") if isinstance(obj.get("args"), dict) else {}
            lr = float(args["lr"]) if args.get("lr") is not None else None
            return BaseInfo(DiTConfig.from_dict(obj["config"]), obj.get("objective"), lr)
    model = load_model(p)  # an official .pt or a diffusers folder: the tensors say what the config is
    return BaseInfo(model.config, model.objective_spec, None)


# The objective fields a fine-tune inherits from its base when left unset (None).
_OBJECTIVE_FIELDS = {
    "objective": "kind",
    "schedule": "schedule",
    "diffusion_steps": "steps",
    "timestep_sampling": "timestep_sampling",
    "prediction": "prediction",  # what the network outputs: a fine-tune must keep reading it the same way
}


@dataclass
class FinetuneConfig(TrainConfig):
    # --- fine-tuning ---
    base: str = ""  # the checkpoint to start from: .safetensors, .pt, diffusers folder or ditlab run folder
    method: str = "difffit"  # one of ditlab.finetune.METHODS
    method_args: dict = field(default_factory=dict)  # the method's options, e.g. {"rank": 4}
    labels: str = (
        "reset"  # label table for the data's classes: reset (new, DiffFit) | keep (keep rows, append)
    )
    target_flops: float | None = None  # dydit: the target FLOPs ratio λ (same as method_args target_flops=)
    # --- inherited from the base when None ---
    model: str = ""  # a label for logs; default "<method> fine-tune"
    objective: str | None = None
    schedule: str | None = None
    diffusion_steps: int | None = None
    timestep_sampling: str | None = None
    prediction: str | None = None
    lr: float | None = None  # None: the method's lr_scale × the base's pre-training lr
    out: str = "runs/finetune"

    def __post_init__(self):
        if not self.base:
            raise ValueError("set the checkpoint to fine-tune: base=PATH (--base PATH)")
        method = get_method(self.method)
        if self.target_flops is not None:
            if "target_flops" not in method.resolve_options({}):
                raise ValueError(f"--target-flops applies to dynamic methods (dydit), not {self.method!r}")
            self.method_args = {**self.method_args, "target_flops": self.target_flops}
        method.resolve_options(self.method_args)  # unknown options fail now, not after loading data
        if self.labels not in LABEL_MODES:
            raise ValueError(f"unknown label mode {self.labels!r}; choose one of: {', '.join(LABEL_MODES)}")
        self.base = str(resolve_base(self.base))
        self.model = self.model or f"{method.name} fine-tune"
        inherited = (*_OBJECTIVE_FIELDS, "lr", "learn_sigma", "image_size", "channels")
        if any(getattr(self, name) is None for name in inherited):
            self._inherit(read_base(self.base), method.lr_scale)
        super().__post_init__()

    def _inherit(self, info: BaseInfo, lr_scale: float) -> None:
        objective = dict(info.objective or {"kind": "ddpm"})  # official DiT: linear 1000-step DDPM
        defaults = {
            "kind": "ddpm",
            "schedule": "linear",
            "steps": 1000,
            "timestep_sampling": "uniform",
            "prediction": "velocity",
        }
        for name, key in _OBJECTIVE_FIELDS.items():
            if getattr(self, name) is None:
                setattr(self, name, objective.get(key, defaults[key]))
        if self.learn_sigma is None:
            self.learn_sigma = info.config.learn_sigma
        if self.lr is None:
            self.lr = lr_scale * (info.lr or DIT_PRETRAIN_LR)
        h, w = info.config.image_hw
        if self.image_size is None and h == w:
            self.image_size = h
        if self.channels is None:
            self.channels = info.config.in_channels


__all__ = ["DIT_PRETRAIN_LR", "BaseInfo", "FinetuneConfig", "read_base", "resolve_base"]
