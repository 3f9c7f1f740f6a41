"""Preemption-safe runs: stop at a step boundary, checkpoint, exit with EXIT_PREEMPTED, `--resume auto` later.

SIGTERM and SIGUSR1 (what SLURM, with `--signal=USR1@90`, and Kubernetes send before killing a job) only set
a flag here; `--max-time` (e.g. "3h50m", "90m", "45s" or plain seconds) sets it once the run has been going
that long. The trainer asks `should_stop()` after every optimizer step, and the ranks agree on the answer with
one all_reduce(MAX) of a one-element tensor per step: a signal may reach one rank before the others (or only
one, when sent by hand), and every rank must take the same branch, or the ones still training would wait in
their next collective forever. Every step rather than every K steps: the flag costs one tiny collective
(microseconds next to a DiT step), and a job's grace period after SIGTERM (SLURM's KillWait, 30 s by default)
may be shorter than K steps of a large model. The max-time deadline is rank 0's clock, carried by the same
all_reduce, so clock skew between nodes cannot split the decision.
"""

from __future__ import annotations

import re
import signal
import time

import torch
import torch.distributed as dist

from ditlab.distributed import DistInfo

EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: "try again later" (a checkpoint was written: --resume auto)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


class Preempted(Exception):  # noqa: N818 - an outcome, not a fault: the run stopped on request and can resume
    """The run stopped early on a signal or `--max-time`, after writing a checkpoint to resume from."""

    def __init__(self, step: int, reason: str, checkpoint=None):
        super().__init__(f"stopped at step {step} ({reason}); continue with --resume auto")
        self.step, self.reason, self.checkpoint = step, reason, checkpoint


def parse_duration(text: str | float | int | None) -> float | None:
    """Seconds of "3h50m", "90m", "1h", "45s", "3600" or a number; None/"" = no limit."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        text = text.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            m = _DURATION.match(text)
            if not m or not any(m.groups()):
                raise ValueError(
                    f"max_time {text!r} is not a duration: write e.g. 3h50m, 90m, 45s or seconds (3600)"
                ) from None
            h, mi, s = (float(g or 0) for g in m.groups())
            seconds = 3600 * h + 60 * mi + s
    if seconds <= 0:
        raise ValueError(f"max_time must be positive, got {text!r}")
    return seconds


class StopFlag:
    """Catches the stop signals while installed and tells every rank, in agreement, when to stop."""

    def __init__(self, info: DistInfo, max_time: str | float | None = None, device=None):
        self.info = info
        self.max_seconds = parse_duration(max_time)
        self.device = device if device is not None else torch.device("cpu")  # NCCL reduces on the GPU
        self.start = time.monotonic()
        self.signal: int | None = None
        self._previous: dict = {}

    def install(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here, max-time still works
                break
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signal = signum  # only a flag: the step in progress finishes, then the loop checkpoints

    def local_reason(self) -> int:
        """0: keep going; 1: a stop signal; 2: max-time (checked on rank 0 only)."""
        if self.signal is not None:
            return 1
        if self.info.is_main and self.max_seconds is not None:
            if time.monotonic() - self.start >= self.max_seconds:
                return 2
        return 0

    def should_stop(self) -> str | None:
        """Every rank, after every step: the agreed reason to stop ("signal" or "max-time"), or None."""
        reason = self.local_reason()
        if self.info.enabled:
            flag = torch.tensor([reason], dtype=torch.int32, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reason = int(flag.item())
        return {0: None, 1: "signal", 2: "max-time"}[reason]


__all__ = ["EXIT_PREEMPTED", "Preempted", "STOP_SIGNALS", "StopFlag", "parse_duration"]
