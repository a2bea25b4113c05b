"""The Python API behind ``ropekit``'s public names: dispatch on what the caller passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ropekit.registry import hub
from ropekit.registry.engine import Plan, apply_config, plan_config
from ropekit.registry.hub import ResolvedConfig
from ropekit.registry.long_context import LongContextConfig
from ropekit.registry.receipt import Receipt


def plan(target: Any, request: LongContextConfig, *, family: str | None = None,
         revision: str | None = None) -> Plan:
    """What a patch would change, without changing anything.

    :param target: a config.json dict, a transformers config object, or a local
        path / Hub id (resolved with :func:`resolve`, lineage included).
    """
    if isinstance(target, (str, Path)):
        resolved = resolve(target, revision=revision)
        return plan_config(resolved.config, request, family=family, inherited=resolved.inherited)
    return plan_config(target, request, family=family)


def apply_rope_scaling(target: Any, request: LongContextConfig, *, family: str | None = None) -> Receipt:
    """Apply RoPE scaling to a config dict or transformers config object, in place.

    Returns the receipt. On any refusal or error the target is left exactly as it was.
    """
    _, receipt = apply_config(target, request, family=family)
    return receipt


def resolve(ref: str | Path, revision: str | None = None) -> ResolvedConfig:
    """Resolve a local folder, config.json, or Hub id to a config read as data."""
    return hub.resolve(ref, revision=revision)
