"""The model kwargs of encoded captions: what a text-conditioned DiT takes, from a `TextEmbedding`.

    kwargs = text_model_kwargs(model.config, emb)     # {"pooled": (N, P)} and/or {"text": (N, L, D), "text_mask"}
    model(x, t, **kwargs)
    null = repeat_embedding(table.null, n)            # the null caption n times: guidance's unconditional branch

A model takes the parts of the embedding its config reads: the pooled vector where `pooled_dim` > 0 (SD3's
global path, Pooled, MMDiT, Flux), the token states and their mask where it has text tokens (PixArt, MMDiT, Flux,
Z-Image). The trainer, `ditlab.generate` and the ablation study all build their kwargs here, so a model is
always called the same way in training and sampling. `emb` is any object with `pooled`, `tokens` and `mask`
tensors (ditlab.text.TextEmbedding); this module imports nothing of ditlab.text.
"""

from __future__ import annotations


def takes_text(config) -> bool:
    """Whether a model of this config is conditioned on text (a pooled vector, text tokens or both)."""
    return config.pooled_dim > 0 or config.has_text


def text_model_kwargs(config, emb) -> dict:
    """The kwargs of `model(x, t, **kwargs)` for encoded captions `emb` (one row per image)."""
    if not takes_text(config):
        raise ValueError(
            "this model takes no text (no pooled_dim, no text tokens): use a text preset such as MMDiT-S/2, "
            "PixArt-S/2, Flux-S/2, ZImage-S/2 or Pooled-S/2"
        )
    kwargs = {}
    if config.pooled_dim > 0:
        kwargs["pooled"] = emb.pooled
    if config.has_text:
        kwargs["text"] = emb.tokens
        kwargs["text_mask"] = emb.mask
    return kwargs


def repeat_embedding(emb, n: int):
    """A one-row embedding (the null caption's) as n rows, of the same type as `emb`."""
    if len(emb) != 1:
        raise ValueError(f"expected one embedding row (the null caption), got {len(emb)}")
    return emb.select([0] * n)
