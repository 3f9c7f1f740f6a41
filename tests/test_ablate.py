"""`ditlab ablate`: settings, identical data across variants, the report on synthetic results, and a tiny study
end to end (training, FD curves, final scores, skip on re-run, exact resume when the step budget grows)."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab import ablate
from ditlab.ablate import AblationConfig, config_from_args, markdown, summarize, write_report
from ditlab.ablate.plot import _curve_band
from ditlab.cli import main
from ditlab.models import count_parameters, create_model, flops
from ditlab.models.zoo import VARIANTS
from ditlab.train.trainer import Trainer


def _args(argv):
    parser = argparse.ArgumentParser()
    ablate.add_arguments(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ settings
def test_defaults_are_the_study_eight_variants_paper_four_with_two_seeds():
    abl = AblationConfig()
    assert abl.variants == list(VARIANTS) and len(abl.variants) == 8
    runs = abl.runs()
    assert len(runs) == 12  # 4 paper variants x 2 seeds + 4 later variants x 1 seed
    assert runs[: len(VARIANTS)] == [(v, 0) for v in VARIANTS]  # seed-major: every variant of seed 0 first
    assert sorted(v for v, s in runs if s == 1) == sorted(ablate.PAPER_VARIANTS)
    assert abl.model_args == {"depth": 4}
    # every run shares everything but the variant, seed and folder
    a, b = abl.train_config("in-context", 0).to_dict(), abl.train_config("adaln-single", 0).to_dict()
    assert {k for k in a if a[k] != b[k]} == {"variant", "out"}
    assert a["eval_every"] == abl.steps // 5 and a["warmup_steps"] == abl.steps // 10


def test_config_file_then_flags_override_and_quick_preset(tmp_path):
    path = tmp_path / "abl.json"
    path.write_text(
        json.dumps({"variants": ["paper"], "steps": 300, "seeds": [4], "train": {"sample_steps": 4}})
    )
    abl = config_from_args(_args(["--config", str(path), "--steps", "40", "--train-args", "grad_clip=0.5"]))
    assert abl.variants == list(ablate.PAPER_VARIANTS)
    assert abl.steps == 40 and abl.seeds == [4]
    assert abl.train == {"sample_steps": 4, "grad_clip": 0.5}
    quick = config_from_args(_args(["--quick", "--variants", "adaln,adaln-zero", "--extra-seeds", "same"]))
    assert quick.data == "digits" and quick.model == "DiT-Nano/2" and quick.model_args == {}
    assert quick.variants == ["adaln", "adaln-zero"] and quick.extra_seeds is None
    # the default model's depth 4 stays under added model args; another model gets none by default
    abl = config_from_args(_args(["--model-args", "mlp_ratio=2"]))
    assert abl.model_args == {"depth": 4, "mlp_ratio": 2}
    assert config_from_args(_args(["--model", "DiT-S/4"])).model_args == {}


def test_flags_speak_the_cli_vocabulary(tmp_path):
    """List flags: space-separated, repeatable, commas accepted; --train-steps/--steps, --sample-steps,
    --image-size and --resume [auto|PATH] reach the study's settings."""
    spaced = _args(["--variants", "adaln", "adaln-zero", "--variants", "in-context", "--seeds", "2", "0"])
    commas = _args(["--variants", "adaln,adaln-zero", "--variants", "in-context", "--seeds", "2,0"])
    for args in (spaced, commas):
        abl = config_from_args(args)
        assert abl.variants == ["adaln", "adaln-zero", "in-context"] and abl.seeds == [2, 0]
    assert config_from_args(_args(["--seeds", "1", "--seeds", "3", "--extra-seeds", "same"])).runs() == [
        (v, s) for s in (1, 3) for v in VARIANTS
    ]
    abl = config_from_args(_args(["--train-steps", "50", "--sample-steps", "5", "--image-size", "16"]))
    assert abl.steps == 50 and abl.train == {"sample_steps": 5, "image_size": 16}
    cfg = abl.train_config("adaln", 0)
    assert (cfg.steps, cfg.sample_steps, cfg.image_size) == (50, 5, 16)
    assert config_from_args(_args(["--steps", "7"])).steps == 7  # the alias
    quick = config_from_args(_args(["--quick", "--sample-steps", "3"]))
    assert quick.train == {"sample_steps": 3}  # the flag beats the --quick preset
    folder = str(tmp_path / "study")
    assert config_from_args(_args(["--resume", folder])).out == folder
    assert config_from_args(_args(["--resume", "--out", folder])).out == folder  # bare = auto = --out
    with pytest.raises(ValueError, match="different folders"):
        config_from_args(_args(["--resume", folder, "--out", str(tmp_path / "other")]))


def test_bad_settings_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="adaln-zero"):  # lists the valid names
        AblationConfig(variants=["adaln-zerro"])
    with pytest.raises(ValueError, match="unknown ablation option"):
        AblationConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="top-level"):
        AblationConfig(train={"steps": 3})
    with pytest.raises(ValueError, match="per run"):
        AblationConfig(train={"seed": 3})
    with pytest.raises(ValueError, match="unknown training option"):
        AblationConfig(train={"learning_rate": 3})
    with pytest.raises(ValueError, match="distinct"):
        AblationConfig(seeds="1,1")
    with pytest.raises(FileNotFoundError):
        config_from_args(_args(["--config", str(tmp_path / "missing.json")]))


def test_same_seed_gives_every_variant_the_same_batches():
    abl = AblationConfig(data="digits", model="DiT-Nano/2", steps=10, batch_size=16, threads=1)
    batches = {}
    for variant in ("in-context", "adaln-zero", "adaln-single"):
        trainer = Trainer(abl.train_config(variant, seed=3))
        batches[variant] = [trainer.batch_for_step(s) for s in (0, 7)]
    ref = batches.pop("in-context")
    for other in batches.values():  # images, labels, timesteps, noise, label drops: all equal
        for a, b in zip(ref, other):
            for x, y in zip(a, b):
                assert torch.equal(x, y)
    other_seed = Trainer(abl.train_config("in-context", seed=4)).batch_for_step(0)
    assert not torch.equal(other_seed[3], ref[0][3])


# ------------------------------------------------------------------------------------------------ report
def _synthetic_study():
    rng = np.random.default_rng(0)
    runs = []
    for variant, gflops, params in (("in-context", 0.01, 1000), ("adaln-zero", 0.02, 2000)):
        for seed in (0, 1):
            base = 50.0 if variant == "in-context" else 20.0
            curve = [
                {"step": s, "fd_effnet_lite0": base * 100 / s + seed, "fd_classifier": base / s * 10 + seed}
                for s in (100, 200, 300)
            ]
            runs.append(
                dict(
                    variant=variant,
                    seed=seed,
                    params=params,
                    gflops=gflops,
                    batch_size=8,
                    steps=300,
                    train_gflops=3 * gflops * 8 * 300,
                    fd=base + seed,
                    fd_classifier=base / 10 + seed,
                    accuracy=0.5 + 0.1 * seed,
                    seconds=10.0 + rng.random(),
                    loss=0.1,
                    curve=curve,
                    run=f"runs/{variant}/seed{seed}",
                    floor_fd=3.0,
                    floor_fd_classifier=0.5,
                )
            )
    return {
        "command": "ditlab ablate --test",
        "config": AblationConfig(data="digits").to_dict(),
        "runs": runs,
    }


def test_report_table_holds_mean_and_std_over_seeds_and_the_plot_is_written(tmp_path):
    study = _synthetic_study()
    paths = write_report(study, tmp_path)
    assert set(paths) == {"json", "md", "png"}
    assert json.loads(paths["json"].read_text()) == study
    rows = {r["variant"]: r for r in summarize(study["runs"])}
    assert rows["adaln-zero"]["fd"]["mean"] == pytest.approx(20.5)
    assert rows["adaln-zero"]["fd"]["std"] == pytest.approx(np.std([20.0, 21.0], ddof=1))
    md = paths["md"].read_text()
    assert md == markdown(study)
    row = next(line for line in md.splitlines() if line.startswith("| adaln-zero | 0,1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "2,000" and cells[5] == "20.50 ± 0.71" and cells[7] == "0.550 ± 0.071"
    assert cells[-1] == "19.47"  # the paper's adaLN-Zero FID beside ours
    assert "ditlab ablate --test" in md and "floor" in md
    assert sum(line.startswith("| in-context | ") for line in md.splitlines()) == 3  # 1 summary + 2 runs
    image = Image.open(paths["png"])
    assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 600  # 2x2 panels
    # the plotted band: mean and min-max over seeds at the steps every seed evaluated
    steps, mean, lo, hi = _curve_band(study["runs"][:2], "fd_effnet_lite0")
    np.testing.assert_allclose(steps, [100, 200, 300])
    np.testing.assert_allclose(mean, [50.5, 25.5, 50 / 3 + 0.5])
    np.testing.assert_allclose(hi - lo, [1, 1, 1])


def test_report_without_curves_writes_table_only(tmp_path):
    study = _synthetic_study()
    for r in study["runs"]:
        r["curve"] = []
        r["fd_classifier"] = r["accuracy"] = None
    paths = write_report(study, tmp_path)
    assert set(paths) == {"json", "md"} and not (tmp_path / "ablation.png").exists()
    assert "| in-context | 0,1 | 1,000 | 0.0100 | 72 | 50.50 ± 0.71 | – | – |" in paths["md"].read_text()


# ------------------------------------------------------------------------------------------------ end to end
TINY = [
    "--quick",
    "--steps",
    "16",
    "--eval-every",
    "8",
    "--eval-samples",
    "40",
    "--final-samples",
    "60",
    "--warmup-steps",
    "2",
    "--threads",
    "1",
    "--train-args",
    "sample_steps=4",
]


@pytest.mark.slow
def test_tiny_study_end_to_end_skip_and_exact_resume(tmp_path, capsys):
    out = tmp_path / "study"
    variants = ["in-context", "adaln-single"]  # a paper variant (2 seeds) and a later one (1 seed)
    argv = ["ablate", *TINY, "--variants", ",".join(variants), "--seeds", "0,1", "--extra-seeds", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" seed ") >= 3 and "| in-context | 0,1 |" in printed
    study = json.loads((out / "ablation.json").read_text())
    runs = study["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == [
        ("in-context", 0),
        ("adaln-single", 0),
        ("in-context", 1),
    ]
    for r in runs:
        assert {"variant", "params", "gflops", "fd", "accuracy", "seconds", "fd_classifier"} <= set(r)
        model = create_model(
            "DiT-Nano/2", variant=r["variant"], input_size=8, in_channels=1, num_classes=10, learn_sigma=False
        )  # digits, flow matching
        assert r["params"] == count_parameters(model)
        assert r["gflops"] == pytest.approx(flops(model))
        assert r["train_gflops"] == pytest.approx(3 * r["gflops"] * 64 * 16)
        # no samples beat real held-out digits (the floor); 16 steps leave class accuracy at chance, so it is
        # checked for being the score of the 60 final samples, not for a level
        assert r["fd"] > r["floor_fd"] > 0 and r["fd_classifier"] > r["floor_fd_classifier"] > 0
        assert r["accuracy"] * 60 == pytest.approx(round(r["accuracy"] * 60)) and r["seconds"] > 0
        # training works: both FDs fall from step 8 to step 16 in every run, by more than noise between two points
        assert [p["step"] for p in r["curve"]] == [8, 16]
        first, last = r["curve"]
        assert last["fd_effnet_lite0"] < 0.97 * first["fd_effnet_lite0"]
        assert last["fd_classifier"] < 0.95 * first["fd_classifier"]
    assert (out / "ablation.png").stat().st_size > 0
    md = (out / "ablation.md").read_text()
    assert all(f"| {v} | " in md for v in variants)

    # a second call finds every run finished: nothing retrains, the same numbers come back
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/model.safetensors")}
    assert main([*argv, "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert [r["fd"] for r in json.loads((out / "ablation.json").read_text())["runs"]] == [
        r["fd"] for r in runs
    ]

    # a study stopped at 8 steps and continued to 16 ends exactly where the uninterrupted one did
    resumed = tmp_path / "resumed"
    part = ["ablate", *TINY, "--variants", "adaln-single", "--seeds", "0", "--out", str(resumed)]
    assert main([*part[:3], "8", *part[4:]]) == 0  # --steps 8
    assert main(part) == 0
    again = json.loads((resumed / "ablation.json").read_text())["runs"][0]
    straight = next(r for r in runs if (r["variant"], r["seed"]) == ("adaln-single", 0))
    for key in ("fd", "fd_classifier", "accuracy", "loss"):
        assert again[key] == straight[key], key
    assert again["curve"] == straight["curve"]

    # a finished folder refuses a run with other settings instead of mixing them
    capsys.readouterr()
    assert main([*part, "--lr", "0.01"]) == 2
    assert "other settings" in capsys.readouterr().err
