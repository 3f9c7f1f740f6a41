"""Reference outputs of every block path, saved before the one-Block redesign (issue 15) and compared after it.

    PYTHONPATH=src python tests/make_block_fixtures.py        # rewrites tests/data/block_paths.safetensors

`cases()` builds seeded Nano models (depth 2, D 64, 4 heads, 16 tokens, every weight perturbed so no branch is
the identity) and runs each path: the dense DiT of every conditioning path (eval output; training output and
per-parameter gradient sums), and DyDiT's masked training forward (with and without gradient checkpointing),
its masked inference reference, and its deployed path (sliced weights, kept-token gather/scatter, per-sample
widths of a mixed-timestep batch). Only the public API is used, so the same cases run on any later code.

The file also records the torch version, CPU capability and CPU model that produced it: tests/test_block_fixtures.py
compares bit-exactly where those match and within a stated tolerance elsewhere.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from ditlab.dydit import DyDiT, DyDiTOptions
from ditlab.dydit.model import calibrate_token_routers
from ditlab.models import create_model

FIXTURE = Path(__file__).resolve().parent / "data" / "block_paths.safetensors"
DENSE_VARIANTS = ("adaln-zero", "adaln", "adaln-single", "adaln-tanh-rms", "in-context", "cross-attention")
DYDIT_VARIANTS = ("adaln-zero", "adaln-single", "adaln-tanh-rms")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; platform.processor() elsewhere): two CPUs of one instruction set
    still pick different kernels (MKL and oneDNN dispatch by vendor and by extensions such as AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment() -> dict[str, str]:
    """What decides the exact floats of a CPU forward: the torch build, the kernels' instruction set and the
    CPU model."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model(),
    }


def random_dit(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("DiT-Nano/2", variant=variant, input_size=8, in_channels=1, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def inputs(t=(7, 7, 7)):
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 8, 8, generator=g), torch.tensor(t), torch.tensor([0, 3, 9])


def grad_sums(model) -> torch.Tensor:
    """(P,) float64 sum of each parameter's gradient (0 where none), in named_parameters order."""
    return torch.stack(
        [
            p.grad.double().sum() if p.grad is not None else torch.zeros((), dtype=torch.float64)
            for _, p in model.named_parameters()
        ]
    )


def dense_cases(variant: str) -> dict[str, torch.Tensor]:
    model = random_dit(variant)
    x, t, y = inputs(t=(3, 500, 999))
    with torch.no_grad():
        out = {"eval": model.eval()(x, t, y)}
    model.train()
    train = model(x, t, y, force_drop_ids=torch.tensor([0, 1, 0]))
    (train * torch.linspace(-1, 1, train.numel()).view_as(train)).sum().backward()
    out["train"] = train.detach()
    out["train_grad_sums"] = grad_sums(model)
    return out


@torch.no_grad()
def mixed_routers(model: DyDiT, seed: int = 2) -> DyDiT:
    """Router weights that switch some heads and groups off, differently for different t."""
    g = torch.Generator().manual_seed(seed)
    for r in model.routers:
        for lin in (r.heads, r.groups):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 3.0)
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))
        if r.tokens is not None:
            r.tokens[2].bias.zero_()
    return model


def record_tensors(records: list[dict], prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}_{key}": torch.tensor([rec[key] for rec in records], dtype=torch.float64)
        for key in ("heads", "groups", "tokens")
    }


def dydit_training(variant: str, checkpointing: bool) -> dict[str, torch.Tensor]:
    model = mixed_routers(DyDiT.from_dit(random_dit(variant), DyDiTOptions(token_reduction=4))).train()
    model.gradient_checkpointing = checkpointing
    x, t, y = inputs(t=(3, 400, 900))
    aux: dict = {}
    out = model(
        x, t, y, force_drop_ids=torch.tensor([0, 0, 1]), generator=torch.Generator().manual_seed(0), aux=aux
    )
    (out.pow(2).mean() + aux["flops_ratio"].mean()).backward()
    return {
        "train": out.detach(),
        "train_flops_ratio": aux["flops_ratio"].detach(),
        "train_grad_sums": grad_sums(model),
    }


@torch.no_grad()
def dydit_inference(variant: str) -> dict[str, torch.Tensor]:
    model = mixed_routers(DyDiT.from_dit(random_dit(variant), DyDiTOptions(token_reduction=4))).eval()
    x, t, y = inputs()
    out = {}
    with model.recording() as records:  # sliced weights; the untrained token routers skip some tokens
        out["deployed_sliced"] = model(x, t, y)
        out["masked_sliced"] = model(x, t, y, masked=True)
    out.update(record_tensors(records, "sliced_records"))
    calibrate_token_routers(model, x, t, y, keep=0.5)
    with model.recording() as records:  # half the tokens skip each MLP: the gather/scatter path
        out["deployed_tokens"] = model(x, t, y)
        out["masked_tokens"] = model(x, t, y, masked=True)
    out.update(record_tensors(records, "tokens_records"))
    mixed_t = inputs(t=(1, 500, 999))
    out["mixed_timesteps"] = model(*mixed_t)  # per-sample widths: the masked path with hard masks
    no_tokens = mixed_routers(DyDiT.from_dit(random_dit(variant), DyDiTOptions(token_routing=False))).eval()
    out["deployed_no_token_routing"] = no_tokens(x, t, y)
    return out


def cases() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    out = {}
    for variant in DENSE_VARIANTS:
        out.update({f"dense/{variant}/{k}": v for k, v in dense_cases(variant).items()})
    for variant in DYDIT_VARIANTS:
        out.update({f"dydit/{variant}/{k}": v for k, v in dydit_inference(variant).items()})
        out.update({f"dydit/{variant}/{k}": v for k, v in dydit_training(variant, False).items()})
    out.update(
        {f"dydit-checkpointed/adaln-zero/{k}": v for k, v in dydit_training("adaln-zero", True).items()}
    )
    return {k: v.contiguous() for k, v in out.items()}


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else FIXTURE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(cases(), str(path), metadata=environment())
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
