"""A tune's ``report.html``: the leaderboard, the trials plot, the winner's curves and test
scores; one self-contained page, in the run report's style (``report/html.py``)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from modelyard.atomic import atomic_write_text
from modelyard.plots import plot_trials
from modelyard.report.html import CSS, esc, figure_section
from modelyard.runs import Run
from modelyard.search.budget import format_duration
from modelyard.search.leaderboard import Entry, test_cell


def write_tune_report(
    board: Sequence[Entry],
    path: Path,
    *,
    name: str,
    metric: str,
    higher_is_better: bool,
    budget_s: float | None,
    spent_s: float,
    best: Run | None,
) -> Path:
    """Write ``report.html`` for a tune (atomically).

    Args:
        board: the leaderboard, best first.
        path: the page to write.
        name: the tuned config's name.
        metric: the primary metric (``accuracy``).
        higher_is_better: its direction.
        budget_s: the time budget, if any; ``spent_s``: what the tune took.
        best: the winner's run.

    Returns:
        ``path``.
    """
    shown = [
        (e.candidate, max(e.train_s, 1e-3), float(e.score), e.state)
        for e in board
        if e.score is not None and e.state in ("complete", "pruned")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        plot = (
            plot_trials(shown, Path(tmp) / "trials.png", metric=metric, title=name)
            if shown
            else None
        )
        sections = [
            _header(name, metric, higher_is_better, budget_s, spent_s, best, len(board)),
            figure_section("Validation score against training time, every trial", plot),
            _table(board, metric),
        ]
    if best is not None:
        for caption, png in (
            ("The winner's learning curves", best.paths.eval_dir / "learning_curves.png"),
            ("The winner's confusion matrix (test)", best.paths.eval_dir / "confusion_matrix.png"),
        ):
            if png.is_file():
                sections.append(figure_section(caption, png))
    body = "\n".join(s for s in sections if s)
    page = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{esc(name)} · modelyard tune</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
    atomic_write_text(path, page)
    return path


def _header(
    name: str,
    metric: str,
    up: bool,
    budget_s: float | None,
    spent_s: float,
    best: Run | None,
    trials: int,
) -> str:
    took = format_duration(spent_s) + (f" of {format_duration(budget_s)}" if budget_s else "")
    facts = [
        ("chosen by", f"validation {metric} ({'higher' if up else 'lower'} is better)"),
        ("trials", str(trials)),
        ("time", took),
        ("best run", str(best.dir) if best is not None else "none completed"),
        ("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
    ]
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    return (
        f"<header><p class='kicker'>modelyard tune</p><h1>{esc(name)}</h1>"
        f"<dl class='facts'>{items}</dl></header>"
    )


def _table(board: Sequence[Entry], metric: str) -> str:
    head = (
        "<tr><th>#</th><th>candidate</th><th>state</th>"
        f"<th class='num'>validation {esc(metric)}</th>"
        f"<th class='num'>test {esc(metric)} [95% CI]</th><th class='num'>epochs</th>"
        "<th class='num'>train s</th><th class='num'>size MB</th><th class='num'>ms/text</th>"
        "<th>settings</th></tr>"
    )
    rows = []
    for i, e in enumerate(board, 1):
        settings = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.params.items()
        )
        if e.error:
            settings += f" · {e.error}"
        css = (
            "chosen"
            if i == 1 and e.state == "complete"
            else ("rejected" if e.state == "failed" else "")
        )
        rows.append(
            f"<tr class='{css}'><td>{i}</td><td title='{esc(e.run_dir)}'>{esc(e.candidate)}</td>"
            f"<td>{esc(e.state)}</td><td class='num'>{_num(e.score, 4)}</td>"
            f"<td class='num'>{esc(test_cell(e, metric) or '–')}</td>"
            f"<td class='num'>{e.epochs}</td><td class='num'>{e.train_s:.1f}</td>"
            f"<td class='num'>{_num(e.size_mb, 2)}</td><td class='num'>{_num(e.latency_ms, 2)}</td>"
            f"<td class='small'>{esc(settings)}</td></tr>"
        )
    return (
        "<section><h2>Leaderboard</h2><p class='muted small'>Every trial was chosen on the "
        "validation split; the test file was scored once, for the winner. Latency: one text "
        "at a time through the torch model, tokenizing included; size: the weights file. "
        "Pruned trials stopped early because their validation curve lagged the others'.</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"
