"""Issue 19 item 1: every user mistake ends in one line, `ditlab <command>: error: <what and what to do>`, on
stderr with exit code 2 (an I/O failure: exit code 1), never a traceback; `--debug` / DITLAB_DEBUG=1 show it.

Each sub-command is run in this process (ditlab.cli.main) on a bad input of the kind a new user gives it:
a truncated or foreign checkpoint, a broken config, a folder that is not there, a file in the way of a
folder, a samples file of the wrong type. Mistakes argparse catches while parsing (a negative count) print
its usage line above the error line, as every argparse program does.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ditlab
from ditlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-inputs")
    torch.manual_seed(0)
    model = ditlab.create_model("DiT-Nano/2", input_size=8, in_channels=1, num_classes=3)
    ditlab.save_model(model, d / "m.safetensors")
    whole = (d / "m.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    (d / "empty.safetensors").write_bytes(b"")
    (d / "junk.pt").write_bytes(b"not a torch file")
    (d / "broken.json").write_text("{not json")
    (d / "unknown.json").write_text(json.dumps({"data": "digits", "no_such_option": 1}))
    (d / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.savez(d / "float.npz", arr_0=np.zeros((2, 8, 8), np.float32))
    (d / "a-file").write_text("in the way of a folder")
    (d / "diffusers").mkdir()
    (d / "diffusers" / "config.json").write_text("{}")
    return d


TRAIN = [
    "--model",
    "DiT-Nano/2",
    "--train-steps",
    "1",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--no-progress",
]

# name -> (argv with {d} for the files folder, words the error line must contain)
CASES = {
    "train-missing-data": (["train", "--data", "{d}/no-data", *TRAIN, "--out", "{d}/r1"], ["no-data"]),
    "train-unknown-model-arg": (
        ["train", *TRAIN, "--model-args", "nosuch=1", "--out", "{d}/r2"],
        ["nosuch", "valid fields"],
    ),
    "train-out-is-a-file": (["train", *TRAIN, "--out", "{d}/a-file"], ["a-file", "pick another path"]),
    "train-batch-larger-than-data": (
        ["train", *TRAIN[:4], "--batch-size", "100000", "--out", "{d}/r3"],
        ["larger than the dataset"],
    ),
    "sample-truncated-safetensors": (
        ["sample", "{d}/truncated.safetensors", "--out", "{d}/s"],
        ["truncated.safetensors", "truncated or corrupt"],
    ),
    "sample-empty-safetensors": (
        ["sample", "{d}/empty.safetensors", "--out", "{d}/s"],
        ["empty.safetensors"],
    ),
    "sample-junk-pt": (["sample", "{d}/junk.pt", "--out", "{d}/s"], ["junk.pt", "not a torch save file"]),
    "sample-class-out-of-range": (
        ["sample", "{d}/m.safetensors", "--classes", "7", "--steps", "1", "--out", "{d}/s", "--no-progress"],
        ["[7] out of range", "0..2"],
    ),
    "sample-diffusers-without-weights": (["sample", "{d}/diffusers", "--out", "{d}/s"], ["diffusers"]),
    "eval-corrupt-npz": (["eval", "--samples", "{d}/bad.npz", "--ref", "digits:test"], ["bad.npz"]),
    "eval-float-npz": (
        ["eval", "--samples", "{d}/float.npz", "--ref", "digits:test"],
        ["float.npz", "uint8"],
    ),
    "eval-missing-npz": (["eval", "--samples", "{d}/none.npz", "--ref", "digits:test"], ["none.npz"]),
    "convert-truncated": (
        ["convert", "{d}/truncated.safetensors", "{d}/x.safetensors"],
        ["truncated.safetensors"],
    ),
    "convert-missing": (["convert", "{d}/none.pt", "{d}/x.safetensors"], ["none.pt", "does not exist"]),
    "ablate-broken-config": (["ablate", "--config", "{d}/broken.json", "--out", "{d}/a"], ["broken.json"]),
    "ablate-unknown-variant": (["ablate", "--variants", "nosuch", "--out", "{d}/a"], ["nosuch"]),
    "demo-out-is-a-file": (["demo", "--out", "{d}/a-file", "--train-steps", "1"], ["a-file"]),
}

# Mistakes refused while the flags are parsed or combined: argparse's usage line, then the one error line.
USAGE_CASES = {
    "train-broken-config": (["train", "--config", "{d}/broken.json", "--out", "{d}/r"], ["broken.json"]),
    "train-unknown-config-field": (
        ["train", "--config", "{d}/unknown.json", "--out", "{d}/r"],
        ["no_such_option"],
    ),
    "train-resume-junk": (["train", "--resume", "{d}/junk.pt", *TRAIN, "--out", "{d}/r"], ["junk.pt"]),
    "train-negative-steps": (["train", "--train-steps", "-3"], ["--train-steps", "-3"]),
    "sample-negative-count": (["sample", "{d}/m.safetensors", "--per-class", "-1"], ["--per-class"]),
    "sample-negative-class": (["sample", "{d}/m.safetensors", "--classes", "-2"], ["--classes"]),
    "finetune-missing-base": (
        ["finetune", "--base", "{d}/no-base", "--data", "digits", "--train-steps", "1", "--out", "{d}/f"],
        ["no-base", "does not exist"],
    ),
    "finetune-junk-base": (
        ["finetune", "--base", "{d}/junk.pt", "--data", "digits", "--train-steps", "1", "--out", "{d}/f"],
        ["junk.pt"],
    ),
    "flops-unknown-model": (["flops", "DiT-Q/2"], ["DiT-Q/2", "valid names"]),
}


def _argv(argv, files):
    return [a.replace("{d}", str(files)) for a in argv]


def _error_lines(err: str, command: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith(f"ditlab {command}: error: ")]


@pytest.mark.parametrize("case", list(CASES))
def test_each_command_reports_bad_input_in_one_line(case, files, capsys):
    argv, words = CASES[case]
    capsys.readouterr()
    assert main(_argv(argv, files)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning" not in line.lower()]
    assert lines == _error_lines(err, argv[0]) and len(lines) == 1, err
    assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_flag_mistakes_get_the_usage_line_and_one_error_line(case, files, capsys):
    argv, words = USAGE_CASES[case]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(_argv(argv, files))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = _error_lines(err, argv[0])
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and err.startswith("usage: ditlab"), err
    assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.slow  # three fresh interpreters
def test_the_entry_point_prints_one_line_and_debug_shows_the_traceback(files):
    """The real `python -m ditlab`: one line without the flag; with --debug or DITLAB_DEBUG=1 the traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("DITLAB_DEBUG", None)
    argv = [sys.executable, "-m", "ditlab", "sample", str(files / "truncated.safetensors")]
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1
    assert plain.stderr.startswith(f"ditlab sample: error: cannot read {files / 'truncated.safetensors'}")
    for extra, debug_env in (["--debug"], {}), ([], {"DITLAB_DEBUG": "1"}):
        shown = subprocess.run(
            [*argv, *extra], capture_output=True, text=True, env={**env, **debug_env}, timeout=120
        )
        assert shown.returncode == 1 and "Traceback" in shown.stderr
        assert "SafetensorError" in shown.stderr  # the library's error stays attached as the cause


def test_a_full_disk_is_one_line_with_exit_code_1_and_what_to_do(files, capsys, monkeypatch):
    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device", str(files / "s.npz"))

    monkeypatch.setattr("ditlab.data.save_npz", full)
    argv = ["sample", str(files / "m.safetensors"), "--classes", "0", "--per-class", "1", "--steps", "1"]
    assert main([*argv, "--out", str(files / "s"), "--no-progress"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ditlab sample: error: I/O failure: [Errno 28] No space left on device")
    assert "s.npz" in line and "free space" in line


def test_a_multi_line_message_becomes_one_line():
    from ditlab.cli import error_line

    assert error_line(ValueError("x does not fit:\n  missing keys: a\n  check the name")) == (
        "x does not fit: missing keys: a; check the name"
    )


def test_an_unreadable_checkpoint_names_the_problem_and_keeps_the_original_error(tmp_path):
    """A broad `except` that wraps an error into a clear one keeps the original as its cause (`raise ... from
    err`), so the traceback still shows what really failed."""
    from ditlab.models.checkpoint import read_torch_file

    path = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:40])  # cut short, as an interrupted download leaves it
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        read_torch_file(path)
    assert isinstance(info.value.__cause__, RuntimeError)  # what torch.load raised
