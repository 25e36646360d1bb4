"""Rejected compression variants stay on disk but are never the default version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.bundles import make_bundle

from modelyard.bundle import latest_version, resolve_bundle_dir
from modelyard.errors import BundleError
from modelyard.runtime import load

pytestmark = pytest.mark.unit


def _reject(bundle_dir: Path) -> None:
    path = bundle_dir / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["variant"] = {**data.get("variant", {}), "rejected": "accuracy drop 3.0 points > 1.0"}
    path.write_text(json.dumps(data), encoding="utf-8")


def test_latest_skips_rejected_versions(tmp_path: Path) -> None:
    first = make_bundle(tmp_path, "binary", name="m")
    second = make_bundle(tmp_path, "binary", name="m", seed=1)
    model_dir = tmp_path / "m"
    assert latest_version(model_dir) == second.version == 2
    _reject(second.path)
    assert latest_version(model_dir) == first.version
    assert resolve_bundle_dir(model_dir) == first.path
    assert load(model_dir).version == 1
    # still loadable when asked for by number
    assert load(model_dir, version=2).version == 2


def test_all_rejected_is_a_clear_error(tmp_path: Path) -> None:
    only = make_bundle(tmp_path, "binary", name="m")
    _reject(only.path)
    with pytest.raises(BundleError, match="rejected"):
        resolve_bundle_dir(tmp_path / "m")


def test_server_repository_never_lists_rejected_versions(tmp_path: Path) -> None:
    from helpers.serving import toy_loader, toy_repo

    from modelyard.serving.repository import ModelRepository

    root = toy_repo(tmp_path, {"m": [1, 2, 3]})
    (root / "m" / "3" / "manifest.json").write_text(
        json.dumps({"variant": {"rejected": "accuracy drop 2.0 points > 1.0"}})
    )
    assert ModelRepository(root, loader=toy_loader).scan() == {"m": [1, 2]}
