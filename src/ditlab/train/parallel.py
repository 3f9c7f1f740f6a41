"""How a training run spreads its model over the torchrun processes: DDP, FSDP2 or HSDP (`--parallel`).

    par = Parallel.create(cfg.parallel, dist, device, precision, cpu_offload=..., shard_size=...)
    net = par.wrap(model, ema=ema.model, compile_model=...)   # then build the optimizer on model.parameters()

- ddp: every rank holds the whole model, gradients and optimizer states; DistributedDataParallel all-reduces
  the gradients (the official DiT recipe). Its buckets are a second copy of the gradients unless
  `bucket_view` (`--ddp-bucket-view`, DDP's gradient_as_bucket_view) makes the gradients views into them.
- fsdp: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) on each block, then on the root (embedders,
  final layer), over a 1-D DeviceMesh: parameters, gradients and (because the optimizer is built on the
  sharded parameters) AdamW's states are 1/W per rank. The EMA copy is sharded the same way, so its update is
  a local lerp of shard on shard, with no communication.
- hsdp: the same over a 2-D mesh (replicate × shard): parameters are sharded inside a group of `shard_size`
  processes (default: the processes of one node, torchrun's LOCAL_WORLD_SIZE) and replicated across groups,
  so the all-gathers stay on the fast intra-node links and only a gradient all-reduce crosses nodes.

Mixed precision (sharded modes): on CUDA with bf16, parameters are all-gathered in bf16 and gradients reduced
in fp32; on a CPU everything stays fp32. `cpu_offload` keeps the sharded parameters, gradients and optimizer
states in host memory (CUDA only: on a CPU run they are there already). Gradient checkpointing (the model's own
flag) re-runs a block's forward inside its FSDP unit, which all-gathers again: FSDP2 handles that. With
`--compile`, DDP compiles the whole model (eager fallback, as a single process); the sharded modes compile each
block in place (`Module.compile`, the torchtitan way, names unchanged), so a compiler failure shows at the
first step rather than falling back.

One process runs plain (no wrapper), whatever `--parallel` says: there is nothing to shard or reduce.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ditlab.distributed import DistInfo

PARALLELS = ("auto", "ddp", "fsdp", "hsdp")
SHARDED = ("fsdp", "hsdp")


def resolve_parallel(name: str, world_size: int) -> str:
    """The mode a run uses: "none" on one process, "ddp" for "auto" on several, else `name`."""
    if name not in PARALLELS:
        raise ValueError(f"unknown parallel mode {name!r}; choose one of: {', '.join(PARALLELS)}")
    if world_size <= 1:
        return "none"
    return "ddp" if name == "auto" else name


def hsdp_shape(world_size: int, shard_size: int = 0) -> tuple[int, int]:
    """(replicas, shard size) of an HSDP mesh: `shard_size` processes per shard group (0: one node's)."""
    shard = shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if shard < 1 or world_size % shard:
        raise ValueError(
            f"hsdp needs the {world_size} processes in groups of equal size, got a shard size of {shard}: "
            "pass --hsdp-shard-size N with N dividing the world size (usually the GPUs per node)"
        )
    return world_size // shard, shard


def mixed_precision(device: torch.device, precision: str) -> MixedPrecisionPolicy:
    """bf16 parameters with fp32 gradient reduction on CUDA bf16 runs; fp32 throughout otherwise."""
    if device.type == "cuda" and precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)


def full_value(value):
    """A DTensor (the gradient norm of sharded gradients) as one ordinary tensor; other values unchanged."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def state_bytes(tensors) -> int:
    """Bytes this process holds for `tensors` (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


@torch.no_grad()
def broadcast_from_rank0(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers, as DDP does when it wraps a model: each rank built
    its model from its own seed, and fully_shard keeps each rank's own slices as they are."""
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


@dataclass
class Parallel:
    """One run's parallel layout; `kind` is "none", "ddp", "fsdp" or "hsdp"."""

    kind: str
    dist: DistInfo
    device: torch.device
    mesh: DeviceMesh | None = None
    mp_policy: MixedPrecisionPolicy | None = None
    offload: OffloadPolicy | None = None
    bucket_view: bool = False  # ddp: gradient_as_bucket_view (gradients are views into the buckets)
    _shell: nn.Module | None = None  # a meta-device copy of the model: the frame a gathered model fills

    @classmethod
    def create(
        cls,
        name: str,
        dist: DistInfo,
        device: torch.device,
        precision: str = "fp32",
        cpu_offload: bool = False,
        shard_size: int = 0,
        bucket_view: bool = False,
    ) -> Parallel:
        kind = resolve_parallel(name, dist.world_size)
        if kind not in SHARDED:
            return cls(kind, dist, device, bucket_view=bucket_view)
        if kind == "hsdp":
            shape, names = hsdp_shape(dist.world_size, shard_size), ("replicate", "shard")
        else:
            shape, names = (dist.world_size,), ("shard",)
        mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
        offload = OffloadPolicy()
        if cpu_offload and device.type == "cuda":
            offload = CPUOffloadPolicy(pin_memory=True)
        return cls(kind, dist, device, mesh, mixed_precision(device, precision), offload)

    @property
    def sharded(self) -> bool:
        return self.kind in SHARDED

    def wrap(
        self,
        model: nn.Module,
        ema: nn.Module | None = None,
        compile_model: Callable[[nn.Module], nn.Module] | None = None,
    ) -> nn.Module:
        """The module the training step calls. Sharded modes shard `model` and `ema` in place (build the
        optimizer after this, on `model.parameters()`); `compile_model` compiles a whole model (ddp, none)."""
        if not self.sharded:
            net = compile_model(model) if compile_model is not None else model
            if self.kind == "ddp":
                ids = [self.device.index] if self.device.type == "cuda" else None
                net = DistributedDataParallel(net, device_ids=ids, gradient_as_bucket_view=self.bucket_view)
            return net
        for module in (model, ema):
            if module is not None:
                broadcast_from_rank0(module)
        self._shell = copy.deepcopy(model if ema is None else ema).to("meta")
        if compile_model is not None:
            for block in model.blocks:
                block.compile()
        for module in (model, ema):
            if module is not None:
                self._shard(module)
        return model

    def _shard(self, module: nn.Module) -> None:
        kwargs = dict(mesh=self.mesh, mp_policy=self.mp_policy, offload_policy=self.offload)
        for block in module.blocks:
            fully_shard(block, **kwargs)
        fully_shard(module, **kwargs)

    def gather(self, module: nn.Module) -> nn.Module | None:
        """`module` whole, as an ordinary model, on rank 0 (None on the others); every rank must call it.
        Unsharded modes return `module` itself."""
        if not self.sharded:
            return module
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(module, options=options)  # a collective; rank 0 receives the tensors
        if not self.dist.is_main:
            return None
        whole = copy.deepcopy(self._shell).to_empty(device="cpu")
        whole.load_state_dict(state)
        return whole.to(self.device).eval()


__all__ = ["PARALLELS", "Parallel", "full_value", "hsdp_shape", "resolve_parallel", "state_bytes"]
