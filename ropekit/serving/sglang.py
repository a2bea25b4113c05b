"""SGLang: ``--context-length``, ``--json-model-override-args`` and
``SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1``.

Assumed: SGLang 0.5 or later. SGLang derives the context length from
``max_position_embeddings`` and multiplies by ``factor`` only when
``original_max_position_embeddings`` is absent, so a YaRN config derives the old
window and a longer ``--context-length`` needs the environment switch (sglang
issues #2108, #4145). ``--json-model-override-args`` is applied with a flat
``config.update``: it reaches only the top level, so for a composite (VLM) config
no override is given and the patched config.json, which already carries the
scaling in its text sub-config, is what SGLang serves (sglang issue #27974).
"""

from __future__ import annotations

import json

from .export import LaunchArguments, ServeSpec, engine_rope

VERSIONS = "SGLang >= 0.5 (python -m sglang.launch_server)"
ENV_LONGER_CONTEXT = "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"


def launch_arguments(spec: ServeSpec) -> LaunchArguments:
    argv = ["python", "-m", "sglang.launch_server", "--model-path", str(spec.folder),
            "--context-length", str(spec.new_window)]
    notes = [f"serves {spec.method} x{spec.factor:g} from {spec.original} to {spec.new_window} tokens, "
             "the receipt's long_context"]
    if spec.composite or spec.nested_layer_types:
        why = "composite model" if spec.composite else "per-layer-type rope_parameters"
        notes.append(f"{why}: --json-model-override-args reaches only the top level of the config, so no "
                     "override is passed; SGLang serves the scaling from the patched config.json in this folder")
    else:
        rope = engine_rope(spec.primary, spec.long_context)
        # rope_theta at the top level for transformers 4.x; inside rope_scaling for 5.x (its setter keeps it)
        override = {"rope_theta": rope["rope_theta"], "rope_scaling": rope}
        argv += ["--json-model-override-args", json.dumps(override, sort_keys=True, separators=(",", ":"))]
    return LaunchArguments("sglang", VERSIONS, argv, env={ENV_LONGER_CONTEXT: "1"}, notes=notes)
