"""`ditlab demo` end to end at toy length: the files it promises exist and its report is complete.
(The full-length demo, with its accuracy, is the README's first command.)"""

import json

import numpy as np
import pytest

from ditlab.cli import main as cli
from ditlab.data import load_npz
from ditlab.eval import evaluate


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*singular covariance")  # 30 samples: expected, and said
def test_demo_writes_grid_samples_model_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--steps", "20", "--per-class", "3", "--sample-steps", "4"]
    assert cli([*args, "--threads", "1", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("grid.png", "samples.npz", "model.safetensors", "loss.png"):
        assert (out / name).is_file(), name
    images, labels = load_npz(out / "samples.npz")
    assert images.shape == (30, 8, 8, 1) and np.bincount(labels).tolist() == [3] * 10
    assert report["train_steps"] == 20 and report["samples"] == 30
    # The report is what its own samples score. (20 steps leave class accuracy near chance and the classifier
    # FD above that of uniform noise, so no quality threshold holds at this length; the README's full-length
    # demo is where the accuracy is measured.)
    check = evaluate(images, labels, ref="digits:test", features=["classifier:digits"], floor=False)
    check = check["metrics"]["classifier:digits"]
    assert report["class_accuracy"] == check["class_accuracy"]
    assert report["classifier_fd"] == pytest.approx(check["fd"])
    # no samples beat real held-out digits (the floor; a scorer comparing the reference with itself fails here)
    assert report["classifier_fd"] > report["classifier_fd_floor"]["fd"] > 0
