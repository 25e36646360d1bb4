"""Label spaces: raw labels as found in a file ↔ the target arrays a model trains on."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.errors import DataError

DEFAULT_DELIMITER = "|"
_INT = re.compile(r"^[+-]?\d+$")
_TASKS = ("binary", "multiclass", "multilabel", "regression")


class LabelProblem(ValueError):
    """One raw label that cannot be used; the message is the reason, without file or line."""


def parse_label(task: str, value: Any, delimiter: str | None = None) -> str | float | list[str]:
    """Turn one raw label into its canonical form for ``task``.

    Args:
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        value: the label as read: a string (CSV/TSV), or a JSON/Parquet value.
        delimiter: multilabel only; see :meth:`LabelSpace.fit`.

    Returns:
        binary/multiclass: the class name (``str``); regression: a finite ``float``;
        multilabel: the list of class names (maybe empty), without duplicates.

    Raises:
        LabelProblem: the label is empty or cannot be read for this task.
    """
    if task == "regression":
        return _parse_number(value)
    if task == "multilabel":
        return _parse_many(value, delimiter)
    if value is None:
        raise LabelProblem("empty label")
    if isinstance(value, (list, tuple, dict)):
        raise LabelProblem(f"expected one label for a {task} task, got {_show(value)}")
    name = _name(value)
    if not name:
        raise LabelProblem("empty label")
    return name


def _name(value: Any) -> str:
    # bools first: True is also an int
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 1.0 from a parquet float column is the class "1"
    return str(value).strip()


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _parse_number(value: Any) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LabelProblem("empty label")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise LabelProblem(f"expected a number, got {_show(value)}")
    try:
        number = float(value)
    except ValueError:
        raise LabelProblem(f"cannot read {_show(value)} as a number") from None
    if not math.isfinite(number):
        raise LabelProblem(f"{_show(value)} is not a finite number")
    return number


def _parse_many(value: Any, delimiter: str | None) -> list[str]:
    if value is None:
        raise LabelProblem("empty label (an example with no labels is written [] or '')")
    if isinstance(value, str):
        text = value.strip()
        if delimiter is None and text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LabelProblem(
                    f"label list {_show(text)} is not valid JSON: {exc.msg}"
                ) from None
            if not isinstance(value, list):
                raise LabelProblem(f"expected a JSON list of labels, got {_show(text)}")
        else:
            value = text.split(delimiter or DEFAULT_DELIMITER) if text else []
    if not isinstance(value, (list, tuple)):
        value = [value]
    names: list[str] = []
    for item in value:
        if item is None or isinstance(item, (list, tuple, dict)):
            raise LabelProblem(f"bad label {_show(item)} in {_show(value)}")
        name = _name(item)
        if name and name not in names:
            names.append(name)
    return names


def sort_labels(names: Sequence[str]) -> list[str]:
    """Class names in their default order: numeric when every name is an integer, else text."""
    unique = set(names)
    if unique and all(_INT.match(n) for n in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def _where(path: str, lines: Sequence[int] | None, index: int) -> str:
    line = lines[index] if lines is not None else index + 1
    return f"{path}:{line}" if path else f"line {line}"


@dataclass
class LabelSpace:
    """The classes of a task and how raw labels map to targets.

    ``labels`` are the class names in output order ([] for regression); for binary there are
    exactly two and ``labels[1]`` is the positive class (the model's output is its probability).
    ``delimiter`` is how multilabel strings are split (None: a JSON list, else ``"|"``).
    """

    task: str
    labels: list[str]
    delimiter: str | None = None

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise ValueError(f"unknown task '{self.task}'; valid tasks: {', '.join(_TASKS)}")

    @classmethod
    def fit(
        cls,
        task: str,
        raw_labels: Sequence[Any],
        *,
        fixed: Sequence[str] | None = None,
        delimiter: str | None = None,
        path: str = "",
        lines: Sequence[int] | None = None,
    ) -> LabelSpace:
        """Find the classes of ``raw_labels``.

        Args:
            task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
            raw_labels: labels as read from the training file.
            fixed: the class order to use instead of sorting (every label must be in it).
            delimiter: multilabel labels given as one string are split on it. When None, a
                string that starts with ``[`` is read as a JSON list, any other is split on
                ``"|"`` (so ``"sports|politics"`` works without configuring anything).
            path: the file the labels came from, for error messages.
            lines: the source line of each label, for error messages (default: position + 1).

        Returns:
            The label space. Classes are sorted (numerically when every class name is an
            integer, so "2" comes before "10") unless ``fixed`` is given; bools are "false" and
            "true".

        Raises:
            DataError: a label is empty or unreadable, is not in ``fixed``, or the task's class
                count is wrong (binary needs exactly 2); the message names the file and line,
                or the classes found.
        """
        where = path or "labels"
        parsed = _parse_all(task, raw_labels, delimiter, path, lines)
        if task == "regression":
            return cls(task=task, labels=[], delimiter=delimiter)
        found = _names_of(parsed)
        if fixed is not None:
            classes = [str(c) for c in fixed]
            if len(set(classes)) != len(classes):
                raise DataError(f"{where}: the configured labels repeat a name: {classes}")
            known = set(classes)
            for i, value in enumerate(parsed):
                for name in value if isinstance(value, list) else [value]:
                    if name not in known:
                        raise DataError(
                            f"{_where(path, lines, i)}: label '{name}' is not one of the "
                            f"configured labels: {', '.join(classes)}"
                        )
        else:
            classes = sort_labels(found)
        if task == "binary" and len(classes) != 2:
            raise DataError(
                f"{where}: a binary task needs exactly 2 classes, found {len(classes)}: "
                f"{', '.join(classes) or '(none)'}"
                + ("; use task: multiclass" if len(classes) > 2 else "")
            )
        if task == "multiclass" and len(classes) < 2:
            raise DataError(
                f"{where}: a multiclass task needs at least 2 classes, found "
                f"{len(classes)}: {', '.join(classes) or '(none)'}"
            )
        if task == "multilabel" and not classes:
            raise DataError(f"{where}: no labels found in any row")
        distinct = sorted(set(found))
        if task in ("binary", "multiclass") and len(distinct) < 2:
            # configured labels make the class count right; a model trained on one class
            # still learns nothing but that class
            raise DataError(
                f"{where}: every training label is {', '.join(distinct) or '(none)'}; a {task} "
                "task needs at least 2 classes in the training data"
            )
        return cls(task=task, labels=classes, delimiter=delimiter)

    def encode(
        self, raw_labels: Sequence[Any], *, path: str = "", lines: Sequence[int] | None = None
    ) -> np.ndarray:
        """Turn raw labels into the targets a model trains on.

        Args:
            raw_labels: labels as read from a file.
            path: the file, for error messages.
            lines: the source line of each label, for error messages.

        Returns:
            binary: float32 (N,) in {0, 1} (1 = ``labels[1]``); multiclass: int64 (N,) class
            index; multilabel: float32 (N, C) multi-hot; regression: float32 (N,).

        Raises:
            DataError: a label is unreadable or not one of ``labels``; names the file and line.
        """
        parsed = _parse_all(self.task, raw_labels, self.delimiter, path, lines)
        n = len(parsed)
        if self.task == "regression":
            return np.asarray(parsed, dtype=np.float32).reshape(n)
        index = {name: i for i, name in enumerate(self.labels)}

        def lookup(name: str, i: int) -> int:
            found = index.get(name)
            if found is None:
                raise DataError(
                    f"{_where(path, lines, i)}: unknown label '{name}'; known labels: "
                    f"{', '.join(self.labels)}"
                )
            return found

        if self.task == "multilabel":
            hot = np.zeros((n, len(self.labels)), dtype=np.float32)
            for i, names in enumerate(parsed):
                for name in names:
                    hot[i, lookup(name, i)] = 1.0
            return hot
        ids = [lookup(str(name), i) for i, name in enumerate(parsed)]
        dtype = np.float32 if self.task == "binary" else np.int64
        return np.asarray(ids, dtype=dtype).reshape(n)

    def problem(self, raw_label: Any) -> str | None:
        """Why ``raw_label`` cannot be encoded in this space, or None when it can."""
        try:
            value = parse_label(self.task, raw_label, self.delimiter)
        except LabelProblem as exc:
            return str(exc)
        if self.task == "regression":
            return None
        known = set(self.labels)
        for name in value if isinstance(value, list) else [value]:
            if name not in known:
                return f"unknown label '{name}'; known labels: {', '.join(self.labels)}"
        return None

    @property
    def num_outputs(self) -> int:
        """Width of the model's output: 1 for binary and regression, else the class count."""
        return 1 if self.task in ("binary", "regression") else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {"task": self.task, "labels": list(self.labels), "delimiter": self.delimiter}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpace:
        """Read a dict written by :meth:`to_dict` (``delimiter`` may be absent)."""
        labels = [str(x) for x in d["labels"]]
        return cls(task=d["task"], labels=labels, delimiter=d.get("delimiter"))


def _parse_all(
    task: str,
    raw_labels: Sequence[Any],
    delimiter: str | None,
    path: str,
    lines: Sequence[int] | None,
) -> list[Any]:
    if task not in _TASKS:
        raise ValueError(f"unknown task '{task}'; valid tasks: {', '.join(_TASKS)}")
    if lines is not None and len(lines) != len(raw_labels):
        raise ValueError(f"got {len(raw_labels)} labels but {len(lines)} line numbers")
    parsed: list[Any] = []
    for i, raw in enumerate(raw_labels):
        try:
            parsed.append(parse_label(task, raw, delimiter))
        except LabelProblem as exc:
            raise DataError(f"{_where(path, lines, i)}: {exc}") from None
    return parsed


def _names_of(parsed: list[Any]) -> list[str]:
    names: list[str] = []
    for value in parsed:
        names.extend(value if isinstance(value, list) else [value])
    return names
