"""Issue 19 item 2: every file ditlab reads, mutated at random (hypothesis), either loads or is refused with
one ValueError-family error naming the file: never a raw error from inside torch, safetensors, PIL or
numpy, never a hang, never a partial write.

Loaders: native .safetensors (bytes flipped, truncated, header entries' dtype/shape/offsets changed, the
recorded config broken or with unknown or absurd fields), official and training .pt files (truncated, bytes
flipped, odd structures, pickles that would run code), diffusers folders (config.json broken or inconsistent
with the weights, weights missing), adapter files, .npz samples, config JSON files, image folders (truncated,
zero-byte, wrong extension, huge dimensions). Each test counts its inputs by outcome in COUNTS (printed at the
end of the module with `pytest -s`); the example counts keep the whole module within CI's budget.
"""

import io
import json
import os
import pickle
import struct
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import ditlab
from ditlab.data import load_npz
from ditlab.data.image_folder import load_image_folder_arrays
from ditlab.models.config import DiTConfig
from ditlab.train import TrainConfig, load_training_state

# derandomize: the same inputs on every run (tests are deterministic); database=None: no .hypothesis folder
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
REFUSALS = (ValueError, FileNotFoundError)  # the ValueError family ditlab's loaders raise
COUNTS: dict[str, Counter] = {}


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    for loader, counts in sorted(COUNTS.items()):
        print(
            f"fuzz {loader}: {sum(counts.values())} inputs, "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )


def outcome(loader: str, path: Path, load) -> None:
    """Run `load()`: it returns, or raises a refusal naming `path`; anything else fails the test."""
    counts = COUNTS.setdefault(loader, Counter())
    try:
        load()
    except REFUSALS as err:
        text = str(err)
        assert str(path) in text or path.name in text, f"the error does not name {path}: {text}"
        assert "Traceback" not in text
        counts["refused"] += 1
    else:
        counts["loaded"] += 1


class Files:
    """A fresh file name per example (hypothesis runs many examples in one test call)."""

    def __init__(self, root: Path):
        self.root, self.n = root, 0

    def new(self, name: str) -> Path:
        self.n += 1
        folder = self.root / str(self.n)
        folder.mkdir()
        return folder / name


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = ditlab.create_model("DiT-Nano/2", input_size=8, in_channels=1, num_classes=3)
    ditlab.save_model(model, root / "m.safetensors")
    torch.save({"model": model.state_dict(), "ema": model.state_dict()}, root / "official.pt")
    return root, model


@pytest.fixture
def files(tmp_path):
    return Files(tmp_path)


# ------------------------------------------------------------------------------- byte-level mutations
mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    ),
    st.tuples(
        st.just("flip-head"),
        st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8),
    ),
)


def mutate(data: bytes, how) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return data[: int(arg * len(data))]
    out = bytearray(data)
    for where, value in arg:
        i = int(where * len(out)) if kind == "flip" else min(where, len(out) - 1)
        out[i] = value
    return bytes(out)


@FUZZ
@given(how=mutations)
def test_native_safetensors_bytes(base, files, how):
    root, _ = base
    path = files.new("m.safetensors")
    path.write_bytes(mutate((root / "m.safetensors").read_bytes(), how))
    outcome("native safetensors (bytes)", path, lambda: ditlab.load_model(path))


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
CONFIG_FIELDS = list(DiTConfig().to_dict())


@FUZZ
@given(
    entry=st.integers(0, 10_000),
    change=st.sampled_from(["dtype", "shape", "offsets", "config-field", "config-text", "config-unknown"]),
    dtype=st.sampled_from(["F16", "BF16", "F64", "I64", "U8", "BOOL", "XX"]),
    shape=st.lists(st.integers(-2, 10**6), max_size=4),
    offsets=st.tuples(st.integers(-5, 10**7), st.integers(-5, 10**7)),
    field=st.sampled_from(CONFIG_FIELDS),
    value=json_values,
    text=st.text(max_size=30),
)
def test_native_safetensors_header(base, files, entry, change, dtype, shape, offsets, field, value, text):
    root, _ = base
    header, body = split_safetensors((root / "m.safetensors").read_bytes())
    names = sorted(k for k in header if k != "__metadata__")
    name = names[entry % len(names)]
    meta = header["__metadata__"]
    if change == "dtype":
        header[name]["dtype"] = dtype
    elif change == "shape":
        header[name]["shape"] = shape
    elif change == "offsets":
        header[name]["data_offsets"] = list(offsets)
    elif change == "config-field":
        meta["ditlab_config"] = json.dumps({**json.loads(meta["ditlab_config"]), field: value})
    elif change == "config-text":
        meta["ditlab_config"] = text
    else:
        meta["ditlab_config"] = json.dumps({**json.loads(meta["ditlab_config"]), text or "x": value})
    path = files.new("m.safetensors")
    path.write_bytes(join_safetensors(header, body))
    outcome("native safetensors (header, config)", path, lambda: ditlab.load_model(path))


# ------------------------------------------------------------------------------- torch .pt files
class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run > pwned.txt",))


@FUZZ
@given(how=mutations)
def test_official_pt_bytes(base, files, how):
    root, _ = base
    path = files.new("official.pt")
    path.write_bytes(mutate((root / "official.pt").read_bytes(), how))
    outcome("official .pt (bytes)", path, lambda: ditlab.load_model(path, model="DiT-Nano/2"))


@FUZZ
@given(
    drop=st.integers(0, 10_000),
    change=st.sampled_from(["drop-key", "reshape", "not-a-tensor", "not-a-dict", "code", "nested-code"]),
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    value=json_values,
)
def test_official_and_training_pt_structures(base, files, drop, change, shape, value):
    root, model = base
    state = dict(model.state_dict())
    key = sorted(state)[drop % len(state)]
    obj: object = {"model": state, "ema": state}
    if change == "drop-key":
        del state[key]
    elif change == "reshape":
        state[key] = torch.zeros(shape)
    elif change == "not-a-tensor":
        state[key] = value
    elif change == "not-a-dict":
        obj = value
    elif change == "code":
        obj = RunsCode()
    else:
        state[key] = RunsCode()
    path = files.new("weights.pt")
    torch.save(obj, path)
    outcome("official .pt (structure, code)", path, lambda: ditlab.load_model(path, model="DiT-Nano/2"))
    # the same objects as a training checkpoint (config recorded) and through the resume loader
    if isinstance(obj, dict):
        obj = {**obj, "opt": {}, "step": 1, "config": model.config.to_dict()}
    train_path = files.new("0000001.pt")
    torch.save(obj, train_path)
    outcome("training .pt", train_path, lambda: ditlab.load_model(train_path))
    outcome("training .pt (resume)", train_path, lambda: load_training_state(train_path))
    assert not Path("pwned.txt").exists() and not (train_path.parent / "pwned.txt").exists()


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from ditlab.train import Trainer

    out = tmp_path_factory.mktemp("trainer") / "run"
    cfg = TrainConfig(
        data="digits", model="DiT-Nano/2", batch_size=4, steps=2, threads=1, progress=False, out=str(out)
    )
    t = Trainer(cfg)
    t.train_step()  # an optimizer state to save
    return t, t.state()


@FUZZ
@given(
    part=st.sampled_from(["model", "ema", "opt", "step", "config", "args", "bytes"]),
    change=st.sampled_from(["drop-key", "reshape", "replace"]),
    which=st.integers(0, 10_000),
    shape=st.lists(st.integers(0, 6), max_size=3),
    value=json_values,
    how=mutations,
)
def test_training_checkpoint_resume(trainer, files, part, change, which, shape, value, how):
    """The resume path (`--resume PATH`): the state a Trainer wrote, one entry of it mutated."""
    trainer, saved = trainer
    state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()}
    path = files.new("0000001.pt")
    if part in ("model", "ema", "opt", "config", "args"):
        entry = state[part]
        key = sorted(entry, key=str)[which % len(entry)]
        if change == "drop-key":
            del entry[key]
        elif change == "reshape" and torch.is_tensor(entry[key]):
            entry[key] = torch.zeros(shape)
        else:
            entry[key] = value
    elif part == "step":
        state["step"] = value
    if part == "bytes":
        buffer = io.BytesIO()
        torch.save(state, buffer)
        path.write_bytes(mutate(buffer.getvalue(), how))
    else:
        torch.save(state, path)
    outcome(
        "training checkpoint (resume into a Trainer)",
        path,
        lambda: trainer._load(path, load_training_state(path)),
    )


# ------------------------------------------------------------------------------- diffusers folders
@pytest.fixture(scope="module")
def diffusers_folder(base):
    from ditlab.models.interop import save_diffusers

    root, model = base
    save_diffusers(model, root / "diffusers")
    return root / "diffusers"


@FUZZ
@given(
    change=st.sampled_from(["field", "drop-field", "text", "no-weights", "truncate-weights", "not-a-dict"]),
    which=st.integers(0, 10_000),
    value=json_values,
    text=st.text(max_size=30),
    cut=st.floats(0, 1, exclude_max=True),
)
def test_diffusers_folders(diffusers_folder, files, change, which, value, text, cut):
    import shutil

    folder = files.new("diffusers")
    shutil.copytree(diffusers_folder, folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    key = sorted(config)[which % len(config)]
    if change == "field":
        config[key] = value
    elif change == "drop-field":
        del config[key]
    elif change == "not-a-dict":
        config = value
    weights = folder / "diffusion_pytorch_model.safetensors"
    if change == "text":
        config_path.write_text(text)
    else:
        config_path.write_text(json.dumps(config))
    if change == "no-weights":
        weights.unlink()
    elif change == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[: int(cut * weights.stat().st_size)])
    outcome("diffusers folder", folder, lambda: ditlab.load_model(folder))


def test_diffusers_bin_weights_that_would_run_code_are_refused(diffusers_folder, files):
    import shutil

    folder = files.new("diffusers")
    shutil.copytree(diffusers_folder, folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"x": RunsCode()}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(
        ValueError, match=r"diffusion_pytorch_model\.bin: it holds Python objects \(posix\.system\)"
    ):
        ditlab.load_model(folder)
    assert not Path("pwned.txt").exists()


# ------------------------------------------------------------------------------- adapters
@pytest.fixture(scope="module")
def adapter_file(base):
    from ditlab.finetune.adapter import save_adapter
    from ditlab.finetune.methods import prepare_model

    root, model = base
    tuned = ditlab.load_model(root / "m.safetensors")
    prepare_model(tuned, "difffit")
    path = root / "adapter.safetensors"
    save_adapter(tuned, path, base=root / "m.safetensors")
    return path


@FUZZ
@given(how=mutations, field=st.text(max_size=8), value=json_values, edit=st.booleans())
def test_adapters(adapter_file, files, how, field, value, edit):
    from ditlab.finetune.adapter import ADAPTER_KEY

    data = adapter_file.read_bytes()
    if edit:  # the adapter's own record changed (a field replaced or added)
        header, body = split_safetensors(data)
        info = json.loads(header["__metadata__"][ADAPTER_KEY])
        info[field or "method"] = value
        header["__metadata__"][ADAPTER_KEY] = json.dumps(info)
        data = join_safetensors(header, body)
    else:
        data = mutate(data, how)
    path = files.new("adapter.safetensors")
    path.write_bytes(data)
    outcome("adapter", path, lambda: ditlab.load_model(path))


# ------------------------------------------------------------------------------- npz samples
@FUZZ
@given(
    how=mutations,
    dtype=st.sampled_from(["uint8", "float32", "int64", "bool", "complex64", "U3"]),
    shape=st.one_of(st.just([2, 4, 4, 3]), st.just([3, 4, 4]), st.lists(st.integers(0, 5), max_size=5)),
    labels=st.one_of(st.none(), st.lists(st.integers(-3, 3), max_size=6)),
    raw=st.booleans(),
)
def test_npz_samples(files, how, dtype, shape, labels, raw):
    path = files.new("samples.npz")
    arrays = {"arr_0": np.zeros(shape, dtype=dtype)}
    if labels is not None:
        arrays["labels"] = np.array(labels)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(mutate(buffer.getvalue(), how) if raw else buffer.getvalue())
    outcome("npz samples", path, lambda: load_npz(path))


def test_an_npz_holding_a_pickle_is_refused(files):
    path = files.new("samples.npz")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("arr_0.npy", pickle.dumps(RunsCode()))
    with pytest.raises(ValueError, match="samples.npz"):
        load_npz(path)


# ------------------------------------------------------------------------------- config JSON files
@FUZZ
@given(
    kind=st.sampled_from([TrainConfig, DiTConfig]),
    change=st.sampled_from(["text", "field", "same-type", "unknown"]),
    text=st.one_of(st.text(max_size=40), json_values.map(json.dumps)),
    which=st.integers(0, 10_000),
    value=json_values,
)
def test_config_files(files, kind, change, text, which, value):
    """A saved config (a run's config.json, a model's config) with one field replaced, added or the text
    itself garbled; "same-type" keeps the field's JSON type (a number for a number), so some of them load."""
    config = (TrainConfig(steps=1) if kind is TrainConfig else DiTConfig()).to_dict()
    field = sorted(config)[which % len(config)]
    if change == "field":
        config[field] = value
    elif change == "same-type":
        old = config[field]
        config[field] = value if type(value) is type(old) else old
    elif change == "unknown":
        config[f"{field}_x"] = value
    path = files.new("config.json")
    path.write_text(text if change == "text" else json.dumps(config))
    outcome(f"config JSON ({kind.__name__})", path, lambda: kind.load(path))


# ------------------------------------------------------------------------------- image folders
def png_bytes(size=(8, 8), mode="L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is absent): a decompression bomb's shape."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@FUZZ
@given(
    change=st.sampled_from(["truncate", "zero-byte", "wrong-extension", "huge", "flip"]),
    how=mutations,
    side=st.integers(9000, 2**31 - 1),
    extension=st.sampled_from([".png", ".jpg", ".gif", ".webp", ".tiff", ".bmp"]),
)
def test_image_folders(files, change, how, side, extension):
    folder = files.new("images")
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "good.png").write_bytes(png_bytes())
    bad = folder / "a" / f"bad{extension if change == 'wrong-extension' else '.png'}"
    data = {
        "truncate": png_bytes()[: len(png_bytes()) // 2],
        "zero-byte": b"",
        "wrong-extension": png_bytes(),  # a PNG named .jpg etc.: read by its content
        "huge": huge_png_header(side, side),
        "flip": mutate(png_bytes(), how),
    }[change]
    bad.write_bytes(data)
    outcome("image folder", bad, lambda: load_image_folder_arrays(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "skipped 1 unreadable image"
        skipped = load_image_folder_arrays(folder, bad_images="skip") if change != "wrong-extension" else None
    assert skipped is None or len(skipped[0]) >= 1  # the good image always loads


def test_a_decompression_bomb_is_refused_before_decoding(files):
    """9000 x 9000 claimed by a tiny file: under PIL's own error threshold, over ditlab's limit."""
    folder = files.new("images")
    folder.mkdir()
    (folder / "bomb.png").write_bytes(huge_png_header(9000, 9000))
    (folder / "good.png").write_bytes(png_bytes())
    with pytest.raises(ValueError, match=r"bomb\.png: 9000x9000 pixels is more than ditlab decodes.*bomb"):
        load_image_folder_arrays(folder)
    images, _, _ = load_image_folder_arrays(folder, bad_images="skip")
    assert images.shape == (1, 8, 8, 1)


# ------------------------------------------------------------------------------- convert: no partial write
@settings(FUZZ, max_examples=15)
@given(how=mutations)
def test_convert_of_a_bad_file_writes_nothing(base, files, how):
    from ditlab.models.convert_cli import convert

    root, _ = base
    src = files.new("m.safetensors")
    src.write_bytes(mutate((root / "m.safetensors").read_bytes(), how))
    dst = src.with_name("out.safetensors")
    outcome("convert (native -> native)", src, lambda: convert(src, dst, None, "native", None, False))
    leftovers = sorted(p.name for p in src.parent.iterdir() if p.name != src.name)
    assert leftovers in ([], ["out.safetensors"])  # either the whole output or nothing, never a temp file
