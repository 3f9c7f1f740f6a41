"""The registry of checkpoint formats, and `load_model`, which dispatches a path to the format it holds.

A format is recognised by what the file says about itself, read without building a model (a `Probe`): for a
safetensors file its header metadata and tensor names, for a torch `.pt` file its top-level entries (read once,
`weights_only`), for a folder its files. Each format registers itself from the package that owns it:

    ditlab.models.checkpoint   native safetensors, official .pt files (state dicts or train.py checkpoints),
                               ditlab training checkpoints, ditlab run folders (their model.safetensors)
    ditlab.models.interop      diffusers folders (DiTTransformer2DModel / DiTPipeline)
    ditlab.models.interop_text diffusers SD3Transformer2DModel / PixArtTransformer2DModel /
                               FluxTransformer2DModel / ZImageTransformer2DModel folders (text-to-image)
    ditlab.finetune.adapter    fine-tuning adapter files (loaded onto their base, merged)
    ditlab.dydit.checkpoint    DyDiT files and DyDiT training checkpoints
    ditlab.autoencoders.checkpoint  ditlab autoencoder files and `ditlab vae train` run folders, diffusers
                               AutoencoderKL / VQModel folders (read by `load_autoencoder`)

This module imports nothing above `ditlab.models`, so any package may register a format without an import
loop; `ditlab.loading` (imported by `import ditlab`) imports every format package, so all of them are
registered before anything can call `load_model`. A new format is a `register_format(CheckpointFormat(...))`
call in its own package plus one import line in `ditlab.loading`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ditlab.models.zoo import MODELS

KINDS = ("folder", "safetensors", "torch")
# The geometry a zoo name fixes; a checkpoint that records its own config is checked against it.
ZOO_FIELDS = ("depth", "hidden_size", "num_heads", "patch_size")


@dataclass(frozen=True)
class Probe:
    """What a checkpoint says about itself.

    kind: "folder", "safetensors" (by suffix) or "torch" (any other file).
    metadata: the safetensors header metadata ({} for other kinds).
    keys: the safetensors tensor names, the torch file's top-level keys, or the folder's file names.
    content: the torch file's object (read once with weights_only=True); None for other kinds.
    """

    path: Path
    kind: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    keys: tuple[str, ...] = ()
    content: Any = None


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint format.

    matches(probe): whether a probe of `kind` is this format. Among several matching formats the one with the
        highest `priority` wins: a refinement (a DyDiT file is also a native file) outranks its base format.
    load(probe, *, device, model, **overrides): the model, in eval mode on `device`; `model` is the zoo name
        the caller gave (or None), for formats whose tensors do not say everything.
    accepts_overrides: DiTConfig overrides may set what the file does not fix (official files, diffusers
        folders); else they are refused.
    records_config: the loaded config is the file's own, so a `model=` zoo name is checked against it.
    """

    name: str
    kind: str
    matches: Callable[[Probe], bool]
    load: Callable[..., torch.nn.Module]
    priority: int = 0
    accepts_overrides: bool = False
    records_config: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"format {self.name!r}: unknown kind {self.kind!r}; choose one of: {', '.join(KINDS)}"
            )


_FORMATS: dict[str, CheckpointFormat] = {}


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    """Add (or, for the same name, replace) a format; returns it."""
    _FORMATS[fmt.name] = fmt
    return fmt


def registered_formats() -> list[CheckpointFormat]:
    """Every registered format, most specific first within each kind."""
    return sorted(_FORMATS.values(), key=lambda f: (KINDS.index(f.kind), -f.priority, f.name))


def _first_line(err: BaseException) -> str:
    """`Type: first line of the message` of a library error, for a message that names the file too."""
    text = str(err).strip()
    return f"{err.__class__.__name__}: {text.splitlines()[0]}" if text else err.__class__.__name__


# What a loader's code raises on a file whose content is malformed in a way its format's checks did not
# foresee (a metadata entry of the wrong JSON type, a tensor of an odd rank, a missing entry): turned into
# one ValueError naming the file and the format, the original kept as its cause.
MALFORMED = (KeyError, IndexError, TypeError, AttributeError, RuntimeError, OverflowError, SafetensorError)


def read_torch_file(path: Path) -> dict:
    """A `.pt` file's object, read with `torch.load(weights_only=True)` (never executes code from it).

    Every failure is one ValueError naming the file: a pickle that would import or call something (the way
    a malicious file runs code) is refused as such, anything else is a truncated or corrupt file."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt files and pickles with code both land here
        raise ValueError(f"cannot read checkpoint {path}: {_torch_load_problem(e)}") from e


def _torch_load_problem(err: Exception) -> str:
    """What a failed `torch.load(weights_only=True)` means, and what to do, in one sentence."""
    text = str(err)
    refused = re.search(r"GLOBAL (\S+)", text)
    if refused:  # torch's weights-only unpickler met a global it does not allow
        return (
            f"it holds Python objects ({refused.group(1)}) that would import or run code when unpickled, "
            "which ditlab refuses to unpickle (it loads .pt files with weights_only=True); a file with tensors, numbers, "
            "strings, lists and dicts only loads, and safetensors files are always safe"
        )
    if isinstance(err, EOFError) or not text.strip():
        detail = "the file is empty or ends early"
    elif "Weights only load failed" in text:
        detail = "not a torch save file"
    else:
        detail = _first_line(err)[:160]
    return f"{detail}; the file may be truncated or corrupt: copy or download it again, or use an earlier checkpoint"


def probe(path: str | os.PathLike) -> Probe:
    """Read what `path` says about itself (see `Probe`); FileNotFoundError if it does not exist."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        return Probe(path, "folder", keys=tuple(sorted(p.name for p in path.iterdir())))
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return Probe(path, "safetensors", metadata=f.metadata() or {}, keys=tuple(f.keys()))
        except Exception as e:  # safetensors' own error type ("Error while deserializing header: ...")
            raise ValueError(
                f"cannot read {path}: not a valid safetensors file ({_first_line(e)}); it is probably "
                "truncated or corrupt: copy or download it again, or use an earlier checkpoint"
            ) from e
    content = read_torch_file(path)
    keys = tuple(str(k) for k in content) if isinstance(content, dict) else ()
    return Probe(path, "torch", keys=keys, content=content)


def find_format(p: Probe) -> CheckpointFormat:
    """The most specific registered format that matches the probe."""
    for fmt in registered_formats():
        if fmt.kind == p.kind and fmt.matches(p):
            return fmt
    known = ", ".join(f.name for f in registered_formats() if f.kind == p.kind) or "none registered"
    raise ValueError(f"{p.path} is not a checkpoint format ditlab reads (formats for a {p.kind}: {known})")


def check_zoo_name(config, model: str, source: str) -> None:
    """Refuse a zoo name whose geometry (depth, width, heads, patch) differs from a checkpoint's own config."""
    wanted = MODELS[model]
    differ = [
        f"{k} {getattr(config, k)} (not {wanted[k]})" for k in ZOO_FIELDS if getattr(config, k) != wanted[k]
    ]
    if differ:
        raise ValueError(
            f"{source} records its own config, which is not {model}: {', '.join(differ)}. The checkpoint "
            "needs no model name; drop --model (model=) or name the model it holds"
        )


def load_model(path: str | os.PathLike, model: str | None = None, device="cpu", **overrides):
    """Load a DiT from a native .safetensors file, an official DiT .pt file, a ditlab training checkpoint, a
    ditlab run folder (its model.safetensors) or a diffusers folder; also the files of ditlab's extensions: a
    fine-tuning adapter (loaded onto its base, merged) and a DyDiT.

    For official files `model` (a zoo name such as "DiT-XL/2") and `overrides` set what the tensors do not
    say; sizes and class counts are inferred from the tensors. Files that record their own config refuse
    overrides and check `model` against that config (ValueError on a mismatch). Weights land on `device`
    (default CPU) and the model is returned in eval mode (no label dropout), ready to sample.
    """
    if model is not None and model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid names: {', '.join(MODELS)}")
    p = probe(path)
    fmt = find_format(p)
    if overrides and not fmt.accepts_overrides:
        raise ValueError("a native ditlab checkpoint carries its config; overrides are not accepted")
    try:
        net = fmt.load(p, device=device, model=model, **overrides)
    except ValueError as err:
        if str(p.path) in str(err):
            raise
        raise ValueError(f"{p.path} ({fmt.name} format): {err}") from err
    except MALFORMED as err:
        raise ValueError(
            f"{p.path} looks like a {fmt.name} checkpoint but cannot be loaded ({_first_line(err)}); the file "
            "is malformed or was written by another tool: re-save it with the tool that made it"
        ) from err
    if model is not None and fmt.records_config:
        check_zoo_name(net.config, model, str(p.path))
    return net


__all__ = [
    "CheckpointFormat",
    "Probe",
    "check_zoo_name",
    "find_format",
    "load_model",
    "probe",
    "read_torch_file",
    "register_format",
    "registered_formats",
]
