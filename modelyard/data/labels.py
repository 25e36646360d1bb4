"""Label spaces: raw labels as found in a file ↔ the target arrays a model trains on.

What a label may be (a class, a number, a set) is the task's (:mod:`modelyard.tasks`); this
module applies it to whole columns, with the file and line of any problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.errors import DataError
from modelyard.tasks import LabelProblem, Task, get_task
from modelyard.tasks.parsing import DEFAULT_DELIMITER, sort_labels

__all__ = ["DEFAULT_DELIMITER", "LabelProblem", "LabelSpace", "parse_label", "sort_labels"]


def parse_label(task: str | Task, value: Any, delimiter: str | None = None) -> Any:
    """Turn one raw label into its canonical form for ``task``.

    Args:
        task: a registered task or its name.
        value: the label as read: a string (CSV/TSV), or a JSON/Parquet value.
        delimiter: for a label-set task; see :meth:`LabelSpace.fit`.

    Returns:
        A class task: the class name (``str``); regression: a finite ``float``; multilabel:
        the list of class names (maybe empty), without duplicates.

    Raises:
        LabelProblem: the label is empty or cannot be read for this task.
        ValueError: unknown task.
    """
    return get_task(task).parse_label(value, delimiter)


def _where(path: str, lines: Sequence[int] | None, index: int) -> str:
    line = lines[index] if lines is not None else index + 1
    return f"{path}:{line}" if path else f"line {line}"


@dataclass
class LabelSpace:
    """The classes of a task and how raw labels map to targets.

    ``labels`` are the class names in output order ([] for a task without classes); for binary
    there are exactly two and ``labels[1]`` is the positive class (the model's output is its
    probability). ``delimiter`` is how label-set strings are split (None: a JSON list, else
    ``"|"``).
    """

    task: str
    labels: list[str]
    delimiter: str | None = None
    kind: Task = field(init=False, repr=False, compare=False)  # the task object, from ``task``

    def __post_init__(self) -> None:
        self.kind = get_task(self.task)  # ValueError for an unknown task

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
            task: a registered task name.
            raw_labels: labels as read from the training file.
            fixed: the class order to use instead of sorting (every label must be in it).
            delimiter: label-set labels given as one string are split on it. When None, a
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
        kind = get_task(task)
        where = path or "labels"
        parsed = _parse_all(kind, raw_labels, delimiter, path, lines)
        if not kind.has_classes:
            return cls(task=task, labels=[], delimiter=delimiter)
        found = [name for value in parsed for name in kind.names_in(value)]
        if fixed is not None:
            classes = [str(c) for c in fixed]
            if len(set(classes)) != len(classes):
                raise DataError(f"{where}: the configured labels repeat a name: {classes}")
            known = set(classes)
            for i, value in enumerate(parsed):
                for name in kind.names_in(value):
                    if name not in known:
                        raise DataError(
                            f"{_where(path, lines, i)}: label '{name}' is not one of the "
                            f"configured labels: {', '.join(classes)}"
                        )
        else:
            classes = sort_labels(found)
        kind.check_classes(classes, found, where)
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
            What the task encodes: binary float32 (N,) in {0, 1} (1 = ``labels[1]``);
            multiclass int64 (N,) class index; multilabel float32 (N, C) multi-hot;
            regression float32 (N,).

        Raises:
            DataError: a label is unreadable or not one of ``labels``; names the file and line.
        """
        parsed = _parse_all(self.kind, raw_labels, self.delimiter, path, lines)
        index = {name: i for i, name in enumerate(self.labels)}

        def lookup(name: str, i: int) -> int:
            found = index.get(name)
            if found is None:
                raise DataError(
                    f"{_where(path, lines, i)}: unknown label '{name}'; known labels: "
                    f"{', '.join(self.labels)}"
                )
            return found

        return self.kind.encode(parsed, lookup, len(self.labels))

    def problem(self, raw_label: Any) -> str | None:
        """Why ``raw_label`` cannot be encoded in this space, or None when it can."""
        try:
            value = self.kind.parse_label(raw_label, self.delimiter)
        except LabelProblem as exc:
            return str(exc)
        known = set(self.labels)
        for name in self.kind.names_in(value):
            if name not in known:
                return f"unknown label '{name}'; known labels: {', '.join(self.labels)}"
        return None

    @property
    def num_outputs(self) -> int:
        """Width of the model's output: 1 for a one-output task, else the class count."""
        return self.kind.num_outputs(len(self.labels))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {"task": self.task, "labels": list(self.labels), "delimiter": self.delimiter}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpace:
        """Read a dict written by :meth:`to_dict` (``delimiter`` may be absent)."""
        labels = [str(x) for x in d["labels"]]
        return cls(task=d["task"], labels=labels, delimiter=d.get("delimiter"))


def _parse_all(
    kind: Task,
    raw_labels: Sequence[Any],
    delimiter: str | None,
    path: str,
    lines: Sequence[int] | None,
) -> list[Any]:
    if lines is not None and len(lines) != len(raw_labels):
        raise ValueError(f"got {len(raw_labels)} labels but {len(lines)} line numbers")
    parsed: list[Any] = []
    for i, raw in enumerate(raw_labels):
        try:
            parsed.append(kind.parse_label(raw, delimiter))
        except LabelProblem as exc:
            raise DataError(f"{_where(path, lines, i)}: {exc}") from None
    return parsed
