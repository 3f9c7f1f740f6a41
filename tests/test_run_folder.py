"""A run folder belongs to one run: a new run refuses a folder holding another one (`--overwrite` moves it
aside), retention never deletes what this run wrote, `--resume auto` skips an unreadable newest checkpoint,
and output files get the mode `open()` would give them."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from ditlab.atomic import atomic_write_text
from ditlab.cli import main as cli
from ditlab.train import TrainConfig, Trainer, list_checkpoints, save_training_state, train
from ditlab.train.metrics import read_metrics
from ditlab.train.state import PREVIOUS_RUNS

# the tiny run of tests/test_train.py, as flags
FLAGS = ["--data", "digits", "--model", "DiT-Nano/2", "--batch-size", "16", "--lr", "1e-3"]
FLAGS += ["--log-every", "1", "--sample-steps", "2", "--threads", "1", "--no-progress"]


def train_cli(out, *extra) -> dict:
    """`ditlab train` in this process; returns the summary it prints."""
    assert cli(["train", *FLAGS, "--out", str(out), *extra]) == 0
    return out


def summary_of(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def steps_of(out) -> list[int]:
    return [s for s, _ in list_checkpoints(out)]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_reused_run_folder_is_refused_and_overwrite_moves_the_old_run_aside(tmp_path, capsys):
    """The issue's data loss: an old run's checkpoints 3/6/9 in --out, a new 6-step run with checkpoints
    every 2 and keep-newest-2. Before: retention deleted the new run's own files, the summary pointed at a
    deleted checkpoint and `--resume auto` jumped to the old step 9."""
    out = tmp_path / "run"
    train_cli(out, "--steps", "9", "--ckpt-every", "3", "--keep-last", "0")
    assert steps_of(out) == [3, 6, 9]
    capsys.readouterr()
    before = snapshot(out)

    new_run = ["--steps", "6", "--ckpt-every", "2", "--keep-last", "2", "--seed", "1"]
    assert cli(["train", *FLAGS, "--out", str(out), *new_run]) == 2
    refused = capsys.readouterr().err
    assert refused.startswith("ditlab train: error: ") and "already holds a run" in refused
    assert "--resume auto" in refused and "--overwrite" in refused
    assert snapshot(out) == before  # refused before anything was written

    train_cli(out, *new_run, "--overwrite")
    summary = summary_of(capsys)
    assert steps_of(out) == [4, 6]  # this run's newest two; nothing of the old run is mixed in
    assert Path(summary["checkpoint"]).is_file() and Path(summary["checkpoint"]).name == "0000006.pt"
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    (aside,) = (out / PREVIOUS_RUNS).iterdir()  # the old run, moved whole, byte for byte
    assert snapshot(aside) == before

    # continuing takes this run's step 6, never the old run's step 9
    train_cli(out, "--resume", "auto", "--steps", "8")
    summary = summary_of(capsys)
    assert summary["step"] == 8 and summary["steps_run"] == 2
    assert steps_of(out) == [6, 8]
    with pytest.raises(ValueError, match="pass only one"):
        Trainer(TrainConfig(out=str(out), steps=8), resume="auto", overwrite=True)


def test_retention_never_deletes_the_checkpoint_just_written(tmp_path):
    """Pruning keeps the newest K of this run's checkpoints (steps up to the one just saved); files of a
    later step are not this run's and stay. Before: sorting by step deleted the new step 10 at once."""
    out = tmp_path / "run"
    for step in (400, 500, 600):
        save_training_state(out, {"step": step})
    path = save_training_state(out, {"step": 10}, keep_last=3)
    assert path.is_file()
    assert steps_of(out) == [10, 400, 500, 600]
    for step in (20, 30, 40):
        save_training_state(out, {"step": step}, keep_last=2)
    assert steps_of(out) == [30, 40, 400, 500, 600]


def test_resuming_from_an_earlier_checkpoint_moves_the_later_ones_aside(tmp_path):
    """A run resumed from its step 3 replaces its own later history: steps 6 and 9 move to previous-runs/
    (else retention or the next `--resume auto` would take the old step 9 for this run's)."""
    cfg = TrainConfig(
        data="digits", model="DiT-Nano/2", batch_size=16, lr=1e-3, sample_steps=2, progress=False, threads=1,
        out=str(tmp_path / "run"), steps=9, ckpt_every=3, keep_last=0,
    )  # fmt: skip
    train(cfg)
    old = {s: p.read_bytes() for s, p in list_checkpoints(cfg.out)}
    summary = train(
        cfg.replace(steps=6, keep_last=2), resume=str(Path(cfg.out) / "checkpoints" / "0000003.pt")
    )
    assert summary["step"] == 6 and steps_of(cfg.out) == [3, 6]
    (aside,) = (Path(cfg.out) / PREVIOUS_RUNS).iterdir()
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["0000006.pt", "0000009.pt"]
    assert (aside / "checkpoints" / "0000009.pt").read_bytes() == old[9]


def test_resume_auto_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    """The newest checkpoint cut short: `--resume auto` (the CLI, which reads the run's options from it, and
    the Trainer alike) renames it *.corrupt with one warning and continues from the one before, exactly."""
    out = tmp_path / "run"
    train_cli(out, "--steps", "6", "--ckpt-every", "3")
    straight = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    newest = out / "checkpoints" / "0000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="unreadable") as caught:
        assert cli(["train", "--out", str(out), "--resume", "auto", "--steps", "6"]) == 0
    (warned,) = [str(w.message) for w in caught if "unreadable" in str(w.message)]  # one, on one line
    assert "\n" not in warned
    assert summary_of(capsys)["steps_run"] == 3  # from step 3, the newest loadable one
    assert (out / "checkpoints" / "0000006.pt.corrupt").stat().st_size == 1000
    assert [r["loss"] for r in read_metrics(out / "metrics.jsonl")] == straight  # an exact resume

    # the Python API takes the same path
    newest.write_bytes(b"")
    cfg = TrainConfig.load(out / "config.json")
    with pytest.warns(UserWarning, match="0000006.pt is unreadable"):
        trainer = Trainer(cfg, resume="auto")
    assert trainer.step == 3 and trainer.resumed_from.name == "0000003.pt"
    assert (out / "checkpoints" / "0000006.pt.corrupt1").stat().st_size == 0  # the first one is kept


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_mode_open_would_give_them(tmp_path, umask):
    """Before: every atomic write (checkpoints, models, configs, grids) came out 0o600 whatever the umask."""
    old_umask = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
        assert expected == 0o666 & ~umask
        cfg = TrainConfig(
            data="digits", model="DiT-Nano/2", batch_size=16, steps=1, sample_steps=1, progress=False,
            threads=1, out=str(tmp_path / "run"),
        )  # fmt: skip
        summary = train(cfg)
        outputs = [summary["checkpoint"], summary["model"], summary["samples"]]
        outputs += [tmp_path / "run" / n for n in ("config.json", "metrics.jsonl", "loss.png")]
        for path in outputs:
            assert stat.S_IMODE(Path(path).stat().st_mode) == expected, path
        kept = tmp_path / "private.json"  # replacing a file keeps its mode, as open(path, "w") does
        atomic_write_text(kept, "{}")
        kept.chmod(0o600)
        atomic_write_text(kept, '{"a": 1}')
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text() == '{"a": 1}'
    finally:
        os.umask(old_umask)
    assert torch.load(summary["checkpoint"], weights_only=True)["step"] == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*singular covariance")  # 10 samples: expected, and said
def test_demo_run_twice_starts_clean_and_says_so_or_resumes(tmp_path, capsys):
    """`make demo` twice. Before: the second run deleted metrics.jsonl and retrained next to the first run's
    checkpoints. Now it moves the first run aside (one line says so), or continues it with --resume."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "4", "--per-class", "1", "--sample-steps", "2"]
    args += ["--threads", "1", "--no-progress"]
    assert cli(args) == 0
    first = snapshot(out)
    capsys.readouterr()
    assert cli(args) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "earlier run" in line]
    assert len(said) == 1 and "starting clean" in said[0]
    (aside,) = (out / PREVIOUS_RUNS).iterdir()
    assert snapshot(aside) == first  # the first run, whole
    assert steps_of(out) == [4] and json.loads((out / "report.json").read_text())["train_steps"] == 4

    assert cli([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming from" in err and "earlier run" not in err
    assert json.loads((out / "report.json").read_text())["train_steps"] == 4
    assert len(list((out / PREVIOUS_RUNS).iterdir())) == 1
