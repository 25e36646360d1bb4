"""The package keeps the shape docs/architecture.md draws: layering, no cycles, no private
imports across modules, no torch on the serving side, files of one concern.

The checker itself is tested on small fake packages that break each rule once.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import architecture as arch

import modelyard

pytestmark = pytest.mark.unit

ROOT = Path(modelyard.__file__).resolve().parent


def test_the_package_keeps_every_rule() -> None:
    graph = arch.read_graph(ROOT)
    problems = arch.check(graph)
    assert not any(problems.values()), arch.report(graph, problems)


def test_every_station_has_a_layer() -> None:
    graph = arch.read_graph(ROOT)
    stations = {arch.station(m) for m in graph.modules}
    placed = set().union(*(s for _, s in arch.LAYERS)) | arch.SERVING
    assert stations <= placed, stations - placed


def test_architecture_page_names_every_station() -> None:
    page = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    graph = arch.read_graph(ROOT)
    for st in sorted({arch.station(m) for m in graph.modules} - {"", "__main__"}):
        assert st in page, f"docs/architecture.md does not mention {st}"


def _fake(tmp_path: Path, files: dict[str, str]) -> dict[str, list[str]]:
    root = tmp_path / "modelyard"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return arch.check(arch.read_graph(root))


def _only(problems: dict[str, list[str]], rule: str) -> list[str]:
    others = {k: v for k, v in problems.items() if k != rule and v}
    assert not others, others
    return problems[rule]


def test_checker_finds_an_import_against_the_layering(tmp_path: Path) -> None:
    found = _fake(
        tmp_path,
        {
            "training/__init__.py": "",
            "training/loop.py": "def f():\n    from modelyard.report import html\n",
            "report/__init__.py": "",
            "report/html.py": "",
        },
    )
    where = f"{tmp_path.as_posix()}/modelyard/training/loop.py:2: modelyard.training.loop"
    assert _only(found, "layering") == [
        f"{where} (training) imports {target} (report), a later layer"
        for target in ("modelyard.report", "modelyard.report.html")
    ]


def test_checker_finds_the_server_reaching_training(tmp_path: Path) -> None:
    found = _fake(
        tmp_path,
        {
            "serving/__init__.py": "",
            "serving/app.py": "from modelyard.runs import Run\n",
            "runs.py": "",
        },
    )
    assert _only(found, "layering") == []  # runs is a foundation
    found = _fake(tmp_path, {"serving/app.py": "import modelyard.training\n", "training.py": ""})
    assert "imports modelyard.training" in " ".join(found["layering"])


def test_checker_finds_module_and_station_cycles(tmp_path: Path) -> None:
    found = _fake(
        tmp_path,
        {
            "exporters/__init__.py": "",
            "exporters/onnx.py": "from modelyard.exporters import tflite\n",
            "exporters/tflite.py": "from modelyard.exporters.onnx import x\n",
        },
    )
    assert found["module cycles"] == ["modelyard.exporters.onnx <-> modelyard.exporters.tflite"]
    found = _fake(
        tmp_path,
        {"data/__init__.py": "import modelyard.tokenize\n", "tokenize/__init__.py": "import x\n"},
    )
    assert found["station cycles"] == []
    (tmp_path / "modelyard/tokenize/__init__.py").write_text("import modelyard.data\n")
    found = arch.check(arch.read_graph(tmp_path / "modelyard"))
    assert found["station cycles"] == ["data <-> tokenize"]


def test_checker_finds_private_names_across_modules(tmp_path: Path) -> None:
    found = _fake(
        tmp_path,
        {"plots.py": "def _save(): ...\n", "metrics.py": "from modelyard.plots import _save\n"},
    )
    assert _only(found, "private imports") == [
        f"{tmp_path.as_posix()}/modelyard/metrics.py:1: modelyard.metrics imports ['_save'] "
        "from modelyard.plots"
    ]


def test_checker_follows_torch_through_lazy_imports(tmp_path: Path) -> None:
    found = _fake(
        tmp_path,
        {
            "runtime/__init__.py": "",
            "runtime/predictor.py": "def f():\n    from modelyard import config\n",
            "config.py": "import torch.nn\n",
        },
    )
    assert _only(found, "torch on the serving side")[0] == (
        "modelyard.runtime.predictor -> modelyard.config -> torch.nn"
    )


def test_checker_finds_long_files_and_catch_alls(tmp_path: Path) -> None:
    found = _fake(tmp_path, {"data.py": "x = 1\n" * (arch.MAX_LINES + 1), "utils.py": ""})
    assert found["files over the line limit"] == [f"modelyard.data: {arch.MAX_LINES + 1} lines"]
    assert found["catch-all modules"] == ["modelyard.utils"]


def test_checker_runs_as_a_script() -> None:
    script = Path(arch.__file__)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "module cycles: 0" in out.stdout


def test_public_api_functions_stay_functions_after_their_stations_load() -> None:
    # the station packages are named apart from the functions, so importing one never hides one
    code = textwrap.dedent(
        """
        import modelyard
        import modelyard.training, modelyard.exporters, modelyard.serving, modelyard.choice
        import modelyard.training.evaluation
        for name in ("train", "export", "evaluate", "serve", "choose", "load", "run_pipeline"):
            obj = getattr(modelyard, name)
            assert callable(obj) and not isinstance(obj, type(modelyard)), (name, obj)
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def _how_to_add() -> dict[str, str]:
    page = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## How to add", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^- \*\*(.+?)\*\*:(.*?)(?=^- \*\*|\Z)", section, flags=re.M | re.S)
    return {name: " ".join(body.split()) for name, body in items}


def test_how_to_add_lists_name_files_and_registries_that_exist() -> None:
    """Each "how to add" list names files that exist (a `<name>` placeholder: its folder) and
    each "one `X` line in `file`" names a registry that file really holds."""
    lists = _how_to_add()
    assert set(lists) == {
        "a task",
        "a model family",
        "an export format",
        "a serving route",
        "a generation engine",
    }
    for name, body in lists.items():
        paths = re.findall(r"`(modelyard/[^`]*)`", body)
        assert paths, name
        for path in paths:
            where = ROOT.parent / (path.split("<")[0] if "<" in path else path)
            assert where.exists(), f"{name}: {path} does not exist"
        # "one `X` line ... in `modelyard/...`": X and the next path named after it
        pairs = re.findall(r"one `(\w+)(?:\(\.\.\.\))?` line.*?`(modelyard/[^`]+)`", body)
        assert pairs, name
        for symbol, path in pairs:
            text = (ROOT.parent / path).read_text(encoding="utf-8")
            assert re.search(rf"^\s*(def )?{re.escape(symbol)}\b", text, flags=re.M), (
                f"{name}: {path} has no {symbol}"
            )


def test_a_task_is_its_module_and_one_registry_line() -> None:
    """The task list is true of every built-in task: its class lives in modelyard/tasks/ and
    its name is written once, in its register_task line."""
    from modelyard.tasks import TASKS

    registry = (ROOT / "tasks" / "__init__.py").read_text(encoding="utf-8")
    for name, task in TASKS.items():
        assert type(task).__module__.startswith("modelyard.tasks."), name
        assert registry.count(f'"{name}"') == 1, name
        assert f'register_task({type(task).__name__}("{name}"))' in registry, name
