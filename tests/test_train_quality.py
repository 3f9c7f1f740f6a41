"""A training run with the issue-18 options on (REPA, post-hoc EMA, a preferred sampler and guidance):
what it writes (the projector in checkpoints only, EMA snapshots, runtime.json), exact resume with them,
`ditlab ema` on its snapshots, and `ditlab sample RUN` using the run's sampling settings unless told."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ditlab
from ditlab.cli import main as cli
from ditlab.data import load_npz
from ditlab.models.checkpoint import SAMPLING_KEY
from ditlab.train import TrainConfig, Trainer, list_checkpoints, load_training_state
from ditlab.train.metrics import read_metrics
from ditlab.train.posthoc_ema import list_snapshots, snapshot_dir

OPTIONS = dict(
    data="digits",
    model="DiT-Nano/2",
    batch_size=16,
    lr=1e-3,
    log_every=1,
    ckpt_every=2,
    progress=False,
    threads=1,
    objective="flow",
    posthoc_ema="0.05,0.1",
    posthoc_ema_every=2,
    repa_weight=0.5,
    repa_depth=1,
    sampler="heun",
    sample_steps=3,
    guidance_scale=2.0,
)


def config(out, steps=4, **kw) -> TrainConfig:
    return TrainConfig(**{**OPTIONS, "out": str(out), "steps": steps, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quality") / "run"
    Trainer(config(out)).run()
    return out


def test_the_projector_is_in_checkpoints_but_not_in_the_sampling_model(run):
    state = load_training_state(list_checkpoints(run)[-1][1])
    assert set(state["repa"]) == {f"{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert set(state["posthoc_ema"]) == {"sigma_rels", "tensors"}
    model = ditlab.load_model(run)
    fresh = ditlab.create_model("DiT-Nano/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False)
    assert set(load_file(str(run / "model.safetensors"))) == set(fresh.state_dict())  # no projector keys
    assert not model.blocks[0]._forward_hooks  # the exported model carries no REPA hook
    assert all(r["repa"] > 0 for r in read_metrics(run / "metrics.jsonl") if "repa" in r)


def test_the_run_records_its_precision_decision_and_bf16_detection(run):
    record = json.loads((run / "runtime.json").read_text())
    assert record["precision"] == "fp32" and "auto" in record["precision_reason"]
    assert set(record["native_bf16"]) == {"native", "flags", "onednn_bf16", "capability"}


def test_resume_with_repa_and_posthoc_ema_repeats_the_run(run, tmp_path):
    half = config(tmp_path / "b", steps=2)
    Trainer(half).run()
    Trainer(half.replace(steps=4), resume="auto").run()
    losses = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert losses == [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    for (a, step_a, _), (b, step_b, _) in zip(
        list_snapshots(snapshot_dir(run)), list_snapshots(snapshot_dir(tmp_path / "b"))
    ):
        assert step_a == step_b
        left, right = load_file(str(a)), load_file(str(b))
        assert all(torch.equal(left[k], right[k]) for k in left)


def test_ditlab_ema_rebuilds_a_length_from_the_snapshots(run, tmp_path, capsys):
    out = tmp_path / "ema-0.1.safetensors"
    assert cli(["ema", str(run), "--length", "0.1", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["step"] == 4 and report["model"] == str(out)
    rebuilt = ditlab.load_model(out)
    last = load_file(str(list_snapshots(snapshot_dir(run))[-1][0]))
    for name, p in rebuilt.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), last[f"p1.{name}"], atol=1e-4, rtol=1e-4)
    assert rebuilt.objective_spec == ditlab.load_model(run).objective_spec
    assert cli(["ema", str(run), "--length", "0.07", "--out", str(tmp_path / "other.safetensors")]) == 0
    assert cli(["ema", str(tmp_path), "--length", "0.1"]) == 2
    assert "--posthoc-ema" in capsys.readouterr().err


def test_sample_run_uses_the_runs_sampler_steps_and_guidance(run, tmp_path, capsys):
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        recorded = json.loads(f.metadata()[SAMPLING_KEY])
    assert recorded == {"sampler": "heun", "sample_steps": 3, "guidance_scale": 2.0}
    prefix = tmp_path / "s"
    assert cli(["sample", str(run), "--per-class", "1", "--out", str(prefix), "--no-progress"]) == 0
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (said["sampler"], said["steps"], said["guidance_scale"]) == ("heun", 3, 2.0)
    model = ditlab.load_model(run)
    expected = ditlab.generate(model, per_class=1, sampler="heun", steps=3, guidance_scale=2.0, seed=0)
    assert np.array_equal(load_npz(f"{prefix}.npz")[0], expected.images)
    # flags given override the record
    assert (
        cli(
            [
                "sample",
                str(run),
                "--per-class",
                "1",
                "--sample-steps",
                "2",
                "--cfg-scale",
                "1",
                "--out",
                str(prefix),
                "--no-progress",
            ]
        )
        == 0
    )
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (said["sampler"], said["steps"], said["guidance_scale"]) == ("heun", 2, 1.0)
    # --guidance-interval over every time is plain guidance; --guide with the run itself is no guidance
    everything = ["--guidance-interval", "0", "1000"]
    assert (
        cli(["sample", str(run), "--per-class", "1", *everything, "--out", str(prefix), "--no-progress"]) == 0
    )
    assert np.array_equal(load_npz(f"{prefix}.npz")[0], expected.images)
    assert (
        cli(
            [
                "sample",
                str(run),
                "--per-class",
                "1",
                "--guide",
                str(run),
                "--out",
                str(prefix),
                "--no-progress",
            ]
        )
        == 0
    )
    unguided = ditlab.generate(model, per_class=1, sampler="heun", steps=3, seed=0)
    assert np.array_equal(load_npz(f"{prefix}.npz")[0], unguided.images)
    capsys.readouterr()
    # a training checkpoint records the same, from its saved options
    assert ditlab.load_model(list_checkpoints(run)[-1][1]).sampling_spec == recorded


@pytest.mark.slow
def test_torchrun_two_processes_with_repa_equal_one_process(tmp_path):
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    args = ["-m", "ditlab", "train", "--data", "digits", "--model", "DiT-Nano/2", "--train-steps", "3",
            "--batch-size", "8", "--ckpt-every", "3", "--log-every", "1", "--objective", "flow",
            "--repa-weight", "0.5", "--repa-depth", "1", "--threads", "1", "--no-progress", "--sample-steps", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")], capture_output=True, env=env
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", *args, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_training_state(list_checkpoints(tmp_path / "one")[-1][1])
    b = load_training_state(list_checkpoints(tmp_path / "two")[-1][1])
    for part in ("model", "repa"):  # the projector too: its gradients are averaged over the processes
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=1e-5, atol=1e-6)


def test_repa_is_refused_where_a_trainer_computes_its_own_loss(run, tmp_path):
    from ditlab.finetune import FinetuneConfig, FinetuneTrainer

    cfg = FinetuneConfig(base=str(run), data="digits", steps=2, batch_size=16, out=str(tmp_path / "ft"),
                         progress=False, threads=1, repa_weight=0.5)  # fmt: skip
    with pytest.raises(ValueError, match="repa_weight"):
        FinetuneTrainer(cfg)


def test_resuming_an_earlier_checkpoint_moves_later_snapshots_aside(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    earlier = [path for step, path in list_checkpoints(copy) if step == 2][0]
    trainer = Trainer(config(copy), resume=earlier)
    trainer.prepare_folder()
    assert [step for _, step, _ in list_snapshots(snapshot_dir(copy))] == [2]
    assert list((copy / "previous-runs").glob("*/ema-snapshots/0000004.safetensors"))
