"""Staging directories: inside the destination, holding the process's temp files, gone after."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from modelyard.staging import remove_stale_staging, remove_temp_files, staging_dir

pytestmark = pytest.mark.unit


def test_a_staging_dir_takes_the_temp_files_and_leaves_nothing(tmp_path: Path) -> None:
    before = tempfile.gettempdir()
    model_dir = tmp_path / "models" / "m"
    with staging_dir(model_dir) as staging:
        assert staging.parent == model_dir
        assert staging.name.startswith(f".tmp-{os.getpid()}-")
        # what a library puts in the temp dir lands inside, and so does a path it notes down
        assert Path(tempfile.mkdtemp()).parent == staging
        os.environ["MODELYARD_TEST_CACHE"] = str(staging / "cache")
    assert tempfile.gettempdir() == before
    assert "MODELYARD_TEST_CACHE" not in os.environ
    assert not (tmp_path / "models").exists()  # made for the block, empty after it


def test_a_staging_dir_is_removed_on_error_and_keeps_what_was_there(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    with pytest.raises(RuntimeError), staging_dir(model_dir):
        raise RuntimeError("boom")
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]


def _dead_pid() -> str:
    # a process that has exited: its pid is (for the test's few seconds) nobody's
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def test_dead_writers_staging_is_removed_at_both_levels(tmp_path: Path) -> None:
    dead = _dead_pid()
    repo = tmp_path / "models"
    stale = [repo / f".tmp-{dead}-a", repo / "m" / f".tmp-{dead}-b"]
    live = repo / "m" / f".tmp-{os.getpid()}-c"
    for path in [*stale, live, repo / "m" / "1"]:
        path.mkdir(parents=True)
    # a dead writer's staging directory nested in a live one's is the live one's business
    (live / "m" / f".tmp-{dead}-d").mkdir(parents=True)
    assert sorted(remove_stale_staging(repo)) == sorted(stale)
    assert live.is_dir() and (repo / "m" / "1").is_dir()


def test_temp_files_of_atomic_writes_are_removed(tmp_path: Path) -> None:
    names = [".last.state.pt.ab12cd.tmp", "last.state.pt", "notes.tmp", ".hidden"]
    for name in names:
        (tmp_path / name).write_text("x")
    assert remove_temp_files(tmp_path) == [tmp_path / ".last.state.pt.ab12cd.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_temp_files_of_a_live_writer_stay_and_a_dead_ones_go(tmp_path: Path) -> None:
    dead = _dead_pid()
    model = tmp_path / "m"
    model.mkdir()
    gone = [model / f".aliases.json.{dead}.x1y2.tmp", tmp_path / ".index.json.ab.tmp"]
    kept = [model / f".aliases.json.{os.getpid()}.z3.tmp", model / "aliases.json"]
    for path in gone + kept:
        path.write_text("{}")
    assert sorted(remove_stale_staging(tmp_path)) == sorted(gone)
    assert all(path.is_file() for path in kept)


def test_an_atomic_write_names_its_temp_file_after_its_pid(tmp_path: Path) -> None:
    from modelyard.atomic import atomic_path

    with atomic_path(tmp_path / "aliases.json") as tmp:
        assert tmp.name.startswith(f".aliases.json.{os.getpid()}.") and tmp.name.endswith(".tmp")
        assert remove_stale_staging(tmp_path) == []  # a write in progress is left alone
        tmp.write_text("{}")
    assert (tmp_path / "aliases.json").read_text() == "{}"
