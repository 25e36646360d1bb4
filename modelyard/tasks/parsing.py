"""Reading one raw label: a class name, a number or a list of names, as found in a file."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

DEFAULT_DELIMITER = "|"
_INT = re.compile(r"^[+-]?\d+$")


class LabelProblem(ValueError):
    """One raw label that cannot be used; the message is the reason, without file or line."""


def parse_name(value: Any, task_name: str) -> str:
    """One class name: a string, number or boolean; a list or an empty value is a problem."""
    if value is None:
        raise LabelProblem("empty label")
    if isinstance(value, (list, tuple, dict)):
        raise LabelProblem(f"expected one label for a {task_name} task, got {show(value)}")
    name = name_of(value)
    if not name:
        raise LabelProblem("empty label")
    return name


def name_of(value: Any) -> str:
    """The class name of a scalar: bools are ``true``/``false``, ``1.0`` is ``1``."""
    # bools first: True is also an int
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 1.0 from a parquet float column is the class "1"
    return str(value).strip()


def show(value: Any) -> str:
    """A short quoted rendering of a value for an error message."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def parse_number(value: Any) -> float:
    """A finite float from a number or a numeric string."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise LabelProblem("empty label")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise LabelProblem(f"expected a number, got {show(value)}")
    try:
        number = float(value)
    except ValueError:
        raise LabelProblem(f"cannot read {show(value)} as a number") from None
    if not math.isfinite(number):
        raise LabelProblem(f"{show(value)} is not a finite number")
    return number


def parse_names(value: Any, delimiter: str | None) -> list[str]:
    """A list of class names (maybe empty, no duplicates) from a JSON list, a list, or a string
    split on ``delimiter`` (default ``"|"``; a string starting with ``[`` is JSON when
    ``delimiter`` is None)."""
    if value is None:
        raise LabelProblem("empty label (an example with no labels is written [] or '')")
    if isinstance(value, str):
        text = value.strip()
        if delimiter is None and text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise LabelProblem(
                    f"label list {show(text)} is not valid JSON: {exc.msg}"
                ) from None
            if not isinstance(value, list):
                raise LabelProblem(f"expected a JSON list of labels, got {show(text)}")
        else:
            value = text.split(delimiter or DEFAULT_DELIMITER) if text else []
    if not isinstance(value, (list, tuple)):
        value = [value]
    names: list[str] = []
    for item in value:
        if item is None or isinstance(item, (list, tuple, dict)):
            raise LabelProblem(f"bad label {show(item)} in {show(value)}")
        name = name_of(item)
        if name and name not in names:
            names.append(name)
    return names


def sort_labels(names: Sequence[str]) -> list[str]:
    """Class names in their default order: numeric when every name is an integer, else text."""
    unique = set(names)
    if unique and all(_INT.match(n) for n in unique):
        return sorted(unique, key=int)
    return sorted(unique)
