"""Interop with diffusers' DiTTransformer2DModel: output parity both ways, lossless weight round trips, the
refusals (differing embedder copies, configs diffusers cannot express) and `ditlab convert`."""

import json
import logging
import sys
import warnings

import pytest
import torch

from ditlab import cli
from ditlab.models import create_model, load_model, save_model
from ditlab.models.interop import (
    OFFICIAL_NUMERICS,
    config_from_diffusers,
    from_diffusers,
    load_diffusers,
    save_diffusers,
    to_diffusers,
)

diffusers = pytest.importorskip("diffusers")
DiTTransformer2DModel = diffusers.DiTTransformer2DModel

TINY = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=2,
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=8,
    num_embeds_ada_norm=10,
)
MISMATCH = "will not compute exactly"


def randomise(module, seed=0):
    """Every trainable tensor random, the zero-initialised gates and output layer included, at scales that keep
    activations O(1): matrices U(±√(3/fan_in)), embedding rows N(0, 1), vectors U(±0.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not p.requires_grad:  # ditlab's fixed position table
                continue
            if "embedding_table" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * (3 / p[0].numel()) ** 0.5)
            else:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.1)
    return module.eval()


def tiny_diffusers(seed=0, **overrides):
    """A random diffusers DiT whose per-block embedder copies are identical, as in every converted checkpoint."""
    torch.manual_seed(seed)
    model = randomise(DiTTransformer2DModel(**{**TINY, **overrides}), seed)
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)
    return model


def tiny_ditlab(seed=0, **overrides):
    fields = dict(input_size=8, hidden_size=32, num_heads=2, depth=2, in_channels=4, num_classes=10)
    return randomise(create_model("DiT-Nano/2", **{**fields, **overrides}), seed)


def batch(n=6):
    """A batch over the timestep range and the labels, the null class (10) included."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 4, 8, 8, generator=g)
    return x, torch.tensor([0, 1, 250, 500, 999, 37])[:n], torch.tensor([0, 3, 9, 10, 10, 5])[:n]


def max_diff(ditlab_model, diffusers_model):
    x, t, y = batch()
    with torch.no_grad():
        return (ditlab_model(x, t, y) - diffusers_model(x, t, y).sample).abs().max().item()


def mismatch_warnings(record):
    return [str(w.message) for w in record if MISMATCH in str(w.message)]


# ------------------------------------------------------------------------------------------ (a) diffusers -> ditlab
def test_diffusers_model_converts_with_identical_outputs(tmp_path):
    dmodel = tiny_diffusers()  # diffusers' default norm_eps=1e-5: it reaches only the norm before the MLP
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = from_diffusers(dmodel)
    assert not [w for w in record if issubclass(w.category, UserWarning)]
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_heads, cfg.depth, cfg.num_classes, cfg.learn_sigma) == (
        32,
        2,
        2,
        10,
        True,
    )
    assert (cfg.timestep_freq_shift, cfg.norm_eps, cfg.mlp_norm_eps) == (1, 1e-6, 1e-5)
    assert max_diff(model, dmodel) <= 1e-5  # measured: 0.0
    # The tolerance is tight enough to see the eps split: one eps for both block norms misses it.
    assert max_diff(from_diffusers(dmodel, mlp_norm_eps=None), dmodel) > 1e-5

    # The same from disk, through a DiTPipeline-style root with a transformer/ subfolder.
    dmodel.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    loaded = load_diffusers(tmp_path / "pipe")
    assert max_diff(loaded, dmodel) <= 1e-5
    via_load_model = load_model(tmp_path / "pipe" / "transformer")  # a directory dispatches here
    assert max_diff(via_load_model, dmodel) <= 1e-5


def test_diffusers_norm_eps_1e6_imports_as_one_eps_and_official_numerics_override():
    dmodel = tiny_diffusers(norm_eps=1e-6)  # every norm at 1e-6: the canonical config has no MLP-only eps
    model = from_diffusers(dmodel)
    assert (model.config.norm_eps, model.config.mlp_norm_eps) == (1e-6, None)
    assert max_diff(model, dmodel) <= 1e-5
    # OFFICIAL_NUMERICS reads diffusers weights as the official DiT: the zoo model's numerics, not diffusers'.
    official = from_diffusers(tiny_diffusers(), **OFFICIAL_NUMERICS).config
    assert (official.timestep_freq_shift, official.norm_eps, official.mlp_norm_eps) == (0, 1e-6, None)


# ------------------------------------------------------------------------------------------ (b) ditlab -> diffusers
@pytest.mark.parametrize("mlp_norm_eps", [1e-5, None])  # diffusers' default norm_eps, and 1e-6 throughout
def test_ditlab_model_exports_with_identical_outputs(tmp_path, mlp_norm_eps):
    model = tiny_ditlab(timestep_freq_shift=1, norm_eps=1e-6, mlp_norm_eps=mlp_norm_eps)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        save_diffusers(model, tmp_path / "transformer")
        in_memory = to_diffusers(model)
    assert not mismatch_warnings(record)
    reloaded = DiTTransformer2DModel.from_pretrained(tmp_path / "transformer").eval()
    assert reloaded.config.norm_eps == (1e-6 if mlp_norm_eps is None else mlp_norm_eps)
    assert max_diff(model, reloaded) <= 1e-5  # measured: 0.0
    assert max_diff(model, in_memory) <= 1e-5
    # Nothing missing or extra: the written tensors are exactly diffusers' own state dict.
    assert set(reloaded.state_dict()) == set(DiTTransformer2DModel(**reloaded.config).state_dict())


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(timestep_freq_shift=1, norm_eps=1e-5), "attention-branch norm uses norm_eps=1e-05"),
        (dict(timestep_freq_shift=0, norm_eps=1e-6), "official timestep sinusoid"),
    ],
)
def test_export_warns_when_diffusers_cannot_match(tmp_path, fields, match):
    model = tiny_ditlab(**fields)
    with pytest.warns(UserWarning, match=match):
        save_diffusers(model, tmp_path / "t")
    reloaded = DiTTransformer2DModel.from_pretrained(tmp_path / "t").eval()
    assert max_diff(model, reloaded) > 0  # the warning is not a false alarm


# ------------------------------------------------------------------------------------------ (c) round trip
@pytest.mark.parametrize("learn_sigma, mlp_norm_eps", [(True, 1e-5), (False, None)])
def test_round_trip_is_bit_exact(tmp_path, learn_sigma, mlp_norm_eps):
    model = tiny_ditlab(
        timestep_freq_shift=1, norm_eps=1e-6, mlp_norm_eps=mlp_norm_eps, learn_sigma=learn_sigma
    )
    save_diffusers(model, tmp_path / "t")
    for back in (load_diffusers(tmp_path / "t"), from_diffusers(to_diffusers(model))):
        assert back.config == model.config
        theirs = back.state_dict()
        assert set(theirs) == set(model.state_dict())
        for key, value in model.state_dict().items():
            assert torch.equal(theirs[key], value), key


# ------------------------------------------------------------------------------------------ (d) refusals
def test_differing_embedder_copies_are_refused_unless_a_copy_is_chosen():
    dmodel = tiny_diffusers(norm_eps=1e-6)
    with torch.no_grad():  # as after training in diffusers: block 1's copy has drifted
        dmodel.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(0.01)
    with pytest.raises(ValueError, match=r"embedder copies of blocks \[1\] differ.*embedder_block"):
        from_diffusers(dmodel)
    model = from_diffusers(dmodel, embedder_block=1)
    copy = dmodel.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias
    assert torch.equal(model.t_embedder.mlp[0].bias, copy)
    with pytest.raises(ValueError, match="out of range"):
        from_diffusers(dmodel, embedder_block=2)


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(conditioning="in-context"), "conditioning"),
        (dict(conditioning="cross-attention"), "conditioning"),
        (dict(conditioning="adaln"), "conditioning"),
        (dict(conditioning="adaln-single"), "conditioning"),
        (dict(norm="rmsnorm"), "norm"),
        (dict(shift=False), "shift"),
        (dict(gate_fn="tanh"), "gate_fn"),
        (dict(sandwich_norm=True), "sandwich_norm"),
        (dict(pooled_dim=8), "pooled_dim"),
        (dict(mlp_ratio=2.0), "mlp_ratio"),
        (dict(input_size=(8, 4)), "input_size"),
        (dict(num_classes=0), "num_classes"),
        (dict(class_dropout_prob=0.0), "class_dropout_prob"),
    ],
)
def test_non_exportable_configs_name_the_field(tmp_path, fields, field):
    model = tiny_ditlab(**fields)
    with pytest.raises(ValueError, match=f"cannot export to diffusers: {field}="):
        save_diffusers(model, tmp_path / "t")
    with pytest.raises(ValueError, match=field):
        to_diffusers(model)
    assert not (tmp_path / "t").exists()


def test_legacy_transformer2d_config_reads_like_dit_transformer():
    # Hub DiT folders converted in 2022 name the generic class and omit newer fields (norm_eps: default 1e-5).
    legacy = {
        "_class_name": "Transformer2DModel",
        **TINY,
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "cross_attention_dim": None,
        "norm_elementwise_affine": False,
        "norm_type": "ada_norm_zero",
        "num_vector_embeds": None,
        "use_linear_projection": False,
    }
    assert config_from_diffusers(legacy) == config_from_diffusers(
        {"_class_name": "DiTTransformer2DModel", **TINY}
    )
    with pytest.raises(ValueError, match="cross_attention_dim"):
        config_from_diffusers({**legacy, "cross_attention_dim": 768})


def test_non_dit_diffusers_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="activation_fn"):
        config_from_diffusers({**TINY, "activation_fn": "gelu"})
    with pytest.raises(ValueError, match="out_channels"):
        config_from_diffusers({**TINY, "out_channels": 5})
    with pytest.raises(ValueError, match="not a DiT"):
        config_from_diffusers({"_class_name": "UNet2DModel"})
    with pytest.raises(FileNotFoundError, match="transformer/ subfolder"):
        load_diffusers(tmp_path)


# ------------------------------------------------------------------------------------------ (e) ditlab convert
def test_convert_cli_official_pt_to_native_and_diffusers(tmp_path, capsys):
    # DiT-Nano/2 as the zoo has it (an official file does not record the head count); official numerics.
    model = tiny_ditlab(hidden_size=64, num_heads=4)
    pt = tmp_path / "official.pt"
    torch.save(model.state_dict(), pt)  # an official-style bare state dict
    x, t, y = batch()
    with torch.no_grad():
        expected = model(x, t, y)

    assert cli.main(["convert", str(pt), str(tmp_path / "n.safetensors"), "--model", "DiT-Nano/2"]) == 0
    native = load_model(tmp_path / "n.safetensors")
    assert native.config == model.config
    torch.testing.assert_close(native(x, t, y), expected, rtol=0, atol=0)

    assert (
        cli.main(["convert", str(pt), str(tmp_path / "d"), "--model", "DiT-Nano/2"]) == 0
    )  # folder: diffusers
    assert "official timestep sinusoid" in capsys.readouterr().err
    DiTTransformer2DModel.from_pretrained(tmp_path / "d")  # diffusers reads it
    # Back from the folder with the official numerics: the official model again, bit for bit.
    argv = ["convert", str(tmp_path / "d"), str(tmp_path / "back.safetensors"), "--official-numerics"]
    assert cli.main(argv) == 0
    back = load_model(tmp_path / "back.safetensors")
    assert back.config == model.config
    torch.testing.assert_close(back(x, t, y), expected, rtol=0, atol=0)
    # Likewise from a hub-style folder whose config omits norm_eps (diffusers' default 1e-5 for the MLP norm).
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    del config["norm_eps"]
    (tmp_path / "d" / "config.json").write_text(json.dumps(config))
    assert cli.main([*argv[:2], str(tmp_path / "back2.safetensors"), "--official-numerics"]) == 0
    assert load_model(tmp_path / "back2.safetensors").config == model.config

    capsys.readouterr()
    assert cli.main(["convert", str(pt), str(tmp_path / "x.safetensors"), "--official-numerics"]) == 2
    assert "--embedder-block and --official-numerics apply to diffusers" in capsys.readouterr().err
    assert cli.main(["convert", str(pt), str(tmp_path / "x.bin"), "--model", "DiT-Nano/2"]) == 2
    assert "cannot tell the output format" in capsys.readouterr().err


def test_folders_need_no_diffusers_install_and_in_memory_says_how_to_get_it(tmp_path, monkeypatch):
    model = tiny_ditlab(timestep_freq_shift=1, norm_eps=1e-6)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed: any import of it fails
    save_diffusers(model, tmp_path / "t")
    back = load_diffusers(tmp_path / "t")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ImportError, match=r'pip install "ditlab\[diffusers\]"'):
        to_diffusers(model)


# ------------------------------------------------------------------------------------------ (f) native <-> diffusers
OBJECTIVES = {
    "ddpm": dict(kind="ddpm", schedule="linear", steps=1000, learn_sigma=True, timestep_sampling="uniform"),
    "flow": dict(
        kind="flow", schedule="linear", steps=1000, learn_sigma=False, timestep_sampling="logit_normal"
    ),
}


def recorded_model(kind):
    """A trained-looking native model: official numerics (diffusers computes otherwise), a non-default
    attention-branch eps and label dropout, its objective and its data with class names."""
    fields = dict(timestep_freq_shift=0, norm_eps=1e-5, mlp_norm_eps=1e-6, class_dropout_prob=0.2)
    model = tiny_ditlab(learn_sigma=OBJECTIVES[kind]["learn_sigma"], **fields)
    model.objective_spec = OBJECTIVES[kind]
    names = [f"class {i}" for i in range(10)]
    model.data_spec = dict(name="folder:/data/x", class_names=names, image_size=[8, 8], channels=4)
    return model


@pytest.mark.parametrize("kind", ["ddpm", "flow"])
def test_native_diffusers_native_round_trip_changes_nothing(tmp_path, capsys, kind):
    import ditlab

    model = recorded_model(kind)
    save_model(model, tmp_path / "a.safetensors")
    assert cli.main(["convert", str(tmp_path / "a.safetensors"), str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "official timestep sinusoid" in err and "--official-numerics" in err
    assert len(err.strip().splitlines()) == 1  # the numerics note is one line
    # diffusers still loads the folder (the record is a private key it skips) and keeps the record.
    dmodel = DiTTransformer2DModel.from_pretrained(tmp_path / "d")
    assert dmodel.config["_ditlab"]["ditlab_objective"] == OBJECTIVES[kind]

    assert cli.main(["convert", str(tmp_path / "d"), str(tmp_path / "b.safetensors")]) == 0
    assert "official-numerics" not in capsys.readouterr().err  # nothing to say: the record is exact
    back = load_model(tmp_path / "b.safetensors")
    assert back.config == model.config
    assert back.objective_spec == model.objective_spec and back.data_spec == model.data_spec
    assert set(back.state_dict()) == set(model.state_dict())
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    x, t, y = batch()
    with torch.no_grad():
        assert torch.equal(back(x, t, y), model(x, t, y))
    # Samples with the default sampler of the recorded objective (Euler for flow, DDIM for DDPM), bit for bit.
    # (4-channel latents: compared as the raw tensors the sampler returns)
    a, a_labels = ditlab.generate(model, classes=[0, 3], per_class=2, steps=4, seed=0, return_tensors=True)
    b, b_labels = ditlab.generate(back, classes=[0, 3], per_class=2, steps=4, seed=0, return_tensors=True)
    assert torch.equal(a, b) and torch.equal(a_labels, b_labels)
    # The in-memory path keeps the record too.
    again = from_diffusers(to_diffusers(model))
    assert (again.config, again.objective_spec, again.data_spec) == (
        model.config,
        model.objective_spec,
        model.data_spec,
    )


def test_diffusers_loads_a_recorded_folder_without_complaint(tmp_path):
    """diffusers logs "... are not expected and will be ignored" for unknown public config keys; the record's
    key is private, so it says nothing."""
    from diffusers.utils import logging as dlogging

    class Catch(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    save_diffusers(tiny_ditlab(timestep_freq_shift=1), tmp_path / "d")
    catch = Catch()
    dlogging.get_logger("diffusers").addHandler(catch)
    try:
        DiTTransformer2DModel.from_pretrained(tmp_path / "d")
    finally:
        dlogging.get_logger("diffusers").removeHandler(catch)
    assert not [m for m in catch.messages if "not expected" in m]


def test_folder_without_record_is_read_as_diffusers_with_a_one_line_note(tmp_path, capsys):
    dmodel = tiny_diffusers()
    dmodel.save_pretrained(tmp_path / "hub")  # a hub-style folder: no ditlab record
    assert cli.main(["convert", str(tmp_path / "hub"), str(tmp_path / "n.safetensors")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ditlab record" in err[0] and "--official-numerics" in err[0]
    assert load_model(tmp_path / "n.safetensors").config.timestep_freq_shift == 1


def test_a_record_that_disagrees_with_the_diffusers_fields_is_refused(tmp_path):
    save_diffusers(tiny_ditlab(timestep_freq_shift=1), tmp_path / "d")
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    config["_ditlab"]["ditlab_config"]["num_classes"] = 7
    (tmp_path / "d" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"disagree \(num_classes 7 vs 10\).*Delete the '_ditlab' entry"):
        load_diffusers(tmp_path / "d")
