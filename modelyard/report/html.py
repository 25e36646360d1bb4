"""The run report: one self-contained HTML page a person would rather look at than read logs.

The page holds the run's test metrics, the deployment choice per target (or why none fits), the
variants table, the accuracy–latency–size plot, learning curves and the confusion matrix. CSS is
inline and every image is embedded as a base64 data URI, so the file can be mailed or attached to a
ticket and still shows everything. Every piece of text that comes from data (names, paths, reasons)
is HTML-escaped.
"""

from __future__ import annotations

import base64
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.metrics import proportion_interval

if TYPE_CHECKING:
    from modelyard.choice import Choice
    from modelyard.config import TargetConfig
    from modelyard.measure import Measurement


@dataclass
class ReportContent:
    """Everything the report shows.

    Attributes:
        name: the run's name.
        task: binary, multiclass, multilabel or regression.
        metric: the primary metric the variants are scored by (``accuracy``, ``rmse``...).
        data: what the data was, e.g. ``{"train": "data/train.csv", "test": "data/test.csv"}``.
        test_metrics: the trained model's metrics on the test data (torch), if any.
        variants: the measured variants.
        choices: target name -> :class:`~modelyard.choice.Choice`.
        targets: target name -> its budgets (``config.targets``).
        tradeoff_png: the accuracy–latency–size plot.
        images: caption -> PNG for further figures (learning curves, confusion matrix).
        notes: plain remarks shown at the top (e.g. a format that could not be built).
        created_at: when the report was made (shown in the header).
        run_dir: the run directory (shown in the header).
        higher_is_better: direction of ``metric`` (shown next to the score column).
        test_size: how many test texts ``test_metrics`` were measured on (for the interval).
    """

    name: str
    task: str
    metric: str
    data: Mapping[str, str]
    test_metrics: Mapping[str, float] | None
    variants: Sequence[Measurement]
    choices: Mapping[str, Choice]
    targets: Mapping[str, TargetConfig]
    tradeoff_png: Path | None = None
    images: Mapping[str, Path] = field(default_factory=dict)
    notes: Sequence[str] = ()
    created_at: str = ""
    run_dir: str = ""
    higher_is_better: bool = True
    test_size: int | None = None  # how many test texts test_metrics were measured on
    # the metric of the variants' test column (default: metric; generation: rouge_l)
    test_metric: str = ""


def write_report(content: ReportContent, path: str | Path) -> Path:
    """Render the report and write it atomically (a reader never sees half a page).

    Args:
        content: what to show.
        path: the HTML file to write, e.g. ``runs/NAME/report.html``.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = render_report(content)
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def render_report(content: ReportContent) -> str:
    """The report as one HTML string (inline CSS, images as data URIs).

    Args:
        content: what to show.

    Returns:
        The page.
    """
    sections = [
        _header(content),
        _notes(content.notes),
        _metrics(content),
        _choices(content),
        figure_section("Accuracy, latency and size of every variant", content.tradeoff_png),
        _variants_table(content),
        *(figure_section(caption, png) for caption, png in content.images.items()),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{esc(content.name)} · modelyard report</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------------------------ sections
def _header(c: ReportContent) -> str:
    facts = [("task", c.task), ("scored by", f"{c.metric} ({_direction(c)})")]
    facts += [(k, v) for k, v in c.data.items()]
    if c.run_dir:
        facts.append(("run", c.run_dir))
    if c.created_at:
        facts.append(("created", c.created_at))
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    return (
        f"<header><p class='kicker'>modelyard run report</p><h1>{esc(c.name)}</h1>"
        f"<dl class='facts'>{items}</dl></header>"
    )


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f"<section class='notes'><h2>Notes</h2><ul>{items}</ul></section>"


def _choices(c: ReportContent) -> str:
    if not c.targets:
        return (
            "<section><h2>Deployment targets</h2><p class='muted'>No <code>targets:</code> in "
            "the config, so nothing was chosen. Add e.g. <code>server: {format: onnx, "
            "max_p99_ms: 20}</code> to pick a variant per platform.</p></section>"
        )
    cards = []
    for name, target in c.targets.items():
        choice = c.choices.get(name)
        budgets = _budget_text(target)
        if choice is not None and choice.variant is not None:
            m = choice.variant
            body = (
                f"<p class='pick'>{esc(m.name)} <span class='muted'>v{m.version}</span></p>"
                f"<p>{esc(c.metric)} {_fmt(m.score, 4)} · {_size(m.size_mb)} MB · "
                f"p99 {_fmt(m.p99_ms, 2)} ms · {_fmt(m.throughput, 0)} texts/s</p>"
                f"<p class='muted small'>{esc(m.bundle)}</p>"
            )
            css = "card ok"
        else:
            reason = choice.reason if choice is not None else "not evaluated"
            reason = reason.removeprefix(f"{name}: ")  # the card's title names the target
            body = f"<p class='pick'>nothing fits</p><p>{esc(reason)}</p>"
            css = "card fail"
        cards.append(
            f"<div class='{css}'><h3>{esc(name)} <span class='badge'>{esc(target.format)}</span>"
            f"</h3><p class='muted small'>{esc(budgets)}</p>{body}</div>"
        )
    return (
        f"<section><h2>Deployment targets</h2><div class='cards'>{''.join(cards)}</div></section>"
    )


def _variants_table(c: ReportContent) -> str:
    if not c.variants:
        return "<section><h2>Variants</h2><p class='muted'>No variant was measured.</p></section>"
    test_metric = c.test_metric or c.metric
    chosen: dict[tuple[str, str, str], list[str]] = {}
    for target, choice in c.choices.items():
        if choice.variant is not None:
            v = choice.variant
            chosen.setdefault((v.name, v.format, v.bundle), []).append(target)
    drop_unit = "points" if c.higher_is_better else "%"
    head = (
        "<tr><th>variant</th><th>format</th><th>version</th><th class='num'>size MB</th>"
        "<th class='num'>p50 ms</th><th class='num'>p99 ms</th>"
        "<th class='num'>texts/s (batch 32)</th>"
        f"<th class='num'>validation {esc(c.metric)}</th><th class='num'>drop ({drop_unit})</th>"
        f"<th class='num'>test {esc(test_metric)}</th><th>status</th></tr>"
    )
    rows = []
    for m in c.variants:
        targets = chosen.get((m.name, m.format, m.bundle), [])
        if m.rejected:
            status, css = f"rejected: {m.rejected}", "rejected"
        elif targets:
            status, css = "chosen for " + ", ".join(targets), "chosen"
        else:
            status, css = "accepted", ""
        rows.append(
            f"<tr class='{css}'><td title='{esc(m.bundle)}'>{esc(m.name)}</td>"
            f"<td>{esc(m.format)}</td><td>{m.version}</td>"
            f"<td class='num'>{_size(m.size_mb)}</td><td class='num'>{_fmt(m.p50_ms, 2)}</td>"
            f"<td class='num'>{_fmt(m.p99_ms, 2)}</td><td class='num'>{_fmt(m.throughput, 0)}</td>"
            f"<td class='num'>{_fmt(m.score, 4)}</td><td class='num'>{_fmt(m.drop, 2)}</td>"
            f"<td class='num'>{_test_cell(m, test_metric)}</td><td>{esc(status)}</td></tr>"
        )
    return (
        "<section><h2>Variants</h2><p class='muted small'>Latency at batch 1 and throughput "
        "include tokenization. Variants are rejected and chosen on the validation split; the "
        "test column (with its 95% Wilson interval for accuracy) was never used to choose. "
        "All scores are measured through the runtime.</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _test_cell(m: Measurement, metric: str) -> str:
    value = m.test_score(metric)
    if not m.test_metrics:
        return "–"
    if metric != "accuracy" or not m.test_size:
        return _fmt(value, 4)
    lo, hi = proportion_interval(value, m.test_size)
    return f"{_fmt(value, 4)} <span class='muted small'>[{_fmt(lo, 3)}, {_fmt(hi, 3)}]</span>"


def _metrics(c: ReportContent) -> str:
    if not c.test_metrics:
        return ""
    cells = []
    for k, v in c.test_metrics.items():
        interval = ""
        if k == "accuracy" and c.test_size:
            lo, hi = proportion_interval(float(v), c.test_size)
            interval = (
                f"<span class='name'>95% CI {_fmt(lo, 3)}–{_fmt(hi, 3)}, n={c.test_size}</span>"
            )
        cells.append(
            f"<div class='metric'><span class='value'>{_fmt(v, 4)}</span>"
            f"<span class='name'>{esc(k)}</span>{interval}</div>"
        )
    joined = "".join(cells)
    return (
        "<section><h2>Trained model on the test data</h2>"
        f"<div class='metrics'>{joined}</div></section>"
    )


def figure_section(caption: str, png: Path | None) -> str:
    if png is None:
        return ""
    if not Path(png).is_file():
        return (
            f"<section><h2>{esc(caption)}</h2><p class='muted'>(image missing: {esc(str(png))})"
            "</p></section>"
        )
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (
        f"<section><h2>{esc(caption)}</h2><figure><img alt='{esc(caption)}' "
        f"src='data:image/png;base64,{data}'></figure></section>"
    )


# ------------------------------------------------------------------------------------- helpers
def _budget_text(target: TargetConfig) -> str:
    parts = []
    if target.max_size_mb is not None:
        parts.append(f"size ≤ {target.max_size_mb:g} MB")
    if target.max_p99_ms is not None:
        parts.append(f"p99 ≤ {target.max_p99_ms:g} ms")
    if target.max_accuracy_drop is not None:
        parts.append(f"drop ≤ {target.max_accuracy_drop:g}")
    if target.min_tokens_per_s is not None:
        parts.append(f"≥ {target.min_tokens_per_s:g} tokens/s")
    if target.max_ttft_ms is not None:
        parts.append(f"time to first token ≤ {target.max_ttft_ms:g} ms")
    return ", ".join(parts) if parts else "no budgets: the most accurate variant"


def _direction(c: ReportContent) -> str:
    return "higher is better" if c.higher_is_better else "lower is better"


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _size(mb: float) -> str:
    """MB with 2 decimals, but 3 significant digits below 1 MB (tiny models are 0.0334 MB)."""
    if isinstance(mb, float) and math.isnan(mb):
        return "–"
    return f"{mb:,.2f}" if abs(mb) >= 1 else f"{mb:.3g}"


def esc(text: object) -> str:
    return escape(str(text), quote=True)


CSS = """
:root { --ink:#1d2430; --muted:#6b7480; --line:#e3e6ea; --ok:#1e7b45; --fail:#b42318;
        --okbg:#ecf8f0; --failbg:#fdf0ef; --accent:#1f5fbf; }
* { box-sizing: border-box; }
body { margin:0; background:#f6f7f9; color:var(--ink);
       font:15px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width:1120px; margin:0 auto; padding:24px 28px 48px; }
header { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 22px; }
h1 { margin:0 0 10px; font-size:26px; }
.kicker { margin:0; font-size:12px; color:var(--muted); text-transform:uppercase;
          letter-spacing:.06em; }
h2 { font-size:18px; margin:0 0 12px; }
h3 { font-size:16px; margin:0 0 4px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 22px;
          margin-top:18px; }
.facts { display:flex; flex-wrap:wrap; gap:6px 28px; margin:0; }
.facts dt { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.facts dd { margin:0; font-family:ui-monospace, Menlo, Consolas, monospace; font-size:13px; }
.muted { color:var(--muted); }
.small { font-size:12.5px; }
.notes { background:#fffbea; border-color:#f3d37a; }
.notes ul { margin:0; padding-left:20px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(300px, 1fr)); gap:14px; }
.card { border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card p { margin:4px 0; }
.card.ok { background:var(--okbg); border-color:#a6dcb9; }
.card.fail { background:var(--failbg); border-color:#f1b3ad; }
.card .pick { font-size:18px; font-weight:600; }
.card.ok .pick { color:var(--ok); }
.card.fail .pick { color:var(--fail); }
.badge { font-size:11px; font-weight:600; background:#e8eefb; color:var(--accent);
         border-radius:4px; padding:1px 6px; vertical-align:middle; }
table { border-collapse:collapse; width:100%; font-size:13.5px; }
th, td { padding:6px 9px; border-bottom:1px solid var(--line); text-align:left;
         vertical-align:top; }
th { background:#f2f4f7; font-weight:600; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.chosen td { background:var(--okbg); font-weight:600; }
tr.rejected td { color:var(--muted); }
.metrics { display:flex; flex-wrap:wrap; gap:12px; }
.metric { border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:120px; }
.metric .value { display:block; font-size:20px; font-weight:600;
                 font-variant-numeric:tabular-nums; }
.metric .name { font-size:12px; color:var(--muted); }
figure { margin:0; text-align:center; }
figure img { max-width:100%; height:auto; }
code { background:#f2f4f7; padding:1px 4px; border-radius:3px; }
"""
