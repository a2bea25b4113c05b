"""Capture transformers' config-class defaults that memory planning reads, for every model_type.

``ropekit memory`` fills the values a config.json leaves implicit from this table instead of
importing transformers (which imports torch: seconds of start-up for arithmetic). Run it again
after a transformers upgrade:

    python scripts/capture_config_defaults.py > ropekit/training/config_defaults.json

A key whose default depends on other values (``head_dim`` = hidden_size / num_attention_heads in
most classes, ``layer_types`` from the sliding-window settings) is listed under ``derived``; the
reader computes those itself, or falls back to transformers for a rule it does not know.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

sys.path.insert(0, ".")
from ropekit.training.architecture import STRUCTURAL_KEYS  # noqa: E402

#: values moved to see which defaults follow them
PROBES = ({"hidden_size": 3 * 1024}, {"num_attention_heads": 48}, {"num_hidden_layers": 7})


def _values(cls: type, **kwargs: object) -> dict[str, object] | None:
    try:
        full = cls(**kwargs).to_dict()
    except Exception:
        return None
    return {k: full[k] for k in STRUCTURAL_KEYS if k in full}


def _layer_period(cls: type) -> list[str] | None:
    """The repeating unit of the ``layer_types`` the class derives from the layer count alone.

    None when the pattern does not repeat, or depends on the sliding-window switches
    (``use_sliding_window``, ``max_window_layers``), which the reader interprets itself.
    """
    try:
        types = cls(num_hidden_layers=48).to_dict().get("layer_types")
    except Exception:
        return None
    if not isinstance(types, list) or len(types) != 48 or "use_sliding_window" in cls().to_dict():
        return None
    for p in range(1, 25):
        if 48 % p == 0 and all(types[i] == types[i % p] for i in range(48)):
            return types[:p]
    return None


def capture() -> dict[str, object]:
    transformers.logging.set_verbosity(logging.CRITICAL)
    warnings.simplefilter("ignore")
    table: dict[str, object] = {}
    for model_type in sorted(CONFIG_MAPPING.keys()):
        try:
            cls = CONFIG_MAPPING[model_type]
        except Exception:
            continue
        base = _values(cls)
        if base is None:
            continue
        derived = set()
        for probe in PROBES:
            moved = _values(cls, **probe)
            if moved is None:
                continue
            derived |= {k for k in base if k not in probe and moved.get(k) != base[k]}
        constants = {k: v for k, v in base.items() if k not in derived and v is not None}
        if constants or derived:
            entry: dict[str, object] = {"defaults": dict(sorted(constants.items())), "derived": sorted(derived)}
            period = _layer_period(cls) if "layer_types" in derived else None
            if period:
                entry["layer_types_period"] = period
            table[model_type] = entry
    return {"transformers": transformers.__version__, "model_types": table}


if __name__ == "__main__":
    data = capture()
    lines = [f"{json.dumps(name)}: {json.dumps(entry, sort_keys=True)}" for name, entry in data["model_types"].items()]
    sys.stdout.write('{"transformers": %s,\n "model_types": {\n' % json.dumps(data["transformers"]))
    sys.stdout.write(",\n".join(lines) + "\n}}\n")
