"""The generic family (model_types no plugin claims) and the architectural refusals.

Expected values are computed by hand from the configs: rotary dimensions from head_dim,
partial_rotary_factor and qk_rope_head_dim; windows from max_position_embeddings.
"""

from __future__ import annotations

import json
import sys

import pytest

from conftest import load_fixture
from ropekit import LongContextConfig, plan
from ropekit.errors import ArchitectureError, UnknownFamilyError
from ropekit.plugins.generic import is_local_layer_type, transformers_types
from ropekit.scaling.engine import apply_config

YARN4 = LongContextConfig(method="yarn", factor=4)


def olmo3_file() -> dict:
    """A transformers 5.x file of an unclaimed per-layer-type model (OLMo 3 layout: one base for both
    layer types, as transformers' Olmo3Config builds it)."""
    return {"model_type": "olmo3", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 65536,
            "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 500000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}}}


def test_unclaimed_model_type_falls_to_the_generic_family_and_says_why():
    p = plan(olmo3_file(), YARN4)
    assert p.family.name == "generic" and p.family.plugin == "ropekit.plugins.generic"
    assert [s.label for s in p.sites] == ["rope_parameters.full_attention"]  # sliding never scaled
    assert p.rotary_dim == 4096 // 32 and p.native_window == 65536 and p.new_window == 4 * 65536
    note = p.to_json()["family"]["note"]
    assert "no plugin claims model_type 'olmo3'" in note and "sliding_attention left alone" in note
    paths = {tuple(c.path) for c in p.changes}
    assert ("rope_parameters", "full_attention", "rope_type") in paths
    assert not any("sliding_attention" in path for path in paths)


def test_legacy_file_of_an_unclaimed_type_keeps_its_layout():
    cfg = {"model_type": "olmoe", "hidden_size": 2048, "num_attention_heads": 16, "max_position_embeddings": 4096,
           "rope_theta": 500000, "rope_scaling": None}
    plan_, receipt = apply_config(cfg, YARN4)
    assert cfg["rope_scaling"]["rope_type"] == "yarn" and cfg["rope_scaling"]["original_max_position_embeddings"] == 4096
    assert cfg["rope_theta"] == 500000 and cfg["max_position_embeddings"] == 16384
    assert plan_.rotary_dim == 128
    assert receipt["family"]["name"] == "generic" and "olmoe" in receipt["family"]["note"]


def test_a_config_class_that_takes_only_legacy_type_and_factor_gets_ntk_only():
    from conftest import transformers_major
    from ropekit.errors import UnsupportedMethodError

    cfg = {"model_type": "olmo2", "hidden_size": 2048, "num_attention_heads": 16, "max_position_embeddings": 4096,
           "rope_theta": 500000, "rope_scaling": None}
    if transformers_major() >= 5:
        assert plan(cfg, YARN4).method.name == "yarn"
        return
    with pytest.raises(UnsupportedMethodError, match="legacy .type, factor. rope_scaling.*ntk"):
        plan(cfg, YARN4)  # OlmoConfig 4.57 raises on any rope_type key
    assert plan(cfg, LongContextConfig(method="auto", factor=4)).method.name == "ntk"


def test_partial_rotary_factor_and_legacy_rotary_dim():
    stablelm = {"model_type": "stablelm", "hidden_size": 2560, "num_attention_heads": 32,
                "max_position_embeddings": 4096, "rope_theta": 10000, "partial_rotary_factor": 0.25}
    assert plan(stablelm, YARN4).rotary_dim == 20  # 2560/32 = 80, x 0.25
    minimax = {"model_type": "minimax_m2", "hidden_size": 3072, "num_attention_heads": 48, "head_dim": 128,
               "rotary_dim": 64, "max_position_embeddings": 196608, "rope_theta": 5000000}
    assert plan(minimax, YARN4).rotary_dim == 64  # rotary_dim: partial 0.5 of head_dim 128


def test_mla_rotates_qk_rope_head_dim_where_the_config_class_forces_it():
    glm5 = {"model_type": "glm_moe_dsa", "hidden_size": 6144, "num_attention_heads": 64, "head_dim": 192,
            "qk_rope_head_dim": 64, "max_position_embeddings": 202752, "rope_theta": 1000000}
    assert transformers_types()["glm_moe_dsa"].get("head_dim_from") == "qk_rope_head_dim"
    assert plan(glm5, YARN4).rotary_dim == 64  # not the file's 192


def test_null_head_dim_is_written_for_transformers():
    cfg = {"model_type": "minimax", "hidden_size": 6144, "num_attention_heads": 64, "head_dim": None,
           "max_position_embeddings": 1048576, "rope_theta": 10000000}
    p = plan(cfg, YARN4)
    assert [c.after for c in p.changes if c.path == ("head_dim",)] == [96]


@pytest.mark.parametrize("cfg, family, words", [
    ({"model_type": "gpt2", "n_positions": 1024, "n_embd": 768}, "generic", "uses no RoPE"),
    ({"model_type": "opt", "max_position_embeddings": 2048, "hidden_size": 768}, "generic", "uses no RoPE"),
    ({"model_type": "gptj", "rotary_dim": 64, "n_positions": 2048}, "fixed_sinusoidal", "fixed sinusoidal"),
    ({"model_type": "cohere2", "rope_theta": 50000, "max_position_embeddings": 8192}, "local_rope_only",
     "only on its local"),
    ({"model_type": "kimi_linear", "rope_theta": 10000, "max_position_embeddings": 1048576}, "no_rope",
     "no rotary embedding"),
])
def test_architectures_that_cannot_scale_are_refused_with_the_reason(cfg, family, words):
    with pytest.raises(ArchitectureError) as err:
        plan(cfg, YARN4)
    assert err.value.exit_code == 3 and err.value.family == family and words in str(err.value)
    reason, _, fix = str(err.value).rpartition("; ")
    assert "\n" not in str(err.value) and reason and fix  # the reason, then what to do


def test_real_frontier_configs_are_refused_by_architecture():
    expected = {"google__gemma-4-26B-A4B": ("proportional_rope", "p-RoPE"),
                "meta-llama__Llama-4-Scout-17B-16E-Instruct": ("local_rope_only", "chunked"),
                "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": ("no_rope", "inert")}
    for name, (family, words) in expected.items():
        with pytest.raises(ArchitectureError) as err:
            plan(load_fixture(name), YARN4)
        assert (err.value.family, words in str(err.value)) == (family, True), name


def test_global_layers_without_rope_are_refused_from_the_data():
    cfg = olmo3_file()
    cfg["rope_parameters"]["full_attention"] = None  # global layers: no position encoding
    with pytest.raises(ArchitectureError, match="RoPE only on local layers"):
        plan(cfg, YARN4)


def test_unknown_only_when_transformers_does_not_know_it_either():
    with pytest.raises(UnknownFamilyError, match="transformers does not know"):
        plan({"model_type": "no-such-arch", "rope_theta": 10000, "max_position_embeddings": 4096}, YARN4)


def test_disabling_the_generic_plugin_restores_unknown_family(monkeypatch):
    from ropekit.registry import reset_registry

    monkeypatch.setenv("ROPEKIT_DISABLE_PLUGINS", "ropekit.plugins.generic")
    reset_registry()
    with pytest.raises(UnknownFamilyError):
        plan(olmo3_file(), YARN4)


def test_local_layer_types_are_recognised_by_name():
    assert [t for t in ("full_attention", "sliding_attention", "chunked_attention", "attention", "local_attention")
            if not is_local_layer_type(t)] == ["full_attention", "attention"]


def test_a_second_fallback_family_names_both_plugins():
    import pluggy

    from ropekit.plugins.generic import GenericFamily
    from ropekit.registry import Registry, make_plugin_manager

    class Other(GenericFamily):
        name = "other_generic"

    class Plugin:
        @pluggy.HookimplMarker("ropekit")
        def register_families(self, register):
            register(Other())

    pm = make_plugin_manager(entry_points=False)
    pm.register(Plugin(), name="other-plugin")
    reg = Registry.from_manager(pm)  # the second fallback is set aside, reported by name
    assert reg.fallback.name == "generic" and "other_generic" not in reg.families_by_name
    assert [f.plugin for f in reg.faults] == ["other-plugin"] and "'generic'" in reg.faults[0].error


def test_planning_a_generic_config_imports_no_transformers(tmp_path):
    import subprocess

    (tmp_path / "config.json").write_text(json.dumps(olmo3_file()))
    code = ("import sys, ropekit; from ropekit import plan, LongContextConfig; "
            f"plan({str(tmp_path / 'config.json')!r}, LongContextConfig(method='yarn', factor=4)); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr
