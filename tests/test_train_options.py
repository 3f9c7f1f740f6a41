"""Training options of issue 18: lr schedules, AdamW betas, flow timestep sampling (mode, shift), native
bf16 detection and the precision decision, and the config's checks."""

import json
import math
import time

import pytest
import torch

from ditlab import runtime
from ditlab.diffusion.flow import X0_MIN_T, FlowMatching
from ditlab.diffusion.objective import ObjectiveSpec
from ditlab.diffusion.samplers import run_sampler
from ditlab.finetune.config import FinetuneConfig
from ditlab.models.interop import save_diffusers
from ditlab.train import TrainConfig, Trainer
from ditlab.train.metrics import read_metrics
from ditlab.train.schedule import lr_at

TINY = dict(data="digits", model="DiT-Nano/2", batch_size=16, steps=4, progress=False, threads=1)


def test_constant_schedule_is_the_old_warmup_bit_for_bit():
    lr, warm = 3e-4, 7
    for step in range(20):
        old = lr * min(1.0, (step + 1) / warm)  # the trainer's formula before schedules existed
        assert lr_at(step, 20, lr, "constant", warm) == old
        assert lr_at(step, 20, lr, "constant", 0) == lr


def test_cosine_schedule_values():
    lr, lr_min, warm, total = 1e-3, 1e-5, 10, 110
    values = [lr_at(s, total, lr, "cosine", warm, lr_min) for s in range(total)]
    assert values[0] == pytest.approx(lr / warm) and values[warm - 1] == pytest.approx(lr)
    assert values[warm] == pytest.approx(lr)  # the cosine starts at the peak
    assert values[-1] == pytest.approx(lr_min)  # and ends at lr_min on the last step
    mid = warm + (total - warm - 1) // 2
    expected = lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * (mid - warm) / (total - warm - 1)))
    assert values[mid] == pytest.approx(expected) and values[mid] == pytest.approx(
        (lr + lr_min) / 2, rel=0.02
    )
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1 :]))  # non-increasing after warm-up
    with pytest.raises(ValueError, match="lr schedule"):
        lr_at(0, 10, lr, "linear")


def test_betas_and_schedule_reach_the_optimizer(tmp_path):
    cfg = TrainConfig(**TINY, out=str(tmp_path / "run"), adam_beta2=0.95, lr_schedule="cosine", lr=1e-3)
    trainer = Trainer(cfg)
    assert trainer.opt.param_groups[0]["betas"] == (0.9, 0.95)
    lrs = [trainer.train_step()["lr"] for _ in range(4)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.0) and lrs[1] > lrs[2]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"adam_beta2": 1.0}, "adam_beta2"),
        ({"timestep_shift": 3.0}, "objective=flow"),
        ({"timestep_shift": 0.0, "objective": "flow"}, "timestep_shift"),
        ({"posthoc_ema": "0.05,abc"}, "posthoc_ema"),
        ({"posthoc_ema": "0.5"}, "posthoc_ema"),
        ({"repa_weight": 0.5, "repa_encoder": "dino"}, "repa_encoder"),
        ({"lr_min": 1.0}, "lr_min"),
        ({"prediction": "x0"}, "objective=flow"),
        ({"prediction": "epsilon", "objective": "flow"}, "prediction"),
    ],
)
def test_bad_training_options_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(steps=1, **fields)


def test_default_flow_draw_is_unchanged_and_shift_warps_it():
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand((64,), generator=g)
    assert torch.equal(
        FlowMatching().sample_timesteps(64, generator=torch.Generator().manual_seed(0)), uniform
    )
    shifted = FlowMatching(shift=3.0).sample_timesteps(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, 3.0 * uniform / (1 + 2.0 * uniform))
    assert shifted.mean() > uniform.mean()  # more training at high noise


def test_mode_sampling_maps_the_unit_interval_onto_itself():
    t = FlowMatching("mode").sample_timesteps(4096, generator=torch.Generator().manual_seed(1))
    assert 0 <= float(t.min()) and float(t.max()) <= 1
    u = torch.tensor([0.0, 0.5, 1.0])
    flow = FlowMatching("mode", mode_scale=0.0)  # scale 0: t = 1 − u, still uniform
    assert torch.allclose(1 - u - flow.mode_scale * (torch.cos(torch.pi / 2 * u) ** 2 - 1 + u), 1 - u)
    # s = 1.29 puts more mass in the middle than uniform (SD3's mode sampling favours intermediate t)
    assert float(((t > 0.25) & (t < 0.75)).float().mean()) > 0.55


def test_objective_record_keeps_its_old_fields_at_the_default_shift():
    spec = ObjectiveSpec(kind="flow", learn_sigma=False)
    assert "timestep_shift" not in spec.to_dict()  # files of default runs stay as they were
    shifted = ObjectiveSpec(kind="flow", learn_sigma=False, timestep_shift=3.0)
    assert shifted.to_dict()["timestep_shift"] == 3.0
    assert ObjectiveSpec.from_dict(shifted.to_dict()).build().shift == 3.0


X86_WITH = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n"
X86_WITHOUT = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"
ARM_WITH = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert runtime.native_bf16(X86_WITH)["flags"] == ["amx_bf16", "avx512_bf16"]
    assert runtime.native_bf16(X86_WITH)["native"] and runtime.native_bf16(ARM_WITH)["native"]
    assert not runtime.native_bf16(X86_WITHOUT)["native"] and not runtime.native_bf16("")["native"]
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not runtime.native_bf16(X86_WITH)["native"]  # the flags alone are not enough: oneDNN must agree


NATIVE = {"native": True, "flags": ["amx_bf16"], "onednn_bf16": True, "capability": "AVX512"}
ABSENT = {**NATIVE, "native": False, "flags": []}


def test_auto_precision_takes_bf16_on_cpu_only_where_native_and_timed_faster():
    cpu, fast, slow = torch.device("cpu"), runtime.BF16_MIN_SPEEDUP, runtime.BF16_MIN_SPEEDUP - 0.01
    precision, why = runtime.precision_decision("auto", cpu, NATIVE, speedup=1.34)
    assert precision == "bf16" and "1.34x faster" in why and "amx_bf16" in why and "precision.md" in why
    precision, why = runtime.precision_decision("auto", cpu, NATIVE, speedup=slow)
    assert precision == "fp32" and f"{slow:.2f}x" in why and "--precision bf16" in why
    assert runtime.precision_decision("auto", cpu, NATIVE, speedup=fast)[0] == "bf16"
    precision, why = runtime.precision_decision("auto", cpu, NATIVE)  # nothing timed: no claim of faster
    assert precision == "fp32" and "no training step was timed" in why
    assert runtime.precision_decision("auto", cpu, ABSENT, speedup=3.0)[0] == "fp32"  # never without native
    assert runtime.precision_decision("bf16", cpu, ABSENT) == ("bf16", "bf16 as asked")
    assert runtime.precision_decision("auto", torch.device("cuda"), ABSENT)[0] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        runtime.precision_decision("fp16", cpu)


def test_only_auto_on_a_native_bf16_cpu_is_settled_by_timing():
    cpu = torch.device("cpu")
    assert runtime.step_timing_decides("auto", cpu, NATIVE)
    assert not runtime.step_timing_decides("auto", cpu, ABSENT)
    assert not runtime.step_timing_decides("fp32", cpu, NATIVE)
    assert not runtime.step_timing_decides("auto", torch.device("cuda"), NATIVE)


def test_bf16_speedup_is_the_ratio_of_the_best_timings():
    calls = []

    def step(precision):  # a step twice as slow in fp32, its first run of each slower still (warm-up)
        calls.append(precision)
        warm = calls.count(precision) == 1
        time.sleep((0.04 if precision == "fp32" else 0.02) * (3 if warm else 1))

    ratio = runtime.bf16_speedup(step, repeats=2)
    assert 1.6 < ratio < 2.4  # the untimed first runs do not count
    assert calls == ["fp32", "bf16"] * 3  # interleaved, so a change in load hits both


def _native_cpu(monkeypatch, threshold):
    monkeypatch.setattr(runtime, "native_bf16", lambda cpuinfo=None: NATIVE)
    monkeypatch.setattr(runtime, "BF16_MIN_SPEEDUP", threshold)


def test_auto_times_a_real_step_and_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    plain = Trainer(TrainConfig(**TINY, out=str(tmp_path / "fp32"), precision="fp32"))
    assert plain.bf16_speedup is None  # asked for: nothing timed
    plain.run()
    _native_cpu(monkeypatch, float("inf"))  # the timing runs, and fp32 wins whatever it measures
    timed = Trainer(TrainConfig(**TINY, out=str(tmp_path / "auto")))
    assert (
        timed.precision == "fp32" and timed.bf16_speedup > 0 and "timed at start-up" in timed.precision_reason
    )
    timed.run()
    record = json.loads((tmp_path / "auto" / "runtime.json").read_text())
    assert record["bf16_speedup"] == timed.bf16_speedup
    losses = [[r["loss"] for r in read_metrics(tmp_path / d / "metrics.jsonl")] for d in ("fp32", "auto")]
    assert losses[0] == losses[1]  # the timed steps drew no random numbers and changed no weights


def test_auto_picks_bf16_when_timed_faster_and_a_resume_keeps_it(tmp_path, monkeypatch):
    _native_cpu(monkeypatch, 0.0)  # any measured ratio counts as faster
    cfg = TrainConfig(**{**TINY, "steps": 2, "ckpt_every": 1}, out=str(tmp_path / "run"))
    first = Trainer(cfg)
    assert first.precision == "bf16" and "faster in bf16" in first.precision_reason
    first.run()
    monkeypatch.setattr(runtime, "BF16_MIN_SPEEDUP", float("inf"))  # a new timing would now say fp32
    resumed = Trainer(cfg.replace(steps=4), resume="auto")
    assert resumed.precision == "bf16" and "as this run started" in resumed.precision_reason
    assert resumed.bf16_speedup is None  # kept from runtime.json, not timed again


def test_flow_loss_weightings_are_the_mse_of_x0_and_epsilon():
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    t = torch.rand(5, generator=g)

    def model(x, t_model):  # any velocity predictor
        return 0.3 * x - 0.1

    plain = FlowMatching().training_losses(model, x0, t, noise=noise)
    assert plain["loss"] is plain["mse"]  # the default loss is untouched
    for weighting in ("x0", "epsilon"):
        terms = FlowMatching(loss_weighting=weighting).training_losses(model, x0, t, noise=noise)
        flow = FlowMatching()
        x_t = flow.q_sample(x0, t, noise=noise)
        v = model(x_t, None)
        tt = t.view(-1, 1, 1, 1)
        if weighting == "x0":
            direct = ((x_t - tt * v) - x0).square().mean((1, 2, 3))  # the x̂₀ MSE
        else:
            direct = ((x_t + (1 - tt) * v) - noise).square().mean((1, 2, 3))  # the ε̂ MSE
        torch.testing.assert_close(terms["loss"], direct)
        torch.testing.assert_close(terms["mse"], plain["mse"])
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(steps=1, loss_weighting="x0")  # a DDPM run
    with pytest.raises(ValueError, match="loss weighting"):
        FlowMatching(loss_weighting="score")
    assert "loss_weighting" not in ObjectiveSpec(kind="flow", learn_sigma=False).to_dict()


def test_x0_prediction_reads_the_clean_image_as_a_velocity():
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t = torch.tensor([0.02, 0.3, 0.6, 1.0])
    flow = FlowMatching(prediction="x0")
    exact = flow.training_losses(lambda x, t_model: x0, x0, t, noise=noise)  # outputs the true image
    torch.testing.assert_close(exact["loss"][1:], torch.zeros(3))  # v̂ = (x_t − x₀)/t = ε − x₀ exactly
    x_t = flow.q_sample(x0, t, noise=noise)
    off = x0 + 0.1  # a wrong image: v̂ is off by 0.1/t, the divisor held at X0_MIN_T below it
    v = flow.velocity(off, x_t, t)
    held = t.clamp(min=X0_MIN_T).view(-1, 1, 1, 1)
    torch.testing.assert_close(v, (x_t - off) / held)
    torch.testing.assert_close(flow.velocity(off, x_t, 0.5), (x_t - off) / 0.5)  # a float t, as samplers pass
    assert FlowMatching().velocity(off, x_t, t) is off  # velocity prediction: the output itself


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_an_x0_predictor_that_always_draws_one_image_samples_that_image(sampler):
    """The last flow step lands on the predicted image: a network that always outputs x* samples x*, from any
    noise, with either sampler (a velocity predictor outputting x* would instead drift by x*)."""
    target = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    flow = FlowMatching(prediction="x0")
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    out = run_sampler(sampler, lambda x, t: target.clone(), noise, flow, steps=10)
    torch.testing.assert_close(out, target)


def test_x0_prediction_is_recorded_and_inherited(tmp_path):
    spec = ObjectiveSpec(kind="flow", learn_sigma=False, prediction="x0")
    assert ObjectiveSpec.from_dict(spec.to_dict()).build().prediction == "x0"
    assert "prediction" not in ObjectiveSpec(kind="flow", learn_sigma=False).to_dict()  # old files unchanged
    cfg = TrainConfig(**TINY, objective="flow", prediction="x0", out=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    trainer.run()
    assert trainer.model.objective_spec["prediction"] == "x0"
    with pytest.warns(UserWarning) as caught:  # diffusers' schedulers would read its output as v
        save_diffusers(trainer.model, tmp_path / "diffusers")
    assert any("prediction='x0'" in str(w.message) for w in caught)
    tune = FinetuneConfig(base=str(tmp_path / "run"), data="digits", steps=1, out=str(tmp_path / "tune"))
    assert tune.objective == "flow" and tune.prediction == "x0"
