"""Issue 19 item 5: one run per folder. A run holds `<out>/.ditlab-run.lock` (pid, host, start) while it
writes; a second `ditlab train --out SAME` is refused naming the owner; a lock whose process is gone is taken
over at once (a killed run resumes as before); `--force` takes over a lock this machine cannot check (from
another host), never a running process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ditlab.cli import main as cli
from ditlab.train.lock import LOCK_NAME, RunLock, RunLockedError, _start_ticks, owner_state

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
FLAGS += ["--sample-steps", "2", "--threads", "1", "--no-progress", "--ckpt-every", "2"]


def write_lock(out: Path, **fields) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid())}
    record.update(started="2026-01-01T00:00:00Z", command="ditlab train", token="0" * 16, **fields)
    (out / LOCK_NAME).write_text(json.dumps(record))
    return out / LOCK_NAME


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_running_owner_refuses_a_second_run_even_with_force(tmp_path, capsys):
    out = tmp_path / "run"
    lock = write_lock(out)  # this very process: alive
    before = lock.read_bytes()
    for extra in ([], ["--resume", "auto"], ["--force"]):
        assert cli(["train", *FLAGS, "--train-steps", "2", "--out", str(out), *extra]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(
            f"ditlab train: error: {out} is in use by another run (pid {os.getpid()} on host"
        )
        assert f"kill {os.getpid()}" in line
    assert lock.read_bytes() == before and sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_a_lock_whose_process_is_gone_is_taken_over_and_released(tmp_path, capsys):
    out = tmp_path / "run"
    write_lock(out, pid=dead_pid(), start_ticks=None)
    held = []
    with pytest.warns(UserWarning, match=r"took over the lock .*\(its process is gone\)"):
        assert cli(["train", *FLAGS, "--train-steps", "2", "--out", str(out)]) == 0
    assert not (out / LOCK_NAME).exists()  # released at the end
    # a reused pid (alive, but started at another time) is not the owner either
    write_lock(out, start_ticks=-1)
    assert owner_state(json.loads((out / LOCK_NAME).read_text())) == "gone"
    lock = RunLock.acquire(out)
    held.append(json.loads((out / LOCK_NAME).read_text()))
    lock.release()
    assert held[0]["pid"] == os.getpid() and held[0]["start_ticks"] == _start_ticks(os.getpid())
    assert not (out / LOCK_NAME).exists()


def test_a_lock_from_another_host_needs_force(tmp_path, capsys):
    out = tmp_path / "run"
    write_lock(out, host="node-17")
    assert cli(["train", *FLAGS, "--train-steps", "2", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip()
    assert "pid" in line and "node-17" in line and "cannot check" in line and "--force" in line
    with pytest.warns(UserWarning, match="took over the lock .*node-17.*--force"):
        assert cli(["train", *FLAGS, "--train-steps", "2", "--out", str(out), "--force"]) == 0
    assert not (out / LOCK_NAME).exists()


def test_the_lock_is_held_while_the_run_writes_and_released_on_error(tmp_path, monkeypatch):
    from ditlab.train import TrainConfig, Trainer

    trainer = Trainer(
        TrainConfig(
            data="digits",
            model="DiT-Nano/2",
            batch_size=16,
            steps=3,
            out=str(tmp_path / "r"),
            progress=False,
            threads=1,
            sample_steps=2,
        )
    )
    seen = []

    def step():
        seen.append(json.loads((tmp_path / "r" / LOCK_NAME).read_text())["pid"])
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "train_step", step)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.run()
    assert seen == [os.getpid()] and not (tmp_path / "r" / LOCK_NAME).exists()
    with pytest.raises(RunLockedError, match="in use by another run"):  # the holder itself cannot lock twice
        lock = RunLock.acquire(tmp_path / "r")
        RunLock.acquire(tmp_path / "r")
    lock.release()


@pytest.mark.slow
def test_two_real_processes_and_a_kill(tmp_path):
    """A real `ditlab train` holds the folder: a second one is refused; SIGKILL leaves a stale lock, and
    `--resume auto` takes it over and finishes the run."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ditlab", "train", *FLAGS, "--out", str(out)]
    first = subprocess.Popen([*argv, "--train-steps", "100000"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)
        second = subprocess.run(
            [*argv, "--train-steps", "4", "--resume", "auto"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2 and f"in use by another run (pid {first.pid}" in second.stderr
        assert second.stderr.count("\n") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / LOCK_NAME).exists()  # a killed run cannot remove its lock
    steps = sorted(int(p.stem) for p in (out / "checkpoints").glob("*.pt"))
    third = subprocess.run(
        [*argv, "--train-steps", str(steps[-1] + 2), "--resume", "auto"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert third.returncode == 0, third.stderr
    assert "its process is gone" in third.stderr and not (out / LOCK_NAME).exists()
