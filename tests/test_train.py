"""Training: exact resume (in process and after SIGKILL), torchrun DDP equivalence, atomic checkpoints,
configs that round-trip, and clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ditlab.cli import main as cli
from ditlab.train import TrainConfig, Trainer, list_checkpoints, load_training_state
from ditlab.train.metrics import read_metrics

TINY = dict(
    data="digits",
    model="DiT-Nano/2",
    batch_size=16,
    lr=1e-3,
    log_every=1,
    ckpt_every=3,
    sample_steps=2,
    progress=False,
    threads=1,
)


def tiny_config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / "run"), "steps": 6, **kw})


def losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl")]


def test_training_lowers_the_loss_and_writes_every_output(tmp_path):
    cfg = tiny_config(tmp_path, steps=40, log_every=10, ckpt_every=20, keep_last=1, objective="flow")
    summary = Trainer(cfg).run()
    out = Path(cfg.out)
    for name in ("config.json", "metrics.jsonl", "loss.png", "samples.png", "model.safetensors"):
        assert (out / name).is_file(), name
    assert [s for s, _ in list_checkpoints(out)] == [40]  # keep_last=1 pruned step 20
    curve = losses(out)
    assert curve[-1] < curve[0]
    assert summary["step"] == 40
    record = read_metrics(out / "metrics.jsonl")[-1]
    assert {"loss", "grad_norm", "lr", "img_per_s", "mfu"} <= set(record)


def test_resume_in_process_repeats_the_same_losses(tmp_path):
    full = tiny_config(tmp_path / "a", steps=6)
    Trainer(full).run()
    half = tiny_config(tmp_path / "b", steps=3)
    Trainer(half).run()
    resumed = Trainer(half.replace(steps=6), resume="auto")
    assert resumed.step == 3
    resumed.run()
    assert losses(half.out) == losses(full.out)
    a = load_training_state(list_checkpoints(full.out)[-1][1])
    b = load_training_state(list_checkpoints(half.out)[-1][1])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def _train_cmd(out, steps, extra=()):
    return [
        sys.executable, "-m", "ditlab", "train", "--data", "digits", "--model", "DiT-Nano/2",
        "--batch-size", "16", "--lr", "1e-3", "--steps", str(steps), "--log-every", "1",
        "--ckpt-every", "5", "--keep-last", "2", "--sample-steps", "2", "--threads", "1",
        "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    steps = 300
    subprocess.run(_train_cmd(tmp_path / "ref", steps), check=True, capture_output=True)
    victim = subprocess.Popen(
        _train_cmd(tmp_path / "killed", steps), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.is_dir() and any(p.suffix == ".pt" for p in ckpts.iterdir())):
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = [s for s, _ in list_checkpoints(tmp_path / "killed")]
    assert killed_at and killed_at[-1] < steps, "the run finished before it could be killed"
    subprocess.run(
        _train_cmd(tmp_path / "killed", steps, ["--resume", "auto"]), check=True, capture_output=True
    )
    assert losses(tmp_path / "killed") == losses(tmp_path / "ref")
    assert not list(ckpts.glob(".*tmp"))  # no temporary file survives


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["--steps", "3", "--batch-size", "8", "--ckpt-every", "3"]
    single = _train_cmd(tmp_path / "one", 3)[1:] + common
    subprocess.run([sys.executable, *single], check=True, capture_output=True)
    multi = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        *_train_cmd(tmp_path / "two", 3)[1:],
        *common,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(multi, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    a = load_training_state(list_checkpoints(tmp_path / "one")[-1][1])["model"]
    b = load_training_state(list_checkpoints(tmp_path / "two")[-1][1])["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), rel=1e-5)


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, steps=3)
    trainer = Trainer(cfg)
    trainer.run()
    good = list_checkpoints(cfg.out)[-1][1]
    before = good.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    trainer.step = 3  # same step: the write would replace the good file
    with pytest.raises(OSError, match="No space"):
        trainer.save_checkpoint()
    assert good.read_bytes() == before
    assert [p.name for p in good.parent.iterdir()] == [good.name]


def test_config_file_round_trip_with_flag_override(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", "DiT-Nano/2", "--steps", "2", "--batch-size", "16"]
    args += ["--no-progress", "--threads", "1", "--sample-steps", "2", "--out", str(out)]
    args += ["--model-args", "depth=1"]
    assert cli(args) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_args"] == {"depth": 1} and saved["steps"] == 2
    out2 = tmp_path / "run2"
    assert cli(["train", "--config", str(out / "config.json"), "--steps", "1", "--out", str(out2)]) == 0
    again = json.loads((out2 / "config.json").read_text())
    assert again == {**saved, "steps": 1, "out": str(out2)}


def test_bad_training_inputs(tmp_path):
    with pytest.raises(ValueError, match="data has 10 classes but the model was given num_classes=5"):
        Trainer(tiny_config(tmp_path, model_args={"num_classes": 5}))
    with pytest.raises(ValueError, match="set the run length"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig(steps=1, objective="score")
    with pytest.raises(ValueError, match="not an existing folder"):
        Trainer(tiny_config(tmp_path, data=str(tmp_path / "no-such-folder")))
    cfg = tiny_config(tmp_path, steps=3)
    Trainer(cfg).run()
    path = list_checkpoints(cfg.out)[-1][1]
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Trainer(cfg.replace(steps=6), resume=str(path))
    with pytest.raises(ValueError, match="different model"):
        other = tiny_config(tmp_path / "other", steps=2)
        Trainer(other).run()
        Trainer(cfg.replace(model_args={"depth": 3}), resume=str(list_checkpoints(other.out)[-1][1]))


def test_mfu_remeasures_a_peak_taken_on_a_busy_machine(tmp_path):
    """A peak measured while other work ran would put MFU above 100%: the trainer measures it again."""
    trainer = Trainer(tiny_config(tmp_path))
    trainer.peak = 1e-6  # as if the start-up matmuls had been starved
    window = [{"loss": torch.tensor(1.0)}]
    record = trainer._log(window, seconds=1.0, log=None, bar=None)
    assert trainer.peak > 1e-3 and record["mfu"] < 1.0
