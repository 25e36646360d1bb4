"""The bundle commands: ``export``, ``compress``, ``promote``, ``aliases`` (a run becomes
versioned bundles; aliases name the versions served)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modelyard.batch_generate import is_generative_run
from modelyard.config import (
    EXPORT_FORMATS,
    EXPORT_QUANTIZE_MODES,
    QUANTIZE_MODES,
)
from modelyard.errors import RunError


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


def add_export_commands(sub: Any) -> None:
    """The ``export`` and ``compress`` subcommands."""
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


def add_alias_commands(sub: Any) -> None:
    """The ``promote`` and ``aliases`` subcommands."""
    p = sub.add_parser("promote", help="point an alias (default: default) at a version")
    p.add_argument("model", help="the model directory, models/NAME")
    p.add_argument("version", help="a version number, or another alias to copy")
    p.add_argument("--as", dest="alias", default="default", metavar="ALIAS")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("aliases", help="list a model's versions and aliases")
    p.add_argument("model", help="the model directory, models/NAME")
    p.add_argument("--remove", metavar="ALIAS", help="drop an alias first")
    p.set_defaults(func=cmd_aliases)
