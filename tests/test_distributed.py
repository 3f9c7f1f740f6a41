"""Beyond one process: FSDP2 steps equal one process's, distributed checkpoints resume on another world size,
incomplete sets are refused, torchrun sampling gives the images of one process, torchrun evaluation its
result, and a SIGTERM (or --max-time) stops a run into a checkpoint that resumes with the same losses. Two gloo
processes on the CPU, tiny models."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ditlab
from ditlab.cli import main as cli
from ditlab.data import load_dataset, save_npz
from ditlab.eval import feature_statistics
from ditlab.eval.distributed import Moments, merge_moments, share, statistics_of
from ditlab.train import TrainConfig, Trainer, list_checkpoints
from ditlab.train.dcp import IncompleteCheckpointError
from ditlab.train.metrics import read_metrics
from ditlab.train.parallel import hsdp_shape, resolve_parallel
from ditlab.train.posthoc_ema import list_snapshots, snapshot_dir
from ditlab.train.preempt import EXIT_PREEMPTED, parse_duration

TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = dict(data="digits", model="DiT-Nano/2", batch_size=8, lr=1e-3, log_every=1, ckpt_every=2)
TINY.update(sample_steps=2, progress=False, threads=1)


def _flags(out, steps, extra=()):
    return [
        "-m", "ditlab", "train", "--data", "digits", "--model", "DiT-Nano/2", "--batch-size", "8",
        "--lr", "1e-3", "--train-steps", str(steps), "--log-every", "1", "--ckpt-every", "2",
        "--sample-steps", "2", "--threads", "1", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


def _torchrun(args, check=True):
    result = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=ENV)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process (4 steps) and two FSDP processes (4 steps, DCP sets at steps 2 and 4) of the same run."""
    root = tmp_path_factory.mktemp("dist")
    Trainer(TrainConfig(**{**TINY, "out": str(root / "one"), "steps": 4})).run()
    _torchrun(_flags(root / "fsdp", 4, ["--parallel", "fsdp"]))
    return root


def _copy_checkpoint(src: Path, dest_out: Path) -> Path:
    (dest_out / "checkpoints").mkdir(parents=True)
    target = dest_out / "checkpoints" / src.name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, target)
    return target


@pytest.mark.slow
def test_fsdp_on_two_processes_equals_one_process(runs):
    assert losses(runs / "fsdp") == pytest.approx(losses(runs / "one"), rel=1e-5)
    assert [p.name for _, p in list_checkpoints(runs / "fsdp")] == ["0000002.dcp", "0000004.dcp"]
    # the export is one ordinary safetensors file, gathered on rank 0: load_model reads it on one process
    a = ditlab.load_model(runs / "one" / "model.safetensors").state_dict()
    b = ditlab.load_model(runs / "fsdp" / "model.safetensors").state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ddp_with_gradients_in_its_buckets_trains_as_one_process(runs, tmp_path):
    """--ddp-bucket-view (one copy of the gradients, not two) changes memory, not the steps."""
    _torchrun(_flags(tmp_path / "bv", 4, ["--parallel", "ddp", "--ddp-bucket-view"]))
    assert losses(tmp_path / "bv") == pytest.approx(losses(runs / "one"), rel=1e-5)
    grad_norms = [r["grad_norm"] for r in read_metrics(tmp_path / "bv" / "metrics.jsonl")]
    ref = [r["grad_norm"] for r in read_metrics(runs / "one" / "metrics.jsonl")]
    assert grad_norms == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow
def test_dcp_set_from_two_processes_resumes_on_one_and_on_two(runs, tmp_path):
    ref = losses(runs / "one")  # a run that never stopped, same global batches
    set2 = runs / "fsdp" / "checkpoints" / "0000002.dcp"
    _copy_checkpoint(set2, tmp_path / "on1")
    Trainer(TrainConfig(**{**TINY, "out": str(tmp_path / "on1"), "steps": 4}), resume="auto").run()
    assert losses(tmp_path / "on1") == pytest.approx(ref[2:], rel=1e-5)
    _copy_checkpoint(set2, tmp_path / "on2")
    hsdp = [
        "--parallel",
        "hsdp",
        "--hsdp-shard-size",
        "1",
        "--gradient-checkpointing",
    ]  # 2 replicas, 2-D mesh
    _torchrun(_flags(tmp_path / "on2", 4, [*hsdp, "--resume", "auto"]))
    assert losses(tmp_path / "on2") == pytest.approx(ref[2:], rel=1e-5)
    # and a one-process .pt checkpoint continues as a two-process FSDP run (1 -> 2)
    _copy_checkpoint(runs / "one" / "checkpoints" / "0000002.pt", tmp_path / "pt_on2")
    _torchrun(_flags(tmp_path / "pt_on2", 4, ["--parallel", "fsdp", "--resume", "auto"]))
    assert losses(tmp_path / "pt_on2") == pytest.approx(ref[2:], rel=1e-5)


@pytest.mark.slow
def test_a_set_missing_a_shard_is_refused_and_a_half_written_one_is_never_resumed(runs, tmp_path):
    broken = _copy_checkpoint(runs / "fsdp" / "checkpoints" / "0000004.dcp", tmp_path / "broken")
    (broken / "__1_0.distcp").unlink()
    cfg = TrainConfig(**{**TINY, "out": str(tmp_path / "broken"), "steps": 6})
    with pytest.raises(
        IncompleteCheckpointError, match=r"missing or has truncated file\(s\) \['__1_0.distcp'\]"
    ):
        Trainer(cfg, resume="auto")
    with pytest.raises(IncompleteCheckpointError, match="written by 2 process"):
        Trainer(cfg, resume=str(broken))
    # a set whose save never finished (no .complete marker: killed before every rank was done) is not listed
    half = _copy_checkpoint(runs / "fsdp" / "checkpoints" / "0000004.dcp", tmp_path / "half")
    (half / ".complete").unlink()
    assert list_checkpoints(tmp_path / "half") == []
    with pytest.raises(IncompleteCheckpointError, match="no .complete marker"):
        Trainer(cfg.replace(out=str(tmp_path / "half")), resume=str(half))


@pytest.mark.slow
def test_torchrun_sampling_gives_the_images_of_one_process(runs, tmp_path):
    args = ["-m", "ditlab", "sample", str(runs / "one" / "model.safetensors"), "--num-samples", "10"]
    args += ["--batch-size", "3", "--sample-steps", "3", "--sampler", "ddpm", "--no-progress"]  # stochastic
    subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")], check=True, env=ENV, capture_output=True
    )
    _torchrun([*args, "--out", str(tmp_path / "two")])
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert a["arr_0"].shape == (10, 8, 8, 1)
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.npz",
        "one.png",
        "two.npz",
        "two.png",
    ]  # no shard left


@pytest.mark.slow
def test_sigterm_stops_every_rank_into_a_checkpoint_that_resumes_with_the_same_losses(tmp_path):
    out = tmp_path / "run"
    flags = _flags(out, 100_000, ["--parallel", "fsdp", "--ckpt-every", "100000"])
    victim = subprocess.Popen(
        [*TORCHRUN, *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True
    )
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    victim.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    _, err = victim.communicate(timeout=120)
    assert "continue with --resume auto" in err, err[-3000:]
    (step, path), *_ = list_checkpoints(out)
    assert path.suffix == ".dcp" and 3 <= step < 100_000
    # resume on one process for two more steps: the losses of a run that was never stopped
    Trainer(
        TrainConfig(**{**TINY, "out": str(out), "steps": step + 2, "ckpt_every": 100}), resume="auto"
    ).run()
    Trainer(TrainConfig(**{**TINY, "out": str(tmp_path / "ref"), "steps": step + 2, "ckpt_every": 100})).run()
    assert losses(out)[-2:] == pytest.approx(losses(tmp_path / "ref")[-2:], rel=1e-5)
    assert losses(out)[:step] == pytest.approx(losses(tmp_path / "ref")[:step], rel=1e-5)


def test_max_time_checkpoints_and_exits_75_then_resume_continues(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", "DiT-Nano/2", "--batch-size", "8", "--lr", "1e-3"]
    args += ["--log-every", "1", "--ckpt-every", "100000", "--sample-steps", "2", "--threads", "1"]
    args += ["--no-progress", "--out", str(out), "--model-args", "depth=1"]
    assert cli([*args, "--train-steps", "100000", "--max-time", "0.5s"]) == EXIT_PREEMPTED
    assert "stopped at step" in capsys.readouterr().err
    (step, path), *_ = list_checkpoints(out)
    assert path.suffix == ".pt" and 1 <= step < 100_000
    assert cli([*args, "--train-steps", str(step + 2), "--resume", "auto"]) == 0
    ref = tmp_path / "ref"
    assert cli([*args, "--train-steps", str(step + 2), "--out", str(ref)]) == 0
    assert losses(out) == losses(ref)


def test_durations_and_bad_parallel_options():
    assert parse_duration("3h50m") == 3 * 3600 + 50 * 60
    assert parse_duration("90m") == 5400 and parse_duration("45s") == 45 and parse_duration("3600") == 3600
    assert parse_duration(None) is None
    with pytest.raises(ValueError, match="not a duration"):
        TrainConfig(steps=1, max_time="soon")
    with pytest.raises(ValueError, match="unknown parallel 'zero3'"):
        TrainConfig(steps=1, parallel="zero3")


def test_layouts_and_unfinished_sets(tmp_path):
    assert resolve_parallel("auto", 1) == "none" and resolve_parallel("fsdp", 1) == "none"
    assert resolve_parallel("auto", 4) == "ddp" and resolve_parallel("hsdp", 4) == "hsdp"
    assert hsdp_shape(16, 8) == (2, 8) and hsdp_shape(4, 1) == (4, 1)
    with pytest.raises(ValueError, match="hsdp-shard-size"):
        hsdp_shape(6, 4)
    # a save still in progress (or killed) is a hidden .tmp folder; a set without its marker is not listed
    (tmp_path / "checkpoints" / ".0000002.dcp.tmp").mkdir(parents=True)
    (tmp_path / "checkpoints" / "0000004.dcp").mkdir()
    assert list_checkpoints(tmp_path) == []


def test_merged_moments_of_any_split_are_the_covariance_of_all_rows():
    """What ranks gather for FD: per-share (n, mean, centred scatter), merged, equals numpy.cov of all rows
    (float64 rounding only), with empty shares, and the shares are whole batches covering every image once."""
    rng = np.random.default_rng(0)
    feats = rng.normal(5.0, 2.0, size=(250, 6)) @ rng.normal(size=(6, 6))  # far from zero mean, correlated
    mu, sigma = feature_statistics(feats)
    for world in (1, 2, 3, 8):
        bounds = [share(len(feats), 100, rank, world) for rank in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == 250
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous, in order
        assert all(start % 100 == 0 for start, stop in bounds if stop > start)  # whole batches
        merged = merge_moments([Moments.of(feats[a:b], 6) for a, b in bounds])
        got_mu, got_sigma = statistics_of(merged, "samples")
        assert merged.n == 250
        np.testing.assert_allclose(got_mu, mu, rtol=1e-13, atol=0)
        np.testing.assert_allclose(got_sigma, sigma, rtol=1e-11, atol=1e-12)
    assert share(250, 100, 3, 8) == (250, 250)  # past the last batch: nothing to do
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        statistics_of(Moments.of(feats[:1], 6), "samples")


def _eval_args(samples, cache, out, features=("classifier:digits", "effnet-lite0:32")):
    return [
        "eval", "--samples", str(samples), "--ref", "digits:test", "--features", *features,
        "--cache-dir", str(cache), "--out", str(out),
    ]  # fmt: skip


def _assert_same_result(one: dict, two: dict, fd_rel: float) -> None:
    assert one.keys() == two.keys() and one["metrics"].keys() == two["metrics"].keys()
    for name, a in one["metrics"].items():
        b = two["metrics"][name]
        for key in ("precision", "recall", "inception_score", "class_accuracy", "n_ref"):
            assert a.get(key) == b.get(key), (name, key)  # the same feature bits as one process
        assert b["fd"] == pytest.approx(a["fd"], rel=fd_rel), name
        assert b["floor"]["n"] == a["floor"]["n"]
        assert b["floor"]["fd"] == pytest.approx(a["floor"]["fd"], rel=fd_rel), name


@pytest.mark.slow
def test_torchrun_eval_gives_the_result_of_one_process(tmp_path):
    """`torchrun -m ditlab eval`: 2 ranks extract their shares of the samples (600: 500 + 100 for the
    classifier, 300 + 300 for EffNet), of the reference and of the floor; the result is one process's. The
    EffNet reference and floor are in the second cache already: rank 0 reads them and shares them."""
    train = load_dataset("digits:train")
    samples = tmp_path / "samples.npz"
    save_npz(samples, train.numpy_images()[:600], train.labels.numpy()[:600])
    assert cli(_eval_args(samples, tmp_path / "cache1", tmp_path / "one.json")) == 0
    # the second cache: the classifier of the first run and its EffNet statistics; the classifier's
    # reference and floor are computed again, on 2 ranks
    shutil.copytree(tmp_path / "cache1" / "classifiers", tmp_path / "cache2" / "classifiers")
    cached = {}
    for kind in ("reference", "floor"):
        (tmp_path / "cache2" / kind).mkdir()
        for path in (tmp_path / "cache1" / kind).glob("*effnet*"):
            cached[path.name] = shutil.copy2(path, tmp_path / "cache2" / kind / path.name)
    assert len(cached) == 2, sorted(cached)  # one reference, one floor
    stamps = {name: Path(path).stat().st_mtime_ns for name, path in cached.items()}
    _torchrun(["-m", "ditlab", *_eval_args(samples, tmp_path / "cache2", tmp_path / "two.json")])
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["metrics"]["classifier:digits"]["class_accuracy"] > 0.9  # real digits, recognised
    _assert_same_result(one, two, fd_rel=1e-7)  # float64 rounding, amplified by singular covariances
    # the cached EffNet files were read (not rewritten): its floor is the first run's to the bit
    assert {name: Path(path).stat().st_mtime_ns for name, path in cached.items()} == stamps
    (effnet,) = (name for name in one["metrics"] if name.startswith("effnet"))
    assert two["metrics"][effnet]["floor"] == one["metrics"][effnet]["floor"]
    assert len(list((tmp_path / "cache2" / "reference").glob("*classifier*"))) == 1  # written by rank 0


def _snapshots(out) -> dict:
    return {step: load_file(str(path)) for path, step, _ in list_snapshots(snapshot_dir(out))}


def _assert_close_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_posthoc_ema_under_fsdp_and_hsdp_snapshots_and_resumes_as_one_process(tmp_path):
    """Sharded profiles (updated shard by shard) write the snapshots of one process; a 2-rank set resumes on
    one process and a one-process .pt on 2 HSDP ranks, each with the profiles of the run that never stopped."""
    posthoc = ["--posthoc-ema", "0.05", "0.1", "--posthoc-ema-every", "2"]
    cfg = {**TINY, "posthoc_ema": "0.05,0.1", "posthoc_ema_every": 2, "steps": 4}
    Trainer(TrainConfig(**{**cfg, "out": str(tmp_path / "one")})).run()
    _torchrun(_flags(tmp_path / "fsdp", 4, ["--parallel", "fsdp", *posthoc]))
    one, fsdp = _snapshots(tmp_path / "one"), _snapshots(tmp_path / "fsdp")
    assert sorted(one) == sorted(fsdp) == [2, 4] and "p1.blocks.0.attn.qkv.weight" in one[4]
    for step in one:
        _assert_close_tensors(one[step], fsdp[step])
    _copy_checkpoint(tmp_path / "fsdp" / "checkpoints" / "0000002.dcp", tmp_path / "on1")
    Trainer(TrainConfig(**{**cfg, "out": str(tmp_path / "on1")}), resume="auto").run()
    _assert_close_tensors(one[4], _snapshots(tmp_path / "on1")[4])
    _copy_checkpoint(tmp_path / "one" / "checkpoints" / "0000002.pt", tmp_path / "on2")
    hsdp = ["--parallel", "hsdp", "--hsdp-shard-size", "1", *posthoc, "--resume", "auto"]
    _torchrun(_flags(tmp_path / "on2", 4, hsdp))
    _assert_close_tensors(one[4], _snapshots(tmp_path / "on2")[4])
    assert losses(tmp_path / "on2") == pytest.approx(losses(tmp_path / "one")[2:], rel=1e-5)
