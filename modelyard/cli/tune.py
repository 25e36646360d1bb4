"""``modelyard tune CONFIG --budget 20m``: the search over the portfolio of candidates
(:func:`modelyard.search.tune`); its last line names the winning run, ``best: RUN_DIR``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from modelyard.errors import RunError


def cmd_tune(args: argparse.Namespace) -> int:
    from modelyard.config import load_config

    config = load_config(args.config, args.set)
    from modelyard.search import tune
    from modelyard.training.distributed import under_torchrun

    if args.nproc is not None and under_torchrun(os.environ):
        raise RunError("--nproc starts torchrun for each trial; run tune itself outside torchrun")

    candidates = [c.strip() for c in args.candidates.split(",")] if args.candidates else None
    result = tune(
        config,
        budget=args.budget,
        trials=args.trials,
        out_dir=args.out,
        candidates=candidates,
        seed=args.seed,
        nproc=args.nproc or 1,
        progress=lambda line: print(line, flush=True),
    )
    print(f"report: {result.report}")
    if result.best is None:
        raise RunError(f"no trial completed; see {result.dir / 'leaderboard.json'}")
    print(f"best: {result.best.dir}")
    return 0


def add_tune_command(sub: Any) -> None:
    """The ``tune`` subcommand."""
    p = sub.add_parser(
        "tune", help="search model families and settings for the best -> best: RUN_DIR"
    )
    p.add_argument("config", help="YAML config file (its task and data are what is tuned for)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--budget", help="wall time for the whole tune, e.g. 20m, 90s, 1h")
    p.add_argument("--trials", type=int, metavar="N", help="stop after N finished trials")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="the tune directory; the same one continues a stopped tune "
        "(default: OUTPUT_DIR/NAME-tune)",
    )
    p.add_argument(
        "--candidates",
        metavar="A,B",
        help="which candidates (default: all that can run: linear_ngrams, bag_subwords, "
        "bag_words, cnn, encoder_head, encoder_finetune)",
    )
    p.add_argument("--seed", type=int, help="the sampler's seed (default: the config's)")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train each trial data-parallel in N processes on this machine (torchrun)",
    )
    p.set_defaults(func=cmd_tune)
