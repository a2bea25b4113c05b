"""Built-in scaling methods: linear PI, NTK-aware, dynamic NTK and YaRN."""

from __future__ import annotations

from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.methods import BUILTIN_METHODS


@hookimpl
def register_scaling_methods(register):
    for method in BUILTIN_METHODS:
        register(method)
