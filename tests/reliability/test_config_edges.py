"""Config and key-file edges an unlucky operator hits: each one a clear error or the right value."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.config import load_config
from modelyard.errors import ConfigError
from modelyard.serving.auth import key_matches, read_api_keys

pytestmark = [pytest.mark.reliability, pytest.mark.unit]

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed.yaml"


def test_an_api_key_file_with_a_byte_order_mark_matches_its_first_key(
    tmp_path: Path, reliability
) -> None:
    cases = {
        "bom": b"\xef\xbb\xbffirst-key\nsecond-key\n",
        "bom_crlf": b"\xef\xbb\xbffirst-key\r\nsecond-key\r\n",
        "plain": b"first-key\nsecond-key\n",
    }
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        keys = read_api_keys(path)
        assert key_matches(b"first-key", keys), name
        assert key_matches(b"second-key", keys), name
        assert not key_matches(b"\xef\xbb\xbffirst-key", keys), name
    (tmp_path / "latin1").write_bytes(b"caf\xe9-key\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_api_keys(tmp_path / "latin1")
    reliability.record(
        "input",
        "API key files with a UTF-8 BOM, CRLF line ends, and Latin-1 bytes",
        len(cases) + 1,
        "the first key matches after a BOM; a non-UTF-8 file is a one-line config error",
    )


@pytest.mark.parametrize("key", ["train.epochs", "model.hidden_size", "train.batch_size"])
def test_a_boolean_is_not_a_number(key: str, reliability) -> None:
    with pytest.raises(ConfigError, match="expected a number, got the boolean True") as caught:
        load_config(SEED, [f"{key}=true"])
    section, leaf = key.split(".")
    assert section in str(caught.value) and leaf in str(caught.value)
    reliability.record(
        "input", f"`{key}=true` (a boolean where a number goes)", 1, "refused, naming the key"
    )


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_training_labels_of_one_class_are_refused_even_with_configured_labels(
    task: str, reliability
) -> None:
    from modelyard.data.labels import LabelSpace
    from modelyard.errors import DataError

    with pytest.raises(DataError, match="every training label is great") as caught:
        LabelSpace.fit(task, ["great"] * 50, fixed=["great", "other"], path="train.csv")
    assert "train.csv" in str(caught.value)
    reliability.record(
        "input",
        f"a {task} training file whose labels are all one class, labels configured",
        1,
        "refused, naming the file and the one class",
    )
