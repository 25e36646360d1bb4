"""Where the seed recipe's training time goes: a step's profile, the settings that could change
it, and what the command's exit costs.

Measured on examples/seed.yaml (Embedding 10,000 x 128 -> LSTM 64 -> Dense 1, batch 32, length
buckets), one torch thread, training steps only unless said:

- ``step``: wall ms per step over two epochs, and torch.profiler's self CPU time per step of the
  ops that dominate it (oneDNN's LSTM forward and backward, fused Adam, the embedding's dense
  gradient, fills);
- ``padding``: real tokens over padded tokens in an epoch's batches (Keras' fixed 100: the mean
  length over 100);
- ``onednn``: ms per step with oneDNN on and off (``torch.backends.mkldnn.flags``), epochs
  interleaved so that drift in the machine's load hits both;
- ``fill``: ms per step and fills per step with ``torch.utils.deterministic.fill_uninitialized_
  memory`` on (torch's default under deterministic algorithms) and off, interleaved the same way;
- ``exit``: ``--pairs`` back-to-back ``modelyard train`` commands ending the old way (interpreter
  teardown) and the way the console script does (``modelyard.__main__.run``), and how many
  modules a training run leaves loaded.

    .venv/bin/python bench/seed_profile.py [--parts step padding onednn fill exit] [--pairs 3]

A bench tool only: never imported by modelyard or its tests.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelyard.config import load_config
from modelyard.training.batches import epoch_batches
from modelyard.training.distributed import World
from modelyard.training.environment import torch_settings
from modelyard.training.epochs import train_step
from modelyard.training.prepare import setup
from modelyard.training.state import Session

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "examples" / "seed.yaml")
PROFILED_OPS = (
    "aten::mkldnn_rnn_layer_backward",
    "aten::mkldnn_rnn_layer",
    "aten::_fused_adam_",
    "aten::embedding_dense_backward",
    "aten::fill_",
)
NORMAL_EXIT = "import sys; from modelyard.cli import main; sys.exit(main(sys.argv[1:]))"


def steps_ms(session: Session, epoch: int, limit: int | None = None) -> float:
    """Wall ms per training step over (the first ``limit`` batches of) one epoch."""
    batches = epoch_batches(session, epoch)[:limit]
    t0 = time.perf_counter()
    for batch in batches:
        train_step(session, [batch])
    return (time.perf_counter() - t0) / len(batches) * 1000


def interleaved(
    session: Session, settings: dict[str, Callable[[], AbstractContextManager[Any]]], rounds: int
) -> dict[str, list[float]]:
    """ms per step of one epoch under each setting in turn, ``rounds`` times."""
    times: dict[str, list[float]] = {name: [] for name in settings}
    epoch = 1
    for _ in range(rounds):
        for name, context in settings.items():
            with context():
                times[name].append(steps_ms(session, epoch))
            epoch += 1
    return times


@contextmanager
def fill_memory(on: bool) -> Iterator[None]:
    before = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.utils.deterministic.fill_uninitialized_memory = on  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = before  # type: ignore[attr-defined]


def profile_step(session: Session, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    batches = epoch_batches(session, 0)[:steps]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            train_step(session, [batch])
    events = {e.key: e for e in prof.key_averages()}
    total = sum(e.self_cpu_time_total for e in events.values()) / len(batches) / 1000
    print(f"  torch.profiler, {len(batches)} steps: {total:.2f} ms of op time per step")
    for op in PROFILED_OPS:
        if op in events:
            e = events[op]
            print(
                f"    {op:<34} {e.self_cpu_time_total / len(batches) / 1000:6.2f} ms/step "
                f"({e.count / len(batches):.0f} calls/step)"
            )


def padding(session: Session) -> None:
    lengths = session.data.train.lengths
    cap = int(session.config.tokenizer.max_length)
    batches = epoch_batches(session, 0)
    real = sum(int(np.minimum(lengths[b], cap).sum()) for b in batches)
    padded = sum(int(min(lengths[b].max(), cap)) * len(b) for b in batches)
    fixed = float(np.minimum(lengths, cap).mean()) / cap
    print(
        f"  real / padded tokens: {real / padded:.3f} (length buckets); {fixed:.3f} (fixed {cap})"
    )


def exit_pairs(pairs: int) -> None:
    modelyard = str(Path(sys.executable).with_name("modelyard"))
    argv = ["train", CONFIG, "--set", "train.num_threads=1", "--set", "train.progress=false"]
    times: dict[str, list[float]] = {"teardown": [], "modelyard.__main__.run": []}
    with tempfile.TemporaryDirectory(prefix="seed-profile-") as tmp:
        for i in range(pairs):
            for name, cmd in (
                ("teardown", [sys.executable, "-c", NORMAL_EXIT]),
                ("modelyard.__main__.run", [modelyard]),
            ):
                out = [*argv, "--set", f"output_dir={tmp}/{i}-{len(times[name])}-{name[:4]}"]
                t0 = time.perf_counter()
                subprocess.run([*cmd, *out], check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    for name, values in times.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<24} {shown} s (mean {statistics.fmean(values):.2f})")
    gain = statistics.fmean(times["teardown"]) - statistics.fmean(times["modelyard.__main__.run"])
    print(f"  mean saved by the console script's exit: {gain:.2f} s")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ("step", "padding", "onednn", "fill", "exit")
    parser.add_argument("--parts", nargs="+", choices=parts, default=list(parts))
    parser.add_argument("--rounds", type=int, default=2, help="interleaved epochs per setting")
    parser.add_argument("--pairs", type=int, default=3, help="exit: command pairs")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="seed-profile-") as tmp:
        overrides = ["train.num_threads=1", "train.progress=false", f"output_dir={tmp}"]
        config = load_config(CONFIG, overrides)
        with torch_settings(config):
            session = setup(config, resume=False, overwrite=True, world=World.from_env({}))
            steps_ms(session, 0, limit=10)  # warm-up
            if "step" in args.parts:
                print("step")
                print(f"  wall: {steps_ms(session, 0):.2f} ms/step (one epoch)")
                profile_step(session, steps=100)
            if "padding" in args.parts:
                print("padding")
                padding(session)
            if "onednn" in args.parts:
                print("onednn")
                times = interleaved(
                    session,
                    {
                        "on": lambda: torch.backends.mkldnn.flags(enabled=True),
                        "off": lambda: torch.backends.mkldnn.flags(enabled=False),
                    },
                    args.rounds,
                )
                for name, values in times.items():
                    print(f"  oneDNN {name:<3} {statistics.fmean(values):.2f} ms/step {values}")
                off_on = statistics.fmean(times["off"]) / statistics.fmean(times["on"])
                print(f"  off / on: {off_on:.2f}×")
            if "fill" in args.parts:
                print("fill")
                times = interleaved(
                    session,
                    {"on": lambda: fill_memory(True), "off": lambda: fill_memory(False)},
                    args.rounds,
                )
                for name, values in times.items():
                    print(f"  fill {name:<3} {statistics.fmean(values):.2f} ms/step {values}")
                for on in (True, False):
                    with fill_memory(on):
                        print(f"  fill {'on' if on else 'off'}:")
                        profile_step(session, steps=50)
    if "exit" in args.parts:
        print("exit")
        exit_pairs(args.pairs)
        loaded = f"{NORMAL_EXIT.rsplit(';', 1)[0]}; main(sys.argv[1:]); print(len(sys.modules))"
        with tempfile.TemporaryDirectory(prefix="seed-profile-") as tmp:
            cmd = [sys.executable, "-c", loaded, "train", CONFIG, "--set", "train.epochs=1"]
            done = subprocess.run(
                [*cmd, "--set", f"output_dir={tmp}"], check=True, capture_output=True, text=True
            )
        print(f"  modules loaded after a training run: {done.stdout.split()[-1]}")


if __name__ == "__main__":
    main()
