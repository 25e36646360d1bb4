"""The commands a user types: init, train, evaluate, export, predict — and their error paths."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelyard.cli import main

GOOD = ["good", "great", "tasty", "lovely", "fresh"]
BAD = ["bad", "awful", "stale", "bland", "rotten"]
FILLER = ["the", "tea", "was", "really", "very", "coffee", "snack", "and", "it"]


def _write_dataset(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["text,label"]
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILLER, k=rng.randint(2, 12))
        words.insert(rng.randint(0, len(words)), rng.choice(GOOD if label == "pos" else BAD))
        lines.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    _write_dataset(tmp_path / "train.csv", 160, seed=1)
    _write_dataset(tmp_path / "test.csv", 40, seed=2)
    config = {
        "name": "tiny",
        "task": "binary",
        "data": {"train": "train.csv", "test": "test.csv"},
        "tokenizer": {"num_words": 50, "max_length": 16},
        "model": {"kind": "gru", "embedding_dim": 16, "hidden_size": 16},
        "train": {"epochs": 8, "batch_size": 16, "optimizer": {"lr": 0.02}, "progress": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return tmp_path


@pytest.mark.unit
def test_init_writes_a_config_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.config import load_config

    assert main(["init", str(tmp_path / "m"), "--task", "multiclass"]) == 0
    config = load_config(tmp_path / "m" / "config.yaml")
    assert config.task == "multiclass" and config.name == "m"
    # a second init refuses to clobber the user's edits
    assert main(["init", str(tmp_path / "m"), "--task", "binary"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.unit
def test_bad_config_is_one_clear_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "config.yaml", "--set", "model.hiden=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "model.hiden" in err and "hidden_size" in err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.unit
def test_bad_csv_row_names_file_and_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with (project / "train.csv").open("a", encoding="utf-8") as fh:
        fh.write(",pos\n")  # empty text
    n_lines = len((project / "train.csv").read_text(encoding="utf-8").splitlines())
    assert main(["train", "config.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"train.csv:{n_lines}" in err and "empty text" in err


@pytest.mark.unit
def test_resume_needs_a_run(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", "runs/nope"]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
def test_train_evaluate_export_predict(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "config.yaml"]) == 0
    out = capsys.readouterr().out
    assert "runs/tiny" in out and "accuracy=" in out
    run = project / "runs" / "tiny"
    assert (run / "eval" / "confusion_matrix.png").is_file()

    # a second train without a flag refuses to overwrite the run
    assert main(["train", "config.yaml"]) == 2
    assert "--resume" in capsys.readouterr().err

    assert main(["evaluate", "runs/tiny", "--json"]) == 0
    run_metrics = json.loads(capsys.readouterr().out)
    assert run_metrics["accuracy"] > 0.8

    assert main(["export", "runs/tiny", "--repo", "models"]) == 0
    assert "models/tiny/1" in capsys.readouterr().out
    assert main(["evaluate", "models/tiny", "--data", "test.csv", "--json"]) == 0
    bundle_metrics = json.loads(capsys.readouterr().out)
    assert abs(bundle_metrics["accuracy"] - run_metrics["accuracy"]) <= 0.001

    (project / "in.txt").write_text("so good and fresh\nstale and awful\n", encoding="utf-8")
    code = main(
        ["predict", "models/tiny", "--input", "in.txt", "--output", "out.jsonl", "--no-progress"]
    )
    assert code == 0
    rows = [json.loads(line) for line in (project / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg"]


@pytest.mark.integration
def test_console_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelyard", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("modelyard ")


@pytest.mark.integration
def test_console_exit_keeps_output_status_and_exit_handlers(tmp_path: Path) -> None:
    # the entry point ends with os._exit (no interpreter teardown): the command's output must
    # still arrive whole through a pipe, its status must be the exit status, and the exit
    # handlers registered during the run must still run
    script = (
        "import atexit, sys; atexit.register(lambda: print('handlers ran'));"
        "from modelyard.__main__ import run; sys.argv = ['modelyard', *sys.argv[1:]]; run()"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # block-buffered
    for name in ("one", "two"):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                "init",
                str(tmp_path / "p"),
                "--task",
                "binary",
                "--name",
                name,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        if name == "one":
            assert proc.returncode == 0, proc.stderr
            assert "wrote" in proc.stdout and "modelyard train" in proc.stdout
            assert proc.stdout.rstrip().endswith("handlers ran")
        else:  # the config exists now: a clear error, status 2
            assert proc.returncode == 2 and "already exists" in proc.stderr
            assert "handlers ran" in proc.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_init_then_train_export_predict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the first thing a new user runs: the starter config (a char tokenizer, linear_ngrams),
    # only its data files written, trained, exported and asked through the torch-free runtime
    from helpers.synthetic import write_synthetic

    monkeypatch.chdir(tmp_path)
    assert main(["init", "m", "--task", "binary"]) == 0
    write_synthetic(tmp_path / "m", n_train=200, n_test=40)
    sets = ["--set", "train.progress=false", "--set", "output_dir=runs"]
    assert main(["train", "m/config.yaml", *sets]) == 0
    assert main(["export", "runs/m", "--repo", "models"]) == 0
    assert main(["export", "runs/m", "--repo", "models", "--format", "tflite"]) == 2
    assert "does not convert to TFLite" in capsys.readouterr().err
    assert main(["evaluate", "models/m", "--data", "m/test.csv", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.9
    (tmp_path / "in.txt").write_text("The plot was GOOD!\nbad, really bad\n", encoding="utf-8")
    args = ["predict", "models/m", "--input", "in.txt", "--output", "out.jsonl", "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg"]
