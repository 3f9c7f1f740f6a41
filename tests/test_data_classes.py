"""Class subsets of a dataset (`digits[5-9]`, `load_dataset(..., classes=...)`): parsing, loading, references."""

import dataclasses

import numpy as np
import pytest

from ditlab.data import DatasetSpec, format_classes, load_dataset, parse_classes, parse_spec
from ditlab.eval.reference import parse_reference


@pytest.mark.parametrize(
    "text, ids, canonical",
    [("0-4", (0, 1, 2, 3, 4), "0-4"), ("7,0,2-3", (0, 2, 3, 7), "0,2-3,7"), ("5", (5,), "5")],
)
def test_class_lists_round_trip(text, ids, canonical):
    assert parse_classes(text) == ids
    assert format_classes(ids) == canonical and parse_classes(canonical) == ids


@pytest.mark.parametrize("bad", ["", "a", "3-1", "1-", "-2"])
def test_bad_class_lists_are_rejected(bad):
    with pytest.raises(ValueError, match="class"):
        parse_classes(bad)


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("digits[0-4]", DatasetSpec("digits", None, None, (0, 1, 2, 3, 4))),
        ("fashion-mnist[5-9]:test", DatasetSpec("fashion-mnist", None, "test", (5, 6, 7, 8, 9))),
        ("fashion-mnist:test[5,7]", DatasetSpec("fashion-mnist", None, "test", (5, 7))),
        ("fashion-mnist:/d/x[1-2]:train", DatasetSpec("fashion-mnist", "/d/x", "train", (1, 2))),
    ],
)
def test_specs_with_classes_parse_and_print(spec, parsed):
    assert parse_spec(spec) == parsed
    assert parse_spec(str(parsed)) == parsed
    # The trainer builds evaluation references as "<data>:test": that must keep the subset.
    no_split = dataclasses.replace(parsed, split=None)
    assert parse_spec(f"{no_split}:test") == dataclasses.replace(parsed, split="test")


def test_subset_keeps_original_ids_and_class_names():
    full = load_dataset("digits", split="test")
    sub = load_dataset("digits[5-9]", split="test")
    keep = np.isin(full.labels.numpy(), [5, 6, 7, 8, 9])
    assert len(sub) == int(keep.sum()) > 0
    assert sorted(sub.labels.unique().tolist()) == [5, 6, 7, 8, 9]
    assert sub.num_classes == full.num_classes == 10 and sub.class_names == full.class_names
    assert (sub.images == full.images[keep]).all()  # same images, same order
    assert str(parse_spec(sub.name)) == "digits[5-9]:test"
    # The argument form is the same subset, and must agree with a subset named in the spec.
    assert (load_dataset("digits", split="test", classes=range(5, 10)).images == sub.images).all()
    with pytest.raises(ValueError, match="give one"):
        load_dataset("digits[0-4]", classes=[5])


def test_subset_errors_name_the_problem():
    with pytest.raises(ValueError, match="out of range"):
        load_dataset("digits[8-12]")
    with pytest.raises(ValueError, match="unconditional"):
        load_dataset("digits[0-1]", unconditional=True)


def test_references_keep_the_subset():
    assert parse_reference("digits[0-4]").dataset == DatasetSpec("digits", None, "test", (0, 1, 2, 3, 4))
