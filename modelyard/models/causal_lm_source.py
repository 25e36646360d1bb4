"""Where a causal LM's weights are: a local Hugging Face directory, a GGUF file, a package.

A GGUF file (llama.cpp's format, often quantized) is dequantized by transformers' GGUF loader
once and saved, tokenizer included, as a plain safetensors directory in a local cache
(:func:`cache_root` ``/gguf/<fingerprint>``); every later load reads that directory. The saved
copy is an ordinary model: transformers no longer marks it "quantized with gguf", a marking its
Trainer and ``save_pretrained`` refuse. The cache directory is written in a staging directory
beside it and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from modelyard.atomic import fsync_dir
from modelyard.errors import ConfigError
from modelyard.models.quiet import quiet_loggers, quiet_transformers
from modelyard.staging import make_staging_dir
from modelyard.tokenize.pretrained import PACKAGE_PREFIX, resolve_model_dir

log = logging.getLogger(__name__)

CACHE_ENV = "MODELYARD_CACHE"
# the fingerprint reads this much of each end of a GGUF file (its header and metadata lead)
FINGERPRINT_BYTES = 8 * 2**20
REQUIRED_FILES = ("config.json", "tokenizer.json")


def cache_root() -> Path:
    """modelyard's cache directory: ``$MODELYARD_CACHE``, else ``~/.cache/modelyard``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "modelyard"


def resolve_causal_lm(path: str, *, key: str = "model.path") -> Path:
    """The local Hugging Face directory (safetensors + tokenizer) that ``path`` names.

    Args:
        path: a directory; a ``.gguf`` file (converted once into the cache); or
            ``package:NAME``: an installed distribution whose files hold exactly one ``.gguf``,
            else a module ``NAME`` with ``get_model_path()`` (as ``model.kind: pretrained``).
        key: the config key ``path`` came from, for error messages.

    Returns:
        A directory holding config.json, ``*.safetensors`` and tokenizer.json.

    Raises:
        ConfigError: nothing is there, the package holds several GGUF files, the directory lacks
            a required file or holds only pickled weights, or the GGUF cannot be converted.
    """
    if path.startswith(PACKAGE_PREFIX):
        source = _package_gguf(path, key) or resolve_model_dir(path, key=key)
    else:
        source = Path(path).expanduser()
    if source.is_file() and source.suffix.lower() == ".gguf":
        return gguf_directory(source, key=key)
    if not source.is_dir():
        raise ConfigError(f"{key}: {path!r}: no such model directory or .gguf file ({source})")
    check_model_dir(source, key=key)
    return source


def check_model_dir(directory: Path, *, key: str = "model.path") -> None:
    """Raise :class:`ConfigError` unless ``directory`` holds config.json, tokenizer.json and
    safetensors weights (pickled ``.bin`` weights are refused: loading one runs code)."""
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise ConfigError(f"{key}: {directory} has no {name}")
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.glob("*.bin"))
        found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise ConfigError(
            f"{key}: {directory} has {found}; modelyard loads safetensors only (convert with "
            "transformers: model.save_pretrained(dir, safe_serialization=True))"
        )


def gguf_fingerprint(file: Path) -> str:
    """A name for a GGUF file's contents: sha256 of its size, first and last
    :data:`FINGERPRINT_BYTES` (hashing all of a multi-GB file at every load would be slow)."""
    size = file.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(file, "rb") as fh:
        digest.update(fh.read(FINGERPRINT_BYTES))
        fh.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(fh.read(FINGERPRINT_BYTES))
    return digest.hexdigest()[:32]


def gguf_directory(file: Path, *, key: str = "model.path") -> Path:
    """The cached Hugging Face directory of a GGUF file, converted now if not cached yet.

    Returns:
        ``cache_root()/gguf/<fingerprint>``.
    """
    target = cache_root() / "gguf" / gguf_fingerprint(file)
    with contextlib.suppress(ConfigError):
        check_model_dir(target, key=key)
        return target
    staging = make_staging_dir(target.parent)
    try:
        log.info("dequantizing %s into %s (once)", file.name, target)
        dequantize_gguf(file, staging, key=key)
        if target.exists():
            with contextlib.suppress(ConfigError):
                check_model_dir(target, key=key)
                return target  # another process finished the same conversion meanwhile
            shutil.rmtree(target, ignore_errors=True)  # a broken leftover
        os.replace(staging, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    check_model_dir(target, key=key)
    return target


def dequantize_gguf(file: Path, destination: Path, *, key: str = "model.path") -> None:
    """Load ``file`` with transformers' GGUF loader and save model and tokenizer, unquantized
    (safetensors), into the existing directory ``destination``.

    Raises:
        ConfigError: transformers (or gguf) is missing or cannot read the file.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ConfigError(
            "model.kind 'causal_lm' needs transformers: pip install 'modelyard[train]'"
        ) from None
    directory, name = str(file.parent), file.name
    with quiet_loggers(), quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                directory, gguf_file=name, local_files_only=True
            )
            model: Any = AutoModelForCausalLM.from_pretrained(
                directory, gguf_file=name, local_files_only=True
            )
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ConfigError(f"{key}: {file}: transformers cannot load this GGUF: {exc}") from None
        # the weights are dequantized already; only the marking says otherwise
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(destination), safe_serialization=True)
        tokenizer.save_pretrained(str(destination))


def _package_gguf(spec: str, key: str) -> Path | None:
    """The one ``.gguf`` an installed distribution ships, or None when it is not installed or
    ships none (then ``spec`` is a module's ``get_model_path()``). Nothing is imported."""
    name = spec[len(PACKAGE_PREFIX) :].strip()
    try:
        dist = importlib.metadata.distribution(name)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    found = [f for f in dist.files or [] if str(f).lower().endswith(".gguf")]
    if len(found) > 1:
        names = ", ".join(sorted(str(f) for f in found))
        raise ConfigError(
            f"{key}: {spec!r}: the package ships several GGUF files ({names}); name one by path"
        )
    return Path(str(dist.locate_file(found[0]))) if found else None
