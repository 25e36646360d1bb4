"""kill -9 of `modelyard compress` and `modelyard export` at random points: no half-written version
visible, nothing in the temp directory, and nothing left behind once the next run has finished."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from helpers.processes import child_process
from helpers.synthetic import write_synthetic

from modelyard.bundle import verify_bundle
from modelyard.config import load_config
from modelyard.exporters.onnx import export_onnx
from modelyard.training import Run, train
from modelyard.versions import VERSION_NUMBER, list_versions, read_record

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

# ONNX Runtime writes its session id to $TMPDIR/.ses (one fixed 51-byte file it reuses, also in a
# server); it is no leftover of a killed run
ORT_SESSION_FILE = ".ses"

# `modelyard ...`, announcing every file-system step it takes (a temp or staging directory made,
# a file copied, a directory or file renamed into place), so the test can kill it right after
# the k-th: at a random point of its writes, not only between them.
CHILD = """
import os, shutil, sys, tempfile
def announce(module, name):
    real = getattr(module, name)
    def step(*args, **kwargs):
        out = real(*args, **kwargs)
        print("STEP", name, flush=True)
        return out
    setattr(module, name, step)
for module, name in ((tempfile, "mkdtemp"), (shutil, "copyfile"), (os, "rename"), (os, "replace")):
    announce(module, name)
from modelyard.cli import main
sys.exit(main(sys.argv[1:]))
"""
COMPRESS = ["--quantize", "int8-dynamic", "--quantize", "int8-static"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("kill-compress")
    data = write_synthetic(root, 64, 24)
    config = load_config(
        {
            "name": "tiny",
            "task": "binary",
            "output_dir": str(root / "runs"),
            "data": {**data, "validation_split": 0.25},
            "tokenizer": {"num_words": 99, "max_length": 16},
            "model": {"kind": "cnn", "embedding_dim": 16},
            "train": {"epochs": 1, "batch_size": 8, "num_threads": 1, "progress": False},
            "export": {"repo": str(root / "models")},
        }
    )
    return train(config)


def _modelyard(args: list[str], tmpdir: Path, log: Path, kill_after: int | None = None) -> int:
    """Run ``modelyard ARGS`` with ``TMPDIR=tmpdir``; kill -9 it right after its
    ``kill_after``-th step. Returns the exit status (``-9`` when killed) or, run to the end,
    how many steps it took."""
    with child_process(CHILD, args, tmpdir=tmpdir, log=log) as child:
        assert child.stdout is not None
        steps = 0
        try:
            for line in child.stdout:
                steps += line.startswith("STEP ")
                if kill_after is not None and steps == kill_after:
                    os.kill(child.pid, signal.SIGKILL)
                    break
        finally:
            if kill_after is not None and child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
    if kill_after is not None:
        assert child.returncode == -signal.SIGKILL, f"finished before step {kill_after}: {log}"
        return child.returncode
    assert child.returncode == 0, log.read_text()
    return steps


def _assert_nothing_half_written(model_dir: Path) -> None:
    """Every version directory holds a complete bundle that verifies; the record reads."""
    read_record(model_dir)
    numbered = [p for p in model_dir.iterdir() if VERSION_NUMBER.match(p.name)]
    assert sorted(int(p.name) for p in numbered) == list_versions(model_dir)
    for version in list_versions(model_dir):
        verify_bundle(model_dir, version)


def _left_over(repo: Path) -> list[Path]:
    """Staging directories and temporary files anywhere in the repository."""
    found = []
    for dirpath, dirs, files in os.walk(repo):
        found += [Path(dirpath, d) for d in dirs if d.startswith(".tmp-")]
        found += [Path(dirpath, f) for f in files if f.endswith(".tmp")]
        dirs[:] = [d for d in dirs if not d.startswith(".tmp-")]
    return sorted(found)


def _temp_files(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.iterdir() if p.name != ORT_SESSION_FILE)


def test_killed_export_and_compress_leave_nothing_half_written_and_nothing_behind(
    run: Run, tmp_path: Path, reliability
) -> None:
    repo = tmp_path / "models"
    model_dir = repo / "tiny"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    log = tmp_path / "modelyard.log"

    # export: killed a random moment into the torch export, after its staging directory exists
    rng = random.Random(11)
    exports = 2
    for _ in range(exports):
        args = ["export", str(run.dir), "--repo", str(repo)]
        with child_process(CHILD, args, tmpdir=tmpdir, log=log) as child:
            assert child.stdout is not None
            assert child.stdout.readline().startswith("STEP mkdtemp"), log.read_text()
            time.sleep(rng.uniform(0.0, 2.0))
            os.kill(child.pid, signal.SIGKILL)
        assert list_versions(model_dir) == []
        assert _temp_files(tmpdir) == []
        # each export removes what the one before it left when it was killed
        assert len(_left_over(repo)) == 1
    assert export_onnx(run, repo=repo).version == 1
    assert _left_over(repo) == []
    reliability.record(
        "lost",
        "kill -9 of `modelyard export` a random 0-2 s into the torch export",
        exports,
        "no version visible; nothing in TMPDIR (torch's and the exporter's scratch live in the "
        "model's staging directory); one staging directory at a time, each removed by the next "
        "export",
    )

    # compress: killed right after a seeded random file-system step; about 30 in a whole run
    args = ["compress", str(model_dir), *COMPRESS]
    kills = sorted(random.Random(10).sample(range(1, 24), 3))
    staged = 0
    for step in kills:
        _modelyard(args, tmpdir, log, kill_after=step)
        _assert_nothing_half_written(model_dir)
        assert _temp_files(tmpdir) == [], f"killed after step {step}"
        staged = max(staged, len(_left_over(repo)))

    steps = _modelyard(args, tmpdir, log)
    assert steps > kills[-1]
    _assert_nothing_half_written(model_dir)
    assert _left_over(repo) == []
    assert _temp_files(tmpdir) == []
    variants = [verify_bundle(model_dir, v).manifest.variant for v in list_versions(model_dir)]
    assert [v.get("name") for v in variants[-2:]] == ["int8-dynamic", "int8-static"]
    reliability.record(
        "lost",
        f"kill -9 of `modelyard compress` (int8-dynamic, int8-static) right after a seeded "
        f"random file-system step (steps {', '.join(map(str, kills))} of {steps})",
        len(kills),
        f"every version directory a complete bundle that verifies after each kill; nothing in "
        f"TMPDIR; up to {staged} staging directories left in the model's directory, all removed "
        "by the next compress, which wrote both variants",
    )
