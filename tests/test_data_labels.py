"""LabelSpace: class order, encoding per task, and errors that name the line."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.data import LabelSpace, parse_label
from modelyard.errors import DataError

pytestmark = pytest.mark.unit


def test_binary_sorted_positive_is_second() -> None:
    space = LabelSpace.fit("binary", ["pos", "neg", "pos"])
    assert space.labels == ["neg", "pos"]
    assert space.num_outputs == 1
    y = space.encode(["pos", "neg", "pos"])
    assert y.dtype == np.float32 and y.shape == (3,)
    assert y.tolist() == [1.0, 0.0, 1.0]


def test_binary_bools_become_false_true() -> None:
    space = LabelSpace.fit("binary", [True, False, True])
    assert space.labels == ["false", "true"]
    assert space.encode([False, True]).tolist() == [0.0, 1.0]


def test_binary_needs_two_classes_and_names_them() -> None:
    with pytest.raises(DataError, match=r"train\.csv: .*exactly 2 classes, found 3: a, b, c"):
        LabelSpace.fit("binary", ["a", "b", "c", "a"], path="train.csv")
    with pytest.raises(DataError, match="found 1: a"):
        LabelSpace.fit("binary", ["a", "a"], path="train.csv")


def test_multiclass_integer_labels_sort_numerically() -> None:
    space = LabelSpace.fit("multiclass", ["10", "2", "1", 2, 10.0])
    assert space.labels == ["1", "2", "10"]
    y = space.encode(["2", "10", "1", 2])
    assert y.dtype == np.int64
    assert y.tolist() == [1, 2, 0, 1]
    assert space.num_outputs == 3


def test_multiclass_string_labels_sorted() -> None:
    assert LabelSpace.fit("multiclass", ["b", "a10", "a2"]).labels == ["a10", "a2", "b"]


def test_fixed_order_and_label_outside_it_names_the_line() -> None:
    space = LabelSpace.fit("multiclass", ["low", "high"], fixed=["low", "mid", "high"])
    assert space.labels == ["low", "mid", "high"]
    assert space.encode(["high", "mid"]).tolist() == [2, 1]
    with pytest.raises(DataError, match=r"d\.csv:7: label 'huge' is not one of the configured"):
        LabelSpace.fit(
            "multiclass", ["low", "huge"], fixed=["low", "high"], path="d.csv", lines=[3, 7]
        )


def test_encode_unknown_label_names_file_and_line() -> None:
    space = LabelSpace.fit("multiclass", ["a", "b"])
    with pytest.raises(DataError, match=r"test\.csv:12: unknown label 'c'; known labels: a, b"):
        space.encode(["a", "c"], path="test.csv", lines=[11, 12])


def test_multilabel_json_list_and_delimiter() -> None:
    space = LabelSpace.fit("multilabel", ['["x", "y"]', "z|x", "", ["y"]])
    assert space.labels == ["x", "y", "z"]
    assert space.delimiter is None
    hot = space.encode([["y", "x"], "z", "", '["z","z"]'])
    assert hot.dtype == np.float32 and hot.shape == (4, 3)
    assert hot.tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 1]]
    semi = LabelSpace.fit("multilabel", ["a; b", "c"], delimiter=";")
    assert semi.labels == ["a", "b", "c"]
    assert LabelSpace.from_dict(semi.to_dict()).encode(["b;c"]).tolist() == [[0, 1, 1]]


def test_multilabel_empty_encode_keeps_width() -> None:
    space = LabelSpace.fit("multilabel", ["a|b"])
    assert space.encode([]).shape == (0, 2)
    assert space.num_outputs == 2


def test_regression() -> None:
    space = LabelSpace.fit("regression", ["1.5", -2, 3.25])
    assert space.labels == []
    assert space.num_outputs == 1
    y = space.encode(["1.5", -2, " 3.25 "])
    assert y.dtype == np.float32
    assert y.tolist() == [1.5, -2.0, 3.25]


def test_regression_unparsable_names_file_and_line() -> None:
    with pytest.raises(DataError, match=r"r\.csv:4: cannot read 'abc' as a number"):
        LabelSpace.fit("regression", ["1", "abc"], path="r.csv", lines=[2, 4])
    with pytest.raises(DataError, match=r"r\.csv:2: .*not a finite number"):
        LabelSpace.fit("regression", ["nan"], path="r.csv", lines=[2])


def test_empty_label_names_the_line() -> None:
    with pytest.raises(DataError, match=r"d\.csv:3: empty label"):
        LabelSpace.fit("multiclass", ["a", " "], path="d.csv", lines=[2, 3])


def test_round_trip_dict() -> None:
    space = LabelSpace.fit("binary", ["great", "other"])
    d = space.to_dict()
    assert d == {"task": "binary", "labels": ["great", "other"], "delimiter": None}
    assert LabelSpace.from_dict({"task": "binary", "labels": ["great", "other"]}) == space


def test_problem_reports_without_raising() -> None:
    space = LabelSpace.fit("multiclass", ["a", "b"])
    assert space.problem("a") is None
    assert space.problem("z") == "unknown label 'z'; known labels: a, b"
    assert space.problem(None) == "empty label"
    assert parse_label("regression", "2e3") == 2000.0
