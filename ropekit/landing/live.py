"""Patch live models: rebuild the rotary modules of the language tower from the patched config.

Patching ``model.config`` of a model that already exists changes nothing,
because transformers computes rotary frequencies in the module's constructor.
Rebuilding the module from the (patched) config does apply the change.
"""

from __future__ import annotations

from typing import Any

from ropekit.landing.check import check_model
from ropekit.landing.rotary import rebuild_rotaries, rotary_modules
from ropekit.receipt import Receipt
from ropekit.registry.family import ShippedScaling
from ropekit.registry.manager import Registry, get_registry
from ropekit.scaling.engine import Plan, apply_config
from ropekit.scaling.long_context import LongContextConfig


def is_live_model(target: Any) -> bool:
    """True for a torch module that carries a transformers config."""
    return hasattr(target, "named_modules") and hasattr(target, "config") and hasattr(target.config, "to_dict")


def patch_model(model: Any, request: LongContextConfig, *, registry: Registry | None = None,
                family: str | None = None, inherited: ShippedScaling | None = None,
                source: dict[str, Any] | None = None) -> tuple[Plan, Receipt]:
    """Patch a live model: its config, then its rotary modules, then prove it landed.

    On any failure the config and the original rotary modules are restored.
    """
    registry = registry or get_registry()
    saved = [(parent, attr, module) for _, parent, attr, module in rotary_modules(model)]
    touched: list[Any] = []

    def land(plan: Plan) -> dict[str, Any]:
        touched.append(plan.family)
        rebuild_rotaries(model)
        plan.family.refresh_live_modules(model)
        report = check_model(model, registry=registry).raise_if_not_landed()
        return {"landing": report.to_json()}

    try:
        return apply_config(model.config, request, registry=registry, family=family, inherited=inherited,
                            model=source or {"source": "live-model"}, then=land)
    except BaseException:
        for parent, attr, module in saved:  # the config is already restored by apply_config
            setattr(parent, attr, module)
        for fam in touched:
            fam.refresh_live_modules(model)
        raise
