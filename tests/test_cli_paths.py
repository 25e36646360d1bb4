"""CLI flags that follow the config and the bundle: where compress writes, where resume trains,
what --overwrite may delete; and the commands that move aliases."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers.bundles import labelled_csv, make_bundle
from helpers.synthetic import write_synthetic

from modelyard.cli import main
from modelyard.versions import list_versions, read_record


@pytest.mark.integration
def test_compress_writes_beside_the_bundle_it_compressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "elsewhere" / "models"
    make_bundle(repo, "binary", name="m")
    data = labelled_csv(tmp_path / "test.csv")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["compress", str(repo / "m"), "--quantize", "fp16", "--data", str(data)]) == 0
    assert list_versions(repo / "m") == [1, 2]
    assert not (work / "models").exists()
    # a new variant never changes what is served
    assert read_record(repo / "m").aliases == {"default": 1}
    capsys.readouterr()


@pytest.mark.unit
def test_promote_and_aliases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed in range(2):
        make_bundle(tmp_path, "binary", name="m", seed=seed)
    model = str(tmp_path / "m")
    assert main(["promote", model, "2"]) == 0
    assert "default -> version 2 (was 1)" in capsys.readouterr().out
    assert main(["promote", model, "default", "--as", "server"]) == 0
    assert main(["aliases", model]) == 0
    out = capsys.readouterr().out
    assert "default -> 2" in out and "server -> 2" in out
    assert "served when none is named: version 2" in out
    assert main(["promote", model, "9"]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert main(["aliases", model, "--remove", "server"]) == 0
    assert "server" not in read_record(tmp_path / "m").aliases


def _config(tmp_path: Path, output_dir: Path) -> Path:
    data = write_synthetic(tmp_path, n_train=48, n_test=16)
    config = {
        "name": "tiny",
        "task": "binary",
        "output_dir": str(output_dir),
        "data": {"train": data["train"], "test": data["test"]},
        "tokenizer": {"num_words": 50, "max_length": 12},
        "model": {"kind": "cnn", "embedding_dim": 8, "num_filters": 4, "kernel_sizes": [2]},
        "train": {"epochs": 1, "batch_size": 16, "progress": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.integration
def test_resume_trains_the_run_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tmp_path / "runs")
    assert main(["train", str(config)]) == 0
    # the run moves; resuming it from another directory trains it where it is now
    moved = tmp_path / "archive" / "tiny"
    moved.parent.mkdir()
    (tmp_path / "runs" / "tiny").rename(moved)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "--resume", str(moved)]) == 0
    assert f"run: {moved}" in capsys.readouterr().out
    assert not (work / "runs").exists() and not (tmp_path / "runs" / "tiny").exists()
    assert '"status": "completed"' in (moved / "run.json").read_text(encoding="utf-8")


@pytest.mark.integration
def test_overwrite_checks_the_config_and_data_before_deleting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tmp_path / "runs")
    assert main(["train", str(config)]) == 0
    run = tmp_path / "runs" / "tiny"
    (tmp_path / "train.csv").write_text("text,label\n", encoding="utf-8")  # no rows any more
    assert main(["train", str(config), "--overwrite"]) == 2
    capsys.readouterr()
    assert (run / "checkpoints" / "best.safetensors").is_file()  # the old run is still there


@pytest.mark.unit
def test_overwrite_never_deletes_a_directory_modelyard_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tmp_path / "runs")
    precious = tmp_path / "runs" / "tiny"
    precious.mkdir(parents=True)
    (precious / "config.yaml").write_text("mine: true\n", encoding="utf-8")
    (precious / "thesis.tex").write_text("years of work", encoding="utf-8")
    assert main(["train", str(config), "--overwrite"]) == 2
    assert "not a modelyard run directory" in capsys.readouterr().err
    assert (precious / "thesis.tex").is_file()


@pytest.mark.integration
def test_a_run_without_a_test_file_reports_no_test_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.bundle import read_manifest
    from modelyard.exporters import export
    from modelyard.runs import Run
    from modelyard.training import evaluate

    config = _config(tmp_path, tmp_path / "runs")
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    del raw["data"]["test"]
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(config)]) == 0
    assert "test:" not in capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    result = evaluate(run_dir)  # falls back to the validation split, and says so
    assert result.num_examples > 0
    saved = yaml.safe_load((run_dir / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["split"] == "validation"
    assert Run.load(run_dir).test_metrics is None
    bundle = export(run_dir, repo=tmp_path / "models")
    assert read_manifest(bundle.path).metrics is None


@pytest.mark.integration
def test_train_prints_test_accuracy_with_its_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(_config(tmp_path, tmp_path / "runs"))]) == 0
    out = capsys.readouterr().out
    assert "test: accuracy=" in out and "(95% CI " in out and "n=16)" in out
