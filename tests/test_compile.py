"""`compile_or_eager` (`--compile`): a compiler that fails falls back to eager with a warning, but a model
that fails is an error, never hidden behind the fallback."""

import pytest
import torch

from ditlab.models import create_model
from ditlab.train.trainer import compile_or_eager


def _model_and_example():
    torch.manual_seed(0)
    model = create_model("DiT-Nano/2", input_size=8, in_channels=3, num_classes=5).train()
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5, 900]), torch.tensor([0, 4])
    return model, (x, t, {"y": y})


def _identity_compile(module, **kwargs):  # a "compiler" that works: the compiled model is the model itself
    return module


@pytest.mark.parametrize("train", [True, False])
def test_a_model_bug_is_raised_not_hidden_behind_the_eager_fallback(monkeypatch, train):
    monkeypatch.setattr(torch, "compile", _identity_compile)
    model, (x, t, kwargs) = _model_and_example()
    wrong_channels = (torch.randn(2, 5, 8, 8), t, kwargs)  # the model cannot run this, compiled or not
    with pytest.raises(ValueError, match="5 channels"):
        compile_or_eager(model, wrong_channels, train=train)
    assert all(p.grad is None for p in model.parameters())


def test_a_working_compiler_returns_the_compiled_model_with_no_gradients_left(monkeypatch):
    compiled = []

    def recording_compile(module, **kwargs):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", recording_compile)
    model, example = _model_and_example()
    assert compile_or_eager(model, example, train=True) is model and compiled == [model]
    assert all(p.grad is None for p in model.parameters())  # the eager and the compiled check's gradients
