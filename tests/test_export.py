"""Engine launch arguments from a receipt, checked against each engine's documented flags."""

from __future__ import annotations

import json
import math
import shlex

import pytest
from conftest import load_fixture, rotary_from_config, transformers_major

from ropekit.cli import main
from ropekit.errors import InvalidConfigError, ReceiptMismatchError, ResolutionError
from ropekit.scaling.engine import apply_config
from ropekit.scaling.long_context import LongContextConfig
from ropekit.serving import EngineUnsupportedError, export_arguments
from ropekit.serving.sglang import ENV_LONGER_CONTEXT


def patched_folder(tmp_path, fixture, *, config=None, name="out", **request):
    """A folder as ropekit patch writes it: the patched config.json and its receipt."""
    config = config if config is not None else load_fixture(fixture)
    _, receipt = apply_config(config, LongContextConfig(**request), model={"id": fixture, "source": "local"})
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "rope_receipt.json").write_text(receipt.to_json())
    return folder


def option(argv, flag):
    return argv[argv.index(flag) + 1]


@pytest.fixture
def qwen_yarn(tmp_path):
    # the Qwen2.5 long-context recipe: YaRN x4 from 32768 to 131072
    return patched_folder(tmp_path, "Qwen__Qwen2.5-7B-Instruct", method="yarn", factor=4.0)


# --- vLLM ---------------------------------------------------------------------------------------

def test_vllm_matches_the_documented_context_extension_recipe(qwen_yarn):
    # vLLM's examples/offline_inference/context_extension.py: rope_parameters {rope_theta 1e6, rope_type yarn,
    # factor 4.0, original_max_position_embeddings 32768} and max_model_len = 32768 * 4
    _, args = export_arguments(qwen_yarn, "vllm")
    assert args.argv[:3] == ["vllm", "serve", str(qwen_yarn)]
    assert option(args.argv, "--max-model-len") == "131072"
    rope = json.loads(option(args.argv, "--hf-overrides"))["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0 and rope["rope_theta"] == 1_000_000
    assert rope["original_max_position_embeddings"] == 32768
    assert (rope["beta_fast"], rope["beta_slow"]) == (32, 1)
    assert "type" not in rope and "attn_factor" not in rope
    # the window goes through --max-model-len, never max_position_embeddings (applied twice otherwise)
    overrides = json.loads(option(args.argv, "--hf-overrides"))
    assert "max_position_embeddings" not in overrides and "max_position_embeddings" not in rope
    assert "0.12" in args.versions


def test_vllm_nests_the_override_under_text_config_for_a_vlm(tmp_path):
    folder = patched_folder(tmp_path, "Qwen__Qwen3-VL-4B-Instruct", method="yarn", factor=2.0, attn_factor=1.1)
    _, args = export_arguments(folder, "vllm")
    overrides = json.loads(option(args.argv, "--hf-overrides"))
    assert list(overrides) == ["text_config"]  # a top-level override is ignored for composite models
    rope = overrides["text_config"]["rope_parameters"]
    assert rope["mrope_section"] == [24, 20, 20] and rope["mrope_interleaved"] is True
    assert rope["rope_theta"] == 5_000_000 and rope["factor"] == 2.0
    assert rope["attn_factor"] == 1.1  # vLLM's YaRN multiplies 0.1 ln s + 1 by attn_factor
    assert option(args.argv, "--max-model-len") == str(2 * 262144)
    assert any("text_config" in note for note in args.notes)


def test_vllm_nests_a_flat_vlm_config_too(tmp_path):
    # Qwen2.5-VL keeps its text settings at the top level of config.json; transformers builds text_config
    folder = patched_folder(tmp_path, "Qwen__Qwen2.5-VL-7B-Instruct", method="yarn", factor=4.0)
    _, args = export_arguments(folder, "vllm")
    rope = json.loads(option(args.argv, "--hf-overrides"))["text_config"]["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["mrope_section"] == [16, 24, 24] and "type" not in rope


def vllm_apply_dict_overrides(config, overrides):
    """vLLM's ModelConfig._apply_dict_overrides: recurse into sub-configs, set everything else."""
    from transformers import PretrainedConfig

    def update_nested(target, updates):
        for key, value in updates.items():
            if isinstance(value, dict):
                nested = target.get(key) if isinstance(target, dict) else getattr(target, key, None)
                if nested is not None and (isinstance(nested, dict) or hasattr(nested, "__dict__")):
                    update_nested(nested, value)
                    continue
            if isinstance(target, dict):
                target[key] = value
            else:
                setattr(target, key, value)

    for key, value in overrides.items():
        attr = getattr(config, key, None)
        if isinstance(attr, PretrainedConfig):
            update_nested(attr, value)
        else:
            setattr(config, key, value)


@pytest.mark.skipif(transformers_major() < 5, reason="vLLM reads rope_parameters, a transformers 5 attribute")
@pytest.mark.parametrize("fixture, request_", [
    ("Qwen__Qwen2.5-7B-Instruct", {"method": "yarn", "factor": 4.0}),
    ("meta-llama__Llama-2-7b-hf", {"method": "linear", "factor": 4.0}),
    ("meta-llama__Llama-2-7b-hf", {"method": "ntk", "factor": 2.0}),
    ("Qwen__Qwen3-VL-4B-Instruct", {"method": "yarn", "factor": 2.0, "attn_factor": 1.1}),
    ("google__gemma-3-4b-it", {"method": "yarn", "factor": 4.0, "on_existing": "replace"}),  # per layer type
])
def test_vllm_override_gives_the_rotary_transformers_builds_from_the_patched_config(tmp_path, fixture, request_):
    """Apply the override to the *base* config the way vLLM does; the rotary must match the patched folder's."""
    import torch
    from transformers import AutoConfig

    folder = patched_folder(tmp_path, fixture, **request_)
    _, args = export_arguments(folder, "vllm")
    overrides = json.loads(option(args.argv, "--hf-overrides"))
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "config.json").write_text(json.dumps(load_fixture(fixture)))
    base = AutoConfig.from_pretrained(base_dir)
    vllm_apply_dict_overrides(base, overrides)
    got, want = rotary_from_config(base), rotary_from_config(AutoConfig.from_pretrained(folder))
    wanted = dict(want.named_buffers())
    assert wanted and all(torch.allclose(buf, wanted[name], rtol=1e-6) for name, buf in got.named_buffers())
    scalings = [n for n in vars(want) if n.endswith("attention_scaling")]
    assert scalings and all(getattr(got, n) == pytest.approx(getattr(want, n)) for n in scalings)
    if "attn_factor" in json.dumps(overrides):  # vLLM's meaning: attn_factor x (0.1 ln s + 1)
        assert want.attention_scaling == pytest.approx(1.1 * (0.1 * math.log(2.0) + 1))


# --- SGLang -------------------------------------------------------------------------------------

def test_sglang_needs_context_length_override_and_the_env_switch(qwen_yarn):
    _, args = export_arguments(qwen_yarn, "sglang")
    assert args.env == {ENV_LONGER_CONTEXT: "1"}  # SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1
    assert args.argv[:3] == ["python", "-m", "sglang.launch_server"]
    assert option(args.argv, "--model-path") == str(qwen_yarn)
    assert option(args.argv, "--context-length") == "131072"
    override = json.loads(option(args.argv, "--json-model-override-args"))
    # Qwen's SGLang recipe: {"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
    # "original_max_position_embeddings": 32768}} with --context-length 131072
    assert override["rope_scaling"]["rope_type"] == "yarn" and override["rope_scaling"]["factor"] == 4.0
    assert override["rope_scaling"]["original_max_position_embeddings"] == 32768
    assert override["rope_theta"] == override["rope_scaling"]["rope_theta"] == 1_000_000
    command = shlex.split(args.command_line())
    assert command[0] == f"{ENV_LONGER_CONTEXT}=1" and command[1:] == args.argv


def test_sglang_serves_a_vlm_from_the_patched_config(tmp_path):
    folder = patched_folder(tmp_path, "Qwen__Qwen3-VL-4B-Instruct", method="yarn", factor=2.0)
    _, args = export_arguments(folder, "sglang")
    assert "--json-model-override-args" not in args.argv  # a flat update never reaches text_config
    assert option(args.argv, "--context-length") == str(2 * 262144)
    assert any("patched config.json" in note for note in args.notes)


# --- llama.cpp ----------------------------------------------------------------------------------

def test_llamacpp_yarn_flags(qwen_yarn):
    # Qwen's llama.cpp recipe: --rope-scaling yarn --rope-scale 4 --yarn-orig-ctx 32768
    _, args = export_arguments(qwen_yarn, "llama.cpp")
    argv = args.argv
    assert argv[0] == "llama-server" and option(argv, "-m") == f"{qwen_yarn}.gguf"
    assert option(argv, "-c") == "131072"
    assert option(argv, "--rope-scaling") == "yarn" and option(argv, "--rope-scale") == "4"
    assert option(argv, "--yarn-orig-ctx") == "32768"
    assert option(argv, "--yarn-beta-fast") == "32" and option(argv, "--yarn-beta-slow") == "1"
    assert option(argv, "--yarn-attn-factor") == "1" and option(argv, "--rope-freq-base") == "1000000"
    assert args.prepare == [["python", "convert_hf_to_gguf.py", str(qwen_yarn), "--outfile", f"{qwen_yarn}.gguf"]]


def test_llamacpp_linear_and_ntk(tmp_path):
    _, linear = export_arguments(patched_folder(tmp_path, "meta-llama__Llama-2-7b-hf", name="lin",
                                                method="linear", factor=4.0), "llama.cpp")
    assert option(linear.argv, "--rope-scaling") == "linear" and option(linear.argv, "--rope-scale") == "4"
    assert option(linear.argv, "-c") == "16384"
    _, ntk = export_arguments(patched_folder(tmp_path, "meta-llama__Llama-2-7b-hf", name="ntk",
                                             method="ntk", factor=2.0), "llama.cpp")
    # NTK-aware base by hand: 10000 * 2 ** (128 / 126)
    assert float(option(ntk.argv, "--rope-freq-base")) == pytest.approx(10000 * 2 ** (128 / 126), rel=1e-12)
    assert option(ntk.argv, "--rope-scaling") == "none" and option(ntk.argv, "-c") == "8192"


def test_llamacpp_refuses_dynamic_ntk(tmp_path):
    folder = patched_folder(tmp_path, "meta-llama__Llama-2-7b-hf", method="dynamic", factor=4.0)
    with pytest.raises(EngineUnsupportedError) as caught:
        export_arguments(folder, "llama.cpp")
    assert caught.value.exit_code == 3 and "dynamic" in str(caught.value)


# --- TGI ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["linear", "dynamic"])
def test_tgi_takes_linear_and_dynamic_by_flag(tmp_path, method):
    folder = patched_folder(tmp_path, "meta-llama__Llama-2-7b-hf", method=method, factor=4.0)
    _, args = export_arguments(folder, "tgi")
    argv = args.argv
    assert argv[:3] == ["text-generation-launcher", "--model-id", str(folder)]
    assert option(argv, "--rope-scaling") == method and option(argv, "--rope-factor") == "4"
    total, inputs = int(option(argv, "--max-total-tokens")), int(option(argv, "--max-input-tokens"))
    prefill = int(option(argv, "--max-batch-prefill-tokens"))
    # the launcher's own checks: input < total, prefill >= input
    assert total == 16384 and inputs < total and prefill >= inputs


def test_tgi_serves_default_yarn_from_config_json(qwen_yarn):
    _, args = export_arguments(qwen_yarn, "tgi")
    assert "--rope-scaling" not in args.argv  # the launcher rejects --rope-scaling yarn
    assert option(args.argv, "--max-total-tokens") == "131072"
    assert any("config.json" in note for note in args.notes)


def test_tgi_refuses_yarn_it_would_serve_differently(tmp_path):
    folder = patched_folder(tmp_path, "Qwen__Qwen2.5-7B-Instruct", method="yarn", factor=4.0, beta_fast=16)
    with pytest.raises(EngineUnsupportedError, match="beta_fast=16") as caught:
        export_arguments(folder, "tgi")
    assert caught.value.exit_code == 3


def test_tgi_refuses_a_transformers5_layout(tmp_path):
    config = load_fixture("meta-llama__Llama-2-7b-hf")
    del config["rope_scaling"]
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    folder = patched_folder(tmp_path, "meta-llama__Llama-2-7b-hf", config=config, method="linear", factor=2.0)
    with pytest.raises(EngineUnsupportedError, match="rope_parameters"):
        export_arguments(folder, "tgi")
    _, vllm = export_arguments(folder, "vllm")  # vLLM reads it
    assert json.loads(option(vllm.argv, "--hf-overrides"))["rope_parameters"]["factor"] == 2.0


# --- refusals and the command line ----------------------------------------------------------------

def test_a_folder_without_a_valid_receipt_is_refused(tmp_path, qwen_yarn):
    with pytest.raises(ResolutionError):
        export_arguments(tmp_path / "missing", "vllm")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps(load_fixture("Qwen__Qwen2.5-7B-Instruct")))
    with pytest.raises(InvalidConfigError, match="no rope_receipt.json"):
        export_arguments(bare, "vllm")
    (bare / "rope_receipt.json").write_text('{"schema": "something else"}')
    with pytest.raises(InvalidConfigError, match="not a ropekit receipt"):
        export_arguments(bare, "vllm")
    edited = json.loads((qwen_yarn / "config.json").read_text())
    edited["rope_scaling"]["factor"] = 8.0
    (qwen_yarn / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ReceiptMismatchError) as caught:
        export_arguments(qwen_yarn, "sglang")
    assert caught.value.exit_code == 3


def test_export_command(qwen_yarn, tmp_path, capsys):
    assert main(["export", str(qwen_yarn), "--engine", "vllm", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["long_context"]["new_max_position_embeddings"] == 131072
    assert out["argv"][:2] == ["vllm", "serve"] and "--hf-overrides" in out["command"]
    assert any("no weight files" in note for note in out["notes"])
    assert main(["export", str(qwen_yarn), "--engine", "llama.cpp"]) == 0
    human = capsys.readouterr().out
    assert "assumes: llama.cpp" in human and "first:" in human and "--rope-scaling yarn" in human
    assert main(["export", str(tmp_path), "--engine", "vllm"]) == 4
    assert main(["export", str(qwen_yarn), "--engine", "ollama"]) == 2
    assert capsys.readouterr().err.count("error:") == 2
