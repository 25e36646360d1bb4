"""``modelyard generate RUN``: a generative run's answers to prompts or to a file of records, and
the run's ``report.html``.

One output record per input record, in input order: ``{"line": N, "generated": TEXT}``, written
atomically (or to stdout). The input takes the training formats (chat, prompt/completion, plain
text; JSONL or CSV); each record's last user turn (or prompt, or text) is answered, and a
trailing reference answer is ignored.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from modelyard.atomic import atomic_write_text
from modelyard.data.chat import GenerationInput, read_generation_inputs
from modelyard.errors import RunError
from modelyard.metrics import format_metrics
from modelyard.report.generation import write_generation_report
from modelyard.runs import Run, is_run_dir
from modelyard.tasks import get_task


def is_generative_run(path: str | Path) -> bool:
    """A run directory whose task writes text."""
    return is_run_dir(path) and get_task(Run.load(path).task).generative


def prompt_inputs(prompts: Sequence[str]) -> list[GenerationInput]:
    """Each prompt as a one-turn chat (``--prompt TEXT``)."""
    return [
        GenerationInput([{"role": "user", "content": p}], None, None, "chat", "--prompt", i + 1)
        for i, p in enumerate(prompts)
    ]


def generate(
    run_dir: str | Path,
    *,
    prompts: Sequence[str] | None = None,
    input_path: str | None = None,
    output: str | None = None,
    which: str = "best",
    max_new_tokens: int | None = None,
    echo: bool = False,
) -> list[str]:
    """Answer ``prompts`` or the records of ``input_path`` (written to ``output``).

    Args:
        echo: print the answers to prompts on stdout, and where a file's answers went on stderr.

    Raises:
        RunError: not a generative run, or the arguments do not say what to answer.
        DataError: a malformed input record (file:line).
    """
    if not is_generative_run(run_dir):
        raise RunError(f"{run_dir}: not a generative run (a run of a task that writes text)")
    if (prompts is None) == (input_path is None):
        raise RunError("give --prompt TEXT (repeatable) or --input FILE, one of the two")
    if input_path is not None and output is None:
        raise RunError("--input needs --output OUT.jsonl (- for stdout)")
    inputs = read_generation_inputs(input_path) if input_path else prompt_inputs(prompts or [])
    from modelyard.training.generative import generate_for_run

    answers = generate_for_run(run_dir, inputs, which=which, max_new_tokens=max_new_tokens)
    if output is not None:
        lines = "".join(
            json.dumps({"line": r.line, "generated": a}, ensure_ascii=False) + "\n"
            for r, a in zip(inputs, answers, strict=True)
        )
        if output == "-":
            sys.stdout.write(lines)
        else:
            atomic_write_text(Path(output), lines)
            if echo:
                print(f"generated {len(answers)} answers -> {output}", file=sys.stderr)
    elif echo:
        print("\n".join(answers))
    return answers


def write_report(run_dir: str | Path) -> Path:
    """``runs/NAME/report.html`` of a generative run."""
    return write_generation_report(Run.load(run_dir))


def evaluate_run(run_dir: str | Path, data: str | None = None, *, as_json: bool = False) -> str:
    """Score a generative run's answers on its test file (its ``eval/`` and ``report.html``
    rewritten) or on ``data``; the base model's scores beside them.

    Returns:
        What ``modelyard evaluate`` prints: a line per model, or JSON
        (``{"fine-tuned": metrics, "base": metrics}``).
    """
    from modelyard.training.generative import evaluate_generative_run

    result = evaluate_generative_run(run_dir, data)
    lines = []
    if data is None:
        lines.append(f"report: {write_report(run_dir)}")
    scores = {"fine-tuned": result.metrics, "base": result.base_metrics}
    if as_json:
        return json.dumps(scores, indent=2)
    n = result.num_examples
    lines += [f"{k + ':':12}{format_metrics(v, n)}" for k, v in scores.items() if v is not None]
    return "\n".join(lines)
