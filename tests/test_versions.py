"""Versions never reused, aliases, and a default that only the user moves."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import pytest
from helpers.bundles import make_bundle

from modelyard.bundle import manifest_digest, resolve_bundle_dir, verify_bundle
from modelyard.errors import BundleError
from modelyard.runtime import load
from modelyard.versions import (
    RECORD_FILE,
    default_version,
    parse_ref,
    read_record,
    remove_alias,
    set_alias,
)

pytestmark = pytest.mark.unit


def _reject(bundle_dir: Path) -> None:
    path = bundle_dir / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["variant"] = {**data.get("variant", {}), "rejected": "accuracy drop 3.0 points > 1.0"}
    data["digest"] = manifest_digest(data)  # as compress marks a variant it stages
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_new_version_never_changes_the_default(tmp_path: Path) -> None:
    first = make_bundle(tmp_path, "binary", name="m")
    second = make_bundle(tmp_path, "binary", name="m", seed=1)
    assert (first.version, second.version) == (1, 2)
    model_dir = tmp_path / "m"
    assert read_record(model_dir).aliases == {"default": 1}
    assert default_version(model_dir) == 1
    assert load(model_dir).version == 1
    assert load(model_dir, version=2).version == 2


def test_promote_moves_the_default_and_rollback_moves_it_back(tmp_path: Path) -> None:
    for seed in range(3):
        make_bundle(tmp_path, "binary", name="m", seed=seed)
    model_dir = tmp_path / "m"
    set_alias(model_dir, "default", 3)
    assert load(model_dir).version == 3
    set_alias(model_dir, "default", 1)  # rollback
    assert load(model_dir).version == 1
    set_alias(model_dir, "server", 2)
    set_alias(model_dir, "canary", "server")  # an alias can copy another
    assert read_record(model_dir).aliases == {"default": 1, "server": 2, "canary": 2}
    assert load(model_dir, version="server").version == 2
    assert resolve_bundle_dir(model_dir, "canary") == model_dir / "2"
    assert default_version(model_dir, alias="server") == 2
    assert default_version(model_dir, alias="edge") == 1  # not set: the default
    remove_alias(model_dir, "canary")
    assert "canary" not in read_record(model_dir).aliases


def test_bad_aliases_and_versions_are_clear_errors(tmp_path: Path) -> None:
    make_bundle(tmp_path, "binary", name="m")
    model_dir = tmp_path / "m"
    with pytest.raises(BundleError, match="no version 7; available: 1"):
        set_alias(model_dir, "server", 7)
    with pytest.raises(BundleError, match="invalid alias '3'"):
        set_alias(model_dir, "3", 1)
    with pytest.raises(BundleError, match="no alias 'edge'; aliases: default"):
        load(model_dir, version="edge")
    with pytest.raises(BundleError, match="no alias 'nope'"):
        remove_alias(model_dir, "nope")
    for bad in ("٨", "0", "-1", "a/b", "", "8\n", "server\n"):
        with pytest.raises(ValueError, match="positive integer or an alias"):
            parse_ref(bad)
    assert parse_ref("08") == 8 and parse_ref("server") == "server"


def test_version_numbers_are_never_reused(tmp_path: Path) -> None:
    make_bundle(tmp_path, "binary", name="m")
    second = make_bundle(tmp_path, "binary", name="m", seed=1)
    shutil.rmtree(second.path)
    third = make_bundle(tmp_path, "binary", name="m", seed=2)
    assert third.version == 3
    assert read_record(tmp_path / "m").last_version == 3


def test_concurrent_writers_get_distinct_numbers(tmp_path: Path) -> None:
    make_bundle(tmp_path, "binary", name="m")
    got: list[int] = []
    threads = [
        threading.Thread(
            target=lambda s=s: got.append(make_bundle(tmp_path, "binary", name="m", seed=s).version)
        )
        for s in range(1, 7)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [2, 3, 4, 5, 6, 7]
    assert read_record(tmp_path / "m").last_version == 7


def test_a_repository_without_a_record_keeps_what_it_served(tmp_path: Path) -> None:
    # written before aliases existed: the newest version not marked rejected is served ...
    make_bundle(tmp_path, "binary", name="m")
    second = make_bundle(tmp_path, "binary", name="m", seed=1)
    model_dir = tmp_path / "m"
    (model_dir / RECORD_FILE).unlink()
    assert load(model_dir).version == 2
    _reject(second.path)
    assert load(model_dir).version == 1
    assert load(model_dir, version=2).version == 2  # still loadable by number
    # ... and keeps being served once the next version is written
    make_bundle(tmp_path, "binary", name="m", seed=2)
    assert read_record(model_dir).aliases == {"default": 1}
    assert load(model_dir).version == 1


def test_a_rejected_first_version_is_not_the_default(tmp_path: Path) -> None:
    only = make_bundle(tmp_path, "binary", name="m")
    model_dir = tmp_path / "m"
    (model_dir / RECORD_FILE).unlink()
    _reject(only.path)
    with pytest.raises(BundleError, match="rejected"):
        resolve_bundle_dir(model_dir)
    make_bundle(tmp_path, "binary", name="m", seed=1)
    assert load(model_dir).version == 2


def test_a_corrupt_record_is_refused(tmp_path: Path) -> None:
    make_bundle(tmp_path, "binary", name="m")
    (tmp_path / "m" / RECORD_FILE).write_text('{"aliases": {"server": "two"}}')
    with pytest.raises(BundleError, match="not a model record"):
        load(tmp_path / "m")


def test_a_manifest_version_must_match_its_directory(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "binary", name="m")
    moved = bundle.path.parent / "5"
    bundle.path.rename(moved)
    with pytest.raises(BundleError, match="manifest says version 1, but the bundle sits in"):
        verify_bundle(moved)


def test_server_repository_never_lists_rejected_versions(tmp_path: Path) -> None:
    from helpers.serving import toy_loader, toy_repo

    from modelyard.serving.repository import ModelRepository

    root = toy_repo(tmp_path, {"m": [1, 2, 3]})
    (root / "m" / "3" / "manifest.json").write_text(
        json.dumps({"variant": {"rejected": "accuracy drop 2.0 points > 1.0"}})
    )
    repo = ModelRepository(root, loader=toy_loader)

    async def served() -> tuple[int | None, list[int]]:
        await repo.refresh()
        try:
            return repo.models["m"].served, repo.models["m"].available
        finally:
            await repo.stop()

    assert asyncio.run(served()) == (2, [1, 2])
