"""Caption embeddings computed once per (encoder, set of captions) and kept as safetensors in the cache.

    table = embed_captions(encoder, dataset.captions)     # encodes only on the first call
    emb = table.batch(indices)                            # TextEmbedding of those items
    table.null                                            # the encoded NULL_CAPTION (always in the table)

A data set repeats its captions (Fashion-MNIST has 10, shapes a few hundred), so each distinct caption is
encoded once: the table holds the sorted distinct captions plus the null caption, and `rows` maps every item to
its row. The file `<cache>/text/<encoder>-<key>.safetensors` (see `ditlab.eval.cache`; $DITLAB_CACHE) is
keyed by the encoder's identity (weights, tokenizer, max length, pooling) and the caption texts, stores the
captions in its metadata (checked on load: a mismatch re-encodes) and is written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ditlab.atomic import atomic_write
from ditlab.eval.cache import cache_key, cache_path
from ditlab.text.encoders import TextEmbedding, TextEncoder
from ditlab.text.null import NULL_CAPTION

TEXT_CACHE_VERSION = 1


@dataclass
class CaptionEmbeddings:
    """Distinct captions and their embeddings (`table`), and the row of each item (`rows`, int64 (N,))."""

    captions: list[str]
    table: TextEmbedding
    rows: torch.Tensor
    path: Path | None = None
    from_cache: bool = False

    def batch(self, indices: torch.Tensor | Sequence[int]) -> TextEmbedding:
        """The embeddings of items `indices` (indices into the captions passed to `embed_captions`)."""
        return self.table.select(self.rows[torch.as_tensor(indices, dtype=torch.int64).cpu()])

    def lookup(self, captions: Sequence[str]) -> TextEmbedding:
        """The embeddings of captions that are in the table (ValueError naming the first that is not)."""
        index = {c: i for i, c in enumerate(self.captions)}
        missing = [c for c in captions if c not in index]
        if missing:
            raise ValueError(
                f"caption {missing[0]!r} is not in this table; encode it with the encoder instead"
            )
        return self.table.select([index[c] for c in captions])

    def encode(self, captions: Sequence[str]) -> TextEmbedding:
        """`lookup`, under the name of `TextEncoder.encode`: a table can stand in for its encoder when every
        caption asked for is in it (the trainer's sample grids and evaluations use the data's captions)."""
        return self.lookup(captions)

    @property
    def null(self) -> TextEmbedding:
        """The one-row embedding of NULL_CAPTION (for caption dropout and guidance)."""
        return self.lookup([NULL_CAPTION])


def caption_cache_file(encoder: TextEncoder, captions: Sequence[str], cache_dir=None) -> Path:
    """Where the table of these distinct captions (sorted, null included) under this encoder is cached."""
    key = cache_key("text-embeddings", TEXT_CACHE_VERSION, encoder.identity, list(captions))
    return cache_path("text", encoder.name, key, ".safetensors", cache_dir)


def _read(path: Path, captions: list[str]) -> TextEmbedding | None:
    """The cached table, or None when the file is missing, unreadable or holds other captions."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if json.loads((f.metadata() or {}).get("captions", "null")) != captions:
                return None
            return TextEmbedding(f.get_tensor("pooled"), f.get_tensor("tokens"), f.get_tensor("mask"))
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


def embed_captions(
    encoder: TextEncoder, captions: Sequence[str], cache_dir: str | os.PathLike | None = None
) -> CaptionEmbeddings:
    """Embeddings for every caption, encoding each distinct one once and caching the table on disk."""
    captions = list(captions)
    if not all(isinstance(c, str) for c in captions):
        raise TypeError("captions must be strings (a data set's `captions`, one per image)")
    distinct = sorted(set(captions) | {NULL_CAPTION})
    index = {c: i for i, c in enumerate(distinct)}
    rows = torch.tensor([index[c] for c in captions], dtype=torch.int64)
    path = caption_cache_file(encoder, distinct, cache_dir)
    table = _read(path, distinct)
    if table is not None:
        return CaptionEmbeddings(distinct, table, rows, path, from_cache=True)
    table = encoder.encode(distinct)
    tensors = {
        "pooled": table.pooled.contiguous(),
        "tokens": table.tokens.contiguous(),
        "mask": table.mask.contiguous(),
    }
    metadata = {"captions": json.dumps(distinct), "encoder": json.dumps(encoder.identity, default=str)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(save(tensors, metadata=metadata)))
    return CaptionEmbeddings(distinct, table, rows, path, from_cache=False)
