"""Every optimised path against the plain one: the DiT's fast paths (contiguous token stream, in-place
modulate and gated residuals), selective gradient checkpointing, fused AdamW, torch.compile with its
fallback. Speed itself is measured in benchmarks/, never asserted here."""

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ditlab.models import VARIANTS, create_model
from ditlab.nn.attention import Attention, CrossAttention, JointAttention, make_mlp, rotate, split_heads
from ditlab.nn.embed import rope_2d
from ditlab.nn.modulation import Modulation, can_hold, modulate
from ditlab.nn.norms import RMSNorm
from ditlab.train.config import TrainConfig
from ditlab.train.trainer import adamw, compile_or_eager

# Every conditioning path of the Block: gates or none, shift or none, tanh gates, RMSNorm sandwich, in-context
# tokens, cross-attention, adaLN-single tables.
PATH_VARIANTS = ["adaln-zero", "adaln", "adaln-single", "adaln-tanh-rms", "in-context", "cross-attention"]


def random_model(variant="adaln-zero", std=0.2, **kw):
    torch.manual_seed(0)
    args = dict(input_size=8, in_channels=3, num_classes=5, class_dropout_prob=0.0)
    args.update(kw)
    model = create_model("DiT-Nano/2", variant=variant, **args)
    with torch.no_grad():  # away from the zero init, so every branch and gate contributes
        for p in model.parameters():
            p.normal_(0, std)
    return model


def inputs(n=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, generator=g), torch.tensor([5, 500, 999][:n]), torch.tensor([0, 3, 4][:n])


def forward_and_grads(model, fast: bool):
    model.fast_paths = fast
    x, t, y = inputs()
    model.zero_grad()
    out = model(x, t, y)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close(a, b, tol=1e-5):
    # relative to the tensor's scale: outputs of random models reach ~10, gradients ~100
    assert (a - b).abs().max() <= tol * max(1.0, b.abs().max().item()), (a - b).abs().max()


@pytest.mark.parametrize("variant", PATH_VARIANTS)
def test_fast_paths_match_plain_model(variant):
    model = random_model(variant).train()
    fast_out, fast_grads = forward_and_grads(model, True)
    plain_out, plain_grads = forward_and_grads(model, False)
    assert_close(fast_out, plain_out)
    assert fast_grads.keys() == plain_grads.keys() and len(plain_grads) > 10
    for name in plain_grads:
        assert_close(fast_grads[name], plain_grads[name])
    model.eval()
    x, t, y = inputs()
    with torch.no_grad():
        model.fast_paths = True
        fast = model(x, t, y)
        model.fast_paths = False
        assert_close(fast, model(x, t, y))


@pytest.mark.parametrize("variant", PATH_VARIANTS)
def test_inplace_ops_are_bit_identical_to_plain_ops(variant):
    """Same token layout, in-place or not: the same floats, with and without autograd."""
    model = random_model(variant).train()
    model.fast_paths = True
    x, t, y = inputs()
    outs = []
    for inplace in (True, False):
        for block in model.blocks:
            block.inplace_ops = inplace
        model.zero_grad()
        out = model(x, t, y)
        out.square().sum().backward()
        with torch.no_grad():
            no_grad_out = model.eval()(x, t, y)
        model.train()
        outs.append(
            (out.detach(), no_grad_out, [p.grad.clone() for p in model.parameters() if p.grad is not None])
        )
    (a, a_ng, a_g), (b, b_ng, b_g) = outs
    assert torch.equal(a, b) and torch.equal(a_ng, b_ng) and torch.equal(a, a_ng)
    assert all(torch.equal(u, v) for u, v in zip(a_g, b_g))


def test_fast_paths_switch_and_token_layout():
    model = random_model()
    assert model.fast_paths  # on by default
    x = inputs()[0]
    assert model.x_embedder(x).is_contiguous()
    model.fast_paths = False
    assert not model.fast_paths and not model.blocks[0].inplace_ops
    assert not model.x_embedder(x).is_contiguous()  # the plain path keeps the conv output's transposed view


def test_inplace_modulate_and_residual_never_change_what_the_caller_keeps():
    g = torch.Generator().manual_seed(0)
    x, h = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    m = Modulation(*torch.randn(3, 2, 8, generator=g))
    x0, h0 = x.clone(), h.clone()
    expected_mod, expected_res = modulate(x, m.shift, m.scale), x + m.gated(h)
    # with autograd the handed-over tensors are never written (they may be saved for the backward pass)
    xg, hg = x.clone().requires_grad_(), h.clone().requires_grad_()
    assert torch.equal(m.apply(xg, inplace=True), expected_mod)
    assert torch.equal(m.residual(x, hg, inplace=True), expected_res)
    assert torch.equal(xg.detach(), x0) and torch.equal(hg.detach(), h0)
    # without autograd the handed-over temporary is reused, the residual stream x never is
    with torch.no_grad():
        tmp = x.clone()
        assert torch.equal(m.apply(tmp, inplace=True), expected_mod) and not torch.equal(tmp, x0)
        tmp = h.clone()
        assert torch.equal(m.residual(x, tmp, inplace=True), expected_res)
    assert torch.equal(x, x0)


def test_inplace_ops_keep_type_promotion_and_broadcasting():
    """A bf16 branch output with fp32 gates (autocast) must still give the fp32 sum, as the plain path."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 8, generator=g)
    h = torch.randn(2, 5, 8, generator=g).bfloat16()
    m = Modulation(*torch.randn(3, 2, 8, generator=g))
    with torch.no_grad():
        out = m.residual(x, h.clone(), inplace=True)
        assert out.dtype == torch.float32 and torch.equal(out, x + m.gated(h))
        assert modulate(h.clone(), m.shift, m.scale, inplace=True).dtype == torch.float32
        small = torch.randn(1, 5, 8, generator=g)  # would have to grow to (2, 5, 8): not in place
        assert torch.equal(
            modulate(small.clone(), m.shift, m.scale, inplace=True), modulate(small, m.shift, m.scale)
        )
    assert can_hold(x, m.shift[:, None]) and not can_hold(h, x) and not can_hold(small, x)


class OpCounter(TorchDispatchMode):
    """Counts aten ops that actually execute (a checkpoint's saved outputs are not re-executed)."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.__name__] = self.counts.get(func.__name__, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("policy", ["full", "selective"])
def test_checkpoint_policies_give_the_same_gradients_and_selective_recomputes_less(policy):
    model = random_model().train()
    _, plain = forward_and_grads(model, True)
    model.gradient_checkpointing, model.checkpoint_policy = True, policy
    with OpCounter() as counter:
        _, ckpt = forward_and_grads(model, True)
    for name in plain:
        assert_close(ckpt[name], plain[name])
    attention = sum(
        n for op, n in counter.counts.items() if "scaled_dot_product" in op and "backward" not in op
    )
    depth = len(model.blocks)
    # full: every block's attention runs again in the backward pass; selective: its saved output is reused
    assert attention == (2 * depth if policy == "full" else depth)


def test_bad_checkpoint_policy_is_refused():
    model = random_model().train()
    model.gradient_checkpointing, model.checkpoint_policy = True, "some"
    with pytest.raises(ValueError, match="full, selective"):
        model(*inputs())
    with pytest.raises(ValueError, match="unknown checkpoint_policy 'some'"):
        TrainConfig(steps=1, checkpoint_policy="some")


def test_fused_adamw_matches_the_per_tensor_loop():
    torch.manual_seed(0)
    start = [torch.randn(40, 30), torch.randn(30)]
    runs = []
    for fused in (True, False):
        params = [p.clone().requires_grad_() for p in start]
        opt = adamw(params, lr=1e-2, weight_decay=0.05, fused=fused)
        assert opt.param_groups[0]["fused"] is (True if fused else None)
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        runs.append(params)
    for a, b in zip(*runs):
        assert_close(a.detach(), b.detach(), 1e-6)


def test_compile_failure_falls_back_to_the_eager_model(monkeypatch):
    model = random_model().train()

    def broken_compile(module, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    x, t, y = inputs()
    with pytest.warns(UserWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        net = compile_or_eager(model, (x, t, {"y": y}), train=True)
    assert net is model
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("policy", [None, "selective"])
def test_compiled_model_matches_eager_in_training(policy):
    # Inductor computes GELU's tanh and the reductions its own way: ~1e-7 relative per op. Weights at a trained
    # DiT's scale (std 0.05; std 0.2 amplifies that to ~3e-5 at the output of this random model).
    model = random_model(std=0.05).train()
    x, t, y = inputs()
    eager_out, eager_grads = forward_and_grads(model, True)  # plain eager, no checkpointing
    if policy is not None:  # selective checkpointing traced by dynamo (in-place ops inside the region)
        model.gradient_checkpointing, model.checkpoint_policy = True, policy
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # a fallback would make this vacuous
        net = compile_or_eager(model, (x, t, {"y": y}), train=True)
    assert net is not model
    assert all(p.grad is None for p in model.parameters())  # the check's gradients were dropped
    model.zero_grad()
    out = net(x, t, y)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert_close(out.detach(), eager_out)  # measured 4e-7
    for name, p in model.named_parameters():
        if p.grad is not None:  # measured up to 2e-5 of a tensor's largest entry (its small entries)
            assert_close(p.grad, eager_grads[name], 1e-4)


def test_every_registered_variant_has_a_fast_path_checked_here():
    """A new conditioning variant must join PATH_VARIANTS (or be one of the init-only ones below)."""
    init_only = {"adaln-zero-normal-init", "adaln-zero-rmsnorm"}  # same forward as covered variants
    assert set(VARIANTS) - init_only == set(PATH_VARIANTS)


def test_can_hold_is_broadcasting_that_keeps_the_shape_and_dtype():
    """The written-out test equals its definition: the in-place result has x's shape and dtype."""
    shapes = [(2, 5, 8), (2, 1, 8), (1, 5, 8), (5, 8), (8,), (1,), (), (2, 5, 1), (3, 5, 8), (2, 5, 4)]
    shapes += [(1, 2, 5, 8), (2, 2, 5, 8), (2, 0, 8)]
    for x in (torch.zeros(2, 5, 8), torch.zeros(2, 5, 8, dtype=torch.bfloat16), torch.zeros(2, 1, 8)):
        for shape in shapes:
            for dtype in (torch.float32, torch.bfloat16, torch.float64):
                other = torch.zeros(shape, dtype=dtype)
                try:
                    grown = torch.broadcast_shapes(x.shape, shape) != x.shape
                except RuntimeError:  # not broadcastable at all
                    grown = True
                expected = not grown and torch.promote_types(x.dtype, dtype) == x.dtype
                assert can_hold(x, other) == expected, (x.shape, x.dtype, shape, dtype)
    x = torch.zeros(2, 5, 8)
    assert can_hold(x, torch.zeros(2, 1, 8), torch.zeros(8)) and not can_hold(
        x, torch.zeros(8), torch.zeros(3, 1, 1)
    )


def _real_rotation(x, cos, sin):
    pairs = x.unflatten(-1, (-1, 2))
    return x * cos.to(x.dtype) + torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2) * sin.to(
        x.dtype
    )


def test_rotary_positions_as_complex_products_equal_the_real_form():
    N, T, heads, hd = 2, 12, 3, 8
    cos, sin = rope_2d(hd, 3, 3, extra=3, theta=256.0, lead=4, sequence_axis=True)
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(N, T, 3 * heads * hd, generator=g)
    q, k, _ = (t.transpose(1, 2) for t in split_heads(qkv, 3, heads))  # strided views, as in attention
    for x in (q, k, q.contiguous(), q.double()):  # to float rounding (a fused multiply-add in some layouts)
        torch.testing.assert_close(rotate(x, (cos, sin)), _real_rotation(x, cos, sin), atol=1e-6, rtol=1e-6)
    # what view_as_complex cannot take goes the real way: bf16 (autocast), an odd offset
    odd = torch.randn(N, heads, T, hd + 1, generator=g)[..., 1:]
    for x in (q.bfloat16(), odd):
        assert torch.equal(rotate(x, (cos, sin)), _real_rotation(x, cos, sin))
    # and gradients flow through the complex view
    x = q.clone().requires_grad_()
    rotate(x, (cos, sin)).square().sum().backward()
    y = q.clone().requires_grad_()
    _real_rotation(y, cos, sin).square().sum().backward()
    torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize("kind", ["plain", "qk-norm-rope", "joint", "cross"])
def test_attention_reaches_its_output_projection_without_copying_tokens(kind):
    """Queries normed token-major: the attention output comes back token-major and the output projection
    reads it as a view (no clone/copy of the (N, T, D) tokens)."""
    torch.manual_seed(0)
    D, heads, T = 24, 3, 9
    x, ctx = torch.randn(2, T, D), torch.randn(2, 4, D)
    cos, sin = rope_2d(D // heads, 3, 3, extra=4)
    if kind == "joint":
        layer, args, kw = JointAttention(D, heads, qk_norm=True), (x, ctx), dict(rope=(cos, sin))
    elif kind == "cross":
        layer, args, kw = CrossAttention(D, heads), (x, ctx), {}
    elif kind == "plain":
        layer, args, kw = Attention(D, heads), (x,), {}
    else:
        layer, args, kw = Attention(D, heads, qk_norm=True), (x,), dict(rope=(cos[:T], sin[:T]))
    with torch.no_grad(), OpCounter() as counter:
        layer(*args, **kw)
    assert any("scaled_dot_product" in op for op in counter.counts), counter.counts  # it did run
    assert not {"clone", "copy_", "_to_copy", "contiguous"} & set(counter.counts), counter.counts


def test_rms_norm_in_one_call_equals_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16, generator=g))
    x = torch.randn(3, 7, 16, generator=g)
    for inp in (x, x.bfloat16(), x.transpose(0, 1)):
        f = inp.float()
        expected = (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight).to(inp.dtype)
        assert torch.equal(norm(inp), expected)
        assert norm(inp).dtype == inp.dtype


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_inplace_mlp_activations_equal_the_plain_ones_and_follow_fast_paths(kind):
    torch.manual_seed(0)
    mlp, x = make_mlp(kind, 16, 40), torch.randn(2, 5, 16)
    with torch.no_grad():
        fast = mlp(x)
        mlp.inplace = False
        assert torch.equal(mlp(x), fast)
    model = random_model("adaln-tanh-rms")
    model.fast_paths = False
    assert not any(b.mlp.inplace for b in model.blocks) and not model.fast_paths
    model.fast_paths = True
    assert all(b.mlp.inplace for b in model.blocks) and model.fast_paths
