"""`shapes`: a procedural, seeded, compositional text-to-image set that ships as code (no files).

Each image is RGB on a flat neutral grey background and holds one or two filled objects, each a `circle`,
`square` or `triangle` in `red`, `green`, `blue` or `yellow`, captioned by exactly this grammar:

    a {colour} {shape}                                  one object
    a {colour} {shape} {relation} a {colour} {shape}    two objects, relation in: left of, right of, above, below

Geometry (at the base size 32x32; `shapes[64]` scales every length by 2, so it is the same scene, sharper):
- objects are 8-14 px across (the side of their bounding box), squares axis-aligned, triangles isosceles and
  upright (apex up, base at the bottom), circles inscribed in their box;
- objects never touch: their boxes are at least `GAP` px apart, so they are separate connected components;
- a relation is true of the boxes' centres along its axis, and that axis dominates: "A left of B" means
  cx(A) < cx(B) and |dx| > |dy| (so the caption is the only natural reading, and an evaluator can check it);
- pixels are filled when their centre lies inside the shape (hard edges, no anti-aliasing), so the per-pixel
  object mask (class per colour x shape, 0 = background) is exact.

Splits: `yellow triangle` and `blue circle` (`HELD_OUT`) never appear in `train`, alone or in a pair. The
`test` split is the held-out test of composition: every image of it holds at least one of them. Both splits are
fixed by their seeds (image i of a split is drawn from `numpy.random.default_rng((SEED, split, i))`), the
same on every machine, and independent of how many images are asked for.

    load_dataset("shapes[64]:test")      # ImageDataset with `captions` (as any set)
    make_shapes("train", n=1000)         # ShapesArrays: images, per-pixel masks (MASK_CLASSES), captions, scenes
    split_captions("test")               # every held-out prompt the grammar allows
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHAPES_VERSION = 1  # bump when the rendering or the sampling of scenes changes (cache keys use it)
BASE_SIZE = 32
MAX_SCALE = 4  # shapes[32], shapes[64], shapes[96], shapes[128]
BACKGROUND = (128, 128, 128)
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}
SHAPE_NAMES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
OBJECTS = tuple((colour, shape) for colour in COLOURS for shape in SHAPE_NAMES)  # mask class i + 1
MASK_CLASSES = ("background", *(f"{colour} {shape}" for colour, shape in OBJECTS))
HELD_OUT = (("yellow", "triangle"), ("blue", "circle"))
SEEN = tuple(obj for obj in OBJECTS if obj not in HELD_OUT)
MIN_SIDE, MAX_SIDE = 8, 14  # px across at 32x32
GAP = 2  # px between two objects' boxes at 32x32: a clear corridor, so even soft-edged objects stay apart
MARGIN = 1  # px between an object and the image border at 32x32
SINGLE_FRACTION = 1 / 3  # share of one-object images
SPLIT_SIZES = {"train": 50_000, "test": 5_000}
SHAPES_SEED = 17

_SPLIT_CODES = {"train": 0, "test": 1}


@dataclass(frozen=True)
class ShapeObject:
    """One object in base (32x32) pixel coordinates: its box is [x, x + size) x [y, y + size)."""

    colour: str
    shape: str
    x: int
    y: int
    size: int

    @property
    def centre(self) -> tuple[float, float]:
        """(cx, cy) of the box, in base pixels (y grows downwards)."""
        return self.x + self.size / 2, self.y + self.size / 2

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """One image's content: one object, or two objects and the relation of the first to the second."""

    objects: tuple[ShapeObject, ...]
    relation: str | None = None

    @property
    def caption(self) -> str:
        first = f"a {self.objects[0].name}"
        return first if self.relation is None else f"{first} {self.relation} a {self.objects[1].name}"


@dataclass
class ShapesArrays:
    """A rendered batch: images uint8 (N, H, W, 3), masks uint8 (N, H, W) (index into MASK_CLASSES),
    captions (N,) and the scenes they came from."""

    images: np.ndarray
    masks: np.ndarray
    captions: list[str]
    scenes: list[Scene]


def check_shapes_size(size: int) -> int:
    """A valid render size in px (a multiple of 32 up to 128), or a ValueError saying which are."""
    allowed = [BASE_SIZE * k for k in range(1, MAX_SCALE + 1)]
    if size not in allowed:
        raise ValueError(f"shapes renders at {', '.join(map(str, allowed))} px, not {size}; e.g. shapes[64]")
    return size


def relation_holds(relation: str, first: tuple[float, float], second: tuple[float, float]) -> bool:
    """Whether `first relation second` is true of two centres (x right, y down), the relation's axis dominant."""
    dx, dy = first[0] - second[0], first[1] - second[1]
    if relation == "left of":
        return dx < 0 and abs(dx) > abs(dy)
    if relation == "right of":
        return dx > 0 and abs(dx) > abs(dy)
    if relation == "above":
        return dy < 0 and abs(dy) > abs(dx)
    if relation == "below":
        return dy > 0 and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}; choose one of: {', '.join(RELATIONS)}")


def boxes_apart(a: ShapeObject, b: ShapeObject, gap: int = GAP) -> bool:
    """Whether two boxes are at least `gap` px apart along x or along y (then the shapes cannot touch)."""
    x_gap = max(a.x - (b.x + b.size), b.x - (a.x + a.size))
    y_gap = max(a.y - (b.y + b.size), b.y - (a.y + a.size))
    return max(x_gap, y_gap) >= gap


def _coordinates(lo_size: int, hi_size: int, ordered: bool) -> np.ndarray:
    """All (a, b) top-left coordinates along one axis for two boxes of sides lo_size, hi_size inside the margin:
    with `ordered`, box a ends at least GAP before box b starts. int (K, 2)."""
    a = np.arange(MARGIN, BASE_SIZE - MARGIN - lo_size + 1)
    b = np.arange(MARGIN, BASE_SIZE - MARGIN - hi_size + 1)
    pairs = np.stack(np.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 2)
    if ordered:
        pairs = pairs[pairs[:, 0] + lo_size + GAP <= pairs[:, 1]]
    return pairs


def _place_pair(rng: np.random.Generator, sizes: list[int], relation: str) -> list[tuple[int, int]]:
    """Top-left (x, y) of two boxes such that `first relation second` holds with the boxes apart.

    Drawn uniformly among the valid placements, one axis at a time: first the relation's axis (the boxes in
    order, GAP apart), then the other axis restricted to centre offsets smaller than the first axis's one.
    """
    flip = relation in ("right of", "below")  # draw "second left of / above first" instead
    order = [1, 0] if flip else [0, 1]
    s_lo, s_hi = sizes[order[0]], sizes[order[1]]
    main = _coordinates(s_lo, s_hi, ordered=True)
    lo_main, hi_main = main[rng.integers(0, len(main))]
    d_main = abs((hi_main + s_hi / 2) - (lo_main + s_lo / 2))
    other = _coordinates(s_lo, s_hi, ordered=False)
    offsets = np.abs((other[:, 1] + s_hi / 2) - (other[:, 0] + s_lo / 2))
    other = other[offsets < d_main]
    lo_other, hi_other = other[rng.integers(0, len(other))]
    horizontal = relation in ("left of", "right of")
    lo = (int(lo_main), int(lo_other)) if horizontal else (int(lo_other), int(lo_main))
    hi = (int(hi_main), int(hi_other)) if horizontal else (int(hi_other), int(hi_main))
    return [hi, lo] if flip else [lo, hi]


def _random_scene(rng: np.random.Generator, pool: Sequence[tuple[str, str]], need_held_out: bool) -> Scene:
    """One scene: objects from `pool`; with `need_held_out`, at least one of them is in HELD_OUT."""
    single = rng.random() < SINGLE_FRACTION
    while True:
        picks = [pool[i] for i in rng.integers(0, len(pool), size=1 if single else 2)]
        if not need_held_out or any(p in HELD_OUT for p in picks):
            break
    sizes = [int(s) for s in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=len(picks))]
    if single:
        x, y = rng.integers(MARGIN, BASE_SIZE - MARGIN - sizes[0] + 1, size=2)
        return Scene((ShapeObject(*picks[0], int(x), int(y), sizes[0]),))
    relation = RELATIONS[int(rng.integers(0, len(RELATIONS)))]
    corners = _place_pair(rng, sizes, relation)
    objects = tuple(ShapeObject(*p, x, y, s) for p, (x, y), s in zip(picks, corners, sizes))
    return Scene(objects, relation)


def scene_for(split: str, index: int) -> Scene:
    """Scene `index` of a split: the same on every machine, whatever else is drawn."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown shapes split {split!r}; choose train or test (or all when loading)")
    rng = np.random.default_rng((SHAPES_SEED, _SPLIT_CODES[split], index))
    if split == "train":
        return _random_scene(rng, SEEN, need_held_out=False)
    return _random_scene(rng, OBJECTS, need_held_out=True)


def _pixel_centres(side: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in base units: xs (1, side), ys (side, 1)."""
    c = (np.arange(side, dtype=np.float64) + 0.5) / scale
    return c[None, :], c[:, None]


def object_mask(obj: ShapeObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """bool (H, W): the pixels whose centre lies inside the filled shape."""
    x0, y0, s = obj.x, obj.y, obj.size
    cx = x0 + s / 2
    if obj.shape == "square":
        return (xs >= x0) & (xs < x0 + s) & (ys >= y0) & (ys < y0 + s)
    if obj.shape == "circle":
        return (xs - cx) ** 2 + (ys - (y0 + s / 2)) ** 2 <= (s / 2) ** 2
    if obj.shape == "triangle":  # apex (cx, y0), base from (x0, y0 + s) to (x0 + s, y0 + s)
        depth = ys - y0
        return (depth >= 0) & (depth <= s) & (np.abs(xs - cx) <= depth / 2)
    raise ValueError(f"unknown shape {obj.shape!r}; choose one of: {', '.join(SHAPE_NAMES)}")


def render_scene(scene: Scene, image_size: int = BASE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene -> (image uint8 (H, W, 3), mask uint8 (H, W) indexing MASK_CLASSES)."""
    scale = check_shapes_size(image_size) // BASE_SIZE
    xs, ys = _pixel_centres(image_size, scale)
    image = np.empty((image_size, image_size, 3), np.uint8)
    image[:] = BACKGROUND
    mask = np.zeros((image_size, image_size), np.uint8)
    for obj in scene.objects:
        inside = object_mask(obj, xs, ys)
        image[inside] = COLOURS[obj.colour]
        mask[inside] = OBJECTS.index((obj.colour, obj.shape)) + 1
    return image, mask


def render_scenes(scenes: Sequence[Scene], image_size: int = BASE_SIZE) -> ShapesArrays:
    """Render many scenes into one `ShapesArrays`."""
    n = len(scenes)
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    masks = np.empty((n, image_size, image_size), np.uint8)
    for i, scene in enumerate(scenes):
        images[i], masks[i] = render_scene(scene, image_size)
    return ShapesArrays(images, masks, [s.caption for s in scenes], list(scenes))


def make_shapes(split: str = "train", n: int | None = None, image_size: int = BASE_SIZE) -> ShapesArrays:
    """The first `n` images of a split (default: the split's full size, `SPLIT_SIZES`); "all" = train + test."""
    if split == "all":
        parts = [make_shapes(s, n, image_size) for s in ("train", "test")]
        return ShapesArrays(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.masks for p in parts]),
            [c for p in parts for c in p.captions],
            [s for p in parts for s in p.scenes],
        )
    count = SPLIT_SIZES.get(split, 0) if n is None else int(n)
    if count < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return render_scenes([scene_for(split, i) for i in range(count)], image_size)


def split_captions(split: str) -> list[str]:
    """Every caption the grammar allows in a split, sorted: train 10 + 400 (seen objects only), test the
    2 + 176 that name a held-out object. Prompts for sampling and evaluation come from here."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown shapes split {split!r}; choose train or test")
    singles = [(obj,) for obj in OBJECTS]
    pairs = [(a, b) for a in OBJECTS for b in OBJECTS]
    captions = [f"a {c} {s}" for ((c, s),) in singles]
    captions += [f"a {a[0]} {a[1]} {rel} a {b[0]} {b[1]}" for a, b in pairs for rel in RELATIONS]
    held = [is_held_out_caption(c) for c in captions]
    return sorted(c for c, h in zip(captions, held) if h == (split == "test"))


def is_held_out_caption(caption: str) -> bool:
    """Whether a caption names a held-out object (`yellow triangle`, `blue circle`)."""
    return any(f"{colour} {shape}" in caption for colour, shape in HELD_OUT)


_OBJECT_RE = r"a (red|green|blue|yellow) (circle|square|triangle)"
_CAPTION = re.compile(rf"^{_OBJECT_RE}(?: (left of|right of|above|below) {_OBJECT_RE})?$")


def parse_caption(caption: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """ "a red circle left of a blue square" -> ((("red", "circle"), ("blue", "square")), "left of").

    Only the grammar's exact captions parse (lower case, single spaces); anything else is a ValueError.
    """
    m = _CAPTION.match(caption) if isinstance(caption, str) else None
    if m is None:
        raise ValueError(
            f"{caption!r} is not a shapes caption; the grammar is 'a {{colour}} {{shape}}' or "
            "'a {colour} {shape} {relation} a {colour} {shape}' with colours red/green/blue/yellow, shapes "
            "circle/square/triangle and relations left of/right of/above/below"
        )
    first = (m[1], m[2])
    if m[3] is None:
        return (first,), None
    return (first, (m[4], m[5])), m[3]


def parse_sized_spec(name: str, spec: str, splits: Sequence[str]) -> tuple[int | None, str | None]:
    """ "NAME[64]:test" -> (64, "test"), for the generated sets whose bracket is the image size in px (not a
    class list): shapes and emoji. The size is not range-checked here (each set checks its own)."""
    m = re.fullmatch(rf"{re.escape(name)}(?:\[(?P<size>[^\]]*)\])?(?::(?P<split>[^:]*))?", spec)
    if m is None or (m["split"] is not None and m["split"] not in splits):
        raise ValueError(
            f"bad {name} spec {spec!r}: use {name} or {name}[SIZE] (e.g. {name}[64]), optionally with :SPLIT "
            f"({', '.join(splits)})"
        )
    size = m["size"]
    if size is not None and not size.isdigit():
        raise ValueError(f"bad {name} spec {spec!r}: the bracket holds the image size in px, e.g. {name}[64]")
    return (None if size is None else int(size)), m["split"]


def is_shapes_spec(spec: str) -> bool:
    """Whether a dataset spec string names this set ("shapes", "shapes[64]", "shapes:test", ...)."""
    return spec == "shapes" or spec.startswith(("shapes[", "shapes:"))


def parse_shapes_spec(spec: str, splits: Sequence[str]) -> tuple[int | None, str | None]:
    """ "shapes[64]:test" -> (64, "test"); the bracket is the image size in px, not a class list."""
    size, split = parse_sized_spec("shapes", spec, splits)
    return (None if size is None else check_shapes_size(size)), split


def shapes_render_size(resolution: int | None, image_size) -> int:
    """The size to render at: the spec's, else a square `image_size` that is a valid render size, else 32
    (then the loader resizes, like any other set)."""
    if resolution is not None:
        return resolution
    if image_size is not None:
        side = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        valid = [BASE_SIZE * k for k in range(1, MAX_SCALE + 1)]
        if len(side) == 2 and side[0] == side[1] and side[0] in valid:
            return int(side[0])
    return BASE_SIZE
