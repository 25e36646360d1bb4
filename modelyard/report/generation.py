"""``report.html`` of a generative run: validation loss per epoch, the test scores of the
fine-tuned model beside the base model's, the learning curves and a table of sample answers
(prompt, reference, base, fine-tuned). Read from the run directory alone; one file, inline CSS,
the plot as a data URI, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelyard.atomic import atomic_write_text
from modelyard.report.html import CSS, esc, figure_section
from modelyard.runs import Run

REPORT_FILE = "report.html"


def write_generation_report(run: Run, *, samples: int = 25) -> Path:
    """Write ``runs/NAME/report.html`` for a generative run.

    Args:
        run: the run, read back from its directory.
        samples: how many sample answers the table shows (``eval/samples.jsonl`` holds all).

    Returns:
        The written path.
    """
    eval_dir = run.paths.eval_dir
    scores = _read_json(eval_dir / "metrics.json")
    rows = _read_samples(eval_dir / "samples.jsonl", samples)
    sections = [
        _header(run),
        _scores(scores),
        _history(run.history),
        figure_section("Learning curves", eval_dir / "learning_curves.png"),
        _samples(rows, scores),
    ]
    body = "\n".join(s for s in sections if s)
    page = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{esc(run.dir.name)} · modelyard report</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
    path = run.dir / REPORT_FILE
    atomic_write_text(path, page)
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _read_samples(path: Path, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if len(rows) >= limit:
                    break
                rows.append(json.loads(line))
    except (OSError, ValueError):
        return rows
    return rows


def _header(run: Run) -> str:
    info = run.info
    facts = [
        ("task", run.task),
        ("base model", info.get("base_model", "")),
        ("trained", "LoRA adapters" if info.get("adapters") else "every weight"),
        ("epochs", f"{info.get('epochs_completed', '')} (best: {info.get('best_epoch', '')})"),
        ("records", f"{info.get('num_train', '')} train / {info.get('num_validation', '')} val"),
        ("run", str(run.dir)),
    ]
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    return (
        "<header><p class='kicker'>modelyard run report</p>"
        f"<h1>{esc(run.dir.name)}</h1><dl class='facts'>{items}</dl></header>"
    )


def _scores(scores: dict[str, Any]) -> str:
    metrics = scores.get("metrics")
    if not isinstance(metrics, dict):
        return "<section><h2>Test</h2><p class='muted'>No test file was scored.</p></section>"
    base = scores.get("base_metrics") if isinstance(scores.get("base_metrics"), dict) else {}
    names = list(metrics)
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    tuned = "".join(f"<td>{float(metrics[n]):.4f}</td>" for n in names)
    rows = f"<tr><th scope='row'>fine-tuned</th>{tuned}</tr>"
    if base:
        cells = "".join(f"<td>{float(base.get(n, float('nan'))):.4f}</td>" for n in names)
        rows += f"<tr><th scope='row'>base, before fine-tuning</th>{cells}</tr>"
    decoding = scores.get("decoding", {})
    return (
        f"<section><h2>Test: {esc(scores.get('num_examples', ''))} records of "
        f"{esc(scores.get('source', ''))}</h2>"
        f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>"
        f"<p class='muted'>{esc(decoding.get('strategy', 'greedy'))} decoding, at most "
        f"{esc(decoding.get('max_new_tokens', ''))} new tokens; ROUGE-L F1 by rouge-score "
        "(stemmed); exact match after lower-casing and collapsing spaces.</p></section>"
    )


def _history(history: list[dict[str, Any]]) -> str:
    if not history:
        return ""
    keys = ["epoch", "train_loss", "val_loss", "val_perplexity", "epoch_time_s"]
    head = "".join(f"<th>{esc(k)}</th>" for k in keys)
    body = ""
    for record in history:
        cells = "".join(f"<td>{_cell(record.get(k))}</td>" for k in keys)
        body += f"<tr>{cells}</tr>"
    return (
        "<section><h2>Validation per epoch</h2>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>"
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return esc("" if value is None else value)


def _samples(rows: list[dict[str, Any]], scores: dict[str, Any]) -> str:
    if not rows:
        return ""
    has_base = any("base" in r for r in rows)
    head = "<th>prompt</th><th>reference</th>" + ("<th>base</th>" if has_base else "")
    head += "<th>fine-tuned</th>"
    body = ""
    for r in rows:
        cells = f"<td>{esc(r.get('prompt', ''))}</td><td>{esc(r.get('reference', ''))}</td>"
        if has_base:
            cells += f"<td>{esc(r.get('base', ''))}</td>"
        cells += f"<td>{esc(r.get('fine_tuned', ''))}</td>"
        body += f"<tr>{cells}</tr>"
    total = scores.get("num_examples", len(rows))
    return (
        f"<section><h2>Sample answers (the first {len(rows)} of {esc(total)}; all in "
        "eval/samples.jsonl)</h2>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>"
    )
