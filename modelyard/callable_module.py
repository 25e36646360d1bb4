"""Let ``modelyard.train(config)`` and friends work even after the submodule is imported.

``modelyard.train``, ``modelyard.evaluate`` and ``modelyard.export`` each name both a module and the
function the top-level lazy ``__getattr__`` exposes. Importing the module binds the *module* to
that attribute, hiding the function; giving the module a ``__call__`` that forwards to the
function makes ``modelyard.train(config)`` work in either order.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def make_module_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Make the module ``module_name`` callable, forwarding every call to ``function``."""

    def call(self: types.ModuleType, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    module = sys.modules[module_name]
    module.__class__ = type("CallableModule", (types.ModuleType,), {"__call__": call})
