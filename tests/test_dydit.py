"""DyDiT: all-on equals the dense DiT exactly, importance reordering keeps the function, sliced-weight and
gather/scatter inference equal masked inference, FLOPs accounting equals a direct count, the FLOPs constraint
trains the routers, caches follow the weights, checkpoints and exported width tables round-trip, fine-tuning."""

import numpy as np
import pytest
import torch
from torch.utils import flop_counter

from ditlab.cli import main as cli
from ditlab.dydit import DyDiT, DyDiTOptions, dynamic_flop_breakdown, reorder_by_importance
from ditlab.dydit.checkpoint import export_dydit, is_dydit_file, load_dydit, save_dydit
from ditlab.dydit.importance import channel_importance, head_importance
from ditlab.dydit.method import DyDiTTrainOptions
from ditlab.dydit.model import calibrate_token_routers
from ditlab.finetune import get_method, prepare_model, trainable_summary
from ditlab.models import DiT, create_model, flop_breakdown, load_model, save_model
from ditlab.sampling import generate
from ditlab.train import TrainConfig, Trainer
from ditlab.train.metrics import read_metrics

VARIANTS = ["adaln-zero", "adaln-single", "adaln-tanh-rms"]


def random_dit(variant="adaln-zero", seed=0) -> DiT:
    """A Nano DiT (depth 2, D 64, 4 heads, 16 tokens) with every weight perturbed, so no block is the identity."""
    torch.manual_seed(seed)
    model = create_model("DiT-Nano/2", variant=variant, input_size=8, in_channels=1, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def inputs(n=3, t=(7, 7, 7), seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return x, torch.tensor(t[:n]), torch.arange(n) % 10


@torch.no_grad()
def set_width(model: DyDiT, heads_on, groups_on, token_bias=None):
    """Fix every block's routed units (index 1..H-1) on/off regardless of t: zero weights, biases ±14 (beyond
    what clamped Gumbel noise can flip), and optionally the token router's output bias."""
    for r in model.routers:
        r.heads.weight.zero_()
        r.groups.weight.zero_()
        r.heads.bias.copy_(torch.tensor([14.0 if on else -14.0 for on in heads_on]))
        r.groups.bias.copy_(torch.tensor([14.0 if on else -14.0 for on in groups_on]))
        if token_bias is not None:
            r.tokens[2].bias.fill_(token_bias)


def all_on(model: DyDiT) -> DyDiT:
    """Pin every token router on (output weights 0, bias +35): a random DiT's residual stream is large enough
    to push a few default-initialised token logits below 0."""
    with torch.no_grad():
        for r in model.routers:
            r.tokens[2].weight.zero_()
    return model


# ---------------------------------------------------------------- exactness and equivalences
@pytest.mark.parametrize("variant", VARIANTS)
def test_all_routers_on_equals_dense_model_exactly(variant):
    dense = random_dit(variant)
    model = all_on(DyDiT.from_dit(dense, reorder=False).eval())
    x, t, y = inputs()
    with torch.no_grad():
        ref = dense(x, t, y)
        assert torch.equal(model(x, t, y), ref)  # deployed path, full width, every token
        assert torch.equal(model(x, t, y, masked=True), ref)
        assert torch.equal(model(x, t, y, complete=True), ref)
        dense.train(), model.train()
        keep_labels = torch.zeros(3, dtype=torch.long)
        ref = dense(x, t, y, force_drop_ids=keep_labels)
        aux = {}
        out = model(x, t, y, force_drop_ids=keep_labels, generator=torch.Generator().manual_seed(0), aux=aux)
    assert torch.equal(out, ref)  # training masks: +15 biases beat any (clamped) Gumbel noise
    assert torch.equal(aux["flops_ratio"], torch.ones(3))


def test_reordering_by_importance_keeps_the_function():
    dense = random_dit()
    model = DiT(dense.config).eval()
    model.load_state_dict(dense.state_dict())
    orders = reorder_by_importance(model)
    assert any(not torch.equal(h, torch.arange(len(h))) for h, _ in orders)  # something actually moved
    for block in model.blocks:
        assert torch.all(head_importance(block.attn).diff() <= 0)
        assert torch.all(channel_importance(block.mlp).diff() <= 0)
    x, t, y = inputs(t=(3, 500, 999))
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), dense(x, t, y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sliced_weight_inference_equals_masked_inference(variant):
    model = DyDiT.from_dit(random_dit(variant)).eval()
    set_width(model, heads_on=[False, True, False], groups_on=[True, False, False])
    x, t, y = inputs()
    with torch.no_grad(), model.recording() as records:
        fast, ref = model(x, t, y), model(x, t, y, masked=True)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert records[0]["heads"] == [2.0, 2.0] and records[0]["groups"] == [2.0, 2.0]
    sliced = model.planner.plans[7.0][0][2]  # block 0's attention really runs on 2 of 4 heads
    assert sliced.heads == 2 and sliced.qkv_weight.shape == (3 * 2 * 16, 64)


@pytest.mark.parametrize("width", [(True, True, True), (False, True, False)])
def test_gather_scatter_token_skipping_equals_masking(width):
    model = DyDiT.from_dit(random_dit(), DyDiTOptions(token_reduction=4)).eval()
    set_width(model, heads_on=width, groups_on=width[::-1])
    x, t, y = inputs()
    calibrate_token_routers(model, x, t, y, keep=0.5)
    with torch.no_grad(), model.recording() as records:
        fast, ref = model(x, t, y), model(x, t, y, masked=True)
    kept = records[0]["tokens"]
    assert all(0 < k < 1 for k in kept), kept  # some tokens skipped, some kept, in every block
    assert records[1]["tokens"] == pytest.approx(kept)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_mixed_timesteps_in_one_batch_give_per_sample_widths():
    model = DyDiT.from_dit(random_dit()).eval()
    with torch.no_grad():  # t-dependent decisions: logits spread around 0 as E_t changes
        for r in model.routers:
            r.heads.weight.normal_(0, 3.0), r.groups.weight.normal_(0, 3.0)
            r.heads.bias.zero_(), r.groups.bias.zero_()
    x, t, y = inputs(t=(1, 500, 999))
    with torch.no_grad():
        batch = model(x, t, y)
        single = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(3)])
    widths = [model.planner.widths[float(v)] for v in t]
    assert len({str(w) for w in widths}) > 1  # the timesteps really chose different sub-networks
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def test_cached_slices_follow_weight_updates():
    model = DyDiT.from_dit(random_dit()).eval()
    set_width(model, heads_on=[True, False, False], groups_on=[False, True, True])
    x, t, y = inputs()
    with torch.no_grad():
        model(x, t, y)
        other = random_dit(seed=5)
        params = [p for n, p in model.named_parameters() if not n.startswith("routers.")]
        torch._foreach_lerp_(params, [p for p in other.parameters()], 0.5)  # an EMA-style in-place update
        torch.testing.assert_close(model(x, t, y), model(x, t, y, masked=True), atol=1e-5, rtol=1e-5)
        model.to(torch.float64)
        torch.testing.assert_close(
            model(x.double(), t, y), model(x.double(), t, y, masked=True), atol=1e-10, rtol=1e-10
        )


# ---------------------------------------------------------------- FLOPs
def count_macs(fn) -> float:
    """MACs of the matmuls, convolutions and attention fn runs, counted by torch's FlopCounterMode (FLOPs/2);
    CPU SDPA is mapped to torch's own SDPA formula."""
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: (
            flop_counter.sdpa_flop_count(q, k, v)
        )
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops() / 2


@pytest.mark.parametrize(
    "heads_on,groups_on,keep",
    [
        ((True,) * 3, (True,) * 3, None),
        ((False, True, False), (True, False, False), 0.5),
        ((False,) * 3, (False,) * 3, 0.3),
    ],
)
def test_flops_accounting_matches_a_direct_count(heads_on, groups_on, keep):
    model = DyDiT.from_dit(random_dit(), DyDiTOptions(token_reduction=4)).eval()  # 16 hidden: few logit ties
    set_width(model, heads_on, groups_on)
    x, t, y = inputs()
    if keep is None:
        all_on(model)
    else:
        assert all(0 < k < 1 for k in calibrate_token_routers(model, x, t, y, keep=keep))
    with torch.no_grad():
        model(x, t, y)  # decide this step's widths once (deployment precomputes them)
        with model.recording() as records:
            macs = count_macs(lambda: model(x, t, y))
    rec = records[0]
    acc = dynamic_flop_breakdown(model, rec["heads"], rec["groups"], rec["tokens"])
    # the counter sees every matmul/conv/SDPA but no norm: everything else in the breakdown is counted
    assert macs == pytest.approx(3 * (acc["total"] - acc["norms"]), rel=1e-12)
    dense = flop_breakdown(model.config)
    assert acc["dense_total"] == dense["total"]
    if keep is None:
        assert rec["tokens"] == [1.0, 1.0]
        assert acc["total"] == dense["total"] + acc["token_router"]


def test_training_flops_ratio_is_the_blocks_ratio_and_reaches_the_routers():
    model = DyDiT.from_dit(random_dit()).train()
    set_width(model, heads_on=[True, False, False], groups_on=[False, False, True])
    with torch.no_grad():
        for r in model.routers:
            r.tokens[2].weight.zero_(), r.tokens[2].bias.fill_(14.0)
    x, t, y = inputs()
    aux = {}
    model(x, t, y, generator=torch.Generator().manual_seed(0), aux=aux)
    b = flop_breakdown(model.config)
    a, m = b["per_block_attention"], b["per_block_mlp"]
    expected = (2 / 4 * a + 2 / 4 * m) / (a + m)
    torch.testing.assert_close(aux["flops_ratio"], torch.full((3,), expected))
    aux["flops_ratio"].sum().backward()
    assert all(
        r.heads.bias.grad.abs().sum() > 0 and r.groups.bias.grad.abs().sum() > 0 for r in model.routers
    )


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    x, t, y = inputs(t=(3, 400, 900))
    grads = []
    for ckpt in (False, True):
        model = DyDiT.from_dit(random_dit()).train()
        model.gradient_checkpointing = ckpt
        aux = {}
        out = model(
            x,
            t,
            y,
            force_drop_ids=torch.zeros(3, dtype=torch.long),
            generator=torch.Generator().manual_seed(0),
            aux=aux,
        )
        (out.pow(2).mean() + aux["flops_ratio"].mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_flops_constraint_trains_the_routers_toward_the_target():
    model = all_on(DyDiT.from_dit(random_dit()).train())
    params = [p for n, p in model.named_parameters() if n.startswith("routers.")]
    opt = torch.optim.Adam(params, lr=1.0)
    x, t, y = inputs(n=8, t=tuple(range(0, 800, 100)))
    ratios = []
    for step in range(30):
        aux = {}
        model(x, t, y, generator=torch.Generator().manual_seed(step), aux=aux)
        loss = (aux["flops_ratio"].mean() - 0.5) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        ratios.append(float(aux["flops_ratio"].detach().mean()))
    assert ratios[0] == 1.0
    assert max(ratios[-5:]) < 0.8


# ---------------------------------------------------------------- checkpoints and deployment
def test_save_load_and_exported_width_table(tmp_path):
    model = DyDiT.from_dit(random_dit(), DyDiTOptions(tau=3.0)).eval()
    with torch.no_grad():
        for r in model.routers:
            r.heads.weight.normal_(0, 3.0), r.groups.weight.normal_(0, 3.0)
            r.heads.bias.zero_(), r.groups.bias.zero_(), r.tokens[2].bias.fill_(0.0)
    x, t, y = inputs()
    save_dydit(model, tmp_path / "m.safetensors")
    assert is_dydit_file(tmp_path / "m.safetensors")
    loaded = load_dydit(tmp_path / "m.safetensors")
    assert loaded.options.tau == 3.0 and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))
    table = export_dydit(model, tmp_path / "deploy.safetensors", timesteps=[999, 7, 0])
    deployed = load_dydit(tmp_path / "deploy.safetensors")
    assert deployed.planner.widths == table and set(table) == {999.0, 7.0, 0.0}
    with torch.no_grad():
        assert torch.equal(deployed(x, t, y), model(x, t, y))
    with pytest.raises(ValueError, match="carries its own options"):
        load_dydit(tmp_path / "m.safetensors", options=DyDiTOptions())
    with pytest.raises(ValueError, match="does not fit"):
        deployed.planner.install(deployed, {5.0: [((1,), (0,))] * 2})


def test_plain_dit_checkpoint_loads_as_dydit_and_dense_weights_export_back(tmp_path):
    dense = random_dit()
    save_model(dense, tmp_path / "dit.safetensors")
    assert not is_dydit_file(tmp_path / "dit.safetensors")
    model = load_dydit(tmp_path / "dit.safetensors")  # reordered, routers all on
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), dense(x, t, y), atol=1e-5, rtol=1e-5)
        back = DiT(model.config).eval()
        back.load_state_dict(model.dense_state_dict())
        assert torch.equal(back(x, t, y), model(x, t, y, complete=True))


def test_sampling_with_all_routers_on_gives_the_dense_images():
    dense = random_dit()
    model = all_on(DyDiT.from_dit(dense, reorder=False).eval())
    kw = dict(classes=[0, 3], per_class=2, steps=4, guidance_scale=2.0, seed=0)
    a, b = generate(dense, **kw), generate(model, **kw)
    assert np.array_equal(a.images, b.images)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="adaLN-family"):
        DyDiT(create_model("DiT-Nano/2", variant="in-context", input_size=8, in_channels=1).config)
    with pytest.raises(ValueError, match="equal groups"):
        DyDiT(create_model("DiT-Nano/2", input_size=8, in_channels=1, mlp_ratio=1.3125, num_heads=8).config)
    with pytest.raises(TypeError, match="already a DyDiT"):
        DyDiT.from_dit(DyDiT.from_dit(random_dit()))
    with pytest.raises(ValueError, match="tau"):
        DyDiTOptions(tau=0)
    with pytest.raises(ValueError, match="target_flops"):
        DyDiTTrainOptions(target_flops=1.5)
    with pytest.raises(ValueError, match="one value per block"):
        dynamic_flop_breakdown(DyDiT.from_dit(random_dit()), [4], [4])


# ---------------------------------------------------------------- fine-tuning
def test_target_anneals_from_one_to_lambda():
    opts = DyDiTTrainOptions(target_flops=0.5, hold_steps=100, anneal_steps=1000)
    assert [opts.target_at(s) for s in (0, 99, 100, 600, 1100, 5000)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.5]


def test_dydit_is_a_finetune_method_with_its_routers_trainable():
    method = get_method("dydit")
    with torch.device("meta"):
        model = prepare_model(create_model("DiT-XL/2"), "dydit", target_flops=0.4)
    assert isinstance(model, DyDiT) and model.training
    # by hand, per block: 2 width routers Linear(1152, 15) + token router Linear(1152, 72), Linear(72, 1)
    routers = 28 * (2 * (1152 * 15 + 15) + (1152 * 72 + 72) + (72 + 1))
    assert trainable_summary(model)["trainable"] == 674_834_720 + routers  # all but the position table
    train, dynamic = method.split_options({"target_flops": 0.4, "tau": 2.0})
    assert train.target_flops == 0.4 and dynamic.tau == 2.0
    with pytest.raises(ValueError, match="valid options"):
        method.resolve_options({"lambda": 0.5})


def test_ditlab_finetune_method_dydit_trains_with_the_flops_constraint(tmp_path):
    base_cfg = TrainConfig(
        data="digits", model="DiT-Nano/2", batch_size=16, steps=2, sample_steps=2, progress=False, threads=1,
        out=str(tmp_path / "base"),
    )  # fmt: skip
    base = Trainer(base_cfg).run()["model"]
    out = tmp_path / "dydit"
    args = ["finetune", "--base", base, "--method", "dydit", "--data", "digits", "--steps", "4"]
    args += ["--batch-size", "16", "--out", str(out), "--no-progress", "--threads", "1", "--log-every", "1"]
    args += ["--sample-steps", "2", "--lr", "0.05"]
    for option in ("target_flops=0.5", "hold_steps=1", "anneal_steps=2", "complete_steps=2"):
        args += ["--method-args", option]
    assert cli(args) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["flops_target"] for r in records] == [1.0, 1.0, 0.75, 0.5]
    assert "complete_loss" in records[0] and "complete_loss" not in records[-1]
    assert all(0 < r["flops_ratio"] <= 1 for r in records)
    assert [r["flops_loss"] for r in records] == pytest.approx(
        [(r["flops_ratio"] - r["flops_target"]) ** 2 for r in records], abs=1e-6
    )
    model = load_dydit(out / "model.safetensors")
    assert isinstance(model, DyDiT) and model.objective_spec == load_model(base).objective_spec
    ckpt = sorted((out / "checkpoints").glob("*.pt"))[-1]
    assert is_dydit_file(ckpt) and not is_dydit_file(base)
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(load_dydit(ckpt)(x, t, y), model(x, t, y))  # the checkpoint's EMA = the model
