"""ropekit: RoPE context extension for Hugging Face models, applied correctly and proven.

Importing ropekit is light: torch and transformers load only when a live model
or the landing check needs them.
"""

from __future__ import annotations

from ropekit.api import apply_rope_scaling, load_model, plan, resolve, verify_landing
from ropekit.errors import RopekitError
from ropekit.receipt import Receipt, verify_receipt
from ropekit.registry.hookspecs import hookimpl
from ropekit.scaling.long_context import LongContextConfig

__all__ = [
    "LongContextConfig",
    "Receipt",
    "RopekitError",
    "apply_rope_scaling",
    "hookimpl",
    "load_model",
    "plan",
    "resolve",
    "verify_landing",
    "verify_receipt",
]
