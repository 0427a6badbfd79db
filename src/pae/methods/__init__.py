"""Prompt methods by name: the registry (torch-free) and the built-in methods, each registered by its own file.

More methods come from $PAE_PLUGINS (modules or .py files, ':'-separated) or a params file's ``plugins``."""

from . import bpt, e2vpt, ivpt, linear, vfpt, vpt  # noqa: F401 - importing a method's file registers it
from .registry import (
    METHODS,
    MethodSpec,
    check_options,
    load_plugins,
    make_options,
    method_spec,
    methods_on,
    option_fields,
    options_for,
    ordered,
    register_method,
)

load_plugins()

__all__ = [
    "METHODS",
    "MethodSpec",
    "check_options",
    "load_plugins",
    "make_options",
    "method_spec",
    "methods_on",
    "option_fields",
    "options_for",
    "ordered",
    "register_method",
]
