"""Issue 19 item 3: a NaN/Inf loss or gradient skips its step (counted in metrics.jsonl) without touching the
weights, the optimizer state or the EMA; `nonfinite_patience` of them in a row roll the run back to its last
good checkpoint with a lower learning rate, or stop it with a message naming the step.

NaNs are injected by wrapping the trainer's `compute_loss`: the loss of the chosen steps is multiplied by NaN
(so its gradient is NaN too), as a diverging run or a bad batch would produce.
"""

import math

import pytest
import torch

from ditlab.cli import main as cli
from ditlab.train import TrainConfig, Trainer, list_checkpoints, load_training_state
from ditlab.train.guard import TrainingDivergedError
from ditlab.train.metrics import read_metrics

TINY = dict(
    data="digits",
    model="DiT-Nano/2",
    batch_size=16,
    lr=1e-3,
    log_every=1,
    ckpt_every=2,
    sample_steps=2,
    progress=False,
    threads=1,
)


def config(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def poison(trainer: Trainer, bad_steps, once: bool = True) -> list[int]:
    """Make the loss of the steps in `bad_steps` NaN (`once`: only the first time each is trained);
    returns the list of steps poisoned so far."""
    original, poisoned = trainer.compute_loss, []

    def compute_loss(*args, **kwargs):
        terms = original(*args, **kwargs)
        if bad_steps(trainer.step) and not (once and trainer.step in poisoned):
            poisoned.append(trainer.step)
            terms = {**terms, "loss": terms["loss"] * float("nan")}
        return terms

    trainer.compute_loss = compute_loss
    return poisoned


def snapshot(trainer: Trainer):
    opt = {k: v.clone() for state in trainer.opt.state.values() for k, v in state.items()}
    return (
        {k: v.clone() for k, v in trainer.model.state_dict().items()},
        {k: v.clone() for k, v in trainer.ema.state_dict().items()},
        opt,
    )


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fused", [True, False], ids=["fused-adamw", "adamw"])
def test_a_nonfinite_step_changes_nothing_and_is_counted(tmp_path, fused):
    trainer = Trainer(config(steps=4, fused_optimizer=fused, out=str(tmp_path / "run")))
    poison(trainer, lambda step: step == 1)
    trainer.train_step()
    before = snapshot(trainer)
    out = trainer.train_step()  # step 1: NaN loss
    assert math.isnan(float(out["loss"])) and bool(out["nonfinite_steps"])
    after = snapshot(trainer)
    assert same(before[0], after[0]), "the weights moved"
    assert same(before[1], after[1]), "the EMA absorbed the non-finite step"
    assert same(before[2], after[2]), "the optimizer state (moments, step count) changed"
    assert trainer.guard.read().skipped == 1 and trainer.step == 2
    trainer.train_step()  # a finite step trains again
    assert not same(after[0], snapshot(trainer)[0])
    assert all(torch.isfinite(v).all() for v in trainer.ema.state_dict().values())


def test_skipped_steps_are_logged_and_the_run_finishes(tmp_path):
    trainer = Trainer(config(steps=5, log_every=2, out=str(tmp_path / "run")))
    poison(trainer, lambda step: step in (1, 3))
    summary = trainer.run()
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [r["nonfinite_steps"] for r in records] == [1, 1, 0]  # steps 1-2, 3-4, 5
    assert all(math.isfinite(r["loss"]) for r in records)  # the averages leave the skipped steps out
    assert math.isfinite(summary["loss"])
    state = load_training_state(list_checkpoints(tmp_path / "run")[-1][1])
    assert state["guard"]["skipped"] == 2
    assert all(torch.isfinite(v).all() for v in state["ema"].values())


def test_a_run_of_nonfinite_steps_rolls_back_with_a_lower_lr(tmp_path):
    out = tmp_path / "run"
    cfg = config(steps=8, nonfinite_patience=2, nonfinite_lr_factor=0.5, out=str(out))
    trainer = Trainer(cfg)
    poisoned = poison(trainer, lambda step: step in (4, 5))  # the 5th and 6th steps, the first time only
    summary = trainer.run()
    assert poisoned == [4, 5] and summary["step"] == 8
    records = read_metrics(out / "metrics.jsonl")
    (event,) = [r for r in records if r.get("event") == "rollback"]
    assert event["from_step"] == 6 and event["step"] == 4 and event["lr_scale"] == 0.5
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # the abandoned steps 5-6 were dropped from the history
    lrs = {r["step"]: r["lr"] for r in records if "loss" in r}
    assert lrs[4] == pytest.approx(1e-3) and lrs[5] == lrs[8] == pytest.approx(5e-4)
    state = load_training_state(list_checkpoints(out)[-1][1])
    assert state["guard"]["lr_scale"] == 0.5 and state["guard"]["rollbacks"] == 1  # a resume keeps the lr
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    resumed = Trainer(TrainConfig(**{**cfg.to_dict(), "steps": 9}), resume="auto")
    assert resumed.guard.lr_scale == 0.5 and resumed.step == 8


@pytest.mark.slow  # two short runs
def test_stop_names_the_step_and_the_cli_reports_it_in_one_line(tmp_path, capsys, monkeypatch):
    cfg = config(steps=8, nonfinite_patience=2, nonfinite_action="stop", out=str(tmp_path / "a"))
    trainer = Trainer(cfg)
    poison(trainer, lambda step: step >= 3, once=False)
    with pytest.raises(TrainingDivergedError, match=r"stopped at step 5: 2 steps in a row \(from step 4\)"):
        trainer.run()
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [2]  # nothing written during the streak

    # rollbacks that do not help end the same way, after --nonfinite-max-rollbacks of them
    original = Trainer.compute_loss

    def always_nan(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        return {**terms, "loss": terms["loss"] * float("nan")} if self.step >= 3 else terms

    monkeypatch.setattr(Trainer, "compute_loss", always_nan)
    argv = ["train", "--data", "digits", "--model", "DiT-Nano/2", "--batch-size", "16", "--train-steps", "8"]
    argv += ["--ckpt-every", "2", "--log-every", "1", "--threads", "1", "--no-progress"]
    argv += ["--nonfinite-patience", "2", "--nonfinite-max-rollbacks", "1", "--out", str(tmp_path / "b")]
    assert cli(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ditlab train: error:")]
    assert len(err) == 1 and "stopped at step" in err[0] and "after 1 rollback(s)" in err[0]


def test_the_guard_options_are_validated():
    with pytest.raises(ValueError, match="unknown nonfinite_action 'retry'"):
        TrainConfig(steps=1, nonfinite_action="retry")
    with pytest.raises(ValueError, match=r"nonfinite_lr_factor must be in \(0, 1\]"):
        TrainConfig(steps=1, nonfinite_lr_factor=2.0)
