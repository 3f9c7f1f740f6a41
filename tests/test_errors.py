"""A broad `except` that wraps an error into a clear one keeps the original as its cause (`raise ... from
err`), so the traceback still shows what really failed."""

import pytest
import torch

from ditlab.models.checkpoint import read_torch_file


def test_an_unreadable_checkpoint_names_the_problem_and_keeps_the_original_error(tmp_path):
    path = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:40])  # cut short, as an interrupted download leaves it
    with pytest.raises(ValueError, match="truncated or corrupt") as info:
        read_torch_file(path)
    assert isinstance(info.value.__cause__, RuntimeError)  # what torch.load raised
