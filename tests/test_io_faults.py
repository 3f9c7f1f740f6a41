"""Issue 19 item 4: a full disk or an I/O error at any write of a training run leaves its last checkpoint
loadable, ends the run with one clear line (exit code 1), leaves no temporary file behind, and `--resume auto`
then continues from that checkpoint with the losses of a run never interrupted.

The faults: ENOSPC raised by fsync for one output file at a time (where a full disk shows itself for
buffered writes), a metrics line torn mid-append, and a real per-file size limit (RLIMIT_FSIZE) on a
subprocess. Orphan temporary files of a killed writer are removed when the next run takes the folder.
"""

import errno
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ditlab.cli import main as cli
from ditlab.train import list_checkpoints, load_training_state
from ditlab.train.metrics import MetricsLog, read_metrics

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--data",
    "digits",
    "--model",
    "DiT-Nano/2",
    "--batch-size",
    "16",
    "--lr",
    "1e-3",
    "--log-every",
    "1",
]
FLAGS += ["--sample-steps", "2", "--threads", "1", "--no-progress", "--ckpt-every", "2", "--keep-last", "0"]


def train(out, steps, *extra) -> int:
    return cli(["train", *FLAGS, "--train-steps", str(steps), "--out", str(out), *extra])


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl") if "loss" in r}


def temp_files(out) -> list[Path]:
    return sorted(p for p in Path(out).rglob(".*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-step run (checkpoints 2 and 4) to continue, and the uninterrupted 8-step run to compare with."""
    root = tmp_path_factory.mktemp("io-faults")
    assert train(root / "four", 4) == 0
    assert train(root / "eight", 8) == 0
    return root


def fail_fsync_of(monkeypatch, name: str) -> list[str]:
    """Make fsync raise ENOSPC for the temporary file of output `name` (atomic writes fsync before renaming:
    where a full disk shows itself); returns the files it failed."""
    real, failed = os.fsync, []

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if f"/.{name}." in target:
            failed.append(target)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


def tear_metrics_append(monkeypatch) -> list[int]:
    """Make the first metrics append write half its line and then hit a full disk."""
    real, torn = MetricsLog.log, []

    def log(self, record):
        if torn:
            return real(self, record)
        torn.append(record["step"])
        with self.path.open("a") as f:
            f.write(f'{{"step": {record["step"]}, "lo')
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(MetricsLog, "log", log)
    return torn


# output -> the newest checkpoint once the fault has stopped the resumed (4 -> 8) run
SITES = {
    "0000006.pt": 4,  # the first checkpoint of the resumed run
    "config.json": 4,  # written when the run starts
    "metrics.jsonl": 4,  # torn line at step 5
    "model.safetensors": 8,  # after the final checkpoint
    "loss.png": 8,
    "samples.png": 8,
}


@pytest.mark.slow  # two short training runs per site
@pytest.mark.parametrize("site", list(SITES))
def test_a_full_disk_at_each_write_keeps_the_last_checkpoint_and_resume_continues(
    site, runs, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    shutil.copytree(runs / "four", out)
    with monkeypatch.context() as patch:
        failed = tear_metrics_append(patch) if site == "metrics.jsonl" else fail_fsync_of(patch, site)
        capsys.readouterr()
        assert train(out, 8, "--resume", "auto") == 1
        assert failed, f"the fault at {site} was never hit"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("ditlab train: error:")]
    assert line.startswith("ditlab train: error: I/O failure: [Errno 28] No space left on device")
    assert "free space" in line and "--resume auto" in line
    assert temp_files(out) == []  # no orphan temporary file, no lock left behind
    newest_step, newest = list_checkpoints(out)[-1]
    assert newest_step == SITES[site]
    assert load_training_state(newest)["step"] == SITES[site]

    assert train(out, 8, "--resume", "auto") == 0  # the disk has room again
    assert f"resuming from {newest}" in capsys.readouterr().err
    assert losses(out) == losses(runs / "eight")  # the same losses as the run never interrupted


def _limit_file_size(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


@pytest.mark.slow
def test_a_file_size_limit_in_a_subprocess_keeps_the_last_checkpoint(runs, tmp_path):
    """A real limit: every write past `limit` bytes fails with EFBIG (Python ignores SIGXFSZ)."""
    out = tmp_path / "run"
    shutil.copytree(runs / "four", out)
    before = {p.name: p.read_bytes() for _, p in list_checkpoints(out)}
    limit = min(len(b) for b in before.values()) // 2  # below a checkpoint, above the config and metrics
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    argv = [
        sys.executable,
        "-m",
        "ditlab",
        "train",
        *FLAGS,
        "--train-steps",
        "8",
        "--out",
        str(out),
        "--resume",
    ]
    limited = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(limit)
    )
    assert limited.returncode == 1, limited.stderr
    (line,) = [x for x in limited.stderr.splitlines() if x.startswith("ditlab train: error:")]
    assert "[Errno 27] File too large" in line and "Traceback" not in limited.stderr
    assert {p.name: p.read_bytes() for _, p in list_checkpoints(out)} == before  # untouched
    assert temp_files(out) == []
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert losses(out) == losses(runs / "eight")


def test_orphan_temporary_files_are_removed_when_the_next_run_starts(runs, tmp_path, capsys):
    """What a SIGKILL mid-write leaves: hidden `.NAME.<12 hex>.tmp` files; other hidden files stay."""
    out = tmp_path / "run"
    shutil.copytree(runs / "four", out)
    orphans = [out / "checkpoints" / ".0000006.pt.0123456789ab.tmp", out / ".config.json.abcdef012345.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    (out / ".notes.tmp").write_text("not ditlab's")
    capsys.readouterr()
    assert train(out, 6, "--resume", "auto") == 0
    err = capsys.readouterr().err
    assert all(not p.exists() and f"removed {p}" in err for p in orphans)
    assert (out / ".notes.tmp").exists()
