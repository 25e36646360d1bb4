"""The task registry's promise: a new task is one module and one registry line.

A fifth task is built here, in a test file, without editing the package: ``share``, a fraction in
[0, 1] per text (say, the share of readers who liked a review), trained with a sigmoid output and
binary cross-entropy on the soft target, scored by MAE. It goes through train → export → runtime
→ a real HTTP server on 127.0.0.1, and ``modelyard init`` writes its starter config. Also here:
the check that task names are compared nowhere but in the registry.
"""

from __future__ import annotations

import ast
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
import yaml
from helpers.serving import free_port
from helpers.synthetic import write_rows

from modelyard.tasks import TASKS, Starter, Task, get_task, register_task, task_names
from modelyard.tasks.parsing import LabelProblem, parse_number
from modelyard.tasks.regression import Regression

PACKAGE = Path(__file__).resolve().parents[1] / "modelyard"
BUILT_IN = ("binary", "multiclass", "multilabel", "regression")


class Share(Regression):
    """A fraction in [0, 1] per text; the model's one output is its logit, and the loss is
    binary cross-entropy on the soft target. Scored as a number is, by MAE."""

    activation = "sigmoid"
    default_loss = "bce"
    losses = ("bce",)
    primary_metric = "mae"
    starter = Starter("share", "a number from 0 to 1", "auto            # bce on the share")

    def parse_label(self, value: Any, delimiter: str | None) -> Any:
        number = parse_number(value)
        if not 0.0 <= number <= 1.0:
            raise LabelProblem(f"{number} is not a share between 0 and 1")
        return number


@pytest.fixture
def share_task() -> Iterator[Task]:
    task = register_task(Share("share"))
    try:
        yield task
    finally:
        TASKS.pop("share")


def _share_data(root: Path) -> tuple[Path, Path]:
    rng = random.Random(5)

    def row() -> tuple[str, str]:
        words = rng.choices(["good", "bad"], k=rng.randint(1, 6))
        words += rng.choices(["the", "film", "plot", "was"], k=rng.randint(0, 4))
        rng.shuffle(words)
        return " ".join(
            words
        ), f"{words.count('good') / max(1, words.count('good') + words.count('bad')):.3f}"

    train, test = root / "train.csv", root / "test.csv"
    write_rows(train, [row() for _ in range(96)])
    write_rows(test, [row() for _ in range(24)])
    return train, test


class ThreadServer:
    """uvicorn in a thread of this process: the toy task is registered here, not in a child."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@pytest.mark.integration
def test_a_task_from_a_test_file_goes_from_training_to_http(
    share_task: Task, tmp_path: Path
) -> None:
    import modelyard
    from modelyard.cli import main
    from modelyard.config import load_config
    from modelyard.exporters import export
    from modelyard.serving import create_app
    from modelyard.training import predict_texts

    train, test = _share_data(tmp_path)
    # the starter config `modelyard init` writes for it, with the data and a quick model
    assert main(["init", str(tmp_path / "init"), "--task", "share"]) == 0
    starter = yaml.safe_load((tmp_path / "init" / "config.yaml").read_text(encoding="utf-8"))
    assert starter["task"] == "share" and starter["data"]["label"] == "share"
    assert starter["train"]["monitor"] == "val_mae"
    config = load_config(
        {
            **starter,
            "output_dir": str(tmp_path / "runs"),
            "data": {**starter["data"], "train": str(train), "test": str(test), "label": "label"},
            "model": {"kind": "cnn", "embedding_dim": 16, "num_filters": 8},
            "tokenizer": {"num_words": 50, "max_length": 12},
            "train": {**starter["train"], "epochs": 8, "batch_size": 16, "progress": False},
        }
    )
    run = modelyard.train(config)
    history = [r["val_loss"] for r in run.history]
    assert history[-1] < history[0]  # BCE on soft targets learns
    test_mae = run.test_metrics["mae"]
    assert set(run.test_metrics) == {"mae", "rmse", "r2"}
    assert test_mae < 0.3  # a constant 0.5 would score ~0.3 on this data

    bundle = export(run, repo=tmp_path / "models")
    assert bundle.manifest.task == "share" and bundle.manifest.postprocess.activation == "sigmoid"
    assert bundle.manifest.labels == [] and bundle.manifest.num_outputs == 1
    texts = ["good good film", "bad plot", "good bad the film"]
    predictor = modelyard.load(bundle.path)
    scores = predictor.infer(predictor.encode(texts))
    reference = predict_texts(run, texts)
    np.testing.assert_allclose(scores, reference, atol=1e-4)
    assert scores.min() >= 0.0 and scores.max() <= 1.0  # the task's sigmoid, applied
    assert scores[0, 0] > scores[1, 0]
    assert [p.label for p in predictor.predict(texts)] == [None, None, None]

    with ThreadServer(create_app(str(tmp_path / "models"), poll=False)) as server:
        v1 = httpx.post(
            f"{server.url}/v1/models/{config.name}/predict", json={"texts": texts}, timeout=30
        )
        assert v1.status_code == 200, v1.text
        answers = v1.json()["predictions"]
        assert [a["label"] for a in answers] == [None, None, None]
        np.testing.assert_allclose([a["score"] for a in answers], scores[:, 0], atol=1e-5)
        v2 = httpx.post(
            f"{server.url}/v2/models/{config.name}/infer",
            json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]},
            timeout=30,
        )
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        assert set(outputs) == {"scores"}  # no label output for a task without classes
        np.testing.assert_allclose(outputs["scores"]["data"], scores[:, 0], atol=1e-5)


def test_the_registry_rejects_a_taken_name_and_lists_names_on_a_miss() -> None:
    assert task_names()[:4] == BUILT_IN
    with pytest.raises(ValueError, match="already registered"):
        register_task(Share("binary"))
    with pytest.raises(ValueError, match="valid tasks: binary, multiclass"):
        get_task("ranking")
    assert get_task(get_task("binary")) is get_task("binary")


def test_a_share_label_out_of_range_names_file_and_line(share_task: Task, tmp_path: Path) -> None:
    from modelyard.data import LabelSpace
    from modelyard.errors import DataError

    space = LabelSpace.fit("share", ["0.5", "0.25"])
    with pytest.raises(DataError, match=r"data\.csv:3: 1\.5 is not a share"):
        space.encode(["0.5", "1.5"], path="data.csv", lines=[2, 3])


def _task_name_literals(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in BUILT_IN and id(node) not in docstrings
    ]


def test_task_names_are_written_in_the_registry_alone() -> None:
    """Stations ask the task object; a task name as a string literal (a comparison, a dict
    key) may appear in at most 3 modules: today it is in the registry alone."""
    found = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _task_name_literals(path))
    }
    assert set(found) <= {"modelyard/tasks/__init__.py"}, found
    assert len(found) <= 3


def test_the_literal_check_sees_a_comparison(tmp_path: Path) -> None:
    bad = tmp_path / "station.py"
    bad.write_text('def f(task):\n    """binary"""\n    return task == "regression"\n')
    assert _task_name_literals(bad) == [3]
