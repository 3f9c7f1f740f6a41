"""The later DiTs' block options on the class-conditional DiT (issue 18 item 2): SwiGLU MLP (with LightningDiT's
2/3 hidden width), per-head QK RMSNorm, 2-D RoPE with or without the sin-cos table, each a DiTConfig field
reachable from `--model-args`; RoPE's relative property; QK-norm's bound on the attention logits, which is
what keeps low-precision attention finite at scale."""

import pytest
import torch

from ditlab.cli import build_parser
from ditlab.models import DiTConfig, create_model
from ditlab.models.interop import diffusers_config
from ditlab.nn.attention import Attention, rotate
from ditlab.nn.embed import rope_2d
from ditlab.train.cli import config_from_args


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("DiT-Nano/2", input_size=8, in_channels=1, num_classes=10, **kw)


def inputs(n=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.tensor([1, 500, 999])[:n], torch.tensor([0, 4, 9])[:n]


def test_the_options_reach_the_class_conditional_dit_from_the_command_line():
    argv = ["train", "--train-steps", "1"]
    for kv in ("mlp=swiglu", "mlp_two_thirds=true", "qk_norm=true", "rope=true", "pos_embed=sincos"):
        argv += ["--model-args", kv]
    cfg, _ = config_from_args(build_parser(["train"]).parse_args(argv))
    model = create_model("DiT-S/2", **cfg.model_args)
    block = model.blocks[0]
    assert type(block.mlp).__name__ == "SwiGLU" and block.mlp.w1.out_features == int(2 / 3 * 4 * 384)
    assert block.attn.q_norm.weight.shape == (64,) and block.attn.k_norm.weight.shape == (64,)
    assert model.config.rope and model.pos_embed is not None and model.pos_embed.shape == (1, 256, 384)
    # a JSON boolean is lower case; the text 'True' would have switched the option on whatever it said
    with pytest.raises(ValueError, match="qk_norm must be true or false.*qk_norm=true"):
        DiTConfig(qk_norm="False")


def test_rope_scores_depend_only_on_position_differences():
    """q·k after rotation at positions (a, b) equals that at (a + s, b + s): shifting every token by the same
    (row, col) leaves each attention score unchanged, while a different offset changes it."""
    hd, G = 16, 6
    cos, sin = rope_2d(hd, G, G, theta=100.0)
    g = torch.Generator().manual_seed(0)
    q, k = (
        torch.randn(hd, generator=g, dtype=torch.float64),
        torch.randn(hd, generator=g, dtype=torch.float64),
    )
    rope = (cos.double(), sin.double())
    qs = rotate(q.expand(1, 1, G * G, hd), rope)[0, 0]  # q placed at every grid position
    ks = rotate(k.expand(1, 1, G * G, hd), rope)[0, 0]
    scores = (qs @ ks.T).view(G, G, G, G)  # [row_q, col_q, row_k, col_k]
    checked = 0
    for dr, dc in [(1, 0), (0, 2), (3, 1), (-2, -1)]:
        for rq, cq, rk, ck in [(0, 0, 1, 2), (2, 1, 0, 3), (3, 3, 2, 2), (4, 2, 2, 0)]:
            shifted = (rq + dr, cq + dc, rk + dr, ck + dc)
            if all(0 <= i < G for i in shifted):
                assert scores[shifted].item() == pytest.approx(
                    scores[rq, cq, rk, ck].item(), abs=1e-5
                )  # the tables are float32
                checked += 1
    assert checked >= 8
    # not a constant: the same vectors at another offset score differently
    assert abs(scores[0, 0, 1, 2] - scores[0, 0, 2, 1]) > 1e-3
    assert abs(scores[0, 0, 0, 0] - (q @ k)) < 1e-5  # no offset, no rotation between them


def test_rope_with_and_without_the_sin_cos_table():
    plain, both = tiny(rope=True), tiny(rope=True, pos_embed="sincos")
    assert plain.config.pos_embed == "none" and plain.pos_embed is None
    assert both.pos_embed is not None and "pos_embed" in both.state_dict()
    assert torch.equal(both.pos_embed, tiny().pos_embed)  # the same fixed table as the default DiT
    x, t, y = inputs()
    with torch.no_grad():
        for block in (*plain.blocks, *both.blocks):  # open the zero gates, or every block is the identity
            block.adaLN_modulation[1].weight.normal_(0, 0.1)
        plain.final_layer.linear.weight.normal_(0, 0.1)
        both.load_state_dict(plain.state_dict(), strict=False)
        assert not torch.allclose(plain(x, t, y), both(x, t, y))  # the table is added to the tokens
    # switching rotary positions on (or off) re-derives the table unless the config names one
    assert DiTConfig().replace(rope=True).pos_embed == "none"
    assert DiTConfig().replace(rope=True, pos_embed="sincos").pos_embed == "sincos"
    assert DiTConfig(rope=True).replace(rope=False).pos_embed == "sincos"
    assert tiny(pos_embed="none").pos_embed is None  # no positions at all (an ablation)
    with pytest.raises(ValueError, match="unknown pos_embed 'learned'"):
        DiTConfig(pos_embed="learned")


def test_qk_norm_normalises_each_heads_queries_and_keys_to_unit_rms():
    attn = Attention(64, 4, qk_norm=True)
    assert attn.q_norm.weight.shape == (16,) and attn.k_norm.weight.shape == (16,)  # one weight per head dim
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(0)) * 7
    q, k, v = attn.heads(x)
    assert q.shape == k.shape == v.shape == (2, 4, 9, 16)
    for t in (q, k):  # weights start at 1: each (sample, head, token) vector has RMS 1
        torch.testing.assert_close(t.pow(2).mean(-1).sqrt(), torch.ones(2, 4, 9), rtol=1e-5, atol=1e-5)
    raw = attn.qkv(x).view(2, 9, 3, 4, 16)
    assert raw[:, :, 0].pow(2).mean(-1).sqrt().min() > 2  # the raw queries are not unit RMS
    torch.testing.assert_close(v, raw[:, :, 2].transpose(1, 2))  # values are left as they are


@pytest.mark.parametrize("two_thirds", [False, True], ids=["mlp_ratio", "two-thirds"])
def test_swiglu_parameter_count_as_configured(two_thirds):
    gelu = create_model("DiT-S/2", depth=2)  # DiT-S's width, two blocks
    swiglu = create_model("DiT-S/2", depth=2, mlp="swiglu", mlp_two_thirds=two_thirds)
    D = 384
    F = int(2 / 3 * 4 * D) if two_thirds else 4 * D
    assert swiglu.config.mlp_hidden == F
    assert sum(p.numel() for p in swiglu.blocks[0].mlp.parameters()) == 3 * D * F  # w1, w3, w2; no biases
    gelu_mlp = 2 * D * 4 * D + 4 * D + D  # fc1, fc2 and their biases
    extra = (3 * D * F - gelu_mlp) * 2
    assert swiglu.num_parameters() == gelu.num_parameters() + extra
    if two_thirds:  # LightningDiT's rule: the three matrices hold exactly the GELU MLP's weights
        assert 3 * D * F == 2 * D * 4 * D
    with pytest.raises(ValueError, match="mlp_two_thirds sizes a SwiGLU"):
        DiTConfig(mlp_two_thirds=True)


def _fp16_logits(qk_norm: bool, scale: float) -> tuple[torch.Tensor, Attention]:
    torch.manual_seed(0)
    attn = Attention(64, 4, qk_norm=qk_norm)
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1)) * scale
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        return attn.logits(x), attn


def test_qk_norm_keeps_low_precision_attention_logits_finite():
    """Without QK-norm the logits grow with the square of the activations' scale until fp16 overflows and the
    softmax is NaN; with it they stay under √hd·max|w_q|·max|w_k| at every scale."""
    small, _ = _fp16_logits(False, 1.0)
    mid, _ = _fp16_logits(False, 10.0)
    big, _ = _fp16_logits(False, 300.0)
    assert big.dtype == torch.float16
    assert mid.float().abs().max() > 50 * small.float().abs().max()  # ~quadratic growth (the bias aside)
    assert big.isinf().any() and torch.softmax(big, dim=-1).isnan().any()
    for scale in (1.0, 10.0, 300.0, 3000.0):
        logits, attn = _fp16_logits(True, scale)
        bound = 16**0.5 * attn.q_norm.weight.abs().max() * attn.k_norm.weight.abs().max()
        assert logits.isfinite().all() and torch.softmax(logits, dim=-1).isfinite().all()
        assert logits.float().abs().max() <= bound * 1.01  # fp16 rounding of the normed q and k


@pytest.mark.parametrize(
    "option", [dict(mlp="swiglu"), dict(qk_norm=True), dict(rope=True)], ids=["swiglu", "qk-norm", "rope"]
)
def test_diffusers_dit_export_refuses_the_block_options(option):
    """DiTTransformer2DModel has none of these parts: an export would drop or misplace their weights."""
    with pytest.raises(ValueError, match="cannot export to diffusers"):
        diffusers_config(tiny(**option).config)


def _max_logit_after_training(qk_norm: bool, lr: float, steps: int) -> tuple[float, float]:
    """Train a tiny DiT at `lr` for `steps`; -> (largest |attention logit| of any block on a batch, the bound
    √hd·max|w_q|·max|w_k| of its QK-norm weights, or inf without QK-norm)."""
    torch.manual_seed(0)
    model = tiny(qk_norm=qk_norm).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    for _ in range(steps):
        t, noise = torch.randint(0, 1000, (32,), generator=g), torch.randn(32, 1, 8, 8, generator=g)
        loss = (model(x + noise, t, y)[:, :1] - noise).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    seen = []
    hooks = [
        b.attn.register_forward_pre_hook(lambda attn, a: seen.append(attn.logits(a[0]).abs().max().item()))
        for b in model.blocks
    ]
    with torch.no_grad():
        model(x, t, y)
    for hook in hooks:
        hook.remove()
    if not qk_norm:
        return max(seen), float("inf")
    bound = max(
        16**0.5 * b.attn.q_norm.weight.abs().max() * b.attn.k_norm.weight.abs().max() for b in model.blocks
    )
    return max(seen), bound.item()


@pytest.mark.slow
def test_qk_norm_stops_attention_logit_growth_at_a_large_learning_rate():
    """Logit growth (the ViT-22B and LightningDiT failure at scale): at lr 0.05 a few steps push the plain
    attention's logits past 100 (a one-hot softmax; fp16's 65504 is the next stop), QK-norm keeps them at the
    bound its learned weights set."""
    plain, _ = _max_logit_after_training(False, 0.05, 20)
    normed, bound = _max_logit_after_training(True, 0.05, 20)
    assert plain > 100
    assert normed <= bound * (1 + 1e-5) and normed < 20
