"""The `shapes` data set (grammar, held-out split, geometry, seeds) and its evaluator (ground truth >= 99%,
and it fails on wrong images)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ditlab.data import FASHION_MNIST_DIR, load_dataset, parse_spec
from ditlab.data.shapes import (
    BACKGROUND,
    BASE_SIZE,
    COLOURS,
    HELD_OUT,
    MASK_CLASSES,
    MAX_SIDE,
    MIN_SIDE,
    OBJECTS,
    RELATIONS,
    Scene,
    ShapeObject,
    make_shapes,
    parse_caption,
    relation_holds,
    render_scene,
    split_captions,
)
from ditlab.eval.evaluate import default_features
from ditlab.eval.shapes import evaluate_shapes, grade, read_objects

COLOUR = "(red|green|blue|yellow)"
SHAPE = "(circle|square|triangle)"
GRAMMAR = re.compile(rf"^a {COLOUR} {SHAPE}( (left of|right of|above|below) a {COLOUR} {SHAPE})?$")


@pytest.fixture(scope="module")
def train():
    return make_shapes("train", 1500)


@pytest.fixture(scope="module")
def test_split():
    return make_shapes("test", 600)


def test_captions_follow_the_grammar_exactly(train, test_split):
    captions = train.captions + test_split.captions
    assert all(GRAMMAR.match(c) for c in captions)
    for caption, scene in zip(captions, train.scenes + test_split.scenes):
        assert scene.caption == caption
        objects, relation = parse_caption(caption)
        assert objects == tuple((o.colour, o.shape) for o in scene.objects) and relation == scene.relation
    # Both forms occur, every relation occurs, and the parser refuses anything off the grammar.
    assert {s.relation for s in train.scenes} == {None, *RELATIONS}
    for bad in (
        "a Red circle",
        "a red circle next to a blue square",
        "red circle",
        "a red  circle",
        "a red oval",
    ):
        with pytest.raises(ValueError, match="grammar"):
            parse_caption(bad)


def test_split_captions_enumerate_the_grammar(train, test_split):
    seen, held = split_captions("train"), split_captions("test")
    assert len(seen) == 10 + 10 * 10 * 4 and len(held) == 2 + (12 * 12 - 10 * 10) * 4
    assert not set(seen) & set(held) and all(GRAMMAR.match(c) for c in seen + held)
    assert set(train.captions) <= set(seen) and set(test_split.captions) <= set(held)
    assert len(set(train.captions)) > 300  # 1500 images already cover most of the grammar


def test_held_out_objects_never_in_train_and_always_in_test(train, test_split):
    held = {f"{c} {s}" for c, s in HELD_OUT}
    for scene in train.scenes:
        assert not {o.name for o in scene.objects} & held
    for scene in test_split.scenes:
        assert {o.name for o in scene.objects} & held
    # The train split still uses every other object.
    assert {o.name for s in train.scenes for o in s.objects} == {f"{c} {s}" for c, s in OBJECTS} - held


def _components(mask: np.ndarray) -> list[np.ndarray]:
    labelled, n = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
    return [labelled == i for i in range(1, n + 1)]


@pytest.mark.parametrize(("split", "size"), [("train", 32), ("test", 64)])
def test_geometry_sizes_relations_and_no_touching(split, size):
    data = make_shapes(split, 400, image_size=size)
    scale = size // BASE_SIZE
    for image, mask, scene in zip(data.images, data.masks, data.scenes):
        pieces = _components(mask)
        # Never touching: each object is its own 8-connected component of the mask.
        assert len(pieces) == len(scene.objects)
        alone = [render_scene(Scene((obj,)), size)[1] for obj in scene.objects]
        assert np.array_equal(np.maximum.reduce(alone), mask)  # the mask is exactly the objects, none hidden
        for obj, own in zip(scene.objects, alone):
            assert MIN_SIDE <= obj.size <= MAX_SIDE
            rows, cols = np.nonzero(own.any(1))[0], np.nonzero(own.any(0))[0]
            for extent in (rows, cols):  # 8-14 px across at 32 (scaled at 64); a triangle's tip may be thin
                assert obj.size - 1 <= len(extent) / scale <= obj.size
                assert extent.min() >= scale and extent.max() < size - scale  # inside, with a margin
        if scene.relation is not None:
            a, b = scene.objects
            assert relation_holds(scene.relation, a.centre, b.centre)
        # Flat grey background wherever the mask says background; the palette colour elsewhere.
        assert (image[mask == 0] == BACKGROUND).all()
        for cls in np.unique(mask[mask > 0]):
            colour = MASK_CLASSES[cls].split()[0]
            assert (image[mask == cls] == COLOURS[colour]).all()


def test_relations_are_true_of_the_centres():
    assert relation_holds("left of", (5, 10), (20, 12)) and not relation_holds("right of", (5, 10), (20, 12))
    assert relation_holds("above", (10, 3), (12, 20)) and not relation_holds("below", (10, 3), (12, 20))
    assert not relation_holds("left of", (5, 3), (7, 20))  # left, but mostly above: not the natural reading


def test_shapes_are_filled_upright_and_axis_aligned():
    scene = Scene((ShapeObject("red", "triangle", 4, 4, 12),))
    _, mask = render_scene(scene)
    rows, cols = np.nonzero(mask)
    widths = [int((rows == r).sum()) for r in range(rows.min(), rows.max() + 1)]
    assert widths == sorted(widths) and widths[-1] >= 11  # apex up, widening to the base
    _, mask = render_scene(Scene((ShapeObject("green", "square", 3, 5, 10),)))
    assert mask[5:15, 3:13].all() and (mask > 0).sum() == 100
    _, mask = render_scene(Scene((ShapeObject("blue", "circle", 3, 5, 10),)))
    assert abs((mask > 0).sum() / 100 - np.pi / 4) < 0.05


def test_seeded_determinism_and_prefix_stability():
    a, b = make_shapes("train", 50), make_shapes("train", 80)
    assert np.array_equal(a.images, b.images[:50]) and a.captions == b.captions[:50]
    assert not np.array_equal(a.images, make_shapes("test", 50).images)
    big = make_shapes("train", 50, image_size=64)
    assert big.captions == a.captions  # the same scenes at twice the size
    for small_mask, big_mask in zip(a.masks, big.masks):
        assert set(np.unique(small_mask)) == set(np.unique(big_mask))
        assert 3.4 < (big_mask > 0).sum() / (small_mask > 0).sum() < 4.6


def test_spec_and_dataset_object():
    assert str(parse_spec("shapes[64]:test")) == "shapes[64]:test"
    ds = load_dataset("shapes:test")
    assert ds.images.shape[1:] == (3, 32, 32) and len(ds.captions) == len(ds) == 5000
    assert ds.captions[:5] == make_shapes("test", 5).captions
    with pytest.raises(ValueError, match="32, 64"):
        parse_spec("shapes[48]")
    with pytest.raises(ValueError, match="flipped"):
        load_dataset("shapes:test", flip=True)
    # FD against shapes uses the generic extractor only: the set has no labels to train a classifier on.
    assert default_features("shapes:test") == ("effnet-lite0",)


@pytest.mark.parametrize("size", [32, 64])
def test_evaluator_reads_ground_truth(train, test_split, size):
    data = train if size == 32 else make_shapes("train", 300, image_size=64)
    report = evaluate_shapes(data.images, data.captions)
    assert report["accuracy"] >= 0.99
    assert report["single"]["seen"]["accuracy"] >= 0.99 and report["two"]["seen"]["accuracy"] >= 0.99
    assert report["single"]["held_out"]["n"] == 0
    held = evaluate_shapes(test_split.images, test_split.captions)
    assert held["single"]["held_out"]["accuracy"] >= 0.99 and held["two"]["held_out"]["accuracy"] >= 0.99
    assert held["single"]["seen"]["n"] == 0
    json.dumps(report)  # JSON-ready


def _scene_image(*objects, relation=None):
    return render_scene(Scene(tuple(ShapeObject(*o) for o in objects), relation))[0]


def test_evaluator_catches_wrong_colour_shape_relation_and_noise(train):
    image = _scene_image(("red", "circle", 3, 8, 12), ("blue", "square", 18, 9, 11), relation="left of")
    assert grade(image, "a red circle left of a blue square")["correct"]
    assert not grade(image, "a blue circle left of a red square")["correct"]  # swapped colours
    assert not grade(image, "a red square left of a blue circle")["correct"]  # swapped shapes
    wrong_relation = grade(image, "a red circle right of a blue square")
    assert wrong_relation["objects_correct"] and not wrong_relation["correct"]
    assert not grade(image, "a red circle above a blue square")["correct"]
    assert not grade(image, "a red circle")["correct"]  # an extra object
    single = _scene_image(("yellow", "triangle", 9, 9, 13))
    assert grade(single, "a yellow triangle")["correct"]
    assert not grade(single[::-1], "a yellow triangle")["correct"]  # apex down is no triangle of the set
    assert not grade(single, "a green triangle")["correct"]
    # Whole sets: recoloured (red <-> blue), random noise, and a blank background all fail.
    swapped = train.images.copy()
    red, blue = (swapped == COLOURS["red"]).all(-1), (swapped == COLOURS["blue"]).all(-1)
    swapped[red], swapped[blue] = COLOURS["blue"], COLOURS["red"]
    touched = [i for i, c in enumerate(train.captions) if "red" in c or "blue" in c]
    assert evaluate_shapes(swapped[touched], [train.captions[i] for i in touched])["accuracy"] < 0.3
    noise = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    assert evaluate_shapes(noise, train.captions[:200])["accuracy"] < 0.05
    blank = np.broadcast_to(np.array(BACKGROUND, np.uint8), (50, 32, 32, 3))
    assert evaluate_shapes(blank, train.captions[:50])["accuracy"] == 0.0


def test_evaluator_tolerates_soft_edges_and_mild_noise(train):
    """Generated images are never pixel-exact: a 1 px blur or noise of sigma 20 must not change the reading."""
    blurred = ndimage.gaussian_filter(train.images[:300].astype(float), (0, 1, 1, 0))
    noisy = train.images[:300] + np.random.default_rng(1).normal(0, 20, (300, 32, 32, 3))
    for images in (blurred, noisy):
        images = np.clip(images, 0, 255).astype(np.uint8)
        assert evaluate_shapes(images, train.captions[:300])["accuracy"] >= 0.97


def test_read_objects_reports_colour_shape_and_centre():
    image = _scene_image(("green", "square", 2, 2, 10), ("yellow", "circle", 18, 17, 12), relation="above")
    objects = read_objects(image)
    assert [(o.colour, o.shape) for o in objects] == [("green", "square"), ("yellow", "circle")]
    assert objects[0].centre == (7.0, 7.0) and objects[1].centre == (24.0, 23.0)
    with pytest.raises(ValueError, match="one prompt per image"):
        evaluate_shapes(image[None], ["a green square", "a red circle"])


def test_eval_cli_shapes(tmp_path, capsys, test_split):
    from ditlab.cli import main

    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=test_split.images[:30], prompts=np.array(test_split.captions[:30]))
    assert main(["eval", "--shapes", "--samples", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)["shapes"]
    assert report["n"] == 30 and report["accuracy"] == 1.0
    np.savez(path, arr_0=test_split.images[:30])
    assert main(["eval", "--shapes", "--samples", str(path)]) == 2
    assert "no 'prompts' array" in capsys.readouterr().err


def test_class_captions_follow_the_labels():
    from ditlab.data.captions import FASHION_MNIST_CAPTIONS, class_captions

    assert class_captions([5, 1, 9], FASHION_MNIST_CAPTIONS) == [
        "a photo of a sandal",
        "a photo of trousers",
        "a photo of an ankle boot",
    ]
    with pytest.raises(ValueError, match="class ids"):
        class_captions([10], FASHION_MNIST_CAPTIONS)


@pytest.mark.skipif(
    not (Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST is not installed",
)
def test_fashion_mnist_carries_templated_captions():
    from ditlab.data.captions import FASHION_MNIST_CAPTIONS

    ds = load_dataset("fashion-mnist[5,7]:test")
    assert len(ds.captions) == len(ds) == 2000
    assert all(c == FASHION_MNIST_CAPTIONS[int(y)] for c, y in zip(ds.captions, ds.labels))
    assert set(ds.captions) == {"a photo of a sandal", "a photo of a sneaker"}
    assert load_dataset("fashion-mnist:test", unconditional=True).captions == []  # dropped with the labels
