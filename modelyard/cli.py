"""The ``modelyard`` command: a thin layer over the public Python API.

Each subcommand parses its flags, resolves the environment once, and calls one API function.
Heavy modules (torch, onnxruntime) are imported inside the command that needs them, so that
``modelyard serve`` and ``modelyard predict models/...`` never import torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelyard import __version__
from modelyard.batch_generate import is_generative_run
from modelyard.config import (
    EXPORT_FORMATS,
    EXPORT_QUANTIZE_MODES,
    QUANTIZE_MODES,
)
from modelyard.config.deploy import add_serve_flags, serve_overrides
from modelyard.errors import ModelyardError, RunError
from modelyard.logs import setup_logging
from modelyard.metrics import format_metrics
from modelyard.runs import is_run_dir
from modelyard.tasks import task_names

log = logging.getLogger("modelyard.cli")


# ------------------------------------------------------------------------------------ commands
def cmd_init(args: argparse.Namespace) -> int:
    from modelyard.templates import starter_config

    target = Path(args.dir)
    config_path = target / "config.yaml"
    if config_path.exists() and not args.force:
        raise RunError(f"{config_path} already exists; pass --force to overwrite it")
    target.mkdir(parents=True, exist_ok=True)
    name = args.name or target.resolve().name
    config_path.write_text(starter_config(args.task, name), encoding="utf-8")
    print(f"wrote {config_path} ({args.task}); put your data at {target}/train.csv and run:")
    print(f"  modelyard train {config_path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from modelyard.config import load_config

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise RunError(f"{run_dir}: not a run directory (no config.yaml); nothing to resume")
        config = load_config(run_dir / "config.yaml", args.set)
        # the run lives where it is now, whatever output_dir said when it started
        config = config.model_copy(
            update={"output_dir": str(run_dir.resolve().parent), "name": run_dir.resolve().name}
        )
    elif args.config:
        config = load_config(args.config, args.set)
    else:
        raise RunError("give a config file, or --resume runs/NAME")

    from modelyard.training import distributed

    if args.nproc is not None:
        if distributed.under_torchrun(os.environ):
            raise RunError("--nproc starts torchrun; under torchrun the world is torchrun's")
        distributed.check_nproc(args.nproc, config)
        if args.resume:
            _check_resume_world(Path(args.resume), args.nproc)
        if args.nproc > 1:
            options = ("--nproc", "--master-addr", "--master-port")
            argv = distributed.without_options(args.argv, options)
            return distributed.launch(argv, args.nproc, args.master_addr, args.master_port)
    world = distributed.World.from_env(os.environ)
    if not world.is_main:  # rank 0 tells the story; the others speak up only for trouble
        logging.getLogger("modelyard").setLevel(logging.WARNING)

    from modelyard.training import train

    run = train(config, resume=bool(args.resume), overwrite=args.overwrite, world=world)
    if not world.is_main:
        return 0
    print(f"run: {run.dir}")
    if run.test_metrics:
        print("test: " + format_metrics(run.test_metrics, run.test_size))
    if is_generative_run(run.dir):
        from modelyard.batch_generate import write_report

        print(f"report: {write_report(run.dir)}")
    return 0


def _check_resume_world(run_dir: Path, nproc: int) -> None:
    from modelyard.runs import RunPaths
    from modelyard.training.checkpoint import trained_world_size

    state = RunPaths(run_dir).state
    if state.is_file() and (saved := trained_world_size(state)) != nproc:
        raise RunError(
            f"{run_dir} was trained with {saved} process(es); resume it with --nproc {saved}"
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if is_generative_run(path):
        from modelyard.batch_generate import evaluate_run

        print(evaluate_run(path, args.data, as_json=args.json))
        return 0
    if is_run_dir(path):
        from modelyard.training.evaluation import evaluate

        result = evaluate(path, data=args.data)
        metrics = result.metrics
    else:
        if not args.data:
            raise RunError("evaluating a bundle needs --data FILE (a CSV/JSONL with labels)")
        from modelyard.runtime.bundle_metrics import evaluate_bundle

        metrics = evaluate_bundle(path, args.data)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from modelyard.batch_generate import generate

    generate(
        args.run,
        prompts=args.prompt,
        input_path=args.input,
        output=args.output,
        which=args.checkpoint,
        max_new_tokens=args.max_new_tokens,
        echo=True,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from modelyard.batch_predict import predict_file

    summary = predict_file(
        args.path,
        args.input,
        args.output,
        text_column=args.text_column,
        chunk_size=args.chunk_size,
        progress=not args.no_progress,
    )
    bad = f"{summary.failed} bad rows"
    if summary.lines_lost > summary.failed:  # a stray quote's bad row took several lines
        bad += f" ({summary.lines_lost} lines)"
    print(f"predicted {summary.predicted} rows, {bad} -> {args.output}", file=sys.stderr)
    return 0 if summary.failed == 0 or args.allow_bad_rows else 1


def cmd_export(args: argparse.Namespace) -> int:
    if args.merged:  # a generative run: the merged Hugging Face directory
        from modelyard.exporters import export_merged

        print(f"merged model: {export_merged(args.run, args.merged, which=args.which)}")
        return 0
    options: dict[str, Any] = {}
    if args.quantize:  # the format's exporter checks the mode and says which fit
        options["quantize"] = args.quantize
    from modelyard.exporters import export

    bundle = export(
        args.run, format=args.format, repo=args.repo, which=args.which, name=args.name, **options
    )
    print(f"bundle: {bundle.path} (version {bundle.version})")
    _point_alias(bundle.path.parent, bundle.version, args.alias)
    return 0


def _point_alias(model_dir: Path, version: int, alias: str | None) -> None:
    from modelyard.versions import DEFAULT_ALIAS, read_record, set_alias

    if alias is not None:
        set_alias(model_dir, alias, version)
    served = read_record(model_dir).aliases.get(DEFAULT_ALIAS)
    if served != version:
        print(
            f"served by default: version {served} (alias {DEFAULT_ALIAS}); serve this one with "
            f"`modelyard promote {model_dir} {version}`"
        )


def cmd_promote(args: argparse.Namespace) -> int:
    from modelyard.versions import read_record, set_alias

    before = read_record(args.model).aliases.get(args.alias)
    record = set_alias(args.model, args.alias, args.version)
    was = f" (was {before})" if before is not None else ""
    print(f"{args.model}: {args.alias} -> version {record.aliases[args.alias]}{was}")
    return 0


def cmd_aliases(args: argparse.Namespace) -> int:
    from modelyard.versions import default_version, list_versions, read_record, remove_alias

    if args.remove:
        remove_alias(args.model, args.remove)
    versions = list_versions(args.model)
    if not versions:
        raise RunError(f"{args.model}: no versions (expected a model directory models/NAME)")
    record = read_record(args.model)
    print(f"versions: {', '.join(map(str, versions))} (never reused; last {record.last_version})")
    for alias, version in sorted(record.aliases.items()):
        print(f"{alias} -> {version}")
    print(f"served when none is named: version {default_version(args.model)}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from modelyard.compress import compress

    nothing = args.prune is None and not args.quantize and args.clip is None
    if nothing and not is_generative_run(args.source):  # a generation run's: its GGUF types
        raise RunError("nothing to do: give --prune, --quantize and/or --clip")
    clip: float | str | None = args.clip
    if isinstance(clip, str) and not clip.endswith("%"):
        try:
            clip = float(clip)
        except ValueError:
            raise RunError(f"--clip {clip!r}: give a value (3.0) or a percentile (99.9%)") from None
    measurements = compress(
        args.source,
        prune=args.prune,
        prune_kind=args.prune_kind,
        finetune_epochs=args.finetune_epochs,
        quantize=args.quantize,
        clip=clip,
        repo=args.repo,
        max_accuracy_drop=args.max_accuracy_drop,
        data=args.data,
    )
    from modelyard.measure import format_table

    print(format_table(measurements))
    for m in measurements:
        if m.rejected:
            print(f"rejected {m.name} (version {m.version}): {m.rejected}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from modelyard.config import load_config

    config = load_config(args.config, args.set)
    from modelyard.pipeline import run_pipeline

    result = run_pipeline(config, overwrite=args.overwrite)
    if args.strict and not all(c.ok for c in result.choices.values()):
        return 3
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from modelyard.config import ServeConfig, load_config

    settings = load_config(args.config).serve if args.config else ServeConfig()
    settings = ServeConfig.from_settings({**settings.model_dump(), **serve_overrides(args)})
    if args.ray:  # the same app as Ray Serve replicas
        from modelyard.serving.ray_serve import serve_on_ray

        serve_on_ray(args.repo, settings, log_level=args.log_level)
        return 0
    from modelyard.serving import serve

    serve(args.repo, settings)
    return 0


# -------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelyard",
        description="Text models from raw data to a served, compressed, portable artifact.",
    )
    parser.add_argument("--version", action="version", version=f"modelyard {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="write a commented starter config for a task")
    p.add_argument("dir", help="directory to create (holds config.yaml)")
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--name", help="run name (default: the directory's name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing config.yaml")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("train", help="train a model from a config -> runs/NAME")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train data-parallel in N processes on this machine (relaunches under torchrun; "
        "train.batch_size stays the global batch)",
    )
    p.add_argument("--master-addr", default="127.0.0.1", help="with --nproc: rendezvous host")
    p.add_argument("--master-port", type=int, help="with --nproc: rendezvous port (default: free)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a run or a bundle on labelled data")
    p.add_argument("path", help="runs/NAME or models/NAME[/VERSION]")
    p.add_argument("--data", help="labelled CSV/TSV/JSONL/Parquet (default for runs: the test set)")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("generate", help="answer prompts with a generative run")
    p.add_argument("run", help="runs/NAME (a generation run)")
    p.add_argument("--prompt", action="append", help="a user turn to answer (repeatable)")
    p.add_argument("--input", help="chat / prompt-completion JSONL or CSV, or plain-text JSONL")
    p.add_argument("--output", help="JSONL out, one record per input record; - for stdout")
    p.add_argument("--max-new-tokens", type=int, help="default: what the run was scored with")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("predict", help="predict a file of texts with a bundle or a run")
    p.add_argument("path", help="models/NAME[/VERSION] or runs/NAME")
    p.add_argument("--input", required=True, help="CSV, JSONL or text lines; - for stdin")
    p.add_argument("--output", required=True, help="JSONL out; - for stdout")
    p.add_argument("--text-column", default="text")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--allow-bad-rows", action="store_true", help="exit 0 even when some rows were bad"
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run as a versioned bundle")
    p.add_argument("run", help="runs/NAME")
    p.add_argument("--format", choices=EXPORT_FORMATS, help="default: onnx; generation: gguf")
    p.add_argument("--repo", help="model repository (default: the run config's export.repo)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint")
    p.add_argument("--name", help="bundle name (default: the run's name)")
    p.add_argument("--merged", metavar="DIR", help="generation runs: the merged model, HF dir")
    p.add_argument(
        "--quantize",
        help="; ".join(f"{f}: {', '.join(m)}" for f, m in EXPORT_QUANTIZE_MODES.items() if m),
    )
    p.add_argument(
        "--as",
        dest="alias",
        metavar="ALIAS",
        help="point this alias at the new version (e.g. default, server)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compress", help="prune / quantize / clip into new, measured bundles")
    p.add_argument("source", help="runs/NAME (any variant) or models/NAME (quantize only)")
    p.add_argument("--prune", type=float, help="fraction of weights to prune, e.g. 0.5")
    p.add_argument("--prune-kind", default="unstructured", choices=["unstructured", "structured"])
    p.add_argument("--finetune-epochs", type=int, default=0, help="recover accuracy after pruning")
    p.add_argument(
        "--quantize",
        action="append",
        default=[],
        choices=QUANTIZE_MODES,
        help="repeatable",
    )
    p.add_argument("--clip", help="clip weights at a value (3.0) or a percentile (99.9%%)")
    p.add_argument(
        "--repo",
        help="where the variants go (default: the source bundle's repository, or the run "
        "config's export.repo)",
    )
    p.add_argument(
        "--data", help="labelled data to select variants on (default: the validation split)"
    )
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, help="points; else rejected")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("run", help="the whole road: train ... choose -> report.html")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target has no fit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("promote", help="point an alias (default: default) at a version")
    p.add_argument("model", help="the model directory, models/NAME")
    p.add_argument("version", help="a version number, or another alias to copy")
    p.add_argument("--as", dest="alias", default="default", metavar="ALIAS")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("aliases", help="list a model's versions and aliases")
    p.add_argument("model", help="the model directory, models/NAME")
    p.add_argument("--remove", metavar="ALIAS", help="drop an alias first")
    p.set_defaults(func=cmd_aliases)

    p = sub.add_parser("serve", help="serve every bundle in a model repository over HTTP")
    p.add_argument("repo", help="model repository, e.g. models/")
    p.add_argument("--config", help="read settings from this config's serve: section")
    add_serve_flags(p)  # every serve: setting, --max-queue, --timeout-s, --providers, ...
    p.add_argument("--ray", action="store_true", help="as Ray Serve replicas (modelyard[ray])")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modelyard`` console script. Returns the exit status."""
    parser = build_parser()
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(argv)
    args.argv = argv  # `train --nproc` relaunches itself with these
    setup_logging(args.log_level, args.log_format)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ModelyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
