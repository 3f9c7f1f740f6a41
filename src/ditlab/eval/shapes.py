"""The `shapes` evaluator: read colour, shape and position back from images and grade them against prompts.

    from ditlab.eval.shapes import evaluate_shapes
    report = evaluate_shapes(images_uint8_nhwc, prompts)   # one prompt per image, shapes grammar
    ditlab eval --shapes --samples samples.npz               # the npz carries `prompts` beside arr_0

Reading an image (`read_objects`):
1. every pixel goes to the nearest colour of the palette (the four object colours and the grey background) by
   RGB distance, or to nothing when it is far from all of them (`MAX_COLOUR_DISTANCE`);
2. the pixels of each object colour split into 8-connected components; specks under `MIN_AREA` (40% of the
   smallest triangle) are ignored, so scattered noise does not count as an object;
3. a component's shape comes from its geometry: the share of its bounding box it fills (square ~1.0, circle
   ~pi/4 = 0.785, triangle ~0.5) and where its mass sits (an upright triangle's centroid is 1/6 of its height
   below the box centre; circles and squares are centred); a component matching none is "unknown";
4. its position is the centre of its bounding box, the point the captions' relations speak of.

Grading (`grade`): a one-object prompt is right when exactly that one object is read; a two-object prompt when
exactly the two named objects are read and the relation holds of their centres along its (dominant) axis,
the rule the data set's captions obey. The report splits accuracy by one/two objects and seen/held-out prompts
(those naming `yellow triangle` or `blue circle`), and lists every prompt.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ditlab.data import check_images, load_npz
from ditlab.data.shapes import (
    BACKGROUND,
    BASE_SIZE,
    COLOURS,
    MASK_CLASSES,
    MIN_SIDE,
    OBJECTS,
    is_held_out_caption,
    parse_caption,
    relation_holds,
)

MAX_COLOUR_DISTANCE = (
    100.0  # RGB distance beyond which a pixel is no palette colour (palette gaps are >= 150)
)
MIN_AREA = 0.4 * MIN_SIDE * MIN_SIDE / 2  # px at 32x32: 40% of the smallest triangle (scaled with the image)
SQUARE_FILL = 0.9  # fill ratio at or above: square
CIRCLE_FILL = 0.68  # between this and SQUARE_FILL (mass centred): circle
TRIANGLE_FILL = 0.38  # between this and SQUARE_FILL with the mass low: triangle
CENTRED = 0.06  # |centroid - box centre| / height below: centred (circle, square)
LOW_MASS = 0.08  # (centroid - box centre) / height above: mass low (apex-up triangle; ideal 1/6)
MAX_ASPECT = 1.5  # box width/height beyond this (or its inverse): no shape of the set

_PALETTE_NAMES = ("background", *COLOURS)
_PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)  # (5, 3)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DetectedObject:
    """One object read from an image; centre in base (32x32) pixels."""

    colour: str
    shape: str  # circle | square | triangle | unknown
    centre: tuple[float, float]
    area: float  # base pixels
    fill: float


def colour_map(image: np.ndarray) -> np.ndarray:
    """int (H, W): index into ("background", *COLOURS) of each pixel's nearest palette colour; -1 if none is
    within MAX_COLOUR_DISTANCE."""
    pixels = image.astype(np.float32)[..., None, :]  # (H, W, 1, 3)
    distance = np.linalg.norm(pixels - _PALETTE, axis=-1)  # (H, W, 5)
    nearest = distance.argmin(-1)
    return np.where(distance.min(-1) <= MAX_COLOUR_DISTANCE, nearest, -1)


def classify_shape(component: np.ndarray) -> tuple[str, float]:
    """(shape name, fill ratio) of one bool (h, w) component cropped to its bounding box."""
    h, w = component.shape
    fill = float(component.mean())
    if max(h / w, w / h) > MAX_ASPECT:
        return "unknown", fill
    rows = np.nonzero(component)[0]
    mass_offset = ((rows.mean() + 0.5) - h / 2) / h  # > 0: mass below the box centre
    # Bottom-heavy first: a soft-edged triangle fills more of its box (up to ~0.8) but keeps its mass low.
    if mass_offset > LOW_MASS and TRIANGLE_FILL <= fill < SQUARE_FILL:
        return "triangle", fill
    if abs(mass_offset) < CENTRED and fill >= SQUARE_FILL:
        return "square", fill
    if abs(mass_offset) < CENTRED and fill >= CIRCLE_FILL:
        return "circle", fill
    return "unknown", fill


def read_objects(image) -> list[DetectedObject]:
    """The objects in one uint8 image (H, W, 3), in reading order (top to bottom, left to right)."""
    image = check_images(np.asarray(image)[None], what="image")[0]
    if image.shape[-1] != 3:
        raise ValueError(f"the shapes evaluator reads RGB images, got {image.shape[-1]} channel(s)")
    scale = image.shape[0] / BASE_SIZE  # lengths are reported in base pixels whatever the render size
    colours = colour_map(image)
    found = []
    for index, name in enumerate(_PALETTE_NAMES[1:], start=1):
        components, count = ndimage.label(colours == index, structure=_EIGHT_CONNECTED)
        for label, box in enumerate(ndimage.find_objects(components), start=1):
            piece = components[box] == label  # this component only (another's pixels may share its box)
            area = piece.sum() / scale**2
            if area < MIN_AREA:
                continue
            shape, fill = classify_shape(_crop(piece))
            rows, cols = box
            centre = ((cols.start + cols.stop) / 2 / scale, (rows.start + rows.stop) / 2 / scale)
            found.append(DetectedObject(name, shape, centre, float(area), fill))
    return sorted(found, key=lambda o: (o.centre[1], o.centre[0]))


def segment(image) -> np.ndarray:
    """int64 (H, W) labels of one uint8 image (H, W, 3) in MASK_CLASSES (the layouts' classes): each object read
    as `read_objects` reads it paints its pixels with its colour x shape class; background-grey pixels are 0;
    pixels of no palette colour, specks and objects of unknown shape are -1 (no class: wrong for every one)."""
    image = check_images(np.asarray(image)[None], what="image")[0]
    scale = image.shape[0] / BASE_SIZE
    colours = colour_map(image)
    labels = np.where(colours == 0, 0, -1).astype(np.int64)
    for index, name in enumerate(_PALETTE_NAMES[1:], start=1):
        components, _ = ndimage.label(colours == index, structure=_EIGHT_CONNECTED)
        for label, box in enumerate(ndimage.find_objects(components), start=1):
            piece = components[box] == label
            if piece.sum() / scale**2 < MIN_AREA:
                continue
            shape, _ = classify_shape(_crop(piece))
            if shape != "unknown":
                labels[box][piece] = OBJECTS.index((name, shape)) + 1
    return labels


def layout_iou(images, layouts) -> dict:
    """Layout fidelity: per-class IoU between the requested label maps (N, H, W) and the segmentation
    (`segment`) of the generated uint8 images (N, H, W, 3), intersections and unions summed over the images.

    -> {"per_class": {class name: IoU} for the classes requested anywhere, "mean_iou" (over those object
    classes), "mean_iou_with_background", "pixel_accuracy", "n"}."""
    images = check_images(images, what="images")
    layouts = np.asarray(layouts)
    if layouts.shape != images.shape[:3]:
        raise ValueError(f"one (H, W) layout per image: images {images.shape[:3]}, layouts {layouts.shape}")
    K = len(MASK_CLASSES)
    inter, union = np.zeros(K), np.zeros(K)
    correct = 0
    for image, want in zip(images, layouts):
        got = segment(image)
        correct += int((got == want).sum())
        for k in np.union1d(np.unique(want), np.unique(got[got >= 0])):
            a, b = want == k, got == k
            inter[k] += (a & b).sum()
            union[k] += (a | b).sum()
    requested = [k for k in range(K) if (layouts == k).any()]
    per_class = {MASK_CLASSES[k]: float(inter[k] / union[k]) for k in requested}
    objects = [per_class[MASK_CLASSES[k]] for k in requested if k > 0]
    return {
        "n": len(images),
        "per_class": per_class,
        "mean_iou": float(np.mean(objects)) if objects else None,
        "mean_iou_with_background": float(np.mean(list(per_class.values()))) if per_class else None,
        "pixel_accuracy": correct / max(layouts.size, 1),
    }


def reference_agreement(images, references) -> dict:
    """How closely generated uint8 images (N, H, W, 3) follow the colours of their reference images (N, H, W, 3):
    the Pearson correlation over the images between each image's mean RGB and its reference's (per channel and
    their mean), and the share of images whose set of object colours (`read_objects`) equals the reference's.
    A model that ignores its reference scores a correlation near 0 and the chance rate of colour sets."""
    images = check_images(images, what="images")
    references = check_images(references, what="references")
    if images.shape != references.shape or len(images) < 2:
        raise ValueError(
            f"one reference per image, at least two: images {images.shape}, references {references.shape}"
        )
    means = images.reshape(len(images), -1, 3).mean(1)  # (N, 3)
    ref_means = references.reshape(len(images), -1, 3).mean(1)
    per_channel = [float(np.corrcoef(means[:, c], ref_means[:, c])[0, 1]) for c in range(3)]
    same = [
        {o.colour for o in read_objects(a)} == {o.colour for o in read_objects(b)}
        for a, b in zip(images, references)
    ]
    return {
        "n": len(images),
        "mean_colour_correlation": float(np.mean(per_channel)),
        "per_channel_correlation": dict(zip("RGB", per_channel)),
        "colour_set_match": float(np.mean(same)),
        "mean_colour_abs_error": float(np.abs(means - ref_means).mean()),
    }


def _crop(piece: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(piece)
    return piece[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def grade(image, prompt: str) -> dict:
    """Grade one image against its prompt: {"correct", "objects_correct", "relation_correct", "two", "objects"}.

    relation_correct is None for one-object prompts; objects lists what was read ("red circle@(12.0,9.5)").
    """
    wanted, relation = parse_caption(prompt)
    objects = read_objects(image)
    names = sorted(f"{o.colour} {o.shape}" for o in objects)
    objects_correct = names == sorted(f"{c} {s}" for c, s in wanted)
    relation_correct = None
    if relation is not None:
        relation_correct = objects_correct and _relation_read(objects, wanted, relation)
    correct = objects_correct if relation is None else bool(relation_correct)
    read = [f"{o.colour} {o.shape}@({o.centre[0]:.1f},{o.centre[1]:.1f})" for o in objects]
    return {
        "correct": bool(correct),
        "objects_correct": bool(objects_correct),
        "relation_correct": relation_correct,
        "two": relation is not None,
        "objects": read,
    }


def _relation_read(objects: list[DetectedObject], wanted, relation: str) -> bool:
    """Whether some assignment of the two read objects to the prompt's (first, second) satisfies the relation
    (two objects of the same kind can be read either way)."""
    for first, second in ((objects[0], objects[1]), (objects[1], objects[0])):
        if (first.colour, first.shape) == wanted[0] and (second.colour, second.shape) == wanted[1]:
            if relation_holds(relation, first.centre, second.centre):
                return True
    return False


def _rate(hits: Sequence[bool]) -> float | None:
    return float(np.mean(hits)) if len(hits) else None


def _group(rows: list[dict], two: bool) -> dict:
    entry = {"n": len(rows), "accuracy": _rate([r["correct"] for r in rows])}
    if two:
        entry["objects_accuracy"] = _rate([r["objects_correct"] for r in rows])
        entry["relation_accuracy"] = _rate([bool(r["relation_correct"]) for r in rows])
    return entry


def evaluate_shapes(images, prompts: Sequence[str]) -> dict:
    """Grade images (uint8 (N, H, W, 3)) against one prompt each; a JSON-ready report.

    Keys: n, accuracy (all prompts), single / two -> seen / held_out -> {n, accuracy[, objects_accuracy,
    relation_accuracy]} (accuracy None where a group is empty), per_prompt -> prompt -> {n, correct, accuracy,
    held_out}.
    """
    images = check_images(images, what="images")
    prompts = [str(p) for p in prompts]
    if len(prompts) != len(images):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts; give one prompt per image")
    rows = []
    for image, prompt in zip(images, prompts):
        row = grade(image, prompt)
        row.update(prompt=prompt, held_out=is_held_out_caption(prompt))
        rows.append(row)
    report = {"n": len(rows), "accuracy": _rate([r["correct"] for r in rows])}
    for key, two in (("single", False), ("two", True)):
        report[key] = {
            split: _group([r for r in rows if r["two"] == two and r["held_out"] == held], two)
            for split, held in (("seen", False), ("held_out", True))
        }
    per_prompt: dict[str, dict] = {}
    for r in rows:
        entry = per_prompt.setdefault(r["prompt"], {"n": 0, "correct": 0, "held_out": r["held_out"]})
        entry["n"] += 1
        entry["correct"] += int(r["correct"])
    for entry in per_prompt.values():
        entry["accuracy"] = entry["correct"] / entry["n"]
    report["per_prompt"] = per_prompt
    return report


def load_prompts(path: str | os.PathLike, n: int) -> list[str]:
    """The `prompts` array (one string per image, in arr_0's order) of a samples .npz holding `n` images."""
    with np.load(Path(path), allow_pickle=False) as data:
        if "prompts" not in data.files:
            raise ValueError(
                f"{path} has no 'prompts' array; the shapes evaluator needs the prompt of each image (text "
                "models' `ditlab sample --prompt ...` writes it beside arr_0)"
            )
        prompts = data["prompts"]
    if prompts.shape != (n,) or prompts.dtype.kind not in "US":
        raise ValueError(
            f"'prompts' in {path} must be {n} strings (one per image), got {prompts.dtype} {prompts.shape}"
        )
    return [p.decode() if isinstance(p, bytes) else str(p) for p in prompts.tolist()]


def shapes_report(samples: str | os.PathLike | None) -> dict:
    """`ditlab eval --shapes`: the report of a samples .npz (arr_0 images + prompts)."""
    if samples is None:
        raise ValueError(
            "--shapes grades samples: pass --samples samples.npz (arr_0 images and their prompts)"
        )
    images, _ = load_npz(samples)
    return evaluate_shapes(images, load_prompts(samples, len(images)))
