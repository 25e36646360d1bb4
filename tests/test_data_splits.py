"""load_splits: files to encoded splits, the seeded stratified validation split, skipped rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from modelyard.config import Config, load_config
from modelyard.data import load_splits, split_indices
from modelyard.errors import DataError

pytestmark = pytest.mark.unit


def config(data: dict, task: str = "binary", seed: int = 13) -> Config:
    return load_config({"name": "t", "task": task, "seed": seed, "data": data})


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "text,label") -> Path:
    path.write_text(header + "\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    return path


def test_stratified_split_keeps_class_ratios_and_is_seeded() -> None:
    targets = np.array([0] * 700 + [1] * 200 + [2] * 100)
    a = split_indices("multiclass", targets, 0.1, seed=3)
    b = split_indices("multiclass", targets, 0.1, seed=3)
    c = split_indices("multiclass", targets, 0.1, seed=4)
    assert np.array_equal(a.validation, b.validation) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.validation, c.validation)
    assert Counter(targets[a.validation].tolist()) == {0: 70, 1: 20, 2: 10}
    assert sorted(np.concatenate([a.train, a.validation]).tolist()) == list(range(1000))


def test_split_keeps_every_class_in_train() -> None:
    targets = np.array([0] * 20 + [1] + [2] * 2)
    split = split_indices("multiclass", targets, 0.5, seed=0)
    assert set(targets[split.train].tolist()) == {0, 1, 2}
    assert len(split.validation) == round(23 * 0.5)
    assert Counter(targets[split.train].tolist())[1] == 1


def test_split_regression_bins_spread_the_range() -> None:
    targets = np.linspace(-4, 4, 200).astype(np.float32)
    split = split_indices("regression", targets, 0.1, seed=1)
    held = targets[split.validation]
    assert len(held) == 20
    # two held-out values from each tenth of the range
    tenths = np.digitize(held, np.linspace(-4, 4, 11)[1:-1]).tolist()
    assert Counter(tenths) == {i: 2 for i in range(10)}


def test_split_multilabel_keeps_rare_label_in_train() -> None:
    hot = np.zeros((10, 2), dtype=np.float32)
    hot[:, 0] = 1
    hot[9, 1] = 1
    for seed in range(20):
        split = split_indices("multilabel", hot, 0.5, seed=seed)
        assert hot[split.train, 1].sum() == 1


def test_load_splits_with_validation_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(f"text {i}", "pos" if i % 5 else "neg") for i in range(40)]
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:5])
    monkeypatch.chdir(tmp_path)  # paths are relative to the current directory
    splits = load_splits(
        config({"train": "train.csv", "test": "test.csv", "validation_split": 0.25})
    )
    assert splits.labels.labels == ["neg", "pos"]
    assert len(splits.train) == 30 and len(splits.validation) == 10
    assert splits.validation.targets.tolist().count(0.0) == 2  # 8 neg of 40: a quarter is 2
    assert splits.test is not None and splits.test.targets.tolist() == [0, 1, 1, 1, 1]
    assert set(splits.train.texts).isdisjoint(splits.validation.texts)
    assert splits.train.source == "train.csv"
    again = load_splits(config({"train": "train.csv", "validation_split": 0.25}))
    assert again.validation.texts == splits.validation.texts


def test_load_splits_no_validation(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "train.csv", [("a", "1.5"), ("b", "2"), ("c", "-1")], "text,score")
    splits = load_splits(
        config({"train": str(f), "label": "score", "validation_split": 0.0}, task="regression")
    )
    assert len(splits.train) == 3
    assert len(splits.validation) == 0 and splits.validation.targets.shape == (0,)
    assert splits.test is None


def test_load_splits_validation_file_and_skipped_rows(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", [("a", "x"), ("b", "y"), ("", "x"), ("c", "z")])
    val = write_csv(tmp_path / "val.csv", [("d", "x"), ("e", "w"), ("f", "y")])
    data = {"train": str(train), "validation": str(val), "skip_bad_rows": True}
    splits = load_splits(config(data, task="multiclass"))
    assert splits.labels.labels == ["x", "y", "z"]
    assert splits.validation.texts == ["d", "f"]
    assert [str(b) for b in splits.skipped] == [
        f"{train}:4: empty text",
        f"{val}:3: unknown label 'w'; known labels: x, y, z",
    ]
    with pytest.raises(DataError, match=r"train\.csv:4: empty text"):
        load_splits(config({**data, "skip_bad_rows": False}, task="multiclass"))


def test_load_splits_skips_bad_regression_targets(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "r.csv", [("a", "1"), ("b", "abc"), ("c", "2"), ("d", "3")])
    splits = load_splits(config({"train": str(f), "skip_bad_rows": True}, task="regression"))
    assert [(b.line, b.reason) for b in splits.skipped] == [(3, "cannot read 'abc' as a number")]
    with pytest.raises(DataError, match=r"r\.csv:3: cannot read 'abc' as a number"):
        load_splits(config({"train": str(f)}, task="regression"))


def test_load_splits_binary_with_three_classes(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "t.csv", [("a", "x"), ("b", "y"), ("c", "z")])
    with pytest.raises(DataError, match=r"t\.csv: a binary task needs exactly 2 classes, found 3"):
        load_splits(config({"train": str(f)}))


def test_load_splits_header_only(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "t.csv", [])
    with pytest.raises(DataError, match=r"t\.csv: no examples"):
        load_splits(config({"train": str(f)}))


def test_load_splits_fixed_labels(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "t.csv", [("a", "yes"), ("b", "no")] * 5)
    splits = load_splits(config({"train": str(f), "labels": ["yes", "no"]}))
    assert splits.labels.labels == ["yes", "no"]
    assert splits.train.targets.dtype == np.float32
