"""kill -9 of a bundle write: no half-written version visible, nothing left after the next write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.bundles import make_bundle

from modelyard.bundle import remove_stale_staging
from modelyard.versions import list_versions

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]

# The writer, slowed down after its first file copy (a slow disk), so the kill lands mid-write.
WRITER = """
import shutil, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
copy = shutil.copyfile
def slow_copy(src, dst, *args, **kwargs):
    out = copy(src, dst, *args, **kwargs)
    print("copied", flush=True)
    time.sleep(60)
    return out
shutil.copyfile = slow_copy
from helpers.bundles import make_bundle
make_bundle(Path(sys.argv[1]))
"""


def _kill_mid_write(repo: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", WRITER.format(root=str(ROOT / "tests")), str(repo)],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "copied"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)


def test_a_killed_export_leaves_no_version_and_the_next_write_cleans_up(
    tmp_path: Path, reliability
) -> None:
    repo = tmp_path / "models"
    model_dir = repo / "tiny-multiclass"
    kills = 3
    for _ in range(kills):
        _kill_mid_write(repo)
        assert list_versions(model_dir) == []
        # each write cleans up the staging the writer before it was killed in
        assert len(list(model_dir.glob(".tmp-*"))) == 1

    bundle = make_bundle(repo)
    assert bundle.version == 1
    assert list(model_dir.glob(".tmp-*")) == []
    reliability.record(
        "lost",
        "kill -9 of a bundle write after its first file",
        kills,
        f"no version visible after any of {kills} kills; one staging directory at a time, "
        "removed by the next write, which claimed version 1",
    )


def test_a_live_writers_staging_is_kept(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "m"
    live = model_dir / f".tmp-{os.getpid()}-abcd"
    dead_layout = model_dir / ".tmp-abcd"  # no pid in the name: nothing claims it
    live.mkdir(parents=True)
    dead_layout.mkdir()
    assert remove_stale_staging(tmp_path / "models") == [dead_layout]
    assert live.is_dir()
