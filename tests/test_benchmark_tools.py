"""The measuring tools of benchmarks/ (not the speeds they measure): round-robin timing, peak memory of a
call, and the time-to-quality arithmetic on synthetic run logs."""

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_runs_every_variant_round_robin_after_warmup():
    timing = load("_timing")
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    before = []
    best = timing.interleaved(fns, repeats=3, warmup=1, before=before.append)
    assert calls == ["a", "b", "c"] * 4 and before == calls
    assert set(best) == {"a", "b", "c"} and all(0 <= s < 1 for s in best.values())


def test_the_cpu_clock_leaves_out_waiting_and_counts_work():
    """A thread that sleeps (as one waiting for a busy machine's core) uses no CPU time; one that computes does."""
    timing = load("_timing")

    def busy():
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass

    fns = {"sleep": lambda: time.sleep(0.05), "busy": busy}
    cpu = timing.interleaved(fns, repeats=2, warmup=0, clock="cpu")
    wall = timing.interleaved(fns, repeats=2, warmup=0)
    assert cpu["sleep"] < 0.01 <= wall["sleep"] and cpu["busy"] >= 0.02
    with pytest.raises(ValueError, match="wall, cpu"):
        timing.interleaved(fns, repeats=1, clock="gpu")


def test_peak_memory_sees_a_temporary_allocation():
    timing = load("_timing")

    def big():
        torch.ones(64 * 2**20 // 4)  # 64 MiB, written, then freed

    result = timing.peak_memory_of(big)
    if not result["exact"]:
        pytest.skip("the peak-RSS mark cannot be reset on this system")
    assert result["activation_mib"] >= 48
    assert timing.peak_memory_of(lambda: None)["activation_mib"] < 16


def write_run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def windows(steps_per_s: float, fds: dict, log_every=10, until=100, eval_seconds=None):
    """A run log: a window every `log_every` steps at a fixed rate, FD records at the steps in `fds`.
    eval_seconds=None writes this version's step_seconds; a number writes an old log whose window after an
    evaluation also contains that evaluation's time."""
    records, pending = [], 0.0
    for step in range(log_every, until + 1, log_every):
        seconds = log_every / steps_per_s
        if eval_seconds is None:
            records.append({"step": step, "loss": 1.0, "steps_per_s": steps_per_s, "step_seconds": seconds})
        else:
            records.append({"step": step, "loss": 1.0, "steps_per_s": log_every / (seconds + pending)})
            pending = 0.0
        if step in fds:
            records.append({"step": step, "fd_x": fds[step], "eval_seconds": eval_seconds or 7.0})
            pending = eval_seconds or 0.0
    return records


@pytest.mark.parametrize("old_logs", [False, True])
def test_time_to_quality_ratio(tmp_path, old_logs):
    ttq = load("time_to_quality")
    extra = 100.0 if old_logs else None  # evaluations that old logs counted as training time
    # baseline: 1 step/s, final FD 5 at step 100 (100 s); ours: 2 steps/s, FD 4 already at step 60 (30 s)
    base = write_run(tmp_path / "base", windows(1.0, {50: 9.0, 100: 5.0}, eval_seconds=extra))
    ours = write_run(tmp_path / "ours", windows(2.0, {20: 8.0, 60: 4.0, 100: 3.0}, eval_seconds=extra))
    result = ttq.analyse(ours, base)
    assert result["metric"] == "fd_x" and result["target_fd"] == 5.0
    assert result["baseline_seconds"] == pytest.approx(100.0)
    assert result["ours_seconds"] == pytest.approx(30.0) and result["ours_step"] == 60
    assert result["ratio"] == pytest.approx(0.3)


def test_time_to_quality_when_ours_never_gets_there(tmp_path):
    ttq = load("time_to_quality")
    base = write_run(tmp_path / "base", windows(1.0, {100: 2.0}))
    ours = write_run(tmp_path / "ours", windows(1.0, {50: 3.0, 100: 2.5}))
    result = ttq.analyse(ours, base)
    assert result["ours_seconds"] is None and result["ratio"] is None and result["ours_best_fd"] == 2.5
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        ttq.analyse(tmp_path / "missing", base)


def test_dydit_report_reads_the_run_settings_and_compares_every_extractor(tmp_path):
    dydit = load("dydit")
    model = tmp_path / "model.safetensors"
    assert dydit.run_settings(model, 0.5) == (None, 0.5)  # a file on its own: nothing to read
    (tmp_path / "config.json").write_text(json.dumps({"steps": 1600, "method_args": {"target_flops": 0.4}}))
    assert dydit.run_settings(model, 0.5) == (1600, 0.4)

    dense = {"effnet": {"fd": 100.0, "floor": {"fd": 20.0}, "precision": 0.5, "recall": 0.25}}
    dyn = {"effnet": {"fd": 110.0, "floor": {"fd": 20.0}, "precision": 0.5, "recall": None}}
    (row,) = dydit.extractor_rows(dense, dyn)
    assert row == "| effnet | 100.000 | 110.000 | 1.100 | 20.000 | 0.500 / 0.500 | 0.250 / – |"


def test_recipe_arms_change_one_thing_each_and_combine_them_all():
    recipe = load("recipe")
    base = json.loads(recipe.PAPER.read_text())
    assert recipe.arm_fields("paper", base) == base and recipe.arm_fields("guidance", base) == base
    swiglu = recipe.arm_fields("swiglu", base)
    assert {k for k in swiglu if swiglu[k] != base.get(k)} == {"model_args"}
    combined = recipe.resolve(recipe.arm_fields("combined", base), base_steps=32, steps=400)
    assert combined["model_args"] == {"mlp": "swiglu", "mlp_two_thirds": True, "qk_norm": True, "rope": True}
    assert (
        combined["objective"] == "flow" and combined["adam_beta2"] == 0.95 and combined["repa_weight"] == 0.5
    )
    assert combined["warmup_steps"] == 20 and combined["sample_steps"] == 16 and combined["steps"] == 400
    args = recipe.parse_args(["--interval", "100", "600"])
    assert recipe.sampling_of("paper", base, args)["guidance_interval"] is None
    assert recipe.sampling_of("combined", combined, args)["guidance_interval"] == (100.0, 600.0)
    assert recipe.sampling_of("guidance", base, args)["guidance_scale"] == recipe.GUIDANCE_SCALE


@pytest.mark.slow
def test_recipe_quick_smoke_run_writes_the_report_and_plot(tmp_path):
    recipe = load("recipe")
    report, png = tmp_path / "recipe.md", tmp_path / "recipe.png"
    argv = ["--quick", "--threads", "1", "--evals", "1", "--arms", "paper", "interval-guidance"]
    assert (
        recipe.main([*argv, "--out", str(tmp_path / "runs"), "--write", str(report), "--plot", str(png)]) == 0
    )
    text = report.read_text()
    assert "| paper |" in text and "| interval-guidance |" in text and "Real-data floor" in text
    assert png.stat().st_size > 1000


def test_latent_vs_pixel_arms_default_to_equal_tokens_and_share_the_recipe(tmp_path):
    lvp = load("latent_vs_pixel")
    args = lvp.parse_args([])
    arms = lvp.Arms(args, tmp_path / "cache")
    assert (arms.model("latent"), arms.model("pixel")) == ("DiT-Ti/2", "DiT-Ti/8")
    assert arms.tokens("latent") == arms.tokens("pixel") == 64  # 16x16 latents at p=2, 64x64 pixels at p=8
    assert lvp.parse_args(["--pixel-patch", "4"]).pixel_patch == 4
    with pytest.raises(SystemExit):
        lvp.parse_args(["--latent-patch", "3"])  # 3 does not divide the 16x16 latents


def test_latent_vs_pixel_seconds_per_step_skips_the_warm_up_window():
    lvp = load("latent_vs_pixel")
    rows = [{"step": 2, "step_seconds": 10.0}, {"eval_seconds": 99.0, "step": 2}]
    rows += [
        {"step": 4, "step_seconds": 1.0},
        {"step": 8, "step_seconds": 2.0},
        {"step": 10, "step_seconds": 1.2},
    ]
    assert lvp.seconds_per_step(rows) == pytest.approx(0.5)  # median of 0.5, 0.5, 0.6 (5.0 left out)
    with pytest.raises(ValueError):
        lvp.seconds_per_step([{"eval_seconds": 1.0, "step": 1}])


@pytest.mark.slow
def test_latent_vs_pixel_quick_run_trains_both_arms_and_reports_the_ratio(tmp_path):
    lvp = load("latent_vs_pixel")
    report = tmp_path / "lvp.md"
    assert lvp.main(["--quick", "--dir", str(tmp_path / "runs"), "--write", str(report)]) == 0
    text = report.read_text()
    assert "| latent | DiT-Nano/1 |" in text and "| pixel | DiT-Nano/2 |" in text
    assert "Floors (64 images" in text and "pixel run's final FD" in text
    cache = json.loads((tmp_path / "runs" / "latent" / "config.json").read_text())
    assert cache["data"].endswith("latents")  # the latent arm trained from the cache, not on pixels


def test_text_sampling_times_the_study_models_at_their_matched_gflops():
    bench = load("text_sampling")
    from ditlab.text import load_text_encoder

    encoder = load_text_encoder("minilm", max_length=bench.TEXT_LEN)
    models = bench.study_models(encoder)
    assert list(models) == ["pooled", "cross-attention", "mmdit", "single-stream"]
    gflops = [g for _, _, g in models.values()]
    assert max(gflops) / min(gflops) < 1.1  # the study's equal-compute depths
    for _, model, _ in models.values():  # random weights: no block is adaLN-Zero's cheap identity
        assert all(bool(p.abs().sum() > 0) for p in model.parameters())
    images, _ = bench.generate(
        models["mmdit"][1], prompts=["a red circle"], text_encoder=encoder, sampler="euler", steps=1,
        guidance_scale=2.0, return_tensors=True,
    )  # fmt: skip
    assert images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("arm", ["demo", "ddpm"])
def test_demo_recipe_trains_an_arm_and_scores_each_guidance_scale(tmp_path, arm):
    demo_recipe = load("demo_recipe")
    argv = ["--arm", arm, "--out", str(tmp_path / arm), "--train-steps", "3", "--per-class", "2"]
    rows = demo_recipe.main(
        [*argv, "--guidance", "1", "2", "--sampler", "euler" if arm == "demo" else "ddim", "2"]
    )
    assert [r["guidance"] for r in rows] == [1.0, 2.0] and all(r["samples"] == 20 for r in rows)
    assert all(0 <= r["class_accuracy"] <= 1 and r["classifier_fd"] > r["floor"] > 0 for r in rows)
    # --score: the trained model again, no training, one row per sampling seed; the seed changes the samples
    again = demo_recipe.main(
        ["--score", str(tmp_path / arm / "model.safetensors"), "--per-class", "2", "--guidance", "1"]
        + ["--sampler", rows[0]["sampler"].split("-")[0], "2", "--seeds", "0", "1"]
    )
    assert [r["seed"] for r in again] == [0, 1] and again[0]["train_seconds"] is None
    assert again[0]["classifier_fd"] == rows[0]["classifier_fd"] != again[1]["classifier_fd"]
