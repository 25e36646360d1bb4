"""Train / validation / test examples from the files a config names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.data.labels import LabelProblem, LabelSpace, parse_label
from modelyard.data.readers import BadRow, TextTable, read_table
from modelyard.errors import DataError
from modelyard.tasks import get_task

if TYPE_CHECKING:
    from modelyard.config import Config, DataConfig


@dataclass
class Examples:
    """Texts and their encoded targets (see :meth:`LabelSpace.encode` for shapes and dtypes)."""

    texts: list[str]
    targets: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray, source: str | None = None) -> Examples:
        """The examples at ``indices``, in that order."""
        return Examples(
            texts=[self.texts[i] for i in indices],
            targets=self.targets[indices],
            source=self.source if source is None else source,
        )


@dataclass
class DataSplits:
    """Everything a training run reads from its data files."""

    train: Examples
    validation: Examples  # empty when there is no validation file and validation_split is 0
    test: Examples | None
    labels: LabelSpace
    skipped: list[BadRow] = field(default_factory=list)


@dataclass
class IndexSplit:
    """Row indices (ascending) of the examples kept for training and held out for validation."""

    train: np.ndarray
    validation: np.ndarray


def load_splits(config: Config) -> DataSplits:
    """Read ``config.data``'s files into encoded train / validation / test examples.

    The label space is fitted on the whole train file. Without a validation file, a seeded
    (``config.seed``) share ``validation_split`` of the train rows is held out, stratified by
    class (binary, multiclass) or by quantile bin of the target (regression), plain random for
    multilabel; every class keeps at least one example in train. Paths are relative to the
    current directory.

    Args:
        config: the run's config.

    Returns:
        The splits, the label space and every row skipped (``data.skip_bad_rows``) in any file.

    Raises:
        DataError: a file is missing, unreadable or empty, a column is missing, the classes do
            not suit the task, or (without ``skip_bad_rows``) a row is bad.
    """
    data = config.data
    task = config.task
    skipped: list[BadRow] = []

    train_table = _read(data.train, data, skipped)
    if data.skip_bad_rows:
        fixed = LabelSpace(task, list(data.labels), data.label_delimiter) if data.labels else None

        def check(raw: Any) -> str | None:
            if fixed is not None:
                return fixed.problem(raw)
            try:
                parse_label(task, raw, data.label_delimiter)
            except LabelProblem as exc:
                return str(exc)
            return None

        train_table = _drop_bad_labels(train_table, check, skipped)
    labels = LabelSpace.fit(
        task,
        _raw(train_table),
        fixed=data.labels,
        delimiter=data.label_delimiter,
        path=train_table.path,
        lines=train_table.lines,
    )
    train = _encode(train_table, labels)

    if data.validation is not None:
        validation = _load_labelled(data.validation, data, labels, skipped)
    elif data.validation_split > 0:
        split = split_indices(task, train.targets, data.validation_split, seed=config.seed)
        validation = train.subset(
            split.validation, source=f"{train.source} (validation_split {data.validation_split:g})"
        )
        train = train.subset(split.train)
    else:
        validation = Examples(texts=[], targets=labels.encode([]), source="")

    test = _load_labelled(data.test, data, labels, skipped) if data.test is not None else None
    return DataSplits(train=train, validation=validation, test=test, labels=labels, skipped=skipped)


def split_indices(task: str, targets: np.ndarray, fraction: float, *, seed: int) -> IndexSplit:
    """Hold out ``fraction`` of the rows for validation, stratified, seeded.

    Args:
        task: a task name; its ``stratify`` decides the strata: the class (``class``), the
            quantile bin of the target (``value``, up to 10 bins), none but every label kept in
            train (``labels``).
        targets: encoded targets, as :meth:`LabelSpace.encode` returns them.
        fraction: share of rows to hold out, in [0, 1).
        seed: the same seed and targets give the same split.

    Returns:
        The train and validation row indices. The validation size is ``round(N * fraction)``
        (at least 1 when ``fraction > 0``), shared among strata by their size; every class
        (a label set: every label present) keeps at least one example in train.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n = len(targets)
    rng = np.random.default_rng(seed)
    stratify = get_task(task).stratify
    if stratify == "class":
        strata = np.asarray(targets).astype(np.int64)
    elif stratify == "value":
        strata = _quantile_bins(np.asarray(targets, dtype=np.float64), fraction)
    else:
        strata = np.zeros(n, dtype=np.int64)
    held = _stratified_pick(strata, fraction, rng)
    if stratify == "labels" and held.size:
        held = _keep_labels_in_train(np.asarray(targets), held)
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return IndexSplit(train=np.flatnonzero(~mask), validation=np.flatnonzero(mask))


def random_split(count: int, fraction: float, *, seed: int) -> IndexSplit:
    """Hold out ``fraction`` of ``count`` rows for validation, at random, seeded (no strata:
    generative records have no label to stratify by).

    Args:
        count: how many rows.
        fraction: share of rows to hold out, in [0, 1).
        seed: the same seed and count give the same split.

    Returns:
        The train and validation row indices (ascending); the validation size is
        ``round(count * fraction)``, at least 1 when ``fraction > 0``, and train keeps a row.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    held = _stratified_pick(np.zeros(count, dtype=np.int64), fraction, np.random.default_rng(seed))
    mask = np.zeros(count, dtype=bool)
    mask[held] = True
    return IndexSplit(train=np.flatnonzero(~mask), validation=np.flatnonzero(mask))


def _quantile_bins(values: np.ndarray, fraction: float) -> np.ndarray:
    n = len(values)
    # about one held-out example per bin at least, so the bins do not round each other away
    n_bins = int(max(1, min(10, round(n * fraction))))
    bins = np.empty(n, dtype=np.int64)
    bins[np.argsort(values, kind="stable")] = np.arange(n) * n_bins // max(n, 1)
    return bins


def _stratified_pick(strata: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    n = len(strata)
    if n == 0 or fraction == 0:
        return np.zeros(0, dtype=np.int64)
    classes, counts = np.unique(strata, return_counts=True)
    total = max(1, round(n * fraction))
    quota = counts * fraction
    take = np.minimum(np.floor(quota).astype(np.int64), counts - 1)
    # largest remainders get the rounding, so class ratios in validation match train closely
    for c in np.argsort(-(quota - np.floor(quota)), kind="stable"):
        if take.sum() >= total:
            break
        if take[c] < counts[c] - 1:
            take[c] += 1
    picked = [
        rng.permutation(np.flatnonzero(strata == cls))[:k]
        for cls, k in zip(classes, take, strict=True)
        if k > 0
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _keep_labels_in_train(hot: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Move held-out rows back to train until every label seen anywhere occurs in train."""
    held_set = list(held)
    in_train = np.ones(len(hot), dtype=bool)
    in_train[held] = False
    for c in range(hot.shape[1]):
        if hot[in_train, c].any() or not hot[:, c].any():
            continue
        row = next(i for i in held_set if hot[i, c])
        held_set.remove(row)
        in_train[row] = True
    return np.asarray(held_set, dtype=np.int64)


# ------------------------------------------------------------------------------------ helpers
def _read(path: str, data: DataConfig, skipped: list[BadRow]) -> TextTable:
    table = read_table(
        Path(path),
        text=data.text,
        label=data.label,
        format=data.format,
        encoding=data.encoding,
        skip_bad_rows=data.skip_bad_rows,
    )
    if not table.texts:
        raise DataError(f"{path}: no examples (the file has a header but no rows)")
    skipped.extend(table.skipped)
    return table


def _raw(table: TextTable) -> list[Any]:
    return table.raw_labels if table.raw_labels is not None else []


def _drop_bad_labels(
    table: TextTable, check: Callable[[Any], str | None], skipped: list[BadRow]
) -> TextTable:
    keep: list[int] = []
    bad: list[BadRow] = []
    for i, raw in enumerate(_raw(table)):
        problem = check(raw)
        if problem is None:
            keep.append(i)
        else:
            bad.append(BadRow(table.path, table.lines[i], problem))
    if not keep:
        raise DataError(f"{table.path}: every row has a bad label; the first: {bad[0]}")
    skipped.extend(bad)
    raw = _raw(table)
    return TextTable(
        path=table.path,
        texts=[table.texts[i] for i in keep],
        raw_labels=[raw[i] for i in keep],
        lines=[table.lines[i] for i in keep],
        skipped=table.skipped,
    )


def _encode(table: TextTable, labels: LabelSpace) -> Examples:
    targets = labels.encode(_raw(table), path=table.path, lines=table.lines)
    return Examples(texts=table.texts, targets=targets, source=table.path)


def _load_labelled(
    path: str, data: DataConfig, labels: LabelSpace, skipped: list[BadRow]
) -> Examples:
    table = _read(path, data, skipped)
    if data.skip_bad_rows:
        table = _drop_bad_labels(table, labels.problem, skipped)
    return _encode(table, labels)
