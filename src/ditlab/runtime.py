"""Where and how tensors run: device choice, precision (bf16 autocast and TF32 on CUDA; on CPU bf16 where it
is native and measured faster, else fp32), CPU thread count, and the machine's measured matmul peak for MFU.

On CPUs without AMX/avx512_bf16 bf16 matmuls are several times slower than fp32 (and 1.5-3x faster with
them, benchmarks/RESULTS.md). `native_bf16()` detects the support at start-up (/proc/cpuinfo flags
avx512_bf16 / amx_bf16 on x86, bf16 on Arm, and oneDNN's own bf16 check). Native is not enough: a small
model's step is dominated by work bf16 does not speed up (the demo's is no faster), so "auto" on such a CPU
times one training step of the run's own model both ways at start-up (`bf16_speedup`) and takes bf16 only at
BF16_MIN_SPEEDUP or more; bf16 keeps the quality at equal wall-clock (benchmarks/precision.md).
`precision_decision` says which was chosen and why; a run records both in runtime.json.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" → cuda when available, else cpu; "cuda" without a GPU is a clear error."""
    base = str(name).split(":")[0]
    if base not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)} (or cuda:N)")
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


# "auto" takes bf16 on a CPU with native bf16 when a training step of the run's model runs at least this many
# times faster under bf16 autocast than in fp32 (timed at start-up): a margin above the timing's noise, so a
# model near parity is not flipped from run to run. The Fashion-MNIST recipe's model is 1.3x faster on an AMX
# CPU (benchmarks/precision.md); the demo's tiny one is not.
BF16_MIN_SPEEDUP = 1.15
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FEATURES = ("bf16",)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo ("flags" on x86, "Features" on Arm); empty elsewhere."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:  # not Linux: no flags to read, so no claim of native bf16
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def native_bf16(cpuinfo: str | None = None) -> dict:
    """Whether this CPU runs bf16 matmuls natively: {"native", "flags" (the bf16 ones found), "onednn_bf16",
    "capability" (torch's CPU kernel level)}. Native = a bf16 instruction flag and oneDNN agreeing."""
    found = sorted(cpu_flags(cpuinfo) & {*X86_BF16_FLAGS, *ARM_BF16_FEATURES})
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        onednn = False
    capability = torch.backends.cpu.get_cpu_capability()
    return {"native": bool(found) and onednn, "flags": found, "onednn_bf16": onednn, "capability": capability}


def step_timing_decides(precision: str, device: torch.device, bf16: dict | None = None) -> bool:
    """Whether `precision` on `device` is settled by timing a training step (`bf16_speedup`): "auto" on a CPU
    with native bf16."""
    if precision != "auto" or device.type != "cpu":
        return False
    return (native_bf16() if bf16 is None else bf16)["native"]


def bf16_speedup(step: Callable[[str], None], repeats: int = 3) -> float:
    """How many times faster `step(precision)` (one forward and backward of the model, under `autocast` for
    the precision) runs in bf16 than in fp32: the best of `repeats` timings of each, interleaved so a change
    in the machine's load hits both, after one untimed run of each (first-call allocations, oneDNN's choice
    of kernels). Costs 2 * (repeats + 1) steps, once per run."""
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for i in range(repeats + 1):
        for precision in best:
            start = time.perf_counter()
            step(precision)
            if i:
                best[precision] = min(best[precision], time.perf_counter() - start)
    return best["fp32"] / best["bf16"]


def precision_decision(
    precision: str, device: torch.device, bf16: dict | None = None, speedup: float | None = None
) -> tuple[str, str]:
    """(fp32 | bf16, why): the precision a run uses for `precision` on `device`, and the reason in words.
    `speedup`: `bf16_speedup` of the run's training step, where `step_timing_decides` (else fp32 there)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, f"{precision} as asked"
    if device.type == "cuda":
        return "bf16", "auto: bf16 autocast on CUDA"
    bf16 = native_bf16() if bf16 is None else bf16
    if not bf16["native"]:
        return "fp32", "auto: fp32 on a CPU without native bf16 (bf16 would be several times slower)"
    native = f"this CPU has native bf16 ({', '.join(bf16['flags'])})"
    if speedup is None:
        return "fp32", f"auto: fp32; {native}, but no training step was timed to show bf16 is faster here"
    if speedup >= BF16_MIN_SPEEDUP:
        return "bf16", (
            f"auto: bf16; {native} and a training step of this model ran {speedup:.2f}x faster in bf16 than "
            "in fp32 when timed at start-up (bf16 keeps the quality at equal wall-clock: benchmarks/precision.md)"
        )
    return "fp32", (
        f"auto: fp32; {native}, but a training step of this model ran only {speedup:.2f}x as fast in bf16 when "
        f"timed at start-up (auto takes bf16 from {BF16_MIN_SPEEDUP}x; pass --precision bf16 to use it anyway)"
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    return precision_decision(precision, device)[0]


def autocast(device: torch.device, precision: str):
    """The forward-pass context for `precision`: bf16 autocast (weights and optimizer stay fp32) or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_backends(device: torch.device, tf32: bool = True) -> None:
    """TF32 matmuls and cuDNN on CUDA (the official DiT trains with TF32 on); a no-op on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def configure_threads(threads: int = 0, world_size: int = 1) -> int:
    """Intra-op CPU threads: `threads` if given, else the cores divided among local processes (no oversubscription)."""
    if threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // max(1, world_size))
    torch.set_num_threads(threads)
    return threads


@functools.cache
def matmul_peak_gflops(
    device_type: str = "cpu", sizes: tuple[int, ...] = (1024, 2048), repeats: int = 3
) -> float:
    """The fp32 matmul throughput this machine reaches now (GFLOP/s, best of `repeats` n×n products per size).

    Used as the denominator of MFU; measured rather than taken from a spec sheet so it reflects threads,
    turbo and sharing. Several sizes because the best one depends on the machine (on a 2-core AVX-512 CPU
    2048 beats 1024): a low peak would flatter MFU. Costs a few matmuls of each size, once.
    """
    device = torch.device(device_type)
    best_rate = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            best_rate = max(best_rate, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best_rate
