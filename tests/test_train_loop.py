"""The training loop end to end on a tiny synthetic task ("good" vs "bad" decides the label)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from helpers.processes import train_until_killed
from helpers.synthetic import write_synthetic
from helpers.weights import assert_same_weights, weights, without_timing

import modelyard
from modelyard.config import Config, dump_config, load_config
from modelyard.errors import ConfigError, RunError
from modelyard.training import Run, load_model, predict_texts, train
from modelyard.training.checkpoint import load_state

pytestmark = pytest.mark.integration


def tiny_config(tmp_path: Path, name: str = "tiny", **train: Any) -> Config:
    data = write_synthetic(tmp_path) if not (tmp_path / "train.csv").exists() else None
    files = data or {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
    train_cfg: dict[str, Any] = {
        "epochs": 3,
        "batch_size": 8,
        "optimizer": {"name": "adam", "lr": 0.02},
        "num_threads": 1,
        "progress": False,
    }
    train_cfg.update(train)
    return load_config(
        {
            "name": name,
            "task": "binary",
            "output_dir": str(tmp_path / "runs"),
            "data": {"train": files["train"], "test": files["test"], "validation_split": 0.25},
            "tokenizer": {"num_words": 99, "max_length": 16},
            "model": {"kind": "lstm", "embedding_dim": 16, "hidden_size": 16},
            "train": train_cfg,
        }
    )


def test_train_learns_and_writes_the_run_dir(tmp_path: Path) -> None:
    # 6 epochs: Keras' small initial weights (model.init default) learn this toy task by epoch 5
    config = tiny_config(tmp_path, epochs=6, optimizer={"name": "adam", "lr": 0.05})
    run = modelyard.train(config)
    d = run.dir
    for name in ("config.yaml", "run.json", "tokenizer.json", "metrics.jsonl"):
        assert (d / name).is_file(), name
    for name in ("best.safetensors", "last.safetensors", "last.state.pt"):
        assert (d / "checkpoints" / name).is_file(), name
    for name in ("metrics.json", "report.txt", "confusion_matrix.png", "learning_curves.png"):
        assert (d / "eval" / name).is_file(), name
    lines = (d / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 == len(run.history)
    first = json.loads(lines[0])
    for key in ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_time_s", "samples_per_s"):
        assert key in first
    assert run.history[-1]["val_accuracy"] >= 0.9
    assert run.test_metrics is not None and run.test_metrics["accuracy"] >= 0.9
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "completed" and info["labels"] == ["neg", "pos"]
    assert info["best_epoch"] == min(range(1, 7), key=lambda e: (run.history[e - 1]["val_loss"], e))
    # the run reads back, and its torch model predicts the synthetic rule
    loaded = Run.load(d)
    assert loaded.config == config and loaded.labels.labels == ["neg", "pos"]
    model = load_model(d)
    assert not model.training
    scores = predict_texts(loaded, ["a good film", "a bad film", "good"], model=model)
    assert scores.shape == (3, 1) and scores.dtype == np.float32
    assert scores[0, 0] > 0.5 > scores[1, 0]


def test_seeded_runs_are_bit_identical(tmp_path: Path) -> None:
    cfg_a = tiny_config(tmp_path, name="a", epochs=2)
    cfg_b = tiny_config(tmp_path, name="b", epochs=2)
    assert_same_weights(weights(train(cfg_a).dir), weights(train(cfg_b).dir))
    hist_a = [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k}
              for r in Run.load(cfg_a.run_dir).history]  # fmt: skip
    hist_b = [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k}
              for r in Run.load(cfg_b.run_dir).history]  # fmt: skip
    assert hist_a == hist_b


def test_existing_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, epochs=1)
    train(config)
    with pytest.raises(RunError, match=r"--resume .* --overwrite"):
        train(config)
    with pytest.raises(RunError, match="not both"):
        train(config, resume=True, overwrite=True)
    run = train(config, overwrite=True)
    assert len(run.history) == 1
    # resuming a finished run trains nothing more
    again = train(config, resume=True)
    assert again.history == run.history
    with pytest.raises(RunError, match="no checkpoint to resume from"):
        train(tiny_config(tmp_path, name="never-trained"), resume=True)


@pytest.mark.parametrize(
    "settings",
    [
        {"bucketing": False},  # the plain way: every batch padded to max_length
        {
            "grad_accum_steps": 2,
            "grad_clip": 1.0,
            "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9, "nesterov": True},
            "schedule": {"name": "cosine", "warmup_steps": 2},
            "loss": {"name": "focal"},
        },
        {
            "schedule": {"name": "plateau", "patience": 0},
            # no epoch can beat the first by 0.5 accuracy: stops after epoch 2 of 5
            "early_stopping": {"monitor": "accuracy", "patience": 1, "min_delta": 0.5},
            "epochs": 5,
            "monitor": "roc_auc",
        },
    ],
    ids=["plain-padding", "accum-clip-cosine-focal", "plateau-early-stop"],
)
def test_training_options_run(tmp_path: Path, settings: dict[str, Any]) -> None:
    run = train(tiny_config(tmp_path, **settings))
    assert all(np.isfinite(r["train_loss"]) for r in run.history)
    if "early_stopping" in settings:
        assert run.info["stopped_early"] and len(run.history) == 2
        assert run.info["monitor"] == "val_roc_auc"
    else:
        assert len(run.history) == 3 and not run.info["stopped_early"]


def test_early_stopping_is_the_default_and_follows_the_monitor(tmp_path: Path) -> None:
    assert load_config({**_raw(tmp_path), "train": {}}).train.early_stopping is not None
    # nothing beats the first epoch by 10 in accuracy (train.monitor): epochs is a ceiling
    config = tiny_config(tmp_path, epochs=6, monitor="accuracy", early_stopping={"min_delta": 10})
    run = train(config)
    assert run.info["stopped_early"] and len(run.history) == 4  # the best epoch, then patience 3
    # restore best: the checkpoint scored is the best epoch's, not the last one trained
    accuracy = [r["val_accuracy"] for r in run.history]
    assert run.info["best_epoch"] == accuracy.index(max(accuracy)) + 1
    assert run.info["monitor"] == "val_accuracy"
    off = train(tiny_config(tmp_path, name="off", epochs=4, early_stopping=None))
    assert len(off.history) == 4 and not off.info["stopped_early"]


def test_bad_monitor_and_missing_tensorboard_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.monitor: unknown metric 'rmse'"):
        train(tiny_config(tmp_path, monitor="rmse"))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            train(tiny_config(tmp_path, name="tb", tensorboard=True))


# ------------------------------------------------------------------------------ crash + resume
@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    # dropout makes the torch RNG state matter; checkpoints every 2 optimizer steps
    settings = {"epochs": 3, "checkpoint_every_steps": 2, "grad_accum_steps": 1}
    model = {"kind": "lstm", "embedding_dim": 16, "hidden_size": 16}
    model |= {"num_layers": 2, "dropout": 0.3}
    crashed = tiny_config(tmp_path, name="crashed", **settings).model_copy(
        update={"model": load_config({**_raw(tmp_path), "model": model}).model}
    )
    reference = crashed.model_copy(update={"name": "reference"})
    config_file = tmp_path / "crashed.yaml"
    config_file.write_text(dump_config(crashed))

    train_until_killed(config_file, tmp_path)
    state_file = crashed.run_dir / "checkpoints" / "last.state.pt"
    progress = load_state(state_file)["progress"]
    assert progress["epoch"] == 1 and progress["step_in_epoch"] > 0
    assert json.loads((crashed.run_dir / "run.json").read_text())["status"] == "running"

    resumed = train(load_config(crashed.run_dir / "config.yaml"), resume=True)
    uninterrupted = train(reference)
    assert_same_weights(weights(resumed.dir), weights(uninterrupted.dir))
    assert_same_weights(weights(resumed.dir, "best"), weights(uninterrupted.dir, "best"))

    assert without_timing(resumed.history) == without_timing(uninterrupted.history)
    assert len(resumed.history) == 3


def _raw(tmp_path: Path) -> dict[str, Any]:
    return yaml.safe_load(dump_config(tiny_config(tmp_path)))


# ---------------------------------------------------------------------- the loop's step hooks
def test_prune_finetune_runs_the_training_loop_and_keeps_pruned_weights_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.compress.prune import finetune, prune_model
    from modelyard.training import epochs
    from modelyard.training.optim import current_lr

    schedule = {"name": "linear", "warmup_steps": 0}
    run = train(tiny_config(tmp_path, epochs=1, schedule=schedule))
    result = prune_model(load_model(run), 0.5)
    pruned = {k: v.clone() for k, v in result.model.state_dict().items()}
    steps: list[tuple[float, int]] = []
    real_step = epochs.train_step

    def train_step(loop: Any, group: Any) -> tuple[float, int]:
        out = real_step(loop, group)
        steps.append((current_lr(loop.trainer.optimizer), len(loop.hooks.after_step)))
        return out

    monkeypatch.setattr(epochs, "train_step", train_step)
    finetune(result, run, 1)
    report = result.report.finetune
    assert report is not None and len(steps) == report["steps"] > 2
    lrs = [lr for lr, _ in steps]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]  # the run's schedule steps
    assert all(hooks == 1 for _, hooks in steps)  # the mask hook
    for module, name, mask in result.masks:
        assert torch.all(getattr(module, name)[mask == 0] == 0)
    after = result.model.state_dict()
    assert any(not torch.equal(after[k], pruned[k]) for k in pruned)  # it trained
    assert not result.model.training
