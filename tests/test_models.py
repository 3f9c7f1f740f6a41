"""The DiT backbone: exact parameter counts and Gflops of the paper's zoo, official layout, variants, errors."""

import csv
import math
from pathlib import Path

import pytest
import torch

import ditlab
from ditlab.models import VARIANTS, DiT, create_model, flops, model_config

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
ZOO_TSV = REFERENCE / "dit-model-zoo.tsv"

# The zoo table, so the test also runs where ../shared is absent (values from the reference table).
ZOO = [
    ("DiT-XL/2", 256, 675129632, 118.62),
    ("DiT-XL/4", 256, 675074432, 29.04),
    ("DiT-XL/8", 256, 675683072, 7.39),
    ("DiT-L/2", 256, 458102816, 80.70),
    ("DiT-L/4", 256, 458053760, 19.70),
    ("DiT-L/8", 256, 458594816, 5.01),
    ("DiT-B/2", 256, 130512416, 23.01),
    ("DiT-B/4", 256, 130475648, 5.57),
    ("DiT-B/8", 256, 130881536, 1.42),
    ("DiT-S/2", 256, 32963360, 6.06),
    ("DiT-S/4", 256, 32945024, 1.41),
    ("DiT-S/8", 256, 33148160, 0.36),
    ("DiT-XL/2", 512, 676014368, 524.54),
]


def tiny(variant=None, **kw):
    args = dict(input_size=8, in_channels=3, num_classes=5)
    args.update(kw)
    return create_model("DiT-Nano/2", variant=variant, **args)


def meta_model(name, **kw):
    with torch.device("meta"):  # no memory, no init cost: only shapes
        return create_model(name, **kw)


def test_zoo_table_matches_reference_file():
    if not ZOO_TSV.exists():
        pytest.skip("shared reference table not present")
    rows = list(csv.DictReader(ZOO_TSV.open(), delimiter="\t"))
    assert [(r["model"], int(r["image_size"]), int(r["params_with_pos_embed"])) for r in rows] == [
        z[:3] for z in ZOO
    ]


@pytest.mark.parametrize("name,res,params,gflops", ZOO, ids=[f"{z[0]}@{z[1]}" for z in ZOO])
def test_zoo_parameter_count_and_gflops(name, res, params, gflops):
    model = meta_model(name, input_size=res // 8)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.num_parameters(trainable_only=True) == params - model.pos_embed.numel()
    # within 0.5% of the table, whose values are rounded to 2 decimals (hence the 0.005 half-unit)
    assert abs(flops(model) - gflops) <= 5e-3 * gflops + 0.005


@pytest.mark.parametrize(
    "variant,paper_gflops,paper_params_m",
    [
        ("in-context", 119.37, 449),
        ("cross-attention", 137.62, 598),
        ("adaln", 118.56, 600),
        ("adaln-zero", 118.64, 675),
    ],
)
def test_conditioning_ablation_matches_paper(variant, paper_gflops, paper_params_m):
    cfg = model_config("DiT-XL/2", variant=variant)
    assert flops(cfg) == pytest.approx(paper_gflops, rel=5e-3)
    assert round(meta_model("DiT-XL/2", variant=variant).num_parameters() / 1e6) == pytest.approx(
        paper_params_m, abs=1
    )


def test_official_state_dict_keys_and_shapes():
    ref = REFERENCE / "official-dit-s2-state-dict.tsv"
    if not ref.exists():
        pytest.skip("shared reference table not present")
    rows = list(csv.DictReader(ref.open(), delimiter="\t"))
    expected = [
        (r["key"], tuple(int(s) for s in r["shape"].strip("()").split(",") if s.strip())) for r in rows
    ]
    state = meta_model("DiT-S/2").state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected


def test_adaln_zero_starts_as_identity_and_outputs_zero():
    torch.manual_seed(0)
    model = tiny()
    x = torch.randn(2, 3, 8, 8)
    t, y = torch.tensor([3, 700]), torch.tensor([1, 4])
    tokens = torch.randn(2, 16, 64)
    c = torch.randn(2, 64)
    for block in model.blocks:
        assert torch.equal(block(tokens, c), tokens)
    assert torch.equal(model(x, t, y), torch.zeros(2, 6, 8, 8))


def test_tanh_gated_rms_variant_starts_as_identity():
    model = tiny(variant="adaln-tanh-rms")
    tokens, c = torch.randn(2, 16, 64), torch.randn(2, 64)
    assert torch.equal(model.blocks[0](tokens, c), tokens)  # tanh(0) = 0 gates


def test_adaln_without_zero_init_is_not_identity():
    model = create_model(
        "DiT-Nano/2", variant="adaln-zero-normal-init", input_size=8, in_channels=3, num_classes=5
    )
    tokens, c = torch.randn(2, 16, 64), torch.randn(2, 64)
    assert not torch.allclose(model.blocks[0](tokens, c), tokens)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains(variant):
    torch.manual_seed(0)
    model = create_model(
        "DiT-Nano/2", variant=variant, input_size=(8, 12), in_channels=3, num_classes=5, pooled_dim=7
    )
    x = torch.randn(3, 3, 8, 12)
    out = model(x, torch.tensor([1, 10, 999]), torch.tensor([0, 1, 4]), pooled=torch.randn(3, 7))
    assert out.shape == (3, 6, 8, 12)
    # one step of SGD on a target makes every trainable parameter receive a gradient somewhere
    out = model(x, torch.tensor([1, 10, 999]), torch.tensor([0, 1, 4]), pooled=torch.randn(3, 7))
    (out - torch.randn_like(out)).pow(2).mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_non_square_and_other_grid_sizes():
    torch.manual_seed(0)
    model = tiny(input_size=(8, 16), learn_sigma=False)
    for p in model.final_layer.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 8, 16)
    out = model(x, torch.tensor([5, 6]), torch.tensor([0, 1]))
    assert out.shape == (2, 3, 8, 16)
    # a grid the model was not built for gets a fresh sin-cos table of the right size
    assert model(torch.randn(1, 3, 12, 4), torch.tensor([5]), torch.tensor([2])).shape == (1, 3, 12, 4)


def test_position_table_convention():
    model = tiny(input_size=(4, 6))  # 2 × 3 grid
    pos = model.pos_embed[0]  # (6, 64)
    D = 64
    omega = 1 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D / 4))
    i, j = 1, 2  # token row 1, column 2 -> index 1·3 + 2
    expect = torch.cat(
        [torch.sin(j * omega), torch.cos(j * omega), torch.sin(i * omega), torch.cos(i * omega)]
    )
    torch.testing.assert_close(pos[5], expect.float())


def test_timestep_embedding_is_cos_first_official_frequencies():
    from ditlab.nn.embed import timestep_sinusoid

    t = torch.tensor([0.0, 17.0, 999.0])
    emb = timestep_sinusoid(t, 256)
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    torch.testing.assert_close(emb[:, :128], torch.cos(t[:, None] * freqs))
    torch.testing.assert_close(emb[:, 128:], torch.sin(t[:, None] * freqs))


def test_label_dropout_only_in_training_and_null_class():
    model = tiny(class_dropout_prob=0.5)
    assert model.null_class == 5
    y = torch.zeros(1000, dtype=torch.long)
    torch.manual_seed(0)
    dropped = model.y_embedder.token_drop(y)
    assert 400 < (dropped == 5).sum() < 600
    model.eval()
    e1 = model.y_embedder(y[:4], train=model.training)
    torch.testing.assert_close(e1, model.y_embedder.embedding_table.weight[[0, 0, 0, 0]])


def test_unconditional_and_timestep_only_models():
    model = tiny(num_classes=0)
    assert model.y_embedder is None and model.null_class is None
    out = model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    assert out.shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="num_classes=0"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))


def test_forward_with_cfg_matches_manual_guidance():
    torch.manual_seed(0)
    model = tiny().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    z = torch.randn(2, 3, 8, 8)
    x = torch.cat([z, z])
    y = torch.tensor([1, 2, 5, 5])
    t = torch.tensor([40, 40, 40, 40])
    out = model.forward_with_cfg(x, t, y, cfg_scale=4.0)
    cond, uncond = model(z, t[:2], y[:2]), model(z, t[:2], y[2:])
    torch.testing.assert_close(out[:2, :3], uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(out[:2, 3:], cond[:, 3:])  # the variance channels are not guided
    quirk = model.forward_with_cfg(x, t, y, cfg_scale=4.0, guidance_channels=2)
    torch.testing.assert_close(quirk[:2, 2:3], cond[:, 2:3])


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = tiny(class_dropout_prob=0.0).train()  # no label dropout: both passes see the same labels
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([3, 9]), torch.tensor([0, 1])
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = flag
        model(x, t, y).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_bad_inputs_have_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="in_channels=3"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="multiple of the patch size 2"):
        model(torch.randn(1, 3, 7, 8), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="valid names: DiT-S/2"):
        create_model("DiT-XXL/2")
    with pytest.raises(ValueError, match="unknown conditioning 'film'.*adaln-zero"):
        create_model("DiT-Nano/2", conditioning="film")
    with pytest.raises(ValueError, match="unknown DiT config field"):
        create_model("DiT-Nano/2", hiden_size=3)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        create_model("DiT-Nano/4", input_size=6)


def test_flops_of_a_model_and_an_input():
    model = tiny(input_size=8)
    assert flops(model, torch.zeros(1, 3, 16, 16)) > flops(model) > 0
    assert ditlab.flops(model, (16, 16)) == flops(model, torch.zeros(1, 3, 16, 16))


def test_dit_constructor_accepts_official_keywords():
    model = DiT(
        input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=3
    )
    assert model.config.num_classes == 3 and model.y_embedder.embedding_table.num_embeddings == 4
