"""The bundle format: versioned writes that never overwrite; verification that catches damage."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from modelyard.bundle import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Manifest,
    PostProcess,
    TensorSpec,
    manifest_digest,
    read_manifest,
    resolve_bundle_dir,
    sha256_file,
    verify_bundle,
    write_bundle,
)
from modelyard.errors import BundleError
from modelyard.versions import list_versions, next_version

pytestmark = pytest.mark.unit

FILES = {"model.onnx": b"\x08\x07graph-bytes" * 50, "tokenizer.json": b'{"version": "1.0"}'}


def manifest(name: str = "toy", task: str = "multiclass") -> Manifest:
    labels = {"binary": ["neg", "pos"], "regression": []}.get(task, ["a", "b", "c"])
    num_outputs = {"binary": 1, "regression": 1}.get(task, 3)
    return Manifest(
        name=name,
        version=1,
        task=task,
        labels=labels,
        num_outputs=num_outputs,
        inputs=[TensorSpec(n, "int64", ["batch", "sequence"]) for n in ("input_ids", "mask")],
        outputs=[TensorSpec("logits", "float32", ["batch", num_outputs])],
        max_length=16,
        padding_side="right",
        pad_id=0,
        postprocess=PostProcess(activation="softmax" if task == "multiclass" else "sigmoid"),
        metrics={"accuracy": 0.5},
        config={"name": name},
        modelyard_version="0.1.0",
        created_at="2024-01-01T00:00:00+00:00",
    )


def test_write_then_verify_round_trips(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, manifest(), FILES)
    assert bundle.path == tmp_path / "toy" / "1"
    assert sorted(p.name for p in bundle.path.iterdir()) == [
        MANIFEST_FILE,
        "model.onnx",
        "tokenizer.json",
    ]
    entry = bundle.manifest.files["model.onnx"]
    assert entry.size == len(FILES["model.onnx"])
    assert entry.sha256 == sha256_file(bundle.path / "model.onnx")
    again = verify_bundle(tmp_path / "toy")
    assert again.manifest == bundle.manifest
    assert again.manifest.schema_version == SCHEMA_VERSION


def test_versions_increase_and_never_overwrite(tmp_path: Path) -> None:
    first = write_bundle(tmp_path, manifest(), FILES)
    second = write_bundle(tmp_path, replace(manifest(), metrics={"accuracy": 0.9}), FILES)
    assert (first.version, second.version) == (1, 2)
    assert list_versions(tmp_path / "toy") == [1, 2]
    assert read_manifest(first.path).metrics == {"accuracy": 0.5}
    assert verify_bundle(tmp_path / "toy").version == 1  # the default stays where it was
    assert verify_bundle(tmp_path / "toy", 2).version == 2
    assert next_version(tmp_path / "toy") == 3
    # no temporary directories are left behind: the versions, their record and its lock
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == [
        ".aliases.lock",
        "1",
        "2",
        "aliases.json",
    ]


def test_concurrent_writers_get_distinct_versions(tmp_path: Path) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            results.append(write_bundle(tmp_path, manifest(), FILES).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 9))
    for v in results:
        assert read_manifest(tmp_path / "toy" / str(v)).version == v


def test_rename_race_takes_the_next_number(tmp_path: Path, monkeypatch) -> None:
    # another exporter claims version 1 between our version pick and our rename
    import modelyard.bundle as bundle_mod

    real_next = bundle_mod.next_version
    calls = {"n": 0}

    def stale_next(model_dir: Path) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            (Path(model_dir) / "1").mkdir()
            (Path(model_dir) / "1" / "taken").write_text("x")
            return 1
        return real_next(model_dir)

    monkeypatch.setattr(bundle_mod, "next_version", stale_next)
    bundle = write_bundle(tmp_path, manifest(), FILES)
    assert bundle.version == 2
    assert (tmp_path / "toy" / "1" / "taken").is_file()
    assert read_manifest(bundle.path).version == 2


def test_resolve_bundle_dir(tmp_path: Path) -> None:
    write_bundle(tmp_path, manifest(), FILES)
    write_bundle(tmp_path, manifest(), FILES)
    # the first version is the default until someone moves it; a new version never does
    assert resolve_bundle_dir(tmp_path / "toy") == tmp_path / "toy" / "1"
    assert resolve_bundle_dir(tmp_path / "toy", "default") == tmp_path / "toy" / "1"
    assert resolve_bundle_dir(tmp_path / "toy", 2) == tmp_path / "toy" / "2"
    assert resolve_bundle_dir(tmp_path / "toy" / "1") == tmp_path / "toy" / "1"
    with pytest.raises(BundleError, match="no version 7; available: 1, 2"):
        resolve_bundle_dir(tmp_path / "toy", 7)
    with pytest.raises(BundleError, match="no such bundle directory"):
        resolve_bundle_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a bundle"):
        resolve_bundle_dir(tmp_path / "empty")


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return write_bundle(tmp_path, manifest(), FILES).path


def test_checksum_mismatch_is_an_error(bundle_dir: Path) -> None:
    data = bytearray((bundle_dir / "model.onnx").read_bytes())
    data[10] ^= 0xFF  # same size, different content
    (bundle_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx: corrupted \(sha256"):
        verify_bundle(bundle_dir)


def test_truncated_model_is_an_error(bundle_dir: Path) -> None:
    path = bundle_dir / "model.onnx"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(BundleError, match=r"model.onnx: corrupted \(size 20 bytes"):
        verify_bundle(bundle_dir)


def test_missing_file_is_an_error(bundle_dir: Path) -> None:
    (bundle_dir / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json: missing from the bundle"):
        verify_bundle(bundle_dir)


def test_missing_manifest_is_an_error(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"not a bundle|manifest\.json"):
        verify_bundle(bundle_dir)


def _edit_manifest(bundle_dir: Path, **changes: object) -> None:
    path = bundle_dir / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    # as a tool that rewrites the manifest would: the digest matches, the fields are checked
    data["digest"] = manifest_digest(data)
    path.write_text(json.dumps(data))


def test_manifest_from_the_future_is_an_error(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, schema_version=SCHEMA_VERSION + 1, new_field=1)
    with pytest.raises(BundleError, match="newer than this modelyard supports"):
        verify_bundle(bundle_dir)


def test_bundle_for_another_task_is_an_error(bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="task 'multiclass', expected 'binary'"):
        verify_bundle(bundle_dir, task="binary")
    assert verify_bundle(bundle_dir, task="multiclass").manifest.task == "multiclass"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["a", "b"]}, "2 labels for 3 outputs"),
        ({"task": "ranking"}, "unknown task"),
        ({"postprocess": {"activation": "relu"}}, "activation 'relu' does not fit"),
        ({"files": {}}, "model.onnx is not listed"),
        ({"schema_version": "one"}, "invalid schema_version"),
        ({"inputs": 3}, "malformed manifest"),
    ],
)
def test_malformed_manifest_is_an_error(bundle_dir: Path, changes: dict, message: str) -> None:
    _edit_manifest(bundle_dir, **changes)
    with pytest.raises(BundleError, match=message):
        verify_bundle(bundle_dir)


def test_manifest_that_is_not_json_is_an_error(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not JSON"):
        verify_bundle(bundle_dir)


def test_manifest_file_outside_the_bundle_is_refused(bundle_dir: Path) -> None:
    files = json.loads((bundle_dir / MANIFEST_FILE).read_text())["files"]
    _edit_manifest(bundle_dir, files={**files, "../../etc/passwd": {"size": 1, "sha256": "0"}})
    with pytest.raises(BundleError, match="outside the bundle"):
        verify_bundle(bundle_dir)


def test_write_needs_model_and_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"model\.onnx not given"):
        write_bundle(tmp_path, manifest(), {"tokenizer.json": b"{}"})
    assert list_versions(tmp_path / "toy") == []


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_bundle(
            tmp_path, manifest(), {"model.onnx": tmp_path / "nope", "tokenizer.json": b"{}"}
        )
    assert list((tmp_path / "toy").iterdir()) == []
