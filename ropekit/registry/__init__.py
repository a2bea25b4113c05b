"""The core of ropekit: registry, methods, engine, receipts. See DESIGN.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ropekit.registry.manager import (
    DEFAULT_PLUGINS,
    Registry,
    get_registry,
    make_plugin_manager,
    reset_registry,
)

if TYPE_CHECKING:
    from ropekit.registry.family import Family


def lookup(model_type: str) -> "Family":
    """The family that handles ``model_type`` (raises UnknownFamilyError)."""
    return get_registry().lookup(model_type)


def families() -> list[dict[str, object]]:
    """Every registered family with its plugin, version and model_types."""
    reg = get_registry()
    return [
        {"name": f.name, "plugin": f.plugin, "version": f.version,
         "model_types": [t for t in f.model_types if reg.by_model_type.get(t) is f],  # less any taken over
         "methods": list(f.methods) if f.methods is not None else sorted(reg.methods),
         "description": f.description}
        for f in sorted(reg.families_by_name.values(), key=lambda f: f.name)
    ]


__all__ = ["DEFAULT_PLUGINS", "Registry", "families", "get_registry", "lookup", "make_plugin_manager",
           "reset_registry"]
