"""Evaluation metrics for every task, in numpy only (the serving side imports this too).

Conventions: a ratio whose denominator is zero (precision with no predicted positives, recall
with no true positives, F1 with both zero) is 0.0, without a warning. Macro averages run over
the classes that occur in the targets or the predictions, as scikit-learn's do when no label
list is given; weighted averages weight each class by its support.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PRIMARY_METRIC: dict[str, str] = {
    "binary": "accuracy",
    "multiclass": "accuracy",
    "multilabel": "micro_f1",
    "regression": "rmse",
}
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "precision", "recall", "f1", "macro_f1", "roc_auc"),
    "multiclass": ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"),
    "multilabel": ("subset_accuracy", "micro_f1", "macro_f1", "hamming_loss"),
    "regression": ("mae", "rmse", "r2"),
}
_LOWER_IS_BETTER = {"mae", "rmse", "mse", "hamming_loss"}


def HIGHER_IS_BETTER(name: str) -> bool:  # upper case: the name is fixed by the shared contract
    """Whether a larger value of metric ``name`` is better.

    A ``val_``/``test_`` prefix is ignored; losses, errors and ``hamming_loss`` are lower-better.
    """
    base = name.removeprefix("val_").removeprefix("test_")
    return not (base in _LOWER_IS_BETTER or base.endswith("loss"))


@dataclass
class ClassReport:
    """Precision, recall and F1 of one class, and how many targets have it."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


def compute_metrics(
    task: str,
    targets: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    threshold: float = 0.5,
) -> dict[str, float]:
    """The task's metrics (see :data:`METRICS_BY_TASK`) for model outputs against targets.

    Args:
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        targets: as :meth:`LabelSpace.encode` makes them: binary (N,) in {0,1}; multiclass (N,)
            class ids; multilabel (N,C) multi-hot; regression (N,) values.
        scores: binary (N,) or (N,1) probability of ``labels[1]``; multiclass (N,C) class
            probabilities; multilabel (N,C) per-label probabilities; regression (N,) or (N,1)
            predicted values.
        labels: the class names (unused for regression).
        threshold: binary / multilabel decision threshold on the probability.

    Returns:
        Metric name → value as a Python float. ``roc_auc`` is NaN when the targets hold only one
        class (it is undefined then); everything else is finite.
    """
    if task == "regression":
        return _regression(_flat(targets).astype(np.float64), _flat(scores).astype(np.float64))
    if task == "multilabel":
        t = np.asarray(targets) > 0.5
        p = np.asarray(scores) >= threshold
        return _multilabel(t, p)
    t, p = _class_ids(task, targets, scores, labels, threshold)
    n_classes = max(len(labels), 2)
    tp, fp, fn, support = _counts(t, p, n_classes)
    prec, rec, f1 = _prf(tp, fp, fn)
    present = (support > 0) | ((tp + fp) > 0)
    accuracy = _div(float(np.sum(t == p)), len(t))
    if task == "binary":
        return {
            "accuracy": accuracy,
            "precision": float(prec[1]),
            "recall": float(rec[1]),
            "f1": float(f1[1]),
            "macro_f1": _mean(f1[present]),
            "roc_auc": roc_auc(t, _flat(scores)),
        }
    if task == "multiclass":
        return {
            "accuracy": accuracy,
            "macro_precision": _mean(prec[present]),
            "macro_recall": _mean(rec[present]),
            "macro_f1": _mean(f1[present]),
            "weighted_f1": _div(float(np.sum(f1 * support)), int(support.sum())),
        }
    raise ValueError(f"unknown task '{task}'")


def per_class_report(
    task: str,
    targets: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    threshold: float = 0.5,
) -> list[ClassReport]:
    """Precision, recall, F1 and support of every class, in ``labels`` order.

    Args:
        task: binary (both classes are reported), multiclass or multilabel (each label is
            reported as its own yes/no decision); regression has no classes and gives [].
        targets, scores, labels, threshold: as for :func:`compute_metrics`.

    Returns:
        One :class:`ClassReport` per class.
    """
    if task == "regression":
        return []
    if task == "multilabel":
        t = np.asarray(targets) > 0.5
        p = np.asarray(scores) >= threshold
        tp = np.sum(t & p, axis=0)
        fp = np.sum(~t & p, axis=0)
        fn = np.sum(t & ~p, axis=0)
        support = np.sum(t, axis=0)
    else:
        ti, pi = _class_ids(task, targets, scores, labels, threshold)
        tp, fp, fn, support = _counts(ti, pi, max(len(labels), 2))
    prec, rec, f1 = _prf(tp, fp, fn)
    return [
        ClassReport(str(name), float(prec[i]), float(rec[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(labels)
    ]


def confusion_matrix(
    task: str,
    targets: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    threshold: float = 0.5,
) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        task: ``binary`` or ``multiclass`` (multilabel and regression have no single predicted
            class; use :func:`per_class_report`).
        targets, scores, labels, threshold: as for :func:`compute_metrics`.

    Returns:
        int64 (C, C): rows are the true class, columns the predicted class, in ``labels`` order.
    """
    if task not in ("binary", "multiclass"):
        raise ValueError(f"a confusion matrix needs a binary or multiclass task, got '{task}'")
    t, p = _class_ids(task, targets, scores, labels, threshold)
    n = max(len(labels), 2)
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n).astype(np.int64)


def format_class_table(reports: Sequence[ClassReport], *, digits: int = 3) -> str:
    """Render a per-class report as an aligned text table, with macro and weighted averages.

    Args:
        reports: from :func:`per_class_report`.
        digits: decimals shown for precision, recall and F1.

    Returns:
        The table, one line per class, lines joined by newlines (no trailing newline).
    """
    heads = ("precision", "recall", "f1", "support")
    rows: list[tuple[str, float, float, float, int]] = [
        (r.label, r.precision, r.recall, r.f1, r.support) for r in reports
    ]
    total = sum(r.support for r in reports)
    if reports:
        present = [r for r in reports if r.support > 0] or list(reports)
        rows.append(
            (
                "macro avg",
                _mean(np.array([r.precision for r in present])),
                _mean(np.array([r.recall for r in present])),
                _mean(np.array([r.f1 for r in present])),
                total,
            )
        )
        rows.append(
            (
                "weighted avg",
                _div(sum(r.precision * r.support for r in reports), total),
                _div(sum(r.recall * r.support for r in reports), total),
                _div(sum(r.f1 * r.support for r in reports), total),
                total,
            )
        )
    name_w = max([len("label"), *(len(r[0]) for r in rows)])
    num_w = max(len(h) for h in heads)
    lines = ["label".ljust(name_w) + "".join(f"  {h:>{num_w}}" for h in heads)]
    for i, (name, p, r, f, s) in enumerate(rows):
        if i == len(reports):
            lines.append("")  # blank line between the classes and the averages
        values = "".join(f"  {v:>{num_w}.{digits}f}" for v in (p, r, f))
        lines.append(f"{name:<{name_w}}{values}  {s:>{num_w}d}")
    return "\n".join(lines)


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula; tied scores count half.

    Args:
        targets: (N,) 0/1 (or bool) true classes.
        scores: (N,) scores; higher means more likely class 1.

    Returns:
        The AUC in [0, 1], or NaN when the targets hold only one class.
    """
    t = np.asarray(targets).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos = int(t.sum())
    n_neg = len(t) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = float(ranks[t].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


# ------------------------------------------------------------------------------------ helpers
def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # start index of each run of equal values, and each run's mean rank
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).reshape(-1)


def _class_ids(
    task: str, targets: np.ndarray, scores: np.ndarray, labels: Sequence[str], threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    if task == "binary":
        t = (_flat(targets) > 0.5).astype(np.int64)
        p = (_flat(scores) >= threshold).astype(np.int64)
    elif task == "multiclass":
        t = _flat(targets).astype(np.int64)
        s = np.asarray(scores)
        p = (
            np.argmax(s, axis=1).astype(np.int64)
            if s.ndim == 2 and len(s)
            else np.zeros(len(t), dtype=np.int64)
        )
    else:
        raise ValueError(f"task '{task}' has no single class per example")
    return t, p


def _counts(
    t: np.ndarray, p: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.bincount(t[t == p], minlength=n)[:n]
    pred = np.bincount(p, minlength=n)[:n]
    support = np.bincount(t, minlength=n)[:n]
    return tp, pred - tp, support - tp, support


def _prf(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = tp.astype(np.float64)
    prec = _safe_div(tp, tp + fp)
    rec = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return prec, rec, f1


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _div(num: float, den: float) -> float:
    return float(num) / den if den else 0.0


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def _multilabel(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    n = t.shape[0]
    tp = np.sum(t & p, axis=0)
    fp = np.sum(~t & p, axis=0)
    fn = np.sum(t & ~p, axis=0)
    _, _, f1 = _prf(tp, fp, fn)
    present = (tp + fp + fn) > 0
    micro = _div(2.0 * tp.sum(), float(2 * tp.sum() + fp.sum() + fn.sum()))
    return {
        "subset_accuracy": _div(float(np.all(t == p, axis=1).sum()), n),
        "micro_f1": micro,
        "macro_f1": _mean(f1[present]),
        "hamming_loss": float(np.mean(t != p)) if t.size else 0.0,
    }


def _regression(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    if not len(t):
        return {"mae": 0.0, "rmse": 0.0, "r2": 0.0}
    err = p - t
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    # a constant target: perfect predictions score 1, anything else 0 (scikit-learn's choice)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": r2,
    }


def finite_or_none(value: object) -> object:
    """A value JSON can hold: numpy scalars become Python numbers, NaN and infinity ``None``.

    Also usable as the ``default`` hook of :func:`json.dumps` for numpy scalars.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def json_safe(record: dict[str, object]) -> dict[str, object]:
    """``record`` with every non-finite number (e.g. ROC AUC on one class) written as ``None``."""
    return {k: finite_or_none(v) for k, v in record.items()}


def proportion_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` (e.g. accuracy) measured on ``n`` items.

    ``z=1.96`` gives the 95% interval. Wilson rather than ``p ± z·√(p(1−p)/n)``: it stays inside
    [0, 1] and is honest near 0 and 1 and for small ``n``. ``n == 0`` or a NaN ``p`` gives NaNs.
    """
    if n <= 0 or not np.isfinite(p):
        return float("nan"), float("nan")
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def format_with_interval(name: str, value: float, n: int | None) -> str:
    """``accuracy 0.7320 (95% CI 0.704–0.759, n=1000)`` for accuracy, else ``name 0.7320``."""
    if name.strip() != "accuracy" or not n:
        return f"{name} {value:.4f}"
    lo, hi = proportion_interval(value, n)
    return f"{name} {value:.4f} (95% CI {lo:.3f}–{hi:.3f}, n={n})"
