"""Streamed image folders: the same batches as the in-memory loader, exact mid-epoch resume (in process, and
after SIGKILL: slow), ranks that split one global batch (the sampler, and torchrun: slow), unreadable files
skipped with one warning line, and memory that does not grow with the folder (slow)."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.data import (
    ImageFolderStream,
    StepBatchSampler,
    StreamBatches,
    load_dataset,
    open_dataset,
    step_indices,
)
from ditlab.train import TrainConfig, Trainer, list_checkpoints
from ditlab.train.metrics import read_metrics

TINY = dict(
    model="DiT-Nano/2",
    image_size=8,
    batch_size=8,
    lr=1e-3,
    log_every=1,
    ckpt_every=3,
    sample_steps=2,
    progress=False,
    threads=1,
    flip=True,
)


def make_folder(root: Path, per_class: int = 20, size=(10, 12), seed: int = 0) -> Path:
    """Two class folders of random RGB PNGs, `size` = (H, W) not square so the centre crop has work."""
    rng = np.random.default_rng(seed)
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def truncate(path: Path) -> None:
    """Keep the header, cut the pixel data: Pillow opens the file and fails only when decoding it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def config(tmp_path, data, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "data": str(data), "out": str(tmp_path / "run"), "steps": 6, **kw})


def losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl")]


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "data")


def test_a_folder_streams_by_default_and_the_named_sets_stay_in_memory(folder):
    assert isinstance(open_dataset(folder, image_size=8), ImageFolderStream)
    assert not isinstance(open_dataset("digits"), ImageFolderStream)
    assert not isinstance(open_dataset(folder, image_size=8, loader="memory"), ImageFolderStream)
    with pytest.raises(ValueError, match="streaming is for image folders"):
        open_dataset("digits", loader="stream")
    with pytest.raises(ValueError, match="unknown data_loader 'disk'; choose one of: auto, memory, stream"):
        TrainConfig(steps=1, data_loader="disk")


def test_a_streamed_image_has_the_pixels_of_the_in_memory_loader(folder):
    memory = load_dataset(folder, image_size=8)
    stream = open_dataset(folder, image_size=8)
    assert (stream.channels, stream.image_size, stream.class_names) == (3, (8, 8), ["cats", "dogs"])
    images, labels, bad = stream.read_batch(torch.arange(len(stream)))
    assert torch.equal(images, memory.images) and torch.equal(labels, memory.labels) and bad == []


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_gives_the_trainer_the_batches_and_losses_of_the_in_memory_loader(
    tmp_path, folder, workers
):
    runs = {}
    for loader in ("memory", "stream"):
        cfg = config(tmp_path / loader, folder, data_loader=loader, num_workers=workers, steps=7)
        trainer = Trainer(cfg)
        # steps 0-6 cross the epoch boundary (40 images / batch 8 = 5 steps per epoch); flips are on
        runs[loader] = [trainer.batch_for_step(s) for s in range(7)]
        trainer.run()
    for step, (a, b) in enumerate(zip(runs["memory"], runs["stream"])):
        for x, y in zip(a, b):
            assert torch.equal(x, y), step
    assert losses(tmp_path / "memory" / "run") == losses(tmp_path / "stream" / "run")


@pytest.mark.parametrize("workers", [0, 2])
def test_starting_the_workers_early_leaves_the_global_rng_to_the_model_init(folder, workers):
    # The trainer forks the workers before it builds the model (so they share none of its pages); the
    # model's initial weights come from the global RNG, which starting the loader must not draw from.
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    loader = StreamBatches(open_dataset(folder, image_size=8), 8, 0, stop=3, num_workers=workers)
    loader.start(0)
    assert torch.equal(torch.rand(4), expected)
    images, _ = loader.images(0)  # and the batches read ahead are step 0's
    assert images.shape == (8, 3, 8, 8)
    loader.close()


def test_the_sampler_yields_each_steps_global_batch_and_ranks_split_it():
    n, batch, seed = 30, 6, 3
    whole = list(StepBatchSampler(n, batch, seed, 0, 12))
    assert [s for s, _ in whole] == list(range(12))
    for step, index in whole:
        assert torch.equal(index, step_indices(n, batch, seed, step))
    epoch0 = torch.cat([index for step, index in whole[:5]])
    assert sorted(epoch0.tolist()) == list(range(30))  # one epoch visits every image once
    assert not torch.equal(whole[0][1], whole[5][1])  # the next epoch is another permutation
    # a sampler started mid-epoch (a resumed run) yields what the uninterrupted one yields from there
    assert all(
        torch.equal(a, b) for (_, a), (_, b) in zip(StepBatchSampler(n, batch, seed, 7, 12), whole[7:])
    )
    # two ranks: their parts, side by side, are the global batch (the DistributedSampler's contract)
    ranks = [list(StepBatchSampler(n, batch, seed, 0, 12, slice(r * 3, (r + 1) * 3))) for r in (0, 1)]
    for (_, a), (_, b), (_, g) in zip(*ranks, whole):
        assert torch.equal(torch.cat([a, b]), g)


def test_mid_epoch_resume_streamed_repeats_the_batches_and_losses(tmp_path, folder):
    full = config(tmp_path / "full", folder, steps=8, num_workers=2)
    expected = Trainer(full)
    next_batches = [expected.batch_for_step(s) for s in (3, 4, 5)]
    expected.run()
    half = config(tmp_path / "half", folder, steps=3, num_workers=2)  # stops at step 3 of a 5-step epoch
    Trainer(half).run()
    resumed = Trainer(half.replace(steps=8), resume="auto")
    assert resumed.step == 3 and resumed.step % resumed.batches_per_epoch != 0
    for step, want in zip((3, 4, 5), next_batches):
        for a, b in zip(resumed.batch_for_step(step), want):
            assert torch.equal(a, b), step
    resumed.run()
    assert losses(half.out) == losses(full.out)


def test_a_resumed_run_forks_its_workers_once_at_the_resume_step_before_the_model(
    tmp_path, folder, monkeypatch
):
    # Workers forked after the model keep copies of its pages; a resumed run reads its step from the
    # checkpoint's name, so the workers start there before the model exists, and are not restarted.
    half = config(tmp_path, folder, steps=3, num_workers=2)
    Trainer(half).run()
    saved = list_checkpoints(half.out)[-1][1]
    renamed = saved.with_name("good.pt")  # a name that says no step: the guess is 0, corrected by a restart
    renamed.write_bytes(saved.read_bytes())
    starts, original = [], StreamBatches._start
    monkeypatch.setattr(
        StreamBatches, "_start", lambda self, step: (starts.append(step), original(self, step))
    )
    for resume, starts_wanted in (("auto", [3]), (saved, [3]), (renamed, [0, 3])):
        starts.clear()
        resumed = Trainer(half.replace(steps=8), resume=resume, force=True)
        resumed.batch_for_step(resumed.step)
        assert resumed.step == 3 and starts == starts_wanted, resume
        resumed.batches.close()


def test_a_truncated_image_is_skipped_with_one_warning_line_and_replaced(tmp_path, folder):
    broken = folder / "cats" / "004.png"
    truncate(broken)
    stream = open_dataset(folder, image_size=8)  # the header is fine: nothing to report yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = StreamBatches(stream, 8, 0, stop=10, num_workers=0)
        for step in range(10):  # two epochs: the file is met twice, reported once
            loader.get(step)
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and "skipped 1 unreadable image" in lines[0] and "004.png" in lines[0], lines
    assert list(stream.skipped.seen) == [str(broken)]
    images, labels, bad = stream.read_batch([4])  # replaced by the next file of the list, cats/005.png
    assert torch.equal(images, stream.read_batch([5])[0]) and bad == [(str(broken), bad[0][1])]
    raising = open_dataset(folder, image_size=8, bad_images="raise")
    with pytest.raises(ValueError, match=r"cannot read image .*004\.png.*--bad-images skip"):
        raising.read_batch([4])


def test_training_on_a_folder_with_a_broken_file_and_a_non_image_warns_once_per_file(tmp_path, folder):
    truncate(folder / "dogs" / "007.png")
    (folder / "dogs" / "notes.png").write_bytes(b"this is not an image")  # fails at the header scan
    cfg = config(tmp_path, folder, steps=12, num_workers=2)  # > 2 epochs of 42 files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(cfg).run()
    lines = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(lines) == 2, lines
    assert "notes.png" in lines[0] and "007.png" in lines[1] and "(2 so far" in lines[1]


def test_the_stream_gives_back_every_path_it_was_given_holding_about_one_byte_per_character(tmp_path):
    deep = tmp_path / "data" / "class00"
    paths = [deep / f"{i:07d}.png" for i in range(300)]
    others = [
        tmp_path / "data" / "ünïcode klasse" / "ñ.png",  # non-ASCII folder and file names
        tmp_path / "elsewhere.png",  # outside the folder the others share
        Path("relative") / "x.png",  # relative beside absolute: no common prefix at all
    ]
    for given in (paths, paths + others, others[2:], [str(p) for p in paths[:1]]):
        stream = ImageFolderStream(given, [0] * len(given), ["a"], channels=3, image_size=8)
        assert [stream.path(i) for i in range(len(given))] == [os.fspath(p) for p in given]
    # the common folder is held once: the 300 names "0000123.png" take 11 bytes each, whatever tmp_path is
    stream = ImageFolderStream(paths, [0] * len(paths), ["a"], channels=3, image_size=8)
    assert stream._paths.nbytes == 300 * len("0000123.png")


_MEMORY_SCRIPT = """
import json, resource, sys
from ditlab.data import StreamBatches, open_dataset

stream = open_dataset(sys.argv[1], image_size=128)
loader = StreamBatches(stream, 32, 0, stop=len(stream) // 32, num_workers=0)
for step in range(len(stream) // 32):
    loader.get(step)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def _peak_rss_mb(folder: Path) -> float:
    """Peak RSS (MB) of a process that streams `folder` once at 128 px."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(folder)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_the_folder(tmp_path):
    # Decoding in this process (num_workers=0) makes the peak deterministic: worker processes run the same
    # code, but their peaks also move with inter-process queue timing (+-30 MB seen), which would hide a
    # small leak. benchmarks/data_pipeline.py measures the whole process tree with workers.
    small = make_folder(tmp_path / "small", per_class=100, size=(64, 64))
    large = make_folder(tmp_path / "large", per_class=1500, size=(64, 64), seed=1)
    growth_mb = _peak_rss_mb(large) - _peak_rss_mb(small)
    # 3000 images at 3x128x128 are 147 MB as uint8: a loader that kept what it decoded would show it here
    assert growth_mb < 15, growth_mb


def _train_cmd(data, out, steps, extra=()):
    return [
        sys.executable, "-m", "ditlab", "train", "--data", str(data), "--image-size", "8", "--flip",
        "--model", "DiT-Nano/2", "--batch-size", "8", "--lr", "1e-3", "--steps", str(steps),
        "--log-every", "1", "--ckpt-every", "3", "--keep-last", "2", "--sample-steps", "2", "--threads", "1",
        "--num-workers", "2", "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_streams_the_same_next_batches(tmp_path, folder):
    steps = 200  # 5 steps per epoch: checkpoints every 3 steps land mid-epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(folder, tmp_path / "ref", steps), check=True, capture_output=True, env=env)
    victim = subprocess.Popen(
        _train_cmd(folder, tmp_path / "killed", steps),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.is_dir() and any(p.suffix == ".pt" for p in ckpts.iterdir())):
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)  # the trainer dies; its orphaned workers find no parent and exit
    victim.wait()
    killed_at = [s for s, _ in list_checkpoints(tmp_path / "killed")]
    assert killed_at and killed_at[-1] < steps, "the run finished before it could be killed"
    cmd = _train_cmd(folder, tmp_path / "killed", steps, ["--resume", "auto"])
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    assert losses(tmp_path / "killed") == losses(tmp_path / "ref")


@pytest.mark.slow
def test_torchrun_two_ranks_stream_their_halves_of_one_process_batches(tmp_path, folder):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(_train_cmd(folder, tmp_path / "one", 4), capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        *_train_cmd(folder, tmp_path / "two", 4)[1:],
    ]
    result = subprocess.run(two, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), rel=1e-5)
