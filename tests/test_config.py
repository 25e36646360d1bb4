"""Config: every shipped config loads; bad keys and values get errors naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard.config import (
    MODEL_KINDS,
    Config,
    RNNConfig,
    TransformerConfig,
    dump_config,
    load_config,
    validate_config,
)
from modelyard.errors import ConfigError
from modelyard.tasks import task_names
from modelyard.templates import starter_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "examples").glob("*.yaml"))


def _minimal(**extra: object) -> dict[str, object]:
    raw: dict[str, object] = {"name": "t", "task": "binary", "data": {"train": "x.csv"}}
    raw.update(extra)
    return raw


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, Config)
    assert Path(config.data.train).exists(), "shipped configs point at shipped data"


@pytest.mark.parametrize("task", task_names())
def test_starter_configs_validate(task: str) -> None:
    raw = yaml.safe_load(starter_config(task, "demo"))
    config = validate_config(raw)
    assert config.task == task


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_example_says_what_it_was_measured_on(path: Path) -> None:
    assert "# Measured on" in path.read_text(encoding="utf-8")


def test_starter_config_is_the_measured_default_and_lists_every_family() -> None:
    text = starter_config("multiclass", "demo")
    assert all(kind in text for kind in MODEL_KINDS)
    assert "modelyard tune demo/config.yaml --budget 20m" in text
    config = validate_config(yaml.safe_load(text))
    assert (config.model.kind, config.tokenizer.kind) == ("linear_ngrams", "char")
    # train.epochs is a ceiling: early stopping on the task's monitor ends the run
    assert config.train.early_stopping is not None and config.train.epochs >= 20


def test_seed_reproduces_the_keras_recipe() -> None:
    config = load_config(ROOT / "examples" / "seed.yaml")
    assert config.tokenizer.kind == "word"
    assert config.tokenizer.num_words == 10000
    assert config.tokenizer.oov_token == "<OOV>"
    assert config.tokenizer.max_length == 100
    assert (config.tokenizer.padding_side, config.tokenizer.truncation_side) == ("left", "left")
    assert isinstance(config.model, RNNConfig)
    assert (config.model.kind, config.model.embedding_dim, config.model.hidden_size) == (
        "lstm",
        128,
        64,
    )
    assert config.train.optimizer.name == "adam" and config.train.optimizer.lr == 1e-3
    assert config.train.loss.name == "auto" and config.task == "binary"
    assert (config.train.epochs, config.train.batch_size) == (10, 32)


def test_unknown_key_names_key_and_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_minimal(model={"kind": "lstm", "hiden_size": 3}))
    msg = str(err.value)
    assert "model.hiden_size" in msg and "hidden_size" in msg and "bidirectional" in msg


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*train"):
        validate_config(_minimal(trian={}))


def test_wrong_type_names_path_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_minimal(train={"epochs": "many"}))
    assert "train.epochs" in str(err.value) and "'many'" in str(err.value)


def test_impossible_value() -> None:
    with pytest.raises(ConfigError, match=r"data.validation_split"):
        validate_config(_minimal(data={"train": "x.csv", "validation_split": 1.5}))
    with pytest.raises(ConfigError, match=r"divisible"):
        validate_config(_minimal(model={"kind": "transformer", "embedding_dim": 30}))


def test_unknown_model_kind_lists_kinds() -> None:
    with pytest.raises(ConfigError, match=r"model.*lstm, gru, cnn, transformer"):
        validate_config(_minimal(model={"kind": "mamba"}))


def test_unknown_task_lists_tasks() -> None:
    with pytest.raises(ConfigError, match=r"task.*binary"):
        validate_config({"name": "t", "task": "ranking", "data": {"train": "x.csv"}})


def test_set_overrides_nested_and_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_minimal()), encoding="utf-8")
    config = load_config(
        path,
        [
            "train.epochs=3",
            "model.kind=transformer",
            "train.optimizer.lr=0.01",
            "model.num_heads=2",
        ],
    )
    assert config.train.epochs == 3
    assert isinstance(config.model, TransformerConfig) and config.model.num_heads == 2
    assert config.train.optimizer.lr == 0.01


def test_set_rejects_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(_minimal(), ["train.epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(_minimal(), ["name.sub=3"])


def test_shorthands_for_loss_optimizer_schedule() -> None:
    config = validate_config(
        _minimal(train={"loss": "focal", "optimizer": "sgd", "schedule": "cosine"})
    )
    assert config.train.loss.name == "focal"
    assert config.train.optimizer.name == "sgd"
    assert config.train.schedule.name == "cosine"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_dump_roundtrips() -> None:
    config = validate_config(_minimal(model={"kind": "cnn", "kernel_sizes": [2, 3]}))
    again = validate_config(yaml.safe_load(dump_config(config)))
    assert again == config


def test_unknown_target_key() -> None:
    with pytest.raises(ConfigError, match=r"targets.edge.max_size"):
        validate_config(_minimal(targets={"edge": {"format": "onnx", "max_size": 3}}))


@pytest.mark.unit
@pytest.mark.parametrize("override", ["train.epochs=true", "model.hidden_size=true"])
def test_a_boolean_is_not_a_number(override: str) -> None:
    with pytest.raises(ConfigError, match="expected a number, got the boolean True"):
        load_config("examples/seed.yaml", [override])
