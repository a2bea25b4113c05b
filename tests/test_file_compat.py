"""One patched file for every supported transformers, and the three states 5.x silently misreads.

Each fixture is turned into the layout transformers 5.x saves (``rope_parameters`` with
``rope_theta`` inside; Gemma 3 keyed by layer type), patched, and its rotary module built by
the installed transformers (run this file under 4.57 and under 5.x): the frequencies must
match the closed form of the same request planned on the original 4.x-layout file.
"""

from __future__ import annotations

import copy
import json

import pytest
from conftest import load_fixture, rotary_from_config, transformers_major

from ropekit import LongContextConfig, apply_rope_scaling, plan
from ropekit.cli import main
from ropekit.errors import InvalidConfigError, TransformersVersionError

CASES = {
    "meta-llama__Llama-2-7b-hf": dict(method="yarn", factor=4),
    "meta-llama__Meta-Llama-3-8B-Instruct": dict(method="linear", factor=2),
    "meta-llama__Llama-3.1-8B-Instruct": dict(method="yarn", factor=2, on_existing="compound"),
    "Qwen__Qwen2.5-7B-Instruct": dict(method="yarn", factor=4),
    "Qwen__Qwen3-8B": dict(method="dynamic", factor=2),
    "Qwen__Qwen2.5-VL-7B-Instruct": dict(method="yarn", factor=4),
    "Qwen__Qwen3-VL-4B-Instruct": dict(method="yarn", factor=4),
    "mistralai__Mixtral-8x7B-v0.1": dict(method="ntk", factor=2),
    "deepseek-ai__DeepSeek-V3": dict(method="yarn", factor=2, on_existing="compound", allow_unstable=True),
    "google__gemma-3-4b-it": dict(method="linear", factor=2, on_existing="compound", allow_unstable=True),
    "meta-llama__Llama-3.2-11B-Vision-Instruct": dict(method="yarn", factor=2, on_existing="compound"),
    "llava-hf__llava-1.5-7b-hf": dict(method="yarn", factor=4),
}


def as_5x_layout(config: dict) -> dict:
    """The rope keys as transformers 5.x saves them (what ``save_pretrained`` writes)."""
    out = copy.deepcopy(config)
    for node in (out, out.get("text_config")):
        if not isinstance(node, dict) or not ({"rope_scaling", "rope_theta"} & set(node) or
                                              node.get("model_type", "").startswith("gemma3")):
            continue
        legacy = dict(node.pop("rope_scaling", None) or {})
        legacy.setdefault("rope_type", legacy.get("type", "default"))
        if str(node.get("model_type", "")).startswith("gemma3"):
            node["rope_parameters"] = {
                "full_attention": {**legacy, "rope_theta": node.pop("rope_theta", 1e6)},
                "sliding_attention": {"rope_type": "default", "rope_theta": node.pop("rope_local_base_freq", 1e4)},
            }
            continue
        if "rope_theta" in node:
            legacy["rope_theta"] = node.pop("rope_theta")
        node["rope_parameters"] = legacy
    return out


def _auto(config: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(**{k: v for k, v in config.items() if k != "auto_map"})


def _global_inv_freq(module) -> list[float]:
    buffer = getattr(module, "full_attention_inv_freq", None)
    return (buffer if buffer is not None else module.inv_freq).double().tolist()


@pytest.mark.skipif(transformers_major() < 5, reason="what 5.x itself reads from a 4.x file")
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_5x_layout_here_is_what_5x_reads(name):
    legacy = load_fixture(name)
    five = as_5x_layout(legacy)
    read_legacy, read_five = _auto(legacy).get_text_config(), _auto(five).get_text_config()
    assert read_five.rope_parameters == read_legacy.rope_parameters


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_patched_5x_layout_file_reads_the_same_in_every_supported_transformers(name):
    legacy = load_fixture(name)
    request = LongContextConfig(**CASES[name])
    expected, attention = plan(legacy, request).expected()
    five = as_5x_layout(legacy)
    apply_rope_scaling(five, request)
    # the legacy mirror equals the rope_parameters it copies (5.x lets rope_scaling win)
    for node in (five, five.get("text_config")):
        if isinstance(node, dict) and isinstance(node.get("rope_parameters"), dict):
            params = node["rope_parameters"]
            flat = params.get("full_attention", params)
            mirror = node.get("rope_scaling") or {"rope_type": "default"}
            assert {**mirror, "rope_theta": node["rope_theta"]} == \
                {"rope_theta": node["rope_theta"], **{k: v for k, v in flat.items() if k != "partial_rotary_factor"}}
    rotary = rotary_from_config(_auto(json.loads(json.dumps(five))))
    got = _global_inv_freq(rotary)
    assert len(got) == len(expected)
    assert max(abs(g - e) / e for g, e in zip(got, expected)) <= 1e-6
    found = getattr(rotary, "full_attention_attention_scaling", None)
    found = rotary.attention_scaling if found is None else found
    assert float(found) == pytest.approx(attention, rel=1e-6)


def _olmo3(sliding_theta: float) -> dict:
    config = load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    theta = config.pop("rope_theta")
    config.pop("rope_scaling", None)
    config.update(model_type="olmo3", architectures=["Olmo3ForCausalLM"],
                  layer_types=["sliding_attention", "full_attention"] * 16,
                  rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": theta},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": sliding_theta}})
    return config


def test_per_layer_type_file_without_a_legacy_form_is_refused_naming_the_version():
    """olmo3 (known to 4.57, which builds its sliding layers from the one rope_theta) with two bases."""
    with pytest.raises(TransformersVersionError, match=r"transformers 4\.57 cannot read.*'olmo3'"):
        apply_rope_scaling(_olmo3(10000.0), LongContextConfig(method="yarn", factor=4))


def test_per_layer_type_file_on_one_base_gets_the_flat_legacy_form():
    config = _olmo3(500000.0)
    apply_rope_scaling(config, LongContextConfig(method="yarn", factor=4))
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == {k: v for k, v in config["rope_parameters"]["full_attention"].items()
                                      if k != "rope_theta"}
    from transformers import AutoConfig

    built = AutoConfig.for_model(**config)  # 4.57 reads rope_scaling; 5.x the nested dicts: both yarn x4
    rope = built.rope_parameters["full_attention"] if transformers_major() >= 5 else built.rope_scaling
    assert (rope["rope_type"], rope["factor"]) == ("yarn", 4.0)


# --- the three traps -----------------------------------------------------------------------------

def _llama31_5x() -> dict:
    return as_5x_layout(load_fixture("meta-llama__Llama-3.1-8B-Instruct"))


def test_legacy_rope_scaling_disagreeing_with_rope_parameters_is_flagged_and_refused(capsys):
    config = _llama31_5x()
    config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}  # 5.x reads this one
    with pytest.raises(InvalidConfigError, match="rope_scaling disagrees with rope_parameters.*wins"):
        plan(config, LongContextConfig(method="yarn", factor=2, on_existing="compound"))
    if transformers_major() >= 5:  # the trap is real: 5.x builds the legacy dict
        assert _auto(config).rope_parameters["rope_type"] == "linear"


def test_an_identical_mirror_is_not_a_trap():
    config = _llama31_5x()
    params = config["rope_parameters"]
    config["rope_scaling"] = {k: v for k, v in params.items() if k != "rope_theta"}
    config["rope_theta"] = params["rope_theta"]
    plan(config, LongContextConfig(method="yarn", factor=2, on_existing="compound"))


def test_top_level_original_window_that_overwrites_the_dict_is_flagged(tmp_path, capsys):
    config = load_fixture("meta-llama__Llama-3.1-8B-Instruct")
    config["original_max_position_embeddings"] = 4096  # Phi-3's key, beside llama3's own 8192
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    assert main(["inspect", str(folder)]) == 0
    assert "original_max_position_embeddings (4096) overwrites the rope dict's original_max_position_embeddings " \
           "(8192)" in capsys.readouterr().out
    with pytest.raises(InvalidConfigError, match="overwrites"):
        plan(config, LongContextConfig(method="yarn", factor=2, on_existing="compound"))
    if transformers_major() >= 5:
        assert rotary_from_config(_auto(config)).config.rope_parameters["original_max_position_embeddings"] == 4096


def test_flat_rope_scaling_on_a_family_that_needs_layer_types_is_flagged():
    from ropekit.registry import get_registry
    from ropekit.registry.family import Family
    from ropekit.scaling.config_view import ConfigView
    from ropekit.scaling.file_compat import traps

    class Nested(Family):  # a family like MiMo-V2-Flash: transformers 5.x needs nested dicts
        name = "nested-test"
        model_types = ("nested-test",)
        flat_rope_scaling_folds = False

    config = load_fixture("meta-llama__Llama-3.1-8B-Instruct")
    config["layer_types"] = ["sliding_attention", "full_attention"] * 16
    (found,) = traps(ConfigView(config), Nested())
    assert "KeyError 'full_attention'" in found
    assert traps(ConfigView(config), get_registry().lookup("llama")) == []


def test_audit_flags_traps(tmp_path, capsys):
    config = _llama31_5x()
    config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    folder = tmp_path / "trap"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    main(["audit", str(folder)])
    out = capsys.readouterr().out
    assert "rope_scaling disagrees with rope_parameters" in out
