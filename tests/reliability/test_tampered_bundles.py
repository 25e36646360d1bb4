"""Tampered bundles: every manifest edit that changes what a prediction means is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers.bundles import make_bundle

from modelyard.bundle import MANIFEST_FILE, manifest_digest, verify_bundle
from modelyard.errors import BundleError

pytestmark = [pytest.mark.reliability, pytest.mark.unit]

# edits that change what the served model answers; each must be refused
EDITS: dict[str, dict[str, Any]] = {
    "labels swapped": {"labels": ["other", "great"]},
    "label renamed": {"labels": ["great", "awful"]},
    "threshold changed": {"postprocess": {"activation": "sigmoid", "threshold": 0.9}},
    "softmax on a binary model": {"postprocess": {"activation": "softmax", "threshold": 0.5}},
    "task changed": {"task": "multilabel"},
    "pad_id changed": {"pad_id": 7},
    "negative max_length": {"max_length": -3},
}
# edits whose values are wrong in themselves: refused even when the digest is rewritten too
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "softmax on a binary model": (
        {"postprocess": {"activation": "softmax", "threshold": 0.5}},
        "does not fit task 'binary'",
    ),
    "task changed": ({"task": "multilabel"}, "labels for 1 outputs"),
    "negative pad_id": ({"pad_id": -1}, "pad_id must be"),
    "negative max_length": ({"max_length": -3}, "max_length must be"),
    "threshold of 1.5": ({"postprocess": {"activation": "sigmoid", "threshold": 1.5}}, "threshold"),
    "NaN threshold": (
        {"postprocess": {"activation": "sigmoid", "threshold": float("nan")}},
        "threshold",
    ),
    "version unlike its directory": ({"version": 2}, "manifest says version 2"),
}


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "models", "binary", name="reviews").path


def _edit(bundle_dir: Path, changes: dict[str, Any], *, redigest: bool) -> None:
    path = bundle_dir / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    if redigest:
        data["digest"] = manifest_digest(data)
    path.write_text(json.dumps(data))


def _refusal(bundle_dir: Path) -> str:
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle_dir)
    reason = str(caught.value)
    assert "\n" not in reason and len(reason) < 400
    return reason


def test_every_manifest_edit_is_refused(tmp_path: Path, reliability) -> None:
    original = make_bundle(tmp_path / "models", "binary", name="reviews").path
    assert verify_bundle(original).manifest.digest
    for what, changes in EDITS.items():
        copy = tmp_path / "copies" / what.replace(" ", "-") / "reviews" / "1"
        shutil.copytree(original, copy)
        _edit(copy, changes, redigest=False)
        assert "edited after export" in _refusal(copy), what
    reliability.record(
        "input",
        "manifest edits after export: " + ", ".join(EDITS),
        len(EDITS),
        f"{len(EDITS)} of {len(EDITS)} refused with a one-line reason (digest mismatch)",
    )


def test_invalid_fields_are_refused_even_with_a_rewritten_digest(
    bundle_dir: Path, tmp_path: Path, reliability
) -> None:
    for what, (changes, message) in INVALID.items():
        copy = tmp_path / "copies" / what.replace(" ", "-") / "reviews" / "1"
        shutil.copytree(bundle_dir, copy)
        _edit(copy, changes, redigest=True)
        assert message in _refusal(copy), what
    reliability.record(
        "input",
        "manifest fields that contradict each other or the bundle's place, digest rewritten: "
        + ", ".join(INVALID),
        len(INVALID),
        f"{len(INVALID)} of {len(INVALID)} refused, each naming the field",
    )


def test_another_models_bundle_under_this_name_is_refused(tmp_path: Path, reliability) -> None:
    other = make_bundle(tmp_path / "models", "binary", name="spam").path
    placed = tmp_path / "models" / "reviews" / "1"
    shutil.copytree(other, placed)
    assert "manifest is for model 'spam'" in _refusal(placed)
    reliability.record(
        "input", "another model's bundle copied under this model's name", 1, "refused"
    )


def test_a_symlink_out_of_the_bundle_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    shutil.copyfile(bundle_dir / "tokenizer.json", outside)
    (bundle_dir / "tokenizer.json").unlink()
    (bundle_dir / "tokenizer.json").symlink_to(outside)
    assert "symlink out of the bundle" in _refusal(bundle_dir)
    # a link inside the bundle is fine
    (bundle_dir / "tokenizer.json").unlink()
    (bundle_dir / "tok-real.json").write_bytes(outside.read_bytes())
    (bundle_dir / "tokenizer.json").symlink_to("tok-real.json")
    assert verify_bundle(bundle_dir).name == "reviews"
