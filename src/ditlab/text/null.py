"""The null caption and caption dropout: the unconditional branch of classifier-free guidance, in one place.

NULL_CAPTION is the empty string, encoded by the same encoder as every caption (SD3 and PixArt-α do the same:
their unconditional input is the encoding of ""), rather than a zero vector, because:
- it lies where the encoder's outputs lie: MiniLM's pooled vectors are unit length and a zero vector is
  none of them, so pooled-AdaLN models would see an input unlike anything at sampling time;
- its token mask is never empty (the encoder's [CLS]/[SEP] or BOS/EOS tokens are real tokens), so attention
  over text tokens always has a key to attend to, where an all-masked zero sequence would make softmax
  undefined (NaN) in cross-attention and joint attention;
- models converted from diffusers pipelines were trained with exactly this null, so guidance matches theirs.

Caption dropout (default 10%, as in DiT's label dropout and PixArt's caption dropout) trains that branch:
the trainer replaces a random tenth of a batch's embeddings with the null's, drawn from its seeded generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

# A TextEmbedding (ditlab.text.encoders), left unimported: encoders.py imports NULL_CAPTION from here
Embedding = TypeVar("Embedding")

NULL_CAPTION = ""
DEFAULT_CAPTION_DROPOUT = 0.1


def dropout_mask(n: int, rate: float = DEFAULT_CAPTION_DROPOUT, generator: torch.Generator | None = None):
    """bool (n,): which of n captions to replace by the null caption, each with probability `rate`."""
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"caption dropout rate must be in [0, 1], got {rate}")
    return torch.rand(n, generator=generator) < float(rate)


def drop_captions(
    captions: Sequence[str], rate: float = DEFAULT_CAPTION_DROPOUT, generator: torch.Generator | None = None
) -> list[str]:
    """The captions with a random `rate` of them replaced by NULL_CAPTION (for encoders run per batch)."""
    drop = dropout_mask(len(captions), rate, generator)
    return [NULL_CAPTION if d else c for c, d in zip(captions, drop.tolist())]


def drop_embeddings(
    batch: Embedding,
    null: Embedding,
    rate: float = DEFAULT_CAPTION_DROPOUT,
    generator: torch.Generator | None = None,
) -> tuple[Embedding, torch.Tensor]:
    """Caption dropout on encoded captions: rows of `batch` replaced by the one-row `null` embedding.

    Returns (the new batch, the bool (B,) mask of dropped rows). `null` is `CaptionEmbeddings.null` (or
    `encoder.encode([NULL_CAPTION])`); it moves to the batch's device.
    """
    if len(null) != 1:
        raise ValueError(f"null must be one embedding (the encoded NULL_CAPTION), got {len(null)} rows")
    drop = dropout_mask(len(batch), rate, generator).to(batch.pooled.device)
    null = null.to(batch.pooled.device)

    def mix(value: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        where = drop.view(-1, *([1] * (value.ndim - 1)))
        return torch.where(where, empty.expand_as(value), value)

    dropped = type(batch)(
        mix(batch.pooled, null.pooled), mix(batch.tokens, null.tokens), mix(batch.mask, null.mask)
    )
    return dropped, drop
