"""Checkpoint formats: native safetensors with config, official DiT .pt files, clear errors."""

import pytest
import torch

import ditlab
from ditlab.models import create_model, load_model, save_model


def randomised(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([10, 500]), torch.tensor([1, 3])


def test_native_round_trip_needs_nothing_else(tmp_path):
    model = randomised(
        create_model("DiT-Nano/2", input_size=8, in_channels=3, num_classes=4, variant="adaln-single")
    )
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.config == model.config
    x, t, y = inputs()
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_official_bare_state_dict_and_train_checkpoint(tmp_path):
    model = randomised(create_model("DiT-S/2", input_size=8, in_channels=3, num_classes=7, depth=2))
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    loaded = load_model(bare, model="DiT-S/2")  # depth, input size, classes inferred from the tensors
    assert (loaded.config.depth, loaded.config.input_size, loaded.config.num_classes) == (2, 8, 7)
    x, t, y = inputs()
    torch.testing.assert_close(loaded(x, t, y), model(x, t, y), rtol=0, atol=0)

    ema = randomised(create_model("DiT-S/2", input_size=8, in_channels=3, num_classes=7, depth=2), seed=5)
    train = tmp_path / "0050000.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": {}, "args": {"lr": 1e-4}}, train)
    from_train = load_model(train)  # width 384 -> DiT-S, 6 heads
    assert from_train.num_heads == 6
    torch.testing.assert_close(from_train(x, t, y), ema(x, t, y), rtol=0, atol=0)  # EMA preferred


def test_official_state_dict_loads_into_create_model_directly():
    a = randomised(create_model("DiT-S/4", input_size=8, in_channels=3, num_classes=7, depth=1))
    b = create_model("DiT-S/4", input_size=8, in_channels=3, num_classes=7, depth=1)
    b.load_state_dict(a.state_dict())  # no renaming: official names


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    model = create_model("DiT-Nano/2", input_size=8, in_channels=3, num_classes=4)
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match=r"wrong shapes: y_embedder.embedding_table.weight"):
        load_model(path, num_heads=4, num_classes=9)
    other = create_model("DiT-Nano/2", input_size=8, in_channels=3, num_classes=4, conditioning="adaln")
    with pytest.raises(ValueError, match=r"missing keys: blocks.0.adaLN_modulation"):
        from ditlab.models.checkpoint import load_state_dict_checked

        load_state_dict_checked(other, {k: v for k, v in model.state_dict().items() if "adaLN" not in k})


def test_corrupt_and_missing_files(tmp_path):
    model = create_model("DiT-Nano/2", input_size=8, in_channels=3, num_classes=4)
    good = tmp_path / "m.pt"
    torch.save(model.state_dict(), good)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="valid names"):
        load_model(good, model="DiT-Q/2")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": ditlab.DiTConfig()}, path)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        load_model(path)


def test_unknown_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="without a ditlab config"):
        load_model(path)


def test_load_model_reads_adapter_and_dydit_files(tmp_path):
    from ditlab.dydit import DyDiT, save_dydit
    from ditlab.finetune import prepare_model, save_adapter

    base = randomised(create_model("DiT-Nano/2", input_size=8, in_channels=3, num_classes=4))
    base_path = tmp_path / "base.safetensors"
    save_model(base, base_path)
    tuned = prepare_model(load_model(base_path), "difffit")
    with torch.no_grad():
        for p in tuned.parameters():
            if p.requires_grad:
                p.add_(0.01)
    adapter = tmp_path / "adapter.safetensors"
    save_adapter(tuned, adapter, base=base_path)
    x, t, y = inputs()
    loaded = load_model(adapter)  # onto its base, merged into a plain DiT
    torch.testing.assert_close(loaded(x, t, y), tuned.eval()(x, t, y), rtol=1e-5, atol=1e-5)

    dynamic = DyDiT.from_dit(base)
    dyn_path = tmp_path / "dydit.safetensors"
    save_dydit(dynamic, dyn_path)
    assert isinstance(load_model(dyn_path), DyDiT)
