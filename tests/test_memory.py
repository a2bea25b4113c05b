"""Memory plan: parameter counts against published figures, KV bytes computed by hand."""

from __future__ import annotations

import json
import math

import pytest
from conftest import FIXTURE_NAMES, FIXTURES, load_fixture

from ropekit.cli import main
from ropekit.errors import InvalidConfigError, InvalidRequestError
from ropekit.training.architecture import read_architecture
from ropekit.training.memory import (
    GIB,
    USABLE_FRACTION,
    count_parameters,
    find_gpu,
    kv_bytes_per_token,
    kv_cache_bytes,
    plan_memory,
)


def params(name):
    return count_parameters(read_architecture(load_fixture(name)))


# --- parameter counts (published figures) ------------------------------------------------------

@pytest.mark.parametrize("name, published", [
    ("meta-llama__Llama-2-7b-hf", 6.74e9),  # model card: 7B, HF: 6.74B
    ("Qwen__Qwen2.5-7B", 7.61e9),  # Qwen2.5 report: 7.61B
    ("mistralai__Mixtral-8x7B-v0.1", 46.7e9),  # Mistral: 46.7B total
    ("deepseek-ai__DeepSeek-V3", 671e9),  # DeepSeek-V3 report: 671B total (MTP module excluded)
    ("meta-llama__Llama-3.1-8B-Instruct", 8.03e9),  # model card: 8.03B
    ("meta-llama__Llama-3.2-1B-Instruct", 1.23e9),  # model card: 1.23B (tied embeddings)
    ("Qwen__Qwen3-30B-A3B", 30.5e9),  # model card: 30.5B total
    ("microsoft__phi-4", 14.7e9),  # model card: 14B (14.7B)
])
def test_total_parameters_match_published_counts(name, published):
    assert params(name).total == pytest.approx(published, rel=0.02)


def test_exact_counts_where_the_published_figure_is_exact():
    assert params("meta-llama__Llama-2-7b-hf").total == 6_738_415_616
    assert params("mistralai__Mixtral-8x7B-v0.1").total == 46_702_792_704


@pytest.mark.parametrize("name, published_active", [
    ("mistralai__Mixtral-8x7B-v0.1", 12.9e9),  # Mistral: 12.9B active per token
    ("deepseek-ai__DeepSeek-V3", 37e9),  # DeepSeek-V3 report: 37B activated
    ("Qwen__Qwen3-30B-A3B", 3.3e9),  # model card: 3.3B activated
])
def test_active_parameters_of_moe_models(name, published_active):
    assert params(name).active == pytest.approx(published_active, rel=0.02)


def test_tied_embeddings_drop_the_lm_head():
    config = load_fixture("meta-llama__Llama-3.2-1B-Instruct")
    untied = dict(config, tie_word_embeddings=False)
    # one vocab x hidden matrix: 128256 x 2048
    assert params_of(untied).total - params_of(config).total == 128256 * 2048


def params_of(config):
    return count_parameters(read_architecture(config))


def test_vlm_counts_the_language_tower_and_says_the_vision_tower_is_excluded():
    vl = read_architecture(load_fixture("Qwen__Qwen2.5-VL-7B-Instruct"))
    # the language model of Qwen2.5-VL-7B is Qwen2.5-7B (7.61B); the vision tower is extra
    assert count_parameters(vl).total == pytest.approx(7.61e9, rel=0.02)
    assert vl.vision_tower == "vision_config" and any("excluded" in n for n in vl.notes)
    nested = read_architecture(load_fixture("Qwen__Qwen3-VL-4B-Instruct"))
    assert nested.text_path == ("text_config",) and nested.tied_embeddings
    assert nested.num_layers == 36 and nested.num_kv_heads == 8 and nested.head_dim == 128


def test_values_a_config_omits_come_from_transformers_and_are_reported():
    # Gemma 3's text_config leaves heads, head size and vocabulary to the config class
    plan = plan_memory(load_fixture("google__gemma-3-4b-it"), 8192)
    arch = plan.arch
    assert (arch.num_heads, arch.num_kv_heads, arch.head_dim) == (8, 4, 256)
    assert arch.filled["head_dim"] == 256 and any("head_dim=256" in n for n in plan.notes)
    assert count_parameters(arch).total == pytest.approx(3.88e9, rel=0.02)  # Gemma 3 report: 3.88B text


def test_a_config_without_dimensions_is_refused_naming_the_key():
    with pytest.raises(InvalidConfigError, match="hidden_size is missing"):
        read_architecture({"model_type": "not_a_transformers_model", "num_hidden_layers": 2})


# --- KV cache -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kv, by_hand", [
    ("meta-llama__Llama-2-7b-hf", "bf16", 32 * 2 * 32 * 128 * 2),  # 524288: MHA
    ("Qwen__Qwen2.5-7B", "bf16", 28 * 2 * 4 * 128 * 2),  # 57344: GQA with 4 KV heads
    ("mistralai__Mixtral-8x7B-v0.1", "bf16", 32 * 2 * 8 * 128 * 2),  # 131072
    ("meta-llama__Llama-2-7b-hf", "fp8", 32 * 2 * 32 * 128 * 1),  # 262144
    ("deepseek-ai__DeepSeek-V3", "bf16", 61 * (512 + 64) * 2),  # 70272: MLA latent + rope key
])
def test_kv_bytes_per_token_by_hand(name, kv, by_hand):
    full, sliding = kv_bytes_per_token(read_architecture(load_fixture(name)), kv)
    assert (full, sliding) == (by_hand, 0)


def test_qwen2_sliding_window_is_off_unless_use_sliding_window():
    arch = read_architecture(load_fixture("Qwen__Qwen2.5-7B"))  # sliding_window 131072, use_sliding_window false
    assert kv_cache_bytes(arch, 200_000) == 57344 * 200_000


def test_gemma3_sliding_layers_are_capped_at_the_window():
    from transformers import AutoConfig

    arch = read_architecture(load_fixture("google__gemma-3-4b-it"))
    # transformers' own layer pattern for 34 layers: every sixth is global
    types = AutoConfig.for_model("gemma3_text", num_hidden_layers=34).layer_types
    full_layers = types.count("full_attention")
    assert full_layers == 5
    per_layer = 2 * 4 * 256 * 2  # K and V, 4 KV heads, head size 256, bf16
    expected = full_layers * per_layer * 131072 + (34 - full_layers) * per_layer * 1024
    assert kv_cache_bytes(arch, 131072) == expected
    assert kv_bytes_per_token(arch) == (full_layers * per_layer, (34 - full_layers) * per_layer)


def test_mistral_sliding_window_applies_to_every_layer():
    config = dict(load_fixture("mistralai__Mixtral-8x7B-v0.1"), sliding_window=4096)
    arch = read_architecture(config)
    assert kv_cache_bytes(arch, 32768) == 32 * 2 * 8 * 128 * 2 * 4096


# --- plans --------------------------------------------------------------------------------------

def test_inference_plan_weights_and_kv_by_hand():
    plan = plan_memory(load_fixture("meta-llama__Llama-2-7b-hf"), 4096, gpu="A100-80GB")
    assert plan.breakdown["weights"] == 6_738_415_616 * 2
    assert plan.breakdown["KV cache"] == 524288 * 4096  # 2 GiB, the classic Llama-2 figure
    assert plan.gpu.memory_gib == 80.0 and plan.fits


def test_quantized_weights_keep_embeddings_in_bf16():
    config = load_fixture("meta-llama__Llama-2-7b-hf")
    embeddings = 2 * 32000 * 4096  # input embedding + LM head
    norms = 2 * 4096 * 32 + 4096
    linear = 6_738_415_616 - embeddings - norms
    plan = plan_memory(config, 1024, weights="int4")
    assert plan.breakdown["weights"] == linear * 0.5 + (embeddings + norms) * 2


def test_deepseek_defaults_to_its_fp8_release():
    plan = plan_memory(load_fixture("deepseek-ai__DeepSeek-V3"), 4096)
    assert plan.weights == "fp8" and any("quantization_config" in n for n in plan.notes)


def test_batch_multiplies_the_kv_cache():
    config = load_fixture("Qwen__Qwen2.5-7B")
    one, four = plan_memory(config, 32768), plan_memory(config, 32768, batch=4)
    assert four.breakdown["KV cache"] == 4 * one.breakdown["KV cache"] == 4 * 57344 * 32768


def test_train_plan_counts_adamw_states_and_drops_the_kv_cache():
    plan = plan_memory(load_fixture("meta-llama__Llama-2-7b-hf"), 8192, mode="train")
    n = 6_738_415_616
    states = ["weights (bf16)", "gradients (bf16)", "master weights (fp32)", "AdamW m (fp32)", "AdamW v (fp32)"]
    assert sum(plan.breakdown[k] for k in states) == 16 * n  # bf16 weights + grads, fp32 master + m + v
    assert "KV cache" not in plan.breakdown
    assert plan.breakdown["checkpointed layer inputs"] == 8192 * 32 * 4096 * 2
    assert plan.breakdown["logits and loss"] == 8192 * 32000 * 10


def test_longest_context_is_the_last_that_fits():
    plan = plan_memory(load_fixture("Qwen__Qwen2.5-7B"), 131072, gpu="H100")
    longest = plan.max_context()
    usable = 79.6 * GIB * USABLE_FRACTION
    assert plan.bytes_at(longest) <= usable < plan.bytes_at(longest + 1)


def test_extra_memory_buys_context_at_the_kv_rate():
    # beyond the prefill chunk only the KV cache grows: 40 GiB more holds 40 GiB x 0.9 / 57344 more tokens
    plan = plan_memory(load_fixture("Qwen__Qwen2.5-7B"), 131072)
    gained = plan.max_context(80.0) - plan.max_context(40.0)
    assert abs(gained - math.floor(40 * GIB * USABLE_FRACTION / 57344)) <= 1


def test_nothing_fits_when_the_weights_do_not():
    plan = plan_memory(load_fixture("deepseek-ai__DeepSeek-V3"), 4096, gpu="H200")
    assert plan.max_context() == 0 and plan.fits is False


@pytest.mark.parametrize("name, gpu", [("h100", "H100 80GB"), ("A100-40GB", "A100 40GB"), ("rtx 4090", "RTX 4090"),
                                       ("H200", "H200"), ("l40s", "L40S")])
def test_gpu_names(name, gpu):
    assert find_gpu(name).name == gpu


def test_bad_requests_are_usage_errors():
    config = load_fixture("meta-llama__Llama-2-7b-hf")
    for kwargs in ({"gpu": "TPU v5"}, {"weights": "int4", "mode": "train"}, {"gpu": "H100", "gpu_memory_gib": 80},
                   {"mode": "serve"}, {"kv": "int4"}):
        with pytest.raises(InvalidRequestError) as caught:
            plan_memory(config, 4096, **kwargs)
        assert caught.value.exit_code == 2


# --- command line -------------------------------------------------------------------------------

def test_memory_command_json(capsys):
    folder = str(FIXTURES / "Qwen__Qwen2.5-7B")
    assert main(["memory", folder, "--context", "131072", "--gpu", "H100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"]["total"] == pytest.approx(7.61e9, rel=0.02)
    assert out["kv_bytes_per_token"]["full_attention_layers"] == 57344
    assert out["breakdown_bytes"]["KV cache"] == 57344 * 131072
    assert out["gpu"]["name"] == "H100 80GB" and out["gpu"]["fits"] is True
    assert out["model"]["source"] == "local" and out["assumptions"]


def test_memory_command_without_a_gpu_shows_the_table(capsys):
    folder = str(FIXTURES / "meta-llama__Llama-2-7b-hf")
    assert main(["memory", folder, "--context", "4096"]) == 0
    out = capsys.readouterr().out
    assert "524,288 B/token" in out and "H200" in out and "RTX 4090" in out and "assumes:" in out


def test_memory_command_usage_and_input_errors(capsys, tmp_path):
    folder = str(FIXTURES / "meta-llama__Llama-2-7b-hf")
    assert main(["memory", folder, "--context", "4096", "--mode", "train", "--weights", "int4"]) == 2
    assert main(["memory", str(tmp_path / "missing"), "--context", "4096"]) == 4
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["memory", str(tmp_path), "--context", "4096", "--gpu", "H100"]) == 0  # LlamaConfig defaults
    captured = capsys.readouterr()
    assert "not in config.json" in captured.out and captured.err.count("error:") == 2


# --- defaults without importing transformers ---------------------------------------------------

@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_bundled_defaults_give_what_the_installed_transformers_gives(name, monkeypatch):
    """The captured defaults table and transformers' own config classes read every fixture alike."""
    from transformers import CONFIG_MAPPING

    from ropekit.training import architecture

    config = load_fixture(name)
    text, _ = architecture._text_config(config)
    model_type = text.get("model_type") or config.get("model_type")
    if model_type not in CONFIG_MAPPING:  # the table's answer (captured from a newer transformers) stands alone
        pytest.skip(f"the installed transformers has no config class for {model_type!r}")
    try:
        from_table = read_architecture(config)
    except InvalidConfigError as exc:
        from_table = str(exc)
    monkeypatch.setattr(architecture, "_with_defaults", architecture._with_transformers_defaults)
    try:
        from_transformers = read_architecture(config)
    except InvalidConfigError as exc:
        from_transformers = str(exc)
    if isinstance(from_table, str) or isinstance(from_transformers, str):
        assert from_table == from_transformers
        return
    ignore = {"filled", "defaults_from"}
    fields = [f for f in from_table.__dataclass_fields__ if f not in ignore]
    assert {f: getattr(from_table, f) for f in fields} == {f: getattr(from_transformers, f) for f in fields}
    # layer_types is read from the sliding-window keys either way; an alias of a key the config has
    # (num_experts / num_local_experts) is the config's own value, whichever name a version uses
    same = {"layer_types", "num_experts", "num_local_experts"}
    assert {k: v for k, v in from_table.filled.items() if k not in same} == \
        {k: v for k, v in from_transformers.filled.items() if k not in same}


# Their layer kinds follow config-specific patterns (MiMo's hybrid_layer_pattern, DeepSeek-V4's
# compression ratios) that only transformers' config class derives: memory asks it, exactly.
DERIVED_BY_TRANSFORMERS = {"XiaomiMiMo__MiMo-V2-Flash", "deepseek-ai__DeepSeek-V4-Flash"}


def test_memory_never_imports_torch_or_transformers(tmp_path):
    """``ropekit memory`` is arithmetic on a config: it costs what ``ropekit plan`` costs."""
    import subprocess
    import sys

    probe = ("import sys\nfrom ropekit.cli import main\n"
             "for folder in sys.argv[1:]:\n"
             "    main(['memory', folder, '--context', '65536', '--gpu', 'H100'])\n"
             "print('HEAVY', sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n")
    folders = [str(FIXTURES / name) for name in FIXTURE_NAMES if name not in DERIVED_BY_TRANSFORMERS]
    proc = subprocess.run([sys.executable, "-c", probe, *folders], capture_output=True, text=True, timeout=300)
    assert proc.stdout.count("source: ") == len(folders), proc.stderr[-2000:]
    assert "HEAVY []" in proc.stderr, proc.stderr[-2000:]
