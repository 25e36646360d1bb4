"""Registries are the one list: every station's registry is keyed by the names in
``modelyard.config`` (so a format, mode or kind registered in one place only fails here), the CLI's
choices are those names, and a config naming anything else is told the valid ones."""

from __future__ import annotations

import argparse
import types
from pathlib import Path
from typing import Any

import pytest

from modelyard.cli import build_parser
from modelyard.compress import FORMAT_VARIANTS, QUANTIZERS
from modelyard.config import (
    EXPORT_FORMATS,
    EXPORT_QUANTIZE_MODES,
    GENERATIVE_FORMATS,
    GGUF_TYPES,
    MODEL_CONFIGS,
    MODEL_KINDS,
    QUANTIZE_MODES,
    REFERENCE_FORMAT,
    validate_config,
)
from modelyard.errors import ConfigError
from modelyard.exporters import EXPORTERS
from modelyard.exporters.gguf import GGUF_TYPES as GGUF_WRITERS
from modelyard.exporters.litert_convert import TFLITE_QUANTIZERS
from modelyard.models import MODEL_BUILDERS
from modelyard.report.tradeoff import FORMAT_COLOURS
from modelyard.runtime import BACKENDS

pytestmark = pytest.mark.unit


def _minimal(**extra: object) -> dict[str, object]:
    raw: dict[str, object] = {"name": "t", "task": "binary", "data": {"train": "x.csv"}}
    raw.update(extra)
    return raw


def test_format_registries_are_keyed_by_the_format_names() -> None:
    assert REFERENCE_FORMAT in EXPORT_FORMATS
    for registry in (EXPORTERS, BACKENDS, FORMAT_VARIANTS, EXPORT_QUANTIZE_MODES, FORMAT_COLOURS):
        assert tuple(registry) == EXPORT_FORMATS


def test_quantizer_registries_are_keyed_by_the_mode_names() -> None:
    assert tuple(QUANTIZERS) == QUANTIZE_MODES
    assert tuple(TFLITE_QUANTIZERS) == EXPORT_QUANTIZE_MODES["tflite"]
    # the formats of scoring models take compress's modes; GGUF its own matrix types
    scoring = [f for f in EXPORT_FORMATS if f not in GENERATIVE_FORMATS]
    assert all(set(EXPORT_QUANTIZE_MODES[f]) <= set(QUANTIZE_MODES) for f in scoring)
    assert EXPORT_QUANTIZE_MODES["gguf"] == GGUF_TYPES
    assert set(GGUF_WRITERS) == set(GGUF_TYPES)
    assert set(GENERATIVE_FORMATS) < set(EXPORT_FORMATS)
    # the reference format is quantized after export, by compress
    assert EXPORT_QUANTIZE_MODES[REFERENCE_FORMAT] == ()


def test_model_builders_are_keyed_by_the_model_kinds() -> None:
    assert tuple(MODEL_BUILDERS) == MODEL_KINDS == tuple(MODEL_CONFIGS)


def _choices(command: str, flag: str) -> list[str]:
    sub = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices[command]
    action = next(a for a in sub._actions if flag in a.option_strings)
    return list(action.choices or ())


def test_cli_choices_are_the_registries_keys() -> None:
    assert _choices("export", "--format") == list(EXPORTERS)
    # the format's exporter checks --quantize and names what fits (K-quants: why they do not)
    export_help = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["export"]
    quantize = next(a for a in export_help._actions if "--quantize" in a.option_strings)
    for fmt, modes in EXPORT_QUANTIZE_MODES.items():
        assert all(m in (quantize.help or "") for m in modes), fmt
    assert _choices("compress", "--quantize") == list(QUANTIZERS)


@pytest.mark.parametrize(
    ("section", "valid"),
    [
        ({"export": {"formats": ["onnx", "coreml"]}}, EXPORT_FORMATS),
        ({"targets": {"edge": {"format": "coreml"}}}, EXPORT_FORMATS),
        ({"compress": {"quantize": ["int4"]}}, QUANTIZE_MODES),
        ({"model": {"kind": "mamba"}}, MODEL_KINDS),
    ],
)
def test_an_unknown_name_in_a_config_lists_the_valid_ones(
    section: dict[str, object], valid: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(_minimal(**section))
    assert all(name in str(caught.value) for name in valid), str(caught.value)


def test_export_quantize_on_a_format_whose_exporter_does_not_quantize(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from modelyard.cli import main

    assert main(["export", "runs/none", "--format", "onnx", "--quantize", "int8-dynamic"]) == 2
    err = capsys.readouterr().err
    assert "quantize applies to tflite, gguf; for ONNX use `modelyard compress`" in err


def test_export_passes_quantize_to_the_formats_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.cli import main
    from modelyard.runs import Run

    calls: list[dict[str, Any]] = []

    def fake_exporter(run: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return types.SimpleNamespace(path=tmp_path / "m" / "1", version=1)

    run = types.SimpleNamespace(task="binary", dir=Path("runs/r"))
    monkeypatch.setattr(Run, "load", classmethod(lambda cls, path: run))
    monkeypatch.setitem(EXPORTERS, "tflite", fake_exporter)
    args = ["export", "runs/r", "--format", "tflite", "--repo", str(tmp_path)]
    assert main([*args, "--quantize", "int8-dynamic"]) == 0
    assert main(args) == 0
    assert [c.get("quantize") for c in calls] == ["int8-dynamic", None]
    assert "quantize" not in calls[1]  # the exporter's own default, as before
    assert "bundle: " in capsys.readouterr().out
