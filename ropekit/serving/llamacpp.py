"""llama.cpp: ``llama-server`` flags that restate the receipt over whatever the GGUF says.

Assumed: a llama.cpp build from 2024 or later (``common/arg.cpp`` flags
``--rope-scaling {none,linear,yarn}``, ``--rope-scale``, ``--rope-freq-base``,
``--yarn-orig-ctx``, ``--yarn-beta-fast``, ``--yarn-beta-slow``,
``--yarn-attn-factor``, ``-c``). Command-line values replace GGUF metadata, so
the flags make the server follow the receipt even if the converter dropped or
changed a value (llama.cpp PR #10698). ``--rope-scale N`` sets freq_scale = 1/N;
``--yarn-attn-factor`` multiplies 0.1 ln s + 1, as the receipt's attn_factor does.
llama.cpp has no dynamic NTK.
"""

from __future__ import annotations

from ropekit.errors import EngineUnsupportedError

from .export import LaunchArguments, ServeSpec

VERSIONS = "llama.cpp llama-server, any 2024 or later build (common/arg.cpp rope and yarn flags)"


def _num(value: float) -> str:
    """A number as llama.cpp parses it, without rounding (1000000, 20221.261689737912)."""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def launch_arguments(spec: ServeSpec) -> LaunchArguments:
    if spec.method == "dynamic":
        raise EngineUnsupportedError(
            f"llama.cpp cannot serve dynamic NTK (receipt in {spec.folder}); its --rope-scaling takes none, "
            "linear or yarn, so re-patch with --method yarn or --method ntk for llama.cpp")
    gguf = f"{spec.folder}.gguf"
    argv = ["llama-server", "-m", gguf, "-c", str(spec.new_window),
            "--rope-freq-base", _num(spec.rope_theta)]
    lc = spec.long_context
    if spec.method == "linear":
        argv += ["--rope-scaling", "linear", "--rope-scale", _num(spec.factor)]
    elif spec.method == "yarn":
        argv += ["--rope-scaling", "yarn", "--rope-scale", _num(spec.factor),
                 "--yarn-orig-ctx", str(spec.original),
                 "--yarn-beta-fast", _num(lc["beta_fast"]), "--yarn-beta-slow", _num(lc["beta_slow"]),
                 "--yarn-attn-factor", _num(lc["attn_factor"])]
    elif spec.method == "ntk":
        argv += ["--rope-scaling", "none"]
    else:
        raise EngineUnsupportedError(f"llama.cpp flags for method {spec.method!r} are not known to ropekit; "
                                     "serve this folder with vLLM or SGLang")
    notes = [f"serves {spec.method} x{spec.factor:g} from {spec.original} to {spec.new_window} tokens, "
             "the receipt's long_context",
             f"--rope-freq-base {_num(spec.rope_theta)} restates the config's rope_theta"
             + (" (the NTK-aware base)" if spec.method == "ntk" else "")]
    rope = spec.primary.rope
    if rope.get("mscale") or rope.get("mscale_all_dim"):
        notes.append("DeepSeek-style mscale/mscale_all_dim are not llama.cpp flags; they reach llama.cpp only "
                     "through the GGUF metadata the converter writes")
    prepare = [["python", "convert_hf_to_gguf.py", str(spec.folder), "--outfile", gguf]]
    return LaunchArguments("llama.cpp", VERSIONS, argv, prepare=prepare, notes=notes)
