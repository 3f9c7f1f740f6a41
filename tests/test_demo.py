"""`ditlab demo` end to end at toy length: the files it promises exist and its report is complete.
(The full-length demo, with its accuracy, is the README's first command.)"""

import json

import numpy as np
import pytest

from ditlab.cli import main as cli
from ditlab.data import load_npz


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
    assert 0.0 <= report["class_accuracy"] <= 1.0 and report["classifier_fd"] >= 0
    assert "class accuracy" in capsys.readouterr().out
