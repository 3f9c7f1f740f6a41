"""Checkpoint formats: `load_model` dispatches through the registry, each format registered by its own package;
zoo names are checked against checkpoints that record their config; run folders load their model; and the
package layering has no import cycle (module- or function-level), checked here with `ast`."""

import ast
from pathlib import Path

import pytest
import torch

import ditlab
from ditlab import cli
from ditlab.models import create_model, formats, load_model, save_model
from ditlab.models.formats import CheckpointFormat, find_format, probe, registered_formats
from ditlab.train import TrainConfig, Trainer

PACKAGE = Path(ditlab.__file__).resolve().parent


# ------------------------------------------------------------------------------------------ import cycles
def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at `root`."""
    mods = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _absolute(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an `from ... import` names (relative imports resolved against `name`)."""
    if not node.level:
        return node.module or ""
    here = name.split(".") if is_package else name.split(".")[:-1]
    here = here[: len(here) - (node.level - 1)]
    return ".".join(here + ([node.module] if node.module else []))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its body (functions included). A name taken
    from a package's __init__ that the __init__ itself imports from a child counts as an import of that child;
    an __init__'s imports of its own children are re-exports, not edges."""
    mods = module_files(root)
    trees = {m: ast.parse(f.read_text()) for m, f in mods.items()}

    def owner(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    reexports: dict[str, dict[str, str]] = {}  # package -> {name: child module that defines it}
    for m, tree in trees.items():
        if mods[m].name == "__init__.py":
            reexports[m] = {}
            for node in tree.body:
                if isinstance(node, ast.ImportFrom):
                    base = _absolute(m, node, True)
                    for alias in node.names:
                        child = owner(f"{base}.{alias.name}")
                        if child and child.startswith(m + "."):
                            reexports[m][alias.asname or alias.name] = child

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [owner(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(m, node, mods[m].name == "__init__.py")
                targets = []
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        targets.append(f"{base}.{alias.name}")
                    else:
                        targets.append(reexports.get(base, {}).get(alias.name) or owner(base))
            else:
                continue
            graph[m].update(t for t in targets if t and t != m)
        if mods[m].name == "__init__.py":
            graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_check_sees_function_level_and_reexported_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import helper\n")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.impl import helper\n")
    (pkg / "sub" / "impl.py").write_text("def helper():\n    from ..user import use\n    return use\n")
    (pkg / "user.py").write_text("from pkg.sub import helper\n\ndef use():\n    return helper\n")
    (pkg / "leaf.py").write_text("from . import user\n")
    assert cycles(import_graph(pkg)) == [["pkg.sub.impl", "pkg.user"]]
    (pkg / "sub" / "impl.py").write_text("def helper():\n    return 1\n")
    assert cycles(import_graph(pkg)) == []


def test_ditlab_has_no_import_cycle():
    found = cycles(import_graph(PACKAGE))
    assert found == [], f"import cycles (module- or function-level imports): {found}"


# The package's floors, bottom first: a unit may use its own floor and the ones below, never one above
# (module- or function-level). The library (parts, objectives, data, models, sampling, evaluation) sits under
# the applications that train and fine-tune, and those under the commands.
LAYERS = [
    {"atomic", "cli_args", "configs", "runtime", "distributed", "nn"},
    {"models", "diffusion", "data"},
    {"autoencoders"},
    {"sampling"},
    {"eval"},
    {"text"},
    {"train"},
    {"dydit", "ablate", "sample_shards"},
    {"finetune"},
    {"loading"},
    {"__init__"},
    {"cli", "sampling_cli", "demo", "serve"},
    {"__main__"},
]


def unit_floor(module: str) -> int:
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else "__init__"
    for floor, units in enumerate(LAYERS):
        if unit in units:
            return floor
    raise ValueError(f"{module}: its unit {unit!r} has no floor in LAYERS; add it where it belongs")


def test_no_lower_floor_of_ditlab_imports_a_higher_one():
    graph = import_graph(PACKAGE)
    upward = sorted(
        f"{a} -> {b}" for a, targets in graph.items() for b in targets if unit_floor(b) > unit_floor(a)
    )
    assert upward == [], f"imports that run up the layering (move the shared code down): {upward}"


# ------------------------------------------------------------------------------------------ the registry
def test_every_format_registers_from_the_package_that_owns_it():
    owners = {
        "native": "ditlab.models.checkpoint",
        "official": "ditlab.models.checkpoint",
        "training": "ditlab.models.checkpoint",
        "run": "ditlab.models.checkpoint",
        "diffusers": "ditlab.models.interop",
        "diffusers-SD3Transformer2DModel": "ditlab.models.interop_text",
        "diffusers-PixArtTransformer2DModel": "ditlab.models.interop_text",
        "diffusers-FluxTransformer2DModel": "ditlab.models.interop_text",
        "diffusers-ZImageTransformer2DModel": "ditlab.models.interop_text",
        "adapter": "ditlab.finetune.adapter",
        "dydit-safetensors": "ditlab.dydit.checkpoint",
        "dydit-torch": "ditlab.dydit.checkpoint",
        "autoencoder": "ditlab.autoencoders.checkpoint",
        "autoencoder-run": "ditlab.autoencoders.checkpoint",
        "diffusers-autoencoder-kl": "ditlab.autoencoders.checkpoint",
        "diffusers-vq-model": "ditlab.autoencoders.checkpoint",
    }
    found = {f.name: f.load.__module__ for f in registered_formats()}
    assert found == owners


def tiny(**overrides):
    return create_model("DiT-Nano/2", input_size=8, in_channels=3, num_classes=4, **overrides).eval()


def test_a_new_format_plugs_in_without_touching_the_dispatcher(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"ditlab_config": "{}", "made_by": "test"})
    sentinel = tiny()
    fmt = CheckpointFormat(
        "test", "safetensors", lambda p: p.metadata.get("made_by") == "test", lambda p, **_: sentinel, 50
    )
    monkeypatch.setitem(formats._FORMATS, "test", fmt)
    assert find_format(probe(path)) is fmt
    assert load_model(path) is sentinel


def test_formats_are_told_apart_by_what_the_file_says(tmp_path):
    from ditlab.dydit import DyDiT, save_dydit

    model = tiny()
    save_model(model, tmp_path / "plain.safetensors")
    save_model(DyDiT.from_dit(model), tmp_path / "routers.safetensors")  # a DyDiT saved as a plain DiT
    save_dydit(DyDiT.from_dit(model), tmp_path / "dydit.safetensors")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    torch.save({"config": model.config.to_dict(), "ema": model.state_dict()}, tmp_path / "train.pt")
    names = {p.name: find_format(probe(p)).name for p in sorted(tmp_path.iterdir())}
    assert names == {
        "plain.safetensors": "native",
        "routers.safetensors": "dydit-safetensors",
        "dydit.safetensors": "dydit-safetensors",
        "bare.pt": "official",
        "train.pt": "training",
    }
    assert isinstance(load_model(tmp_path / "routers.safetensors"), DyDiT)
    # A training checkpoint records its config, like a native file: overrides are refused, not ignored.
    with pytest.raises(ValueError, match="carries its config; overrides are not accepted"):
        load_model(tmp_path / "train.pt", num_classes=9)


# ------------------------------------------------------------------------------------------ issue 14 item 5
def test_a_model_name_is_checked_against_a_checkpoint_that_records_its_config(tmp_path, capsys):
    model = tiny()
    save_model(model, tmp_path / "m.safetensors")
    torch.save({"config": model.config.to_dict(), "ema": model.state_dict()}, tmp_path / "train.pt")
    for path in (tmp_path / "m.safetensors", tmp_path / "train.pt"):
        with pytest.raises(
            ValueError, match=r"records its own config, which is not DiT-XL/2: depth 2 \(not 28\)"
        ):
            load_model(path, model="DiT-XL/2")
        assert load_model(path, model="DiT-Nano/2").config == model.config  # the right name is accepted
    argv = ["sample", str(tmp_path / "m.safetensors"), "--classes", "1", "--per-class", "1", "--steps", "2"]
    argv += ["--no-progress", "--out", str(tmp_path / "s")]
    assert cli.main([*argv, "--model", "DiT-XL/2"]) == 2  # one error line, no traceback
    assert "drop --model" in capsys.readouterr().err
    assert cli.main([*argv, "--model", "DiT-Nano/2"]) == 0
    assert (tmp_path / "s.npz").is_file()


def test_convert_reads_a_run_folder_as_its_model(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = TrainConfig(
        data="digits", model="DiT-Nano/2", batch_size=16, steps=2, sample_steps=2, progress=False, threads=1
    )
    Trainer(cfg.replace(out=str(run))).run()
    trained = load_model(run / "model.safetensors")
    assert trained.data_spec["class_names"] == [str(i) for i in range(10)]  # the data is recorded

    assert cli.main(["convert", str(run), str(tmp_path / "m.safetensors")]) == 0
    converted = load_model(tmp_path / "m.safetensors")
    assert converted.config == trained.config
    assert (converted.objective_spec, converted.data_spec) == (trained.objective_spec, trained.data_spec)
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in trained.state_dict().items())
    assert cli.main(["convert", str(run), str(tmp_path / "d"), "--format", "diffusers"]) == 0
    assert load_model(tmp_path / "d").config == trained.config
    capsys.readouterr()
    assert cli.main(["convert", str(run), str(tmp_path / "x.safetensors"), "--official-numerics"]) == 2
    assert "apply to diffusers folders only" in capsys.readouterr().err
