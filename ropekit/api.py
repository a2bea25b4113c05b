"""The Python API behind ``ropekit``'s public names: dispatch on what the caller passes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ropekit.hub import resolve as hub
from ropekit.hub.resolve import ResolvedConfig
from ropekit.receipt import Receipt
from ropekit.scaling.engine import Plan, apply_config, plan_config
from ropekit.scaling.long_context import LongContextConfig
from ropekit.signing import checked_key, sign_receipt


def resolve(ref: str | Path, revision: str | None = None, *, lineage: bool = True) -> ResolvedConfig:
    """Resolve a local folder, config.json, or Hub id to a config read as data.

    :param lineage: follow the model card's ``base_model`` (up to three hops) for inherited scaling.
    """
    return hub.resolve(ref, revision=revision, lineage=lineage)


def plan(target: Any, request: LongContextConfig, *, family: str | None = None,
         revision: str | None = None) -> Plan:
    """What a patch would change, without changing anything.

    :param target: a config.json dict, a transformers config object, a live model,
        or a local path / Hub id (resolved with :func:`resolve`, lineage included).
    """
    if isinstance(target, (str, Path)):
        resolved = resolve(target, revision=revision)
        return plan_config(resolved.config, request, family=family, inherited=resolved.inherited)
    from ropekit.landing.live import is_live_model

    return plan_config(target.config if is_live_model(target) else target, request, family=family)


def apply_rope_scaling(target: Any, request: LongContextConfig, *, family: str | None = None,
                       sign_key: bytes | str | None = None) -> Receipt:
    """Apply RoPE scaling in place to a config dict, a transformers config, or a live model.

    For a live model the language tower's rotary modules are rebuilt from the patched
    config (patching the config alone changes nothing), modules that depend on rope
    settings are refreshed, and the landing is verified and recorded in the receipt.
    On any refusal or error the target is left exactly as it was.

    :param sign_key: sign the receipt with this key (HMAC-SHA256 over its manifest; see
        :mod:`ropekit.signing`); check it with ``verify_receipt(..., sign_key=...)``.
    """
    from ropekit.landing.live import is_live_model, patch_model

    key = checked_key(sign_key) if sign_key is not None else None  # a bad key changes nothing
    if is_live_model(target):
        _, receipt = patch_model(target, request, family=family)
    else:
        _, receipt = apply_config(target, request, family=family)
    return sign_receipt(receipt, key) if key is not None else receipt


def load_model(ref: str | Path, request: LongContextConfig, *, revision: str | None = None,
               family: str | None = None, model_class: Any = None, for_training: bool = True,
               **from_pretrained_kwargs: Any) -> tuple[Any, Receipt]:
    """Load a model with RoPE scaling applied the way that always lands.

    The config is loaded as data, patched, and passed to ``from_pretrained(config=...)``,
    so the rotary modules are built from the patched settings; the landing is then
    verified against the closed form and recorded in the returned receipt.
    Remote code is never run.

    With ``for_training`` (the default) the attention backend is chosen first:
    FlashAttention 3 on Hopper, 2 on Ampere and newer; a new window above 16384 tokens
    without either is refused (AttentionBackendError). Pass ``for_training=False`` for
    inference, or ``attn_implementation=...`` to choose the kernel yourself.
    """
    from transformers import AutoConfig

    from ropekit.landing.check import check_model
    from ropekit.landing.rotary import model_class_for

    resolved = resolve(ref, revision=revision)
    location = str(resolved.path.parent) if resolved.path else str(ref)
    config = AutoConfig.for_model(**{k: v for k, v in resolved.config.items() if k != "auto_map"})
    _, receipt = apply_config(config, request, family=family, inherited=resolved.inherited,
                              model=resolved.receipt_model())
    if for_training and "attn_implementation" not in from_pretrained_kwargs:
        from ropekit.training.attention import require_attention_backend

        choice = require_attention_backend(receipt.long_context["new_max_position_embeddings"])
        from_pretrained_kwargs["attn_implementation"] = choice.attn_implementation
    cls = model_class or model_class_for(config)
    kwargs = {"revision": resolved.revision, **from_pretrained_kwargs} if resolved.source != "local" \
        else from_pretrained_kwargs
    model = cls.from_pretrained(location if resolved.source == "local" else resolved.model_id,
                                config=config, trust_remote_code=False, **kwargs)
    report = check_model(model, receipt=receipt).raise_if_not_landed()
    return model, receipt.with_fields(landing=report.to_json())


def verify_landing(target: Any, *, receipt: Receipt | None = None, family: str | None = None,
                   progress: Callable[[str], None] | None = None) -> Any:
    """Check that what transformers builds carries the configured scaling.

    :param target: a live model, or a folder / config.json (built without weights).
    :param family: read the config with this family (default: the receipt's, else model_type's).
    :param progress: called with a short description of each step (import, skeleton, each rotary module).
    :returns: a LandingReport (``.landed``, ``.to_json()``, ``.raise_if_not_landed()``).
    """
    from ropekit.landing.check import verify_landing as _verify

    return _verify(target, receipt=receipt, family=family, progress=progress)
