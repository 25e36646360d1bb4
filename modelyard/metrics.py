"""Metric kernels in numpy only (the serving side imports this too); which of them a task
reports, on which score layout, is the task's business (:mod:`modelyard.tasks`).

Conventions: a ratio whose denominator is zero (precision with no predicted positives, recall
with no true positives, F1 with both zero) is 0.0, without a warning. Macro averages run over
the classes that occur in the targets or the predictions, as scikit-learn's do when no label
list is given; weighted averages weight each class by its support.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_LOWER_IS_BETTER = {"mae", "rmse", "mse", "hamming_loss", "perplexity"}


def higher_is_better(name: str) -> bool:
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


@dataclass(frozen=True)
class ClassCounts:
    """Per-class true positives, false positives, false negatives and support, (C,) each."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    support: np.ndarray

    @classmethod
    def of_ids(cls, t: np.ndarray, p: np.ndarray, n: int) -> ClassCounts:
        """Counts for one class id per example (``t`` true, ``p`` predicted, ``n`` classes)."""
        tp = np.bincount(t[t == p], minlength=n)[:n]
        pred = np.bincount(p, minlength=n)[:n]
        support = np.bincount(t, minlength=n)[:n]
        return cls(tp, pred - tp, support - tp, support)

    @classmethod
    def of_sets(cls, t: np.ndarray, p: np.ndarray) -> ClassCounts:
        """Counts for a yes/no decision per label: ``t`` and ``p`` bool (N, C)."""
        return cls(
            np.sum(t & p, axis=0), np.sum(~t & p, axis=0), np.sum(t & ~p, axis=0), np.sum(t, axis=0)
        )

    def scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Precision, recall and F1 per class (0 where a denominator is 0)."""
        tp = self.tp.astype(np.float64)
        prec = _safe_div(tp, tp + self.fp)
        rec = _safe_div(tp, tp + self.fn)
        f1 = _safe_div(2 * tp, 2 * tp + self.fp + self.fn)
        return prec, rec, f1

    def reports(self, labels: Sequence[str]) -> list[ClassReport]:
        """One :class:`ClassReport` per class, in ``labels`` order."""
        prec, rec, f1 = self.scores()
        return [
            ClassReport(
                str(name), float(prec[i]), float(rec[i]), float(f1[i]), int(self.support[i])
            )
            for i, name in enumerate(labels)
        ]


def binary_metrics(t: np.ndarray, p: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """accuracy, precision / recall / F1 of class 1, macro F1 and ROC AUC.

    Args:
        t, p: true and predicted class ids (N,) in {0, 1}.
        scores: (N,) probability of class 1 (for ROC AUC).
    """
    counts = ClassCounts.of_ids(t, p, 2)
    prec, rec, f1 = counts.scores()
    present = (counts.support > 0) | ((counts.tp + counts.fp) > 0)
    return {
        "accuracy": _div(float(np.sum(t == p)), len(t)),
        "precision": float(prec[1]),
        "recall": float(rec[1]),
        "f1": float(f1[1]),
        "macro_f1": _mean(f1[present]),
        "roc_auc": roc_auc(t, scores),
    }


def multiclass_metrics(t: np.ndarray, p: np.ndarray, n_classes: int) -> dict[str, float]:
    """accuracy, macro precision / recall / F1 and support-weighted F1 of class ids (N,)."""
    counts = ClassCounts.of_ids(t, p, n_classes)
    prec, rec, f1 = counts.scores()
    present = (counts.support > 0) | ((counts.tp + counts.fp) > 0)
    support = counts.support
    return {
        "accuracy": _div(float(np.sum(t == p)), len(t)),
        "macro_precision": _mean(prec[present]),
        "macro_recall": _mean(rec[present]),
        "macro_f1": _mean(f1[present]),
        "weighted_f1": _div(float(np.sum(f1 * support)), int(support.sum())),
    }


def multilabel_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """subset accuracy, micro / macro F1 and Hamming loss of label sets, bool (N, C)."""
    n = t.shape[0]
    counts = ClassCounts.of_sets(t, p)
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    _, _, f1 = counts.scores()
    present = (tp + fp + fn) > 0
    micro = _div(2.0 * tp.sum(), float(2 * tp.sum() + fp.sum() + fn.sum()))
    return {
        "subset_accuracy": _div(float(np.all(t == p, axis=1).sum()), n),
        "micro_f1": micro,
        "macro_f1": _mean(f1[present]),
        "hamming_loss": float(np.mean(t != p)) if t.size else 0.0,
    }


def regression_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² of predicted values ``p`` against targets ``t``, (N,) each."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
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


def confusion_counts(t: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    """int64 (n, n) counts of (true class, predicted class) pairs; rows are the true class."""
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


def format_metrics(metrics: dict[str, Any], n: int | None = None) -> str:
    """``key=value`` pairs on one line; accuracy with its 95% interval when ``n`` is known."""
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float) and key == "accuracy" and n:
            lo, hi = proportion_interval(value, n)
            parts.append(f"{key}={value:.4f} (95% CI {lo:.3f}-{hi:.3f}, n={n})")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.4f}")
        elif isinstance(value, int | str):
            parts.append(f"{key}={value}")
    return " ".join(parts)
