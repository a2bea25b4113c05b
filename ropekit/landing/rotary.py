"""Find and rebuild the rotary modules of a model's language tower, and build a weightless skeleton."""

from __future__ import annotations

from typing import Any, Iterator

from ropekit.errors import InvalidConfigError


def language_tower(model: Any) -> Any:
    """The decoder that reads the text config (a VLM's language model), else the model."""
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError):
            decoder = None
        if decoder is not None:
            return decoder
    return model


def rotary_modules(model: Any) -> Iterator[tuple[str, Any, str, Any]]:
    """``(qualified name, parent, attribute, module)`` for each rotary module of the language tower."""
    tower = language_tower(model)
    prefix = next((n for n, m in model.named_modules() if m is tower), "")
    for name, module in tower.named_modules():
        if not type(module).__name__.endswith("RotaryEmbedding"):
            continue
        if not any(b.endswith("inv_freq") for b, _ in module.named_buffers(recurse=False)):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = tower.get_submodule(parent_name) if parent_name else tower
        yield ".".join(p for p in (prefix, name) if p), parent, attr, module


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


def skeleton_with_rotaries(config_dict: dict[str, Any]) -> Any:
    """A model skeleton on the meta device whose rotary modules are real (built on CPU).

    No weights are allocated: the skeleton keeps one decoder layer per layer type
    (rotary modules do not depend on depth or expert count) and lives on the meta
    device; its rotary modules are then rebuilt, on the CPU, from the full config,
    exactly as transformers builds them. ``model.config`` is the full config.
    """
    import torch
    from transformers import AutoConfig

    data = {k: v for k, v in config_dict.items() if k not in {"auto_map"}}
    model_type = data.get("model_type")
    try:
        config = AutoConfig.for_model(**data)
        shallow = AutoConfig.for_model(**_one_layer_per_type(data))
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidConfigError(f"the installed transformers cannot build model_type {model_type!r} ({exc}); "
                                 "upgrade transformers or check the config") from None
    with torch.device("meta"):
        model = model_class_for(config)._from_config(shallow)
    model.config = config

    full_text = config.get_text_config() if hasattr(config, "get_text_config") else config
    shallow_text = shallow.get_text_config() if hasattr(shallow, "get_text_config") else shallow
    rebuild_rotaries(model, device=torch.device("cpu"), swap=(shallow_text, full_text))
    return model


def _one_layer_per_type(data: dict[str, Any]) -> dict[str, Any]:
    """The config with as few decoder layers as keep every layer type (for a fast skeleton)."""
    import copy

    out = copy.deepcopy(data)
    text = out["text_config"] if isinstance(out.get("text_config"), dict) else out
    layers = text.get("num_hidden_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers <= 1:
        return out
    types = text.get("layer_types")
    if isinstance(types, list) and types:
        distinct = list(dict.fromkeys(types))
        text["layer_types"], text["num_hidden_layers"] = distinct, len(distinct)
    elif "sliding_window_pattern" in text or (
            "sliding_window" in text and str(text.get("model_type") or "").startswith("gemma")):
        return out  # layer types derived from a pattern: keep the depth
    else:
        text["num_hidden_layers"] = 1
    return out


def model_class_for(config: Any) -> Any:
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for auto in ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModel"):
        try:
            getattr(transformers, auto)._model_mapping[type(config)]
        except KeyError:
            continue
        return getattr(transformers, auto)._model_mapping[type(config)]
    raise InvalidConfigError(f"no transformers model class for {type(config).__name__}; "
                             "upgrade transformers or check the config's architectures")
