"""Find and rebuild the rotary modules of a model's language tower, and build a weightless skeleton.

Rotary modules are found by what they hold, not by their class name: a module with a
``*inv_freq`` buffer of its own (``inv_freq``, or ``{layer_type}_inv_freq`` for per-layer-type
rotaries) is a rotary module, whatever the architecture calls it.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator

from ropekit.errors import InvalidConfigError


def language_tower(model: Any) -> Any:
    """The decoder that reads the text config (a VLM's language model), else the model."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError, ValueError, TypeError):
            decoder = None
        if decoder is not None:
            return decoder
    return model


def has_inv_freq(module: Any) -> bool:
    """True for a module that owns an ``*inv_freq`` buffer (a rotary module, whatever its name)."""
    return any(name.endswith("inv_freq") and not name.endswith("original_inv_freq")
               for name, _ in module.named_buffers(recurse=False))


def rotary_modules(model: Any) -> Iterator[tuple[str, Any, str, Any]]:
    """``(qualified name, parent, attribute, module)`` for each rotary module of the language tower."""
    tower = language_tower(model)
    prefix = next((n for n, m in model.named_modules() if m is tower), "")
    for name, module in tower.named_modules():
        if not name or not has_inv_freq(module):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = tower.get_submodule(parent_name) if parent_name else tower
        yield ".".join(p for p in (prefix, name) if p), parent, attr, module


def rebuild_rotaries(model: Any, device: Any = None, progress: Callable[[str], None] | None = None) -> list[str]:
    """Rebuild every rotary module of the language tower from the config it holds.

    Each module is rebuilt by its own class from its own config (and from the other
    constructor arguments it keeps as attributes, such as Molmo2's ``scaled``).
    Buffers are built in fp32 on the CPU (as transformers does) and moved to the old
    module's device (or ``device``) without changing their dtype. Returns the rebuilt names.
    """
    import torch

    rebuilt = []
    modules = list(rotary_modules(model))
    for i, (name, parent, attr, old) in enumerate(modules, 1):
        if progress:
            progress(f"building rotary module {i}/{len(modules)} ({name})")
        config = getattr(old, "config", None)
        if config is None:
            config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        with torch.device("cpu"):
            new = type(old)(config=config, **_constructor_attributes(old))
        target = device
        if target is None:
            first = next(old.buffers(), None)
            target = first.device if first is not None and first.device.type != "meta" else torch.device("cpu")
        setattr(parent, attr, new.to(device=target))
        rebuilt.append(name)
    return rebuilt


def _constructor_attributes(module: Any) -> dict[str, Any]:
    """Constructor arguments other than ``config`` and ``device`` that the module keeps as attributes."""
    import inspect

    try:
        parameters = inspect.signature(type(module).__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {name: getattr(module, name) for name in parameters
            if name not in {"self", "config", "device"} and hasattr(module, name)}


def skeleton_with_rotaries(config_dict: dict[str, Any], progress: Callable[[str], None] | None = None) -> Any:
    """A model skeleton on the meta device whose rotary modules are real (built on CPU).

    No weights are allocated: the skeleton keeps one decoder layer per layer kind
    (rotary modules depend on neither depth nor expert count) when the config class
    accepts that, else the full depth, and lives on the meta device; its rotary modules
    are then rebuilt on the CPU, each by its own class from its own config, exactly as
    transformers builds them. ``model.config`` is the config the skeleton was built from.
    ``progress`` is called at each step (importing, building, each rotary module rebuilt).
    """
    report = progress or (lambda message: None)
    report("importing torch and transformers")
    import torch
    from transformers import AutoConfig

    data = {k: v for k, v in config_dict.items() if k not in {"auto_map"}}
    model_type = data.get("model_type")
    try:
        config = AutoConfig.for_model(**data)
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidConfigError(f"the installed transformers cannot build model_type {model_type!r} ({exc}); "
                                 "upgrade transformers or check the config") from None
    classes = model_classes_for(config)
    if not classes:
        model_class_for(config)  # raises, naming the config class
    try:
        shallow = AutoConfig.for_model(**_one_layer_per_type(data))
    except Exception:  # the config class cross-checks per-layer values the shallow copy dropped
        shallow = config
    model, failure = None, None
    report(f"building the {model_type} skeleton (no weights)")
    for candidate in (shallow, config) if shallow is not config else (config,):
        for cls in classes:  # a VLM's CausalLM class may want the text config only: try the next
            try:
                with torch.device("meta"):
                    model = cls._from_config(candidate)
                break
            except Exception as exc:
                failure = failure or exc
        if model is not None:
            break
    if model is None:
        raise failure  # type: ignore[misc]
    rebuild_rotaries(model, device=torch.device("cpu"), progress=progress)
    return model


def _one_layer_per_type(data: dict[str, Any]) -> dict[str, Any]:
    """The config with one decoder layer per distinct layer kind (for a fast skeleton).

    A layer's kind is its entries in every per-layer list of the language config
    (``layer_types``, ``mlp_layer_types``, ...); each list keeps the entries of the
    first layer of each kind, so the lists stay consistent with each other.
    """
    out = copy.deepcopy(data)
    text = out["text_config"] if isinstance(out.get("text_config"), dict) else out
    layers = text.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers <= 1:
        return out
    per_layer = [k for k, v in text.items() if isinstance(v, list) and len(v) == layers]
    if not per_layer and ("sliding_window_pattern" in text or (
            "sliding_window" in text and str(text.get("model_type") or "").startswith("gemma"))):
        return out  # layer types derived from a pattern: keep the depth
    kinds: dict[str, int] = {}
    for i in range(layers):
        kinds.setdefault(repr([text[k][i] for k in per_layer]), i)
    keep = sorted(kinds.values())
    for key in per_layer:
        text[key] = [text[key][i] for i in keep]
    text["num_hidden_layers"] = len(keep)
    return out
def model_class_for(config: Any) -> Any:
    """The model class a config names in ``architectures``, else the first auto class that maps it."""
    classes = model_classes_for(config)
    if not classes:
        raise InvalidConfigError(f"no transformers model class for {type(config).__name__}; "
                                 "upgrade transformers or check the config's architectures")
    return classes[0]


def model_classes_for(config: Any) -> list[Any]:
    """Every class that can build a config: the ``architectures`` named, then the auto classes' choices."""
    import transformers

    classes = [getattr(transformers, name) for name in getattr(config, "architectures", None) or []
               if getattr(transformers, name, None) is not None]
    for auto in ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForMultimodalLM", "AutoModel"):
        mapping = getattr(getattr(transformers, auto, None), "_model_mapping", None)
        try:
            cls = mapping[type(config)] if mapping is not None else None
        except KeyError:
            continue
        if cls is not None and cls not in classes:
            classes.append(cls)
    return classes
