"""Data-parallel training: 2 processes on gloo (CPU) through the CLI, torchrun underneath.

Real processes and a real process group on 127.0.0.1: the run learns, every rank ends with the
same weights, only rank 0 writes, 2 processes match 1 process for the same global batch, and a
2-process run killed with SIGKILL resumes to the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from helpers.processes import kill_tree, run_bounded
from helpers.synthetic import write_synthetic
from helpers.weights import assert_same_weights, weights, without_timing

from modelyard.cli import main
from modelyard.config import load_config
from modelyard.training import train
from modelyard.training.checkpoint import load_state
from modelyard.training.distributed import free_port, weights_digest
from modelyard.training.predict import load_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
AUDIT = Path(__file__).resolve().parent / "helpers" / "write_audit"


def write_config(tmp_path: Path, name: str, **train: Any) -> Path:
    """A tiny binary task; 49 training texts, so with batch 8 the last batch holds one text
    and one of the two ranks gets an empty shard."""
    if not (tmp_path / "train.csv").exists():
        write_synthetic(tmp_path, n_train=65)
    train_cfg: dict[str, Any] = {
        "epochs": 3,
        "batch_size": 8,
        "optimizer": {"name": "adam", "lr": 0.02},
        "num_threads": 1,
        "progress": False,
        **train,
    }
    config = {
        "name": name,
        "task": "binary",
        "output_dir": str(tmp_path / "runs"),
        "data": {
            "train": str(tmp_path / "train.csv"),
            "test": str(tmp_path / "test.csv"),
            "validation_split": 0.25,
        },
        "tokenizer": {"num_words": 99, "max_length": 16},
        "model": {"kind": "lstm", "embedding_dim": 16, "hidden_size": 16},
        "train": train_cfg,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def child_env(tmp_path: Path, audit: bool = False) -> dict[str, str]:
    paths = [str(ROOT), str(ROOT / "tests")]
    env = dict(os.environ)
    if audit:
        (tmp_path / "audit").mkdir()
        paths.insert(0, str(AUDIT))
        env |= {"WRITE_AUDIT_ROOT": str(tmp_path), "WRITE_AUDIT_DIR": str(tmp_path / "audit")}
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return env


def cli(tmp_path: Path, *args: str, audit: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "modelyard", "train", *args]
    return run_bounded(cmd, timeout=300, env=child_env(tmp_path, audit), cwd=tmp_path)


def test_two_processes_learn_agree_and_match_one_process(tmp_path: Path) -> None:
    config = write_config(tmp_path, "two")
    done = cli(tmp_path, str(config), "--nproc", "2", audit=True)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "two"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 2
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3  # one line per epoch: rank 1 appended nothing
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["val_accuracy"] >= 0.9
    # every rank's final weights digest, gathered by rank 0: one value, that of the saved model
    digests = info["rank_weights_sha256"]
    assert len(digests) == 2 and len(set(digests)) == 1
    assert digests[0] == weights_digest(load_model(run_dir, which="last"))

    # the writes each process made under tmp_path, from audit hooks: rank 0's only
    logs = {p.name.split("-")[0]: p.read_text() for p in (tmp_path / "audit").iterdir()}
    assert str(run_dir / "checkpoints" / "last.state.pt") in logs["0"]
    assert {"0", "1", "launcher"} <= logs.keys()
    assert logs["1"] == "" and logs["launcher"] == "", logs

    # 1 process, same global batch: equal up to float summation order (shards are reduced
    # separately, then all-reduced), so close but not bit-equal
    one = train(load_config(write_config(tmp_path, "one")))
    for key, value in weights(one.dir).items():
        torch.testing.assert_close(weights(run_dir)[key], value, rtol=1e-4, atol=1e-5)


CHILD = textwrap.dedent(
    """
    import os, sys, threading
    from modelyard.cli import main
    from modelyard.training import epochs

    real_save, real_step = epochs.save_checkpoint, epochs.train_step
    after = []
    rank = int(os.environ["RANK"])
    with open(f"rank{rank}.pid.tmp", "w") as f:  # the ranks share stdout: a file each
        f.write(str(os.getpid()))
    os.replace(f"rank{rank}.pid.tmp", f"rank{rank}.pid")

    def save_checkpoint(session):
        real_save(session)
        p = session.progress
        if p.epoch >= 1 and p.step_in_epoch > 0 and not after:
            after.append(p.global_step)  # a mid-epoch checkpoint of the second epoch is on disk

    def train_step(session, group):
        out = real_step(session, group)
        if rank == 0 and after and session.progress.global_step >= after[0] + 1:
            # a step past the checkpoint; rank 1 waits in the next all-reduce. Wait to be killed
            os.write(1, b"READY\\n")  # one write: whole even if rank 1 writes at once
            threading.Event().wait()
        return out

    epochs.save_checkpoint, epochs.train_step = save_checkpoint, train_step
    sys.exit(main(["train", sys.argv[1]]))
    """
)


def test_killed_two_process_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    # dropout makes every rank's torch RNG state matter; mid-epoch checkpoints every 2 steps
    settings = {"epochs": 3, "checkpoint_every_steps": 2}
    model = {"kind": "lstm", "embedding_dim": 16, "hidden_size": 16, "num_layers": 2}
    crashed = write_config(tmp_path, "crashed", **settings)
    raw = yaml.safe_load(crashed.read_text())
    raw["model"] = model | {"dropout": 0.3}
    crashed.write_text(yaml.safe_dump(raw))
    reference = tmp_path / "reference.yaml"
    reference.write_text(yaml.safe_dump(raw | {"name": "reference"}))
    child_file = tmp_path / "child.py"
    child_file.write_text(CHILD)

    # the user's own torchrun form: torchrun ... script (which calls the CLI's train)
    port = str(free_port("127.0.0.1"))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    launcher += ["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    proc = subprocess.Popen(
        [*launcher, str(child_file), str(crashed)],
        env=child_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def rank_pids() -> list[int]:
        return [int(p.read_text()) for p in sorted(tmp_path.glob("rank*.pid"))]

    # a run stuck before READY: its ranks' stacks, then the whole tree killed (stdout ends)
    watchdog = threading.Timer(300, kill_tree, [proc.pid])
    watchdog.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks until rank 0 is past the checkpoint, no sleeping
            if line.strip() == "READY":
                break
        else:
            pytest.fail(proc.stderr.read() if proc.stderr else "no READY")
        assert len(rank_pids()) == 2
        for pid in rank_pids():  # a rank that seems stuck prints its threads' stacks
            os.kill(pid, signal.SIGUSR1)
        time.sleep(1)  # the dumps are written from the signal handler, at once
    finally:
        watchdog.cancel()
        # kill -9 the launcher and both ranks (each in a session of its own): the crash under
        # test, and on failure no orphaned rank left holding the pipes
        for pid in [proc.pid, *rank_pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    assert stderr.count("Current thread 0x") == 2, stderr[-4000:]  # one dump per rank
    run_dir = tmp_path / "runs" / "crashed"
    state = load_state(run_dir / "checkpoints" / "last.state.pt")
    assert state["progress"]["epoch"] == 1 and state["progress"]["step_in_epoch"] > 0
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"])

    # another world size is refused before anything starts
    refused = cli(tmp_path, "--resume", str(run_dir), "--nproc", "1")
    assert refused.returncode == 2 and "resume it with --nproc 2" in refused.stderr

    resumed = cli(tmp_path, "--resume", str(run_dir), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = cli(tmp_path, str(reference), "--nproc", "2")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    ref_dir = tmp_path / "runs" / "reference"
    assert_same_weights(weights(run_dir), weights(ref_dir))
    assert_same_weights(weights(run_dir, "best"), weights(ref_dir, "best"))

    def history(d: Path) -> list[dict[str, Any]]:
        lines = (d / "metrics.jsonl").read_text().splitlines()
        return without_timing(json.loads(line) for line in lines)

    assert history(run_dir) == history(ref_dir) and len(history(run_dir)) == 3


def test_launch_errors_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(write_config(tmp_path, "errors"))
    cores = os.cpu_count() or 1
    assert main(["train", config, "--nproc", str(cores + 1)]) == 2
    assert f"this machine has {cores} CPU core(s)" in capsys.readouterr().err
    assert main(["train", config, "--nproc", "2", "--set", "train.backend=nccl"]) == 2
    assert "nccl needs CUDA devices" in capsys.readouterr().err
    assert main(["train", config, "--nproc", "2", "--set", "train.device=cuda:1"]) == 2
    assert "cuda:LOCAL_RANK" in capsys.readouterr().err
    assert main(["train", config, "--set", "train.device=gpu"]) == 2
    assert "train.device" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    monkeypatch.setenv("RANK", "0")
    assert main(["train", config, "--nproc", "2"]) == 2
    assert "under torchrun" in capsys.readouterr().err


def test_two_processes_fine_tune_a_causal_lm(tmp_path: Path) -> None:
    """``--nproc 2`` on the generative road: LoRA adapters on a tiny llama, the ranks agree."""
    from helpers.tiny_llm import tiny_llama_dir, tiny_tokenizer

    model_dir = tiny_llama_dir(tmp_path / "llm", tiny_tokenizer())
    pets = [("cat", "A small pet."), ("dog", "A loyal pet that barks.")]
    records = [
        {
            "messages": [
                {"role": "user", "content": f"What is a {q}?"},
                {"role": "assistant", "content": a},
            ]
        }
        for q, a in pets * 12
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {
        "name": "gen2",
        "task": "generation",
        "output_dir": str(tmp_path / "runs"),
        "data": {"train": str(tmp_path / "chat.jsonl"), "validation_split": 0.25},
        "tokenizer": {"max_length": 32},
        "model": {"kind": "causal_lm", "path": str(model_dir), "lora": {"r": 2, "alpha": 4}},
        "train": {
            "epochs": 2,
            "batch_size": 6,
            "optimizer": {"name": "adamw", "lr": 0.02},
            "num_threads": 1,
            "progress": False,
        },
    }
    path = tmp_path / "gen2.yaml"
    path.write_text(yaml.safe_dump(config))
    done = cli(tmp_path, str(path), "--nproc", "2")
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "runs" / "gen2" / "run.json").read_text())
    assert info["status"] == "completed" and info["world_size"] == 2
    digests = info["rank_weights_sha256"]
    assert len(digests) == 2 and len(set(digests)) == 1
    history = (tmp_path / "runs" / "gen2" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["val_loss"] for line in history]
    assert len(losses) == 2 and losses[1] < losses[0]
