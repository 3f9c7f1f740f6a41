"""The emoji set: Noto Color Emoji glyphs rendered on a white background, 32x32 (default) or any size up to
128 (`emoji[64]`), RGB, unconditional, each image captioned with its lower-case Unicode name.

    ds = load_dataset("emoji[64]")     # ImageDataset, uint8 (N, 3, 64, 64), num_classes 0
    ds.captions[:2]                    # ['mahjong tile red dragon', 'playing card black joker']

A class per emoji would give one image per class, so the set is unconditional; the captions are kept for
text-conditioned models.

Which glyphs: every single code point with a Unicode name in the emoji blocks that the font draws (a
non-empty bitmap), except those that are no picture on their own: skin-tone swatches (U+1F3FB..1F3FF), hair
components (U+1F9B0..1F9B3) and regional-indicator letters (U+1F1E6..1F1FF, the halves of flags).
How: Pillow draws this bitmap font only at its native size 109 (a 136x128 bitmap); the glyph's central
128x128 square is composited onto white and downsampled with ditlab's one resize filter
(`ditlab.data.transforms.resize_images`).
Split: in code-point order every 10th emoji (index % 10 == 9) is "test", the others "train".
Cache: each size is rendered once into `<cache>/emoji/` (the cache folder of `ditlab.eval.cache`:
$DITLAB_CACHE, else ~/.cache/ditlab), keyed by the font file, the size, Pillow's version and this recipe.
The font comes from Debian's `fonts-noto-color-emoji`; $DITLAB_EMOJI_FONT points at another copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFont

from ditlab.atomic import atomic_write
from ditlab.data.transforms import resize_images

EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_DEFAULT_SIZE = 32
EMOJI_MAX_SIZE = 128  # the glyph bitmaps are 128 px: larger sizes would only upsample
EMOJI_TEST_EVERY = 10
_RECIPE = 1  # bump when rendering changes, so old cache files are not reused
_FONT_SIZE = 109  # the one size at which Pillow draws Noto Color Emoji's bitmaps (136x128)
_CANVAS = (136, 128)
_GLYPH_BOX = (4, 0, 132, 128)  # the square the glyphs occupy inside the canvas
_BACKGROUND = (255, 255, 255, 255)
# Unicode blocks that hold emoji (Latin-1 (c) and (r), letterlike symbols through dingbats, arrows and
# stars, CJK symbols, enclosed ideographs, and the U+1Fxxx emoji planes).
_BLOCKS = ((0x00A9, 0x00AE), (0x2100, 0x27BF), (0x2B00, 0x2BFF), (0x3000, 0x303F), (0x3290, 0x329F))
_BLOCKS += ((0x1F000, 0x1FAFF),)
_LEFT_OUT = (
    range(0x1F1E6, 0x1F200),  # regional indicator letters
    range(0x1F3FB, 0x1F400),  # Fitzpatrick skin-tone modifiers
    range(0x1F9B0, 0x1F9B4),  # hair components (red, curly, bald, white)
)


def emoji_font_path() -> Path:
    """The font file: $DITLAB_EMOJI_FONT, else Debian's; a clear error with the install command if absent."""
    path = Path(os.environ.get("DITLAB_EMOJI_FONT") or EMOJI_FONT)
    if not path.is_file():
        raise FileNotFoundError(
            f"Noto Color Emoji font not found at {path}: install it with "
            "`sudo apt-get install fonts-noto-color-emoji` (or `make data` as root), or set DITLAB_EMOJI_FONT "
            "to a NotoColorEmoji.ttf file"
        )
    return path


def is_left_out(codepoint: int) -> bool:
    """True for the code points the set leaves out (skin tones, hair components, regional indicators)."""
    return any(codepoint in r for r in _LEFT_OUT)


def _candidates() -> list[int]:
    found = []
    for lo, hi in _BLOCKS:
        found.extend(cp for cp in range(lo, hi + 1) if not is_left_out(cp) and unicodedata.name(chr(cp), ""))
    return found


def _glyph(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    """The 128x128 RGBA bitmap of one character, or None when the font draws nothing for it."""
    canvas = Image.new("RGBA", _CANVAS, (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    glyph = canvas.crop(_GLYPH_BOX)
    return glyph if glyph.getchannel("A").getbbox() else None


def render_emoji(
    size: int, font_path: str | os.PathLike | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Render every emoji at `size` px -> (images uint8 (N, size, size, 3), captions, code points int64 (N,))."""
    font = ImageFont.truetype(str(font_path or emoji_font_path()), _FONT_SIZE)
    images, captions, codepoints = [], [], []
    for cp in _candidates():
        glyph = _glyph(font, chr(cp))
        if glyph is None:
            continue
        flat = Image.alpha_composite(Image.new("RGBA", glyph.size, _BACKGROUND), glyph).convert("RGB")
        images.append(resize_images(np.asarray(flat)[None], size)[0])
        captions.append(unicodedata.name(chr(cp)).lower())
        codepoints.append(cp)
    if not images:
        raise ValueError(f"{font_path} drew no emoji: is it the colour emoji font (NotoColorEmoji.ttf)?")
    return np.stack(images), captions, np.asarray(codepoints, dtype=np.int64)


def _cache_root() -> Path:
    # the folder of ditlab.eval.cache.cache_dir; not imported from there because ditlab.eval builds on
    # ditlab.data, never the reverse
    env = os.environ.get("DITLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ditlab"


def emoji_fingerprint(size: int) -> list:
    """What identifies the rendered set's content: recipe, size, Pillow version and the font file."""
    font = emoji_font_path().resolve()
    st = font.stat()
    return ["emoji", _RECIPE, int(size), PIL.__version__, str(font), st.st_size, st.st_mtime_ns]


def _cached_render(size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    key = hashlib.sha256(json.dumps(emoji_fingerprint(size)).encode()).hexdigest()[:16]
    path = _cache_root() / "emoji" / f"emoji-{size}px-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["images"], [str(c) for c in data["captions"]], data["codepoints"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rendered again and replaced
    images, captions, codepoints = render_emoji(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path, lambda f: np.savez(f, images=images, captions=np.asarray(captions), codepoints=codepoints)
    )
    return images, captions, codepoints


def emoji_split_mask(n: int, split: str) -> np.ndarray:
    """bool (n,): the emoji of `split` ("train", "test" or "all") in code-point order."""
    test = np.arange(n) % EMOJI_TEST_EVERY == EMOJI_TEST_EVERY - 1
    return {"train": ~test, "test": test, "all": np.ones(n, bool)}[split]


def check_emoji_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= EMOJI_MAX_SIZE:
        raise ValueError(
            f"emoji size must be an integer from 1 to {EMOJI_MAX_SIZE} px (e.g. emoji[64]), got {size!r}"
        )
    return int(size)


def load_emoji_arrays(size: int = EMOJI_DEFAULT_SIZE, split: str = "train") -> tuple[np.ndarray, list[str]]:
    """The emoji set at `size` px -> (images uint8 (N, size, size, 3), captions (N,)); rendered once, cached."""
    images, captions, _ = _cached_render(check_emoji_size(size))
    keep = emoji_split_mask(len(captions), split)
    return images[keep], [c for c, k in zip(captions, keep) if k]
