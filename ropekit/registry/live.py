"""Patch live models: rebuild the rotary modules of the language tower from the patched config.

Patching ``model.config`` of a model that already exists changes nothing,
because transformers computes rotary frequencies in the module's constructor.
Rebuilding the module from the (patched) config does apply the change.
"""

from __future__ import annotations

from typing import Any

from .engine import Plan, apply_config
from .family import ShippedScaling
from .landing import check_model, rotary_modules
from .long_context import LongContextConfig
from .manager import Registry, get_registry
from .receipt import Receipt


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


def rebuild_rotaries(model: Any, device: Any = None, swap: tuple[Any, Any] | None = None) -> list[str]:
    """Rebuild every rotary module of the language tower from the config it holds.

    Buffers are built in fp32 (as transformers does) and moved to the old module's
    device (or ``device``) without changing their dtype. ``swap=(old, new)`` rebuilds
    modules that hold config ``old`` from ``new`` instead. Returns the rebuilt names.
    """
    import torch

    rebuilt = []
    for name, parent, attr, old in list(rotary_modules(model)):
        config = getattr(old, "config", None)
        if swap is not None and config is swap[0]:
            config = swap[1]
        if config is None:
            config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        with torch.device("cpu"):
            new = type(old)(config=config)
        target = device
        if target is None:
            first = next(old.buffers(), None)
            target = first.device if first is not None and first.device.type != "meta" else torch.device("cpu")
        setattr(parent, attr, new.to(device=target))
        rebuilt.append(name)
    return rebuilt
