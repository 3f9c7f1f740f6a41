"""Where evaluation caches live (reference statistics, trained classifiers) and how their files are named.

The folder is `$DITLAB_CACHE` if set, else `~/.cache/ditlab`. Files are keyed by a hash of everything that
changes their content (data, split, extractor, resize settings, recipe version) and written atomically, so two
processes filling the same cache never see half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: `override`, else `$DITLAB_CACHE`, else `~/.cache/ditlab`."""
    if override is not None:
        return Path(override)
    env = os.environ.get("DITLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ditlab"


def cache_key(*parts) -> str:
    """A short stable hash of JSON-serialisable `parts`."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_path(
    kind: str, label: str, key: str, suffix: str, override: str | os.PathLike | None = None
) -> Path:
    """`<cache>/<kind>/<readable label>-<key><suffix>`."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[:60] or "item"
    return cache_dir(override) / kind / f"{readable}-{key}{suffix}"


def file_fingerprint(path: str | os.PathLike) -> list:
    """(absolute path, size, mtime) of a file, or of every file below a folder: changes when the data does."""
    path = Path(path).resolve()
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    entries = []
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            entries.append([str(p.relative_to(path)), st.st_size, st.st_mtime_ns])
    return [str(path), cache_key(entries)]


def dataset_fingerprint(spec) -> list:
    """What identifies a dataset's content for cache keys (ignoring its split): name plus version or path."""
    from ditlab.data import FASHION_MNIST_DIR, emoji_fingerprint, parse_spec

    spec = parse_spec(spec)
    if spec.kind == "emoji":  # the font file, the render size and the recipe
        return emoji_fingerprint(spec.resolution or 32)
    if spec.kind == "digits":
        import sklearn

        return ["digits", sklearn.__version__]
    if (
        spec.kind == "shapes"
    ):  # procedural: the code's version is the content (resolution is a resize setting)
        from ditlab.data.shapes import SHAPES_VERSION

        return ["shapes", SHAPES_VERSION, spec.resolution]
    if spec.kind == "fashion-mnist":
        return ["fashion-mnist", str(Path(spec.path or FASHION_MNIST_DIR).resolve())]
    return ["folder", file_fingerprint(spec.path)]
