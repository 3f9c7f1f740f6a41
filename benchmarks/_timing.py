"""How benchmarks/ measure: the machine description, interleaved min-of-N wall-clock timing, the fp32 matmul
peak (the MFU denominator), peak memory of one call in a fresh subprocess, and one JSON line per result.

Timing: every variant of a comparison is timed in the same process, round-robin (A B C A B C ...), after
warm-up calls, and the minimum over rounds is kept. A shared machine slows some rounds (other jobs, turbo,
page faults) but rarely speeds one up, so the minimum is the least noisy estimate of what the code costs, and
interleaving makes slow phases hit every variant alike: ratios between variants are what to read.

Memory: CPU torch has no allocator statistics, so a child process (same interpreter, fresh state) builds the
workload, runs it once to allocate everything persistent (weights, gradients, optimizer state), resets the
kernel's peak-RSS mark (`/proc/self/clear_refs`), runs it again and reads the high-water mark (`VmHWM`).
"activation" = that peak minus the resident size just before the call: what the call itself needed on top
of the persistent state. glibc is told to serve every allocation above 64 KiB with its own mmap
(`MALLOC_MMAP_THRESHOLD_`), which is returned to the kernel on free, so the resident size follows the live
tensors instead of keeping freed heap pages. Where the reset is unavailable the lifetime peak is reported.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ditlab.runtime import configure_threads, matmul_peak_gflops

# glibc: serve allocations >= 64 KiB with mmap (freed straight back to the kernel) and never grow that
# threshold dynamically, so RSS tracks live memory (used in memory-measuring child processes only).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": str(64 * 1024)}


def setup(threads: int = 0) -> int:
    """Intra-op threads for the benchmark (0 = all cores of this process's affinity); returns the count."""
    return configure_threads(threads)


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx512f", "avx512_bf16", "amx", "avx2")))
    except OSError:
        pass
    return []


def machine(threads: int) -> dict:
    """What the numbers were measured on (committed beside them in RESULTS.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cores": cores,
        "threads": threads,
        "flags": _cpu_flags(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def matmul_peak(quick: bool = False) -> float:
    """The fp32 matmul GFLOP/s this machine reaches now: the best of n×n products over a few sizes
    (`ditlab.runtime.matmul_peak_gflops`, the same function the trainer's MFU uses)."""
    sizes = (512, 1024) if quick else (1024, 2048)
    return matmul_peak_gflops("cpu", sizes=sizes, repeats=3 if quick else 5)


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    before: Callable | None = None,
    clock: str = "wall",
) -> dict[str, float]:
    """Minimum seconds of each zero-argument function, timed round-robin after `warmup` calls.

    `before(name)`, if given, runs untimed before every call (e.g. to switch a shared model's settings).
    `clock`: "wall" (perf_counter), or "cpu", the calling thread's CPU time, which leaves out the time the
    thread waits for a core: on a machine shared by more runnable processes than cores that wait is most of
    a wall-clock reading (single-threaded work only: other threads' time is not counted).
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose one of: {', '.join(CLOCKS)}")
    now = CLOCKS[clock]
    for _ in range(warmup):
        for name, fn in fns.items():
            if before is not None:
                before(name)
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if before is not None:
                before(name)
            start = now()
            fn()
            best[name] = min(best[name], now() - start)
    return best


def publish(text: str, write: str | None) -> None:
    """Print a script's Markdown summary and, with `--write FILE`, save it there too."""
    print(text)
    if write:
        Path(write).write_text(text)


def emit(bench: str, **fields) -> dict:
    """Print one result as a JSON line (machine-readable; RESULTS.md is built from these) and return it."""
    record = {"bench": bench, **fields}
    print(json.dumps(record, default=float), flush=True)
    return record


# ---------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def peak_memory_of(fn: Callable[[], object]) -> dict:
    """In the current process: run `fn` once to warm up, then again with the peak-RSS mark reset.

    Returns MiB: `before` (resident before the measured call), `peak` (high-water mark during it),
    `activation` (peak − before) and `exact` (False when the mark could not be reset, so `peak` is the
    lifetime peak, warm-up included)."""
    fn()
    gc.collect()
    before = _status_kib("VmRSS")
    exact = _reset_peak_rss()
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:  # not Linux: the lifetime peak from getrusage (KiB on Linux)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            peak //= 1024
        before, exact = before or 0, False
    return {
        "before_mib": before / 1024,
        "peak_mib": peak / 1024,
        "activation_mib": (peak - before) / 1024,
        "exact": exact,
    }


def run_child(script: str, payload: dict, threads: int, timeout: float | None = None) -> dict:
    """Run `python script --child JSON` in a fresh process with `MEMORY_ENV`; return its last JSON line."""
    env = {**os.environ, **MEMORY_ENV, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, script, "--child", json.dumps(payload), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({' '.join(cmd[:3])} ...):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"memory child printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of `rows`; columns are (header, key, format spec), e.g. ("s/step", "seconds", ".3f")."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for row in rows:
        cells = []
        for _, key, spec in columns:
            value = row.get(key)
            cells.append("–" if value is None else format(value, spec) if spec else str(value))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])
