"""Where and how tensors run: device choice, precision (bf16 autocast and TF32 on CUDA, fp32 on CPU),
CPU thread count, and the machine's measured matmul peak for MFU.

On CPUs without AMX/avx512_bf16 bf16 matmuls are several times slower than fp32, so "auto" precision
means bf16 autocast on CUDA and plain fp32 on CPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

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


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


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
