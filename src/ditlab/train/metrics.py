"""Run logs: one JSON object per logged step in `metrics.jsonl` (optionally mirrored to TensorBoard),
and the loss-curve / FD-curve PNGs drawn from it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ditlab.atomic import atomic_write


class MetricsLog:
    """Append-only JSONL log. On resume, entries past the resumed step are dropped so the file stays one
    consistent history (a killed run may have logged steps after its last checkpoint)."""

    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.truncate(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:  # optional: tensorboard is not a dependency
                self.writer = None

    def truncate(self, step: int) -> None:
        """Drop the entries past `step` (a resumed or rolled-back run continues from there)."""
        if self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.path, lambda f: f.write(text.encode()))

    def log(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl. A torn last line (a run killed, or a disk filling, mid-append) is
    left out; a broken line before it is an error naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(
                f"{path} line {number} is not a JSON record ({err}); remove or fix that line"
            ) from err
    return records


def plot_curves(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Loss against step (and FD against step when the run evaluated), as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    fds = {
        k: [(r["step"], r[k]) for r in rows if k in r]
        for k in {k for r in rows for k in r if k.startswith("fd")}
    }
    if not losses:
        return None
    panels = 1 + bool(fds)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    ax.plot(*zip(*losses), lw=1, label="loss")
    if any("mse" in r for r in rows):
        ax.plot(*zip(*[(r["step"], r["mse"]) for r in rows if "mse" in r]), lw=1, label="mse")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    if fds:
        ax = axes[0, 1]
        for key, points in sorted(fds.items()):
            ax.plot(*zip(*points), marker="o", lw=1, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("Fréchet distance")
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    try:
        atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)  # also when the write fails (a full disk): no figure left open
    return png_path
