"""Text Generation Inference: linear or dynamic by flag, YaRN and NTK from config.json.

Assumed: TGI 3.x (the project is in maintenance mode). The launcher takes
``--rope-scaling {linear,dynamic}`` and ``--rope-factor`` only (they become the
``ROPE_SCALING``/``ROPE_FACTOR`` environment and replace config.json's scaling);
``--rope-scaling yarn`` is rejected (TGI issues #1320, #1382). YaRN is read from
config.json with beta_fast=32, beta_slow=1 and attn_factor=1 hard-coded, so a
receipt with other values is refused; NTK-aware scaling is a changed
``rope_theta`` that TGI reads from config.json. TGI reads config.json with
transformers 4.x, which ignores the 5.x ``rope_parameters`` layout, so such a
folder is refused. ``--max-input-tokens`` must stay below ``--max-total-tokens``
and ``--max-batch-prefill-tokens`` at or above it.
"""

from __future__ import annotations

from ropekit.errors import EngineUnsupportedError

from .export import LaunchArguments, ServeSpec

VERSIONS = "TGI 3.x text-generation-launcher"
YARN_HARD_CODED = {"beta_fast": 32.0, "beta_slow": 1.0, "attn_factor": 1.0}


def launch_arguments(spec: ServeSpec) -> LaunchArguments:
    if spec.transformers5_layout:
        raise EngineUnsupportedError(
            f"{spec.folder}/config.json keeps rope settings in rope_parameters (transformers 5 layout), which TGI's "
            "transformers 4.x ignores (rope_theta would fall back to 10000); serve this folder with vLLM or SGLang")
    lc = spec.long_context
    window = spec.new_window
    argv = ["text-generation-launcher", "--model-id", str(spec.folder),
            "--max-input-tokens", str(window - 1), "--max-total-tokens", str(window),
            "--max-batch-prefill-tokens", str(window - 1)]
    notes = [f"serves {spec.method} x{spec.factor:g} from {spec.original} to {window} tokens, "
             "the receipt's long_context",
             "--max-input-tokens leaves one token for output; lower it to reserve room for generation"]
    if spec.method in ("linear", "dynamic"):
        argv += ["--rope-scaling", spec.method, "--rope-factor", f"{spec.factor:g}"]
        if spec.method == "linear":
            notes.append("TGI's static linear path may leave the factor unset (read from its rotary.py since PR "
                         "#1849, not confirmed by an issue); check long inputs with a passkey test")
    elif spec.method == "yarn":
        differs = {k: lc[k] for k, v in YARN_HARD_CODED.items() if float(lc[k]) != v}
        if differs:
            shown = ", ".join(f"{k}={v:g}" for k, v in differs.items())
            raise EngineUnsupportedError(
                f"TGI hard-codes YaRN beta_fast=32, beta_slow=1, attn_factor=1 but the receipt says {shown}; "
                "serve with vLLM or SGLang, or re-patch with the default YaRN parameters")
        notes.append("TGI cannot take yarn by flag; it serves YaRN from the patched config.json in this folder "
                     "(its hard-coded beta_fast=32, beta_slow=1, attn_factor=1 match the receipt)")
    elif spec.method == "ntk":
        notes.append(f"NTK-aware scaling is the patched rope_theta ({spec.rope_theta:g}) in config.json, which TGI "
                     "reads; no rope flags are needed")
    else:
        raise EngineUnsupportedError(f"TGI flags for method {spec.method!r} are not known to ropekit; "
                                     "serve this folder with vLLM or SGLang")
    return LaunchArguments("tgi", VERSIONS, argv, notes=notes)
