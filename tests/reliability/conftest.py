"""The reliability suite's record: every test says what it tried, how many cases, and what held.

A test takes the ``reliability`` fixture and calls ``record(area, tried, cases, held)``; a test that
fails records nothing that held. With ``MODELYARD_RELIABILITY_REPORT=PATH`` set (``make
reliability`` sets it to ``docs/reliability.md``) the session writes the table there, so the page is
the suite's output, never typed by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.serving import ServerProcess, build_real_bundle

AREAS = {
    "load": "load held",
    "fault": "faults survived",
    "input": "bad inputs tried",
    "lost": "nothing lost",
}


@dataclass(frozen=True)
class Trial:
    area: str
    tried: str
    cases: int
    held: str
    test: str


_TRIALS: list[Trial] = []


class Recorder:
    def __init__(self, test: str) -> None:
        self._test = test
        self.trials: list[Trial] = []

    def record(self, area: str, tried: str, cases: int, held: str) -> None:
        """One row: ``area`` is one of AREAS; ``held`` says what held, with figures."""
        if area not in AREAS:
            raise ValueError(f"unknown area {area!r}; valid: {', '.join(AREAS)}")
        self.trials.append(Trial(area, tried, int(cases), held, self._test))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository holding one real bundle, ``tiny`` (the HTTP tests' default)."""
    root = tmp_path_factory.mktemp("models")
    build_real_bundle(root, "tiny")
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    """``modelyard serve`` on ``repo`` with the default limits, stopped cleanly at the end."""
    proc = ServerProcess(repo)
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    recorder = Recorder(request.node.nodeid.split("::", 1)[-1])
    yield recorder
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.passed:
        _TRIALS.extend(recorder.trials)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


def render(trials: list[Trial]) -> str:
    lines = [
        "# Reliability",
        "",
        "Written by the reliability suite (`make reliability`, `tests/reliability/`): each row is",
        "one test that passed, what it tried, how many cases, and what held. Edit the tests, not",
        "this page.",
        "",
    ]
    for area, title in AREAS.items():
        rows = [t for t in trials if t.area == area]
        if not rows:
            continue
        total = sum(t.cases for t in rows)
        lines += [f"## {title.capitalize()} ({total:,} cases)", ""]
        lines += ["| tried | cases | what held | test |", "|---|---:|---|---|"]
        for t in sorted(rows, key=lambda t: t.test):
            lines.append(f"| {t.tried} | {t.cases:,} | {t.held} | `{t.test}` |")
        lines.append("")
    return "\n".join(lines)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("MODELYARD_RELIABILITY_REPORT")
    if not target or not _TRIALS:
        return
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(_TRIALS), encoding="utf-8")
    tmp.replace(path)
