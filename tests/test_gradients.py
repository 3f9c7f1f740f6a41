"""Every trainable parameter of every conditioning variant receives a non-zero, finite gradient: a module that
is built but left out of the forward pass, detached, or cut off behind a constant would train nothing and
still pass an output-only test.

The weights are drawn away from the zero init first: adaLN-Zero's zero gates and final layer legitimately
stop every gradient upstream of them at step 0, and this test asks which parameters are connected to the
loss, not what the first step does.
"""

import pytest
import torch

from ditlab.models import create_model
from ditlab.models.zoo import VARIANTS

CASES = {
    "labels+pooled": dict(num_classes=5, pooled_dim=6),  # every embedder: t, y (with its null row), pooled
    "unconditional": dict(num_classes=0),
}


def _dead_parameters(model, kwargs) -> list[str]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([3, 250, 600, 999])
    inputs = {}
    if model.num_classes:
        # label 4 and a forced drop (the null-class row, used by classifier-free guidance)
        inputs.update(y=torch.tensor([0, 3, 4, 1]), force_drop_ids=torch.tensor([0, 0, 0, 1]))
    if kwargs.get("pooled_dim"):
        inputs["pooled"] = torch.randn(4, kwargs["pooled_dim"], generator=g)
    out = model(x, t, **inputs)
    weights = torch.randn(out.shape, generator=g)  # no symmetry for a gradient to cancel in
    (out * weights).sum().backward()
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().gt(0).any() or not p.grad.isfinite().all())
    ]


@pytest.mark.parametrize("fast", [True, False], ids=["fast-paths", "reference-paths"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_parameter_of_every_variant_gets_a_gradient(variant, case, fast):
    torch.manual_seed(0)
    kwargs = CASES[case]
    model = create_model(
        "DiT-Nano/2", variant=variant, input_size=8, in_channels=3, class_dropout_prob=0.1, **kwargs
    ).train()
    model.fast_paths = fast
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 10
    assert _dead_parameters(model, kwargs) == []


BLOCK_OPTIONS = {  # the later DiTs' block options on the class-conditional DiT (issue 18)
    "swiglu": dict(mlp="swiglu"),
    "swiglu-two-thirds": dict(mlp="swiglu", mlp_two_thirds=True),
    "qk-norm": dict(qk_norm=True),
    "rope": dict(rope=True),
    "rope+sincos": dict(rope=True, pos_embed="sincos"),
    "lightning": dict(mlp="swiglu", qk_norm=True, rope=True, norm="rmsnorm", shift=False),
}


@pytest.mark.parametrize("option", list(BLOCK_OPTIONS))
def test_every_parameter_of_each_block_option_gets_a_gradient(option):
    torch.manual_seed(0)
    kwargs = dict(num_classes=5, **BLOCK_OPTIONS[option])
    model = create_model("DiT-Nano/2", input_size=8, in_channels=3, class_dropout_prob=0.1, **kwargs).train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    assert _dead_parameters(model, kwargs) == []
