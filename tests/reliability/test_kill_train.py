"""kill -9 of `modelyard train` at random points, resumed each time: checkpoints are never
half-written, nothing is left behind, and the resumed run ends bit-identical to an uninterrupted
one."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import child_process
from helpers.synthetic import write_synthetic
from helpers.weights import assert_same_weights, weights, without_timing
from safetensors.torch import load_file

from modelyard.config import dump_config, load_config
from modelyard.training import train
from modelyard.training.checkpoint import load_state

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]


# `modelyard train ...`, saying after every optimizer step which one it finished; the test kills
# it a random moment after the k-th, while it goes on (mid-step, or mid-checkpoint write). With
# STALL_AFTER_STEP=k it stops inside the first training-state write after step k: the new state
# written in full to its temporary file, not yet renamed into place.
CHILD = """
import os, sys, time
from modelyard.training import epochs
stall = int(os.environ.get("STALL_AFTER_STEP", "0"))
done = [0]
real_step, real_replace = epochs.train_step, os.replace
def train_step(session, group):
    out = real_step(session, group)
    done[0] = session.progress.global_step + 1
    print("STEP", done[0], flush=True)
    return out
def replace(src, dst, *args, **kwargs):
    if stall and done[0] >= stall and str(dst).endswith("last.state.pt"):
        print("WRITING", flush=True)
        time.sleep(600)
    return real_replace(src, dst, *args, **kwargs)
epochs.train_step, os.replace = train_step, replace
from modelyard.cli import main
sys.exit(main(sys.argv[1:]))
"""
# 48 training texts in batches of 8: 6 steps an epoch, 18 in all; a checkpoint every 2 steps
# and at each epoch's end, the first after step 2
STEPS = 18
FIRST_CHECKPOINT = 2


def _config(tmp_path: Path, name: str) -> Any:
    data = write_synthetic(tmp_path, 64, 24)
    return load_config(
        {
            "name": name,
            "task": "binary",
            "output_dir": str(tmp_path / "runs"),
            "data": {**data, "validation_split": 0.25},
            "tokenizer": {"num_words": 99, "max_length": 16},
            # dropout makes the torch RNG state matter to the result
            "model": {
                "kind": "lstm",
                "embedding_dim": 16,
                "hidden_size": 16,
                "num_layers": 2,
                "dropout": 0.3,
            },
            "train": {
                "epochs": 3,
                "batch_size": 8,
                "optimizer": {"name": "adam", "lr": 0.02},
                "checkpoint_every_steps": 2,
                "num_threads": 1,
                "progress": False,
            },
        }
    )


def _kill_after(
    args: list[str], step: int, delay: float, tmpdir: Path, log: Path, *, mid_write: bool
) -> None:
    """Run ``modelyard ARGS``; kill -9 it ``delay`` seconds after step ``step`` or, with
    ``mid_write``, inside the first training-state write after it."""
    env = {"STALL_AFTER_STEP": str(step)} if mid_write else {}
    wanted = ["WRITING"] if mid_write else ["STEP", str(step)]
    with child_process(CHILD, args, tmpdir=tmpdir, log=log, env=env) as child:
        assert child.stdout is not None
        try:
            for line in child.stdout:
                if line.split() == wanted:
                    time.sleep(delay)
                    break
        finally:
            os.kill(child.pid, signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL, f"finished before step {step}: {log}"


def _in_tmpdir(tmpdir: Path) -> list[str]:
    """What the runs left in TMPDIR, less torch's cache directory: one fixed name per user
    (``torchinductor_USER``), reused by every torch process, and empty here."""
    cache = [p for p in tmpdir.glob("torchinductor_*") if p.is_dir()]
    assert [f for c in cache for f in c.rglob("*") if f.is_file()] == []
    return sorted(p.name for p in tmpdir.iterdir() if p not in cache)


def _temp_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.name.endswith(".tmp"))


def test_killed_training_resumes_to_the_uninterrupted_weights(tmp_path: Path, reliability) -> None:
    config = _config(tmp_path, "killed")
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(dump_config(config))
    run_dir = config.run_dir
    checkpoints = run_dir / "checkpoints"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    log = tmp_path / "train.log"

    rng = random.Random(12)
    kills = sorted(rng.sample(range(FIRST_CHECKPOINT + 1, STEPS), 3))
    resumed_from, killed_at, stale = [0], [], []
    for index, planned in enumerate(kills):
        args = ["train", str(config_file)] if index == 0 else ["train", "--resume", str(run_dir)]
        # the child goes on for a moment after the step it was killed at, so the next resume
        # may start past the next planned kill: it is then killed one step after it resumed
        step = max(planned, resumed_from[-1] + 1)
        mid_write = index == 1  # the second kill lands inside a checkpoint write, for sure
        _kill_after(args, step, rng.uniform(0.0, 0.05), tmpdir, log, mid_write=mid_write)
        killed_at.append(f"{step} (mid-write)" if mid_write else str(step))
        if mid_write:
            stale = _temp_files(run_dir)
            assert stale != []  # the kill's half-finished write, beside the whole old state
        elif index > 1:
            assert not any(p.exists() for p in stale)  # the next resume removed it
        # what is on disk is whole: every checkpoint file reads back
        state = load_state(checkpoints / "last.state.pt")
        load_file(str(checkpoints / "last.safetensors"))
        if (checkpoints / "best.safetensors").exists():
            load_file(str(checkpoints / "best.safetensors"))
        assert state["progress"]["global_step"] >= FIRST_CHECKPOINT
        resumed_from.append(state["progress"]["global_step"])
        assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
        assert _in_tmpdir(tmpdir) == []

    resumed = train(load_config(run_dir / "config.yaml"), resume=True)
    uninterrupted = train(config.model_copy(update={"name": "uninterrupted"}))
    assert_same_weights(weights(resumed.dir), weights(uninterrupted.dir))
    assert_same_weights(weights(resumed.dir, "best"), weights(uninterrupted.dir, "best"))

    assert without_timing(resumed.history) == without_timing(uninterrupted.history)
    assert _temp_files(run_dir) == []
    reliability.record(
        "lost",
        f"kill -9 of `modelyard train` (then `train --resume`) 0-50 ms after seeded random "
        f"optimizer steps ({', '.join(killed_at)} of {STEPS}), three kills in one run",
        len(killed_at),
        "every checkpoint file read back after each kill (resumed from steps "
        f"{', '.join(map(str, resumed_from[1:]))}), the state renamed into place never "
        f"half-written; nothing in TMPDIR; the {len(stale)} temporary file the mid-write kill "
        "left removed by the next resume; the resumed run's "
        "last and best weights torch.equal an uninterrupted run's, same history",
    )
