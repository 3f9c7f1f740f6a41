"""ditlab.finetune: which parameters train, γ/LoRA merging, adapter files, fine-tuning runs, zoo fractions."""

import copy
import json

import pytest
import torch
from safetensors import safe_open

from ditlab.cli import main
from ditlab.finetune import (
    METHODS,
    BranchScale,
    FinetuneConfig,
    FinetuneTrainer,
    load_adapter,
    merge,
    prepare_model,
    resize_label_embedding,
    save_adapter,
    trainable_summary,
)
from ditlab.models import load_model, save_model
from ditlab.models.zoo import SIZES, create_model
from ditlab.train.metrics import read_metrics

PEFT = ("difffit", "adaln", "lora", "full")  # the methods of this module (METHODS may hold more, e.g. dydit)
FLOW = {
    "kind": "flow",
    "schedule": "linear",
    "steps": 1000,
    "learn_sigma": False,
    "timestep_sampling": "uniform",
}


def trained_like(model, seed=0):
    """Random weights everywhere (a fresh adaLN-Zero DiT has zero gates, so most gradients would be zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def nano(seed=0, **overrides):
    args = dict(input_size=8, in_channels=1, num_classes=10, learn_sigma=False)
    args.update(overrides)
    return trained_like(create_model("DiT-Nano/2", **args), seed)


@pytest.fixture
def base_path(tmp_path):
    """A digits-shaped base written like a ditlab run folder: model.safetensors beside config.json (lr 3e-4)."""
    run = tmp_path / "base-run"
    model = nano()
    save_model(model, run / "model.safetensors", objective=FLOW)
    (run / "config.json").write_text(json.dumps({"lr": 3e-4}))
    return run / "model.safetensors"


def ft_config(base, out, method="difffit", **kw):
    args = dict(
        base=str(base), method=method, data="digits", steps=2, batch_size=16, out=str(out), progress=False,
        threads=1, log_every=1, ckpt_every=1000, sample_steps=2, ema_warmup=True, labels="keep", seed=0,
    )  # fmt: skip
    args.update(kw)
    return FinetuneConfig(**args)


def inputs(model, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    C, (H, W) = model.in_channels, model.config.image_hw
    x = torch.randn(n, C, H, W, generator=g, dtype=next(model.parameters()).dtype)
    return x, torch.tensor([10.0, 500.0, 900.0][:n]), torch.arange(n) % model.num_classes


# --- which parameters train ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_a_finetuning_step_changes_exactly_the_methods_parameters(base_path, tmp_path, method):
    trainer = FinetuneTrainer(ft_config(base_path, tmp_path / method, method))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and trainer.trainable["trainable"] == sum(
        p.numel() for p in trainer.model.parameters() if p.requires_grad
    )
    for _ in range(2):  # two steps: LoRA's A gets its first gradient once B has moved from zero
        trainer.train_step()
    after = trainer.model.state_dict()
    frozen_changed = [k for k in before if k not in trainable and not torch.equal(before[k], after[k])]
    trainable_same = [k for k in trainable if torch.equal(before[k], after[k])]
    assert frozen_changed == []  # every frozen tensor is bit-identical
    assert trainable_same == []  # and every trained one moved
    # The EMA copy of a frozen tensor stays bit-identical too.
    ema = trainer.ema.model.state_dict()
    assert all(torch.equal(before[k], ema[k]) for k in before if k not in trainable)


def test_difffit_trains_biases_norms_labels_and_gamma_only():
    model = prepare_model(nano(depth=4, variant=None), "difffit")  # no affine norms: biases, γ, labels
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {
        n for n in names if n.endswith(".bias") or n.endswith(".gamma") or n.startswith("y_embedder")
    }
    gammas = sorted(n for n in names if n.endswith("gamma"))  # first half of the blocks, attention and MLP
    assert gammas == [
        "blocks.0.attn.gamma",
        "blocks.0.mlp.gamma",
        "blocks.1.attn.gamma",
        "blocks.1.mlp.gamma",
    ]
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if n.endswith("gamma"))
    assert not model.pos_embed.requires_grad
    # Affine norms count as "norm parameters": Lumina-style blocks have RMSNorm weights after each branch.
    rms = prepare_model(
        trained_like(create_model("DiT-Nano/2", variant="adaln-tanh-rms", input_size=8, in_channels=1)),
        "difffit",
        gamma_blocks="all",
    )
    trained = {n for n, p in rms.named_parameters() if p.requires_grad}
    assert "blocks.1.post_norm1.branch.weight" in trained and "blocks.1.post_norm1.gamma" in trained
    with pytest.raises(ValueError, match="unknown option"):
        prepare_model(nano(), "difffit", rank=3)
    with pytest.raises(ValueError, match="gamma_blocks"):
        prepare_model(nano(), "difffit", gamma_blocks=5)


def test_adaln_method_needs_modulation():
    model = prepare_model(nano(), "adaln")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("adaLN_modulation" in n or n.startswith("y_embedder") for n in names)
    with pytest.raises(ValueError, match="conditioning 'in-context'"):
        prepare_model(nano(variant="in-context"), "adaln")


def test_label_table_reset_and_keep():
    model = nano()
    old = model.y_embedder.embedding_table.weight.detach().clone()  # 10 classes + null
    keep = copy.deepcopy(model)
    resize_label_embedding(keep, 12, "keep", torch.Generator().manual_seed(0))
    table = keep.y_embedder.embedding_table.weight
    assert keep.num_classes == keep.config.num_classes == 12 and table.shape == (13, model.config.hidden_size)
    assert torch.equal(table[:10], old[:10]) and torch.equal(table[12], old[10])  # trained rows and null row
    assert 0.01 < float(table[10:12].detach().std()) < 0.04  # new rows ~ N(0, 0.02)
    reset = copy.deepcopy(model)
    resize_label_embedding(reset, 5, "reset", torch.Generator().manual_seed(0))
    assert reset.y_embedder.embedding_table.weight.shape[0] == 6
    assert 0.01 < float(reset.y_embedder.embedding_table.weight.detach().std()) < 0.04
    with pytest.raises(ValueError, match="cannot shrink"):
        resize_label_embedding(copy.deepcopy(model), 5, "keep")
    x, t, y = inputs(keep)
    assert keep(x, t, y + 9).shape == x.shape  # class 11 exists now


# --- merging ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", [None, "adaln-tanh-rms"])
def test_merged_gamma_gives_the_same_outputs(variant):
    base = nano(variant=variant).double().eval()
    model = prepare_model(copy.deepcopy(base), "difffit", gamma_blocks="all")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BranchScale):
                m.gamma.copy_(1 + torch.randn(m.gamma.shape, generator=g, dtype=torch.float64))
    x, t, y = inputs(model)
    with torch.no_grad():
        unmerged = model(x, t, y)
        assert not torch.allclose(unmerged, base(x, t, y))  # γ does change the function
        merged = merge(model)
        # float64 is exact to rounding; RMSNorm computes in float32 by design, so its variant is exact to ~1e-6.
        assert torch.allclose(merged(x, t, y), unmerged, rtol=0, atol=1e-12 if variant is None else 1e-5)
    # Merging gives back the plain architecture: the base's parameter names and shapes.
    assert {k: v.shape for k, v in merged.state_dict().items()} == {
        k: v.shape for k, v in base.state_dict().items()
    }
    assert merged.finetune_info is None and not any(isinstance(m, BranchScale) for m in merged.modules())


def test_merged_lora_gives_the_same_outputs():
    model = prepare_model(nano().double().eval(), "lora", rank=4, alpha=8)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)
        x, t, y = inputs(model)
        unmerged = model(x, t, y)
        assert torch.allclose(merge(model)(x, t, y), unmerged, rtol=0, atol=1e-10)


# --- adapter files and whole runs -------------------------------------------------------------------------
def test_finetune_run_writes_a_merged_model_and_an_adapter_that_round_trips(base_path, tmp_path):
    out = tmp_path / "run"
    summary = FinetuneTrainer(ft_config(base_path, out, "difffit", steps=3)).run()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lr"] == pytest.approx(10 * 3e-4)  # DiffFit: 10× the base run's pre-training rate
    assert cfg["objective"] == "flow" and cfg["learn_sigma"] is False  # inherited from the base
    adapter = out / "adapter.safetensors"
    assert summary["adapter_bytes"] == adapter.stat().st_size < (out / "model.safetensors").stat().st_size / 5
    full = load_model(out / "model.safetensors")  # the merged EMA model: a plain DiT
    unmerged = load_adapter(adapter)
    merged = load_adapter(adapter, merge_weights=True)
    assert unmerged.objective_spec == FLOW == full.objective_spec
    x, t, y = inputs(full)
    with torch.no_grad():
        ref = unmerged(x, t, y)
        assert torch.allclose(full(x, t, y), ref, atol=1e-5)
        assert torch.allclose(merged(x, t, y), ref, atol=1e-5)
        for name, p in unmerged.named_parameters():  # the adapter tensors are the EMA's, exactly
            if p.numel() and "gamma" in name:
                assert not torch.equal(p, torch.ones_like(p))
    # The adapter refuses a base other than the one it was trained on.
    other = tmp_path / "other.safetensors"
    save_model(nano(seed=5), other)
    with pytest.raises(ValueError, match="SHA-256"):
        load_adapter(adapter, base=other)
    assert load_adapter(adapter, base=other, check_base=False).num_classes == 10


def test_save_adapter_holds_only_trained_parameters(base_path, tmp_path):

    model = prepare_model(load_model(base_path), "lora", rank=2)
    path = save_adapter(model, tmp_path / "a.safetensors", base=base_path)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert keys == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in k or k.startswith("y_embedder") for k in keys)
    with pytest.raises(ValueError, match="not prepared"):
        save_adapter(load_model(base_path), tmp_path / "b.safetensors", base=base_path)


def test_finetune_resume_repeats_the_same_steps(base_path, tmp_path):
    cfg = ft_config(base_path, tmp_path / "a", "lora", steps=3, method_args={"rank": 2})
    straight = FinetuneTrainer(cfg)
    losses = [float(straight.train_step()["loss"]) for _ in range(3)]
    first = FinetuneTrainer(cfg.replace(out=str(tmp_path / "b")))
    first.train_step()
    ckpt = first.save_checkpoint()
    resumed = FinetuneTrainer(cfg.replace(out=str(tmp_path / "b")), resume=ckpt)
    assert [float(resumed.train_step()["loss"]) for _ in range(2)] == losses[1:]


def test_config_validation(base_path, tmp_path):
    with pytest.raises(ValueError, match="base=PATH"):
        FinetuneConfig(data="digits", steps=1)
    with pytest.raises(ValueError, match="choose one of: difffit, adaln, lora, full"):
        ft_config(base_path, tmp_path, "bitfit")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ft_config(tmp_path / "missing.safetensors", tmp_path)
    full = ft_config(base_path.parent, tmp_path, "full")  # a run folder is a base too
    assert full.base == str(base_path.resolve()) and full.lr == pytest.approx(3e-4) and full.image_size == 8


# --- trainable fractions ----------------------------------------------------------------------------------
def zoo_fractions(num_classes=1000):
    rows = {}
    for size in SIZES:
        for p in (2, 4, 8):
            name = f"DiT-{size}/{p}"
            for method in PEFT:
                with torch.device("meta"):
                    model = prepare_model(create_model(name, num_classes=num_classes), method)
                rows[name, method] = trainable_summary(model)
    return rows


def test_trainable_fractions_of_the_zoo():
    rows = zoo_fractions()
    print(f"\n{'model':10s} " + " ".join(f"{m:>9s}" for m in PEFT) + "   (trainable %, 1000-class table)")
    for name in dict.fromkeys(n for n, _ in rows):
        print(f"{name:10s} " + " ".join(f"{100 * rows[name, m]['fraction']:8.3f}%" for m in PEFT))
    D, depth = 1152, 28
    # DiT-XL/2 + DiffFit, by hand: 489,632 biases + γ on 2 branches of 14 blocks + the (K + 1)-row label table.
    assert rows["DiT-XL/2", "difffit"]["trainable"] == 489_632 + 2 * D * depth // 2 + 1001 * D
    assert rows["DiT-XL/2", "full"]["trainable"] == 674_834_720  # every weight but the fixed positions
    assert rows["DiT-XL/2", "adaln"]["fraction"] == pytest.approx(0.336, abs=0.001)  # adaLN-Zero: a third
    for name in dict.fromkeys(n for n, _ in rows):
        fractions = [rows[name, m]["fraction"] for m in ("difffit", "lora", "adaln", "full")]
        assert fractions == sorted(fractions) and fractions[-1] > 0.995  # all but the positions

    def difffit_xl(classes):
        with torch.device("meta"):
            return trainable_summary(prepare_model(create_model("DiT-XL/2", num_classes=classes), "difffit"))

    # The paper's ≈0.12% (0.83M) lies between DiffFit's downstream label sets (Food-101 ... SUN397).
    assert difffit_xl(101)["fraction"] < 0.0012 < difffit_xl(397)["fraction"]


def test_cli_trainable_only_prints_one_json_line(capsys):
    assert main(["finetune", "--method", "difffit", "--model", "DiT-XL/2", "--trainable-only"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["method"] == "difffit" and row["trainable"] == 1_675_040 and 0.0024 < row["fraction"] < 0.0025
    assert (
        main(
            [
                "finetune",
                "--method",
                "lora",
                "--method-args",
                "rank=4",
                "--model",
                "DiT-S/2",
                "--trainable-only",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["trainable"] < 1_000_000


def test_cli_finetune_run_and_resume(base_path, tmp_path, capsys):
    out = tmp_path / "cli"
    flags = ["--base", str(base_path.parent), "--data", "digits[5-9]", "--labels", "keep", "--method", "lora"]
    flags += [
        "--method-args",
        "rank=2",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    flags += ["--sample-steps", "2", "--ckpt-every", "1", "--log-every", "1"]
    assert main(["finetune", *flags, "--steps", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["method"] == "lora" and summary["adapter_bytes"] > 0
    saved = json.loads((out / "config.json").read_text())
    assert (
        saved["method_args"] == {"rank": 2} and saved["labels"] == "keep" and saved["data"] == "digits[5-9]"
    )
    # Resuming reads the run's own options back from its checkpoint; only the new length is given.
    assert main(["finetune", "--out", str(out), "--resume", "auto", "--steps", "3"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["step"], resumed["steps_run"]) == (3, 1)  # continued from step 2, not retrained
    assert load_adapter(out / "adapter.safetensors").num_classes == 10
    # ... and continues the same run: every step's loss and the adapter weights (which also depend on the
    # restored optimizer moments) equal those of 3 uninterrupted steps
    straight_out = tmp_path / "straight"
    flags[flags.index("--out") + 1] = str(straight_out)
    assert main(["finetune", *flags, "--steps", "3"]) == 0
    straight = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["loss"] == straight["loss"]
    losses = [
        [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if "loss" in r]
        for d in (out, straight_out)
    ]
    assert losses[0] == losses[1] and [step for step, _ in losses[0]][-1] == 3
    with (
        safe_open(out / "adapter.safetensors", "pt") as a,
        safe_open(straight_out / "adapter.safetensors", "pt") as b,
    ):
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
