"""Every family on real configs, proven with the installed transformers' own rotary modules.

Expectations (native windows, rotary dimensions, shipped scaling, default rope_theta)
come from the model cards and papers, written out by hand below; the patched configs
are then built by transformers and its rotary module must carry the closed form.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

import pytest
from conftest import (
    FIXTURE_NAMES,
    load_fixture,
    no_transformers_warnings,
    rotary_from_config,
    transformers_major,
)

from test_frontier import FRONTIER

from ropekit import LongContextConfig, RopekitError, apply_rope_scaling, plan
from ropekit.errors import (
    ArchitectureError,
    CompoundingError,
    UnknownFamilyError,
    UnsupportedMethodError,
    WindowMismatchError,
)
from ropekit.registry import families, lookup

FAMILY_KEYS = ("mrope_section", "mrope_interleaved", "mscale", "mscale_all_dim", "truncate")


@dataclass(frozen=True)
class Expect:
    family: str
    native: int  # trained window (model card)
    rotary_dim: int  # pairs x 2 that rotate
    theta: float  # the global rope_theta transformers uses
    shipped: tuple[str, float, int] | None = None  # (rope_type, factor, original window)
    method: str = "yarn"  # the method the family can carry (phi3: ntk only)


EXPECT = {
    "Qwen__Qwen2-7B-Instruct": Expect("qwen", 32768, 3584 // 28, 1e6),
    "Qwen__Qwen2.5-7B": Expect("qwen", 32768, 128, 1e6),  # the file says 131072
    "Qwen__Qwen2.5-7B-Instruct": Expect("qwen", 32768, 128, 1e6),
    "Qwen__Qwen2.5-VL-7B-Instruct": Expect("qwen2_vl", 32768, 128, 1e6),  # the file says 128000
    "Qwen__Qwen3-30B-A3B": Expect("qwen_moe", 32768, 128, 1e6),  # the file says 40960
    "Qwen__Qwen3-8B": Expect("qwen", 32768, 128, 1e6),  # the file says 40960
    "Qwen__Qwen3-VL-4B-Instruct": Expect("qwen3_vl", 262144, 128, 5e6),
    "deepseek-ai__DeepSeek-V3": Expect("deepseek", 4096, 64, 1e4, ("yarn", 40, 4096)),  # qk_rope_head_dim
    "google__gemma-3-4b-it": Expect("gemma3", 131072 // 8, 256, 1e6, ("linear", 8, 131072 // 8)),
    "llava-hf__llava-1.5-7b-hf": Expect("llama", 4096, 128, 1e4),
    "meta-llama__Llama-2-7b-hf": Expect("llama", 4096, 128, 1e4),
    "meta-llama__Llama-3.1-8B-Instruct": Expect("llama", 8192, 128, 5e5, ("llama3", 8, 8192)),
    "meta-llama__Llama-3.2-11B-Vision-Instruct": Expect("mllama_text", 8192, 128, 5e5, ("llama3", 8, 8192)),
    "meta-llama__Llama-3.2-1B-Instruct": Expect("llama", 8192, 64, 5e5, ("llama3", 32, 8192)),
    "meta-llama__Llama-3.2-3B-Instruct": Expect("llama", 8192, 128, 5e5, ("llama3", 32, 8192)),
    "meta-llama__Meta-Llama-3-8B-Instruct": Expect("llama", 8192, 128, 5e5),
    "microsoft__Phi-3-mini-4k-instruct": Expect("phi3", 4096, 3072 // 32, 1e4, method="ntk"),
    "microsoft__phi-4": Expect("phi3", 16384, 128, 2.5e5, method="ntk"),
    "mistralai__Mixtral-8x7B-v0.1": Expect("mixtral", 32768, 128, 1e6),
}

# model_types with no fixture file yet: the installed transformers' own class defaults
CLASS_DEFAULTS = {
    "qwen2_vl": Expect("qwen2_vl", 32768, 8192 // 64, 1e6),
    "qwen3_vl_moe": Expect("qwen3_vl", 128000, 128, 5e6 if transformers_major() < 5 else 5e5),
    "qwen2_moe": Expect("qwen_moe", 32768, 2048 // 16, 1e4),
    "deepseek_v2": Expect("deepseek", 2048, 64, 1e4),
    "gpt_oss": Expect("gpt_oss", 4096, 64, 1.5e5, ("yarn", 32, 4096)),
    "llava_next": Expect("llama", 2048, 128, 1e4),
    "mistral3": Expect("llama", 131072, 128, 1e9),
    "gemma3_text": Expect("gemma3", 131072, 256, 1e6),
    "gemma2": Expect("gemma", 8192, 256, 1e4),
}


def _auto_config(data):
    from transformers import AutoConfig

    return AutoConfig.for_model(**data)


def _target(source: str, variant: str):
    if source in CLASS_DEFAULTS:
        from transformers import AutoConfig

        config = AutoConfig.for_model(source)
        return config if variant == "object" else config.to_dict()
    raw = load_fixture(source)
    if variant == "file":
        return raw
    config = _auto_config(raw)
    return config if variant == "object" else config.to_dict()  # re-saved in the installed layout


def _as_dict(target) -> dict:
    return copy.deepcopy(target if isinstance(target, dict) else target.to_dict())


ROPE_KEYS = ("rope_scaling", "rope_parameters", "rope_theta", "max_position_embeddings")


def _rope_containers(data: dict) -> list[str]:
    """Containers (top level, text_config) that hold rope settings, read from the JSON itself."""
    found = [""] if any(k in data for k in ROPE_KEYS) else []
    text = data.get("text_config")
    return found + (["text_config"] if isinstance(text, dict) and any(k in text for k in ROPE_KEYS) else [])


def _rope_at(data: dict, container: str) -> dict:
    """The (global) rope dict at a container, rope_theta folded in, whatever the layout."""
    node = data[container] if container else data
    params = node.get("rope_parameters")
    if isinstance(params, dict):
        return dict(params.get("full_attention", params))
    return {**(node.get("rope_scaling") or {}), "rope_theta": node.get("rope_theta")}


def _global_buffers(rotary):
    inv = getattr(rotary, "full_attention_inv_freq", None)
    if inv is not None:  # transformers 5.x Gemma 3: one module, per-layer-type buffers
        return inv, float(rotary.full_attention_attention_scaling)
    return rotary.inv_freq, float(rotary.attention_scaling)


def _independent_attention(method: str, total: float, rope_before: dict) -> float:
    if method != "yarn":
        return 1.0
    m, m_all = rope_before.get("mscale"), rope_before.get("mscale_all_dim")
    if m and m_all:  # DeepSeek: (0.1 m ln s + 1) / (0.1 m_all ln s + 1)
        return (0.1 * m * math.log(total) + 1) / (0.1 * m_all * math.log(total) + 1)
    return 0.1 * math.log(total) + 1  # YaRN Eq. 22


#: fixtures of architectures that cannot carry scaling, with the family that refuses them (tests/test_generic.py)
REFUSED = {"google__gemma-4-26B-A4B": "proportional_rope", "meta-llama__Llama-4-Scout-17B-16E-Instruct": "local_rope_only",
           "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": "no_rope"}
SOURCES = [(n, v) for n in EXPECT for v in ("file", "resaved", "object")] + \
          [(t, v) for t in CLASS_DEFAULTS for v in ("resaved", "object")]


@pytest.mark.parametrize("source, variant", SOURCES, ids=[f"{n}-{v}" for n, v in SOURCES])
def test_yarn_x4_lands_on_every_config(source, variant):
    exp = EXPECT.get(source) or CLASS_DEFAULTS[source]
    target = _target(source, variant)
    before = _as_dict(target)
    request = dict(method="yarn", factor=4.0)

    if exp.method != "yarn":
        with pytest.raises(UnsupportedMethodError, match="longrope.*ntk"):
            apply_rope_scaling(target, LongContextConfig(**request))
        assert _as_dict(target) == before
        request["method"] = exp.method
    total = 4.0
    if exp.shipped:
        rope_type, factor, original = exp.shipped
        total = 4.0 * factor
        with pytest.raises(CompoundingError) as err:
            apply_rope_scaling(target, LongContextConfig(**request))
        assert f"{rope_type} x{factor:g}" in str(err.value) and f"x{total:g}" in str(err.value)
        assert _as_dict(target) == before
        request.update(on_existing="compound", allow_unstable=total > 32)
        if rope_type == "linear":  # yarn would undo the shipped /8 on the high-frequency pairs
            with pytest.raises(CompoundingError, match="cannot be composed exactly.*method='linear'"):
                apply_rope_scaling(target, LongContextConfig(**request))
            assert _as_dict(target) == before
            request.update(method="linear", allow_unstable=total > 8)
        if rope_type == "llama3" and exp.rotary_dim == 64:  # YaRN's index ramp leaves pair 17 faster than llama3's
            with pytest.raises(CompoundingError, match="pair 17 would rotate.*beta_fast=64"):
                apply_rope_scaling(target, LongContextConfig(**request))
            assert _as_dict(target) == before
            request.update(beta_fast=64.0)

    p = plan(target, LongContextConfig(**request))
    assert (p.family.name, p.native_window, p.rotary_dim) == (exp.family, exp.native, exp.rotary_dim)
    original = exp.shipped[2] if exp.shipped else exp.native
    assert (p.factor, p.original_window) == (total, original)
    receipt = apply_rope_scaling(target, LongContextConfig(**request))
    after = _as_dict(target)

    # the language model's settings are patched wherever they live (text_config when it holds
    # them: what transformers >= 4.52 reads); a stale top-level mirror beside it is left alone
    containers = _rope_containers(before)
    language = containers[-1]
    assert {s.path for s in p.sites} == {(language,) if language else ()}
    for mirror in containers[:-1]:
        assert {k: after.get(k) for k in ROPE_KEYS} == {k: before.get(k) for k in ROPE_KEYS}, mirror
    for container in containers[-1:]:
        old, new = _rope_at(before, container), _rope_at(after, container)
        node = after[container] if container else after
        if request["method"] == "linear":
            assert (new["rope_type"], new["factor"]) == ("linear", total)
            assert node["max_position_embeddings"] == int(total * original)
        elif exp.method == "yarn":
            assert (new["rope_type"], new["factor"], new["original_max_position_embeddings"]) == \
                ("yarn", total, original)
            assert node["max_position_embeddings"] == int(total * original)
            assert "type" not in new  # no stale legacy key contradicting rope_type
        else:
            d = exp.rotary_dim
            assert new["rope_theta"] == pytest.approx(exp.theta * 4.0 ** (d / (d - 2)), rel=1e-12)
            assert node["max_position_embeddings"] == 4 * exp.native
        for key in FAMILY_KEYS:  # family keys survive
            if key in old:
                assert new[key] == old[key], key
    for untouched in ("vision_config",):
        assert after.get(untouched) == before.get(untouched)
    assert receipt.long_context["new_max_position_embeddings"] == int(total * original)

    # what transformers builds from the patched config
    with no_transformers_warnings():
        config = target if variant == "object" else _auto_config(after)
        rotary = rotary_from_config(config)
        reloaded = rotary_from_config(_auto_config(_as_dict(target)))  # the saved file lands too
    expected, attention = p.expected()
    for module in (rotary, reloaded):
        inv_freq, scaling = _global_buffers(module)
        got = inv_freq.double().tolist()
        assert len(got) == exp.rotary_dim // 2
        assert max(abs(g - e) / e for g, e in zip(got, expected)) <= 1e-6
        assert scaling == pytest.approx(attention, rel=1e-6)
        # independent of ropekit's closed form: pair 0 keeps its frequency, the slowest pair is
        # divided by the total factor (YaRN interpolates it fully; NTK's base change does exactly that)
        d = exp.rotary_dim
        assert got[0] == pytest.approx(1.0 / total if request["method"] == "linear" else 1.0, rel=1e-6)
        assert got[-1] == pytest.approx(exp.theta ** (-(d - 2) / d) / total, rel=1e-5)
        assert scaling == pytest.approx(_independent_attention(request["method"], total,
                                                               _rope_at(before, containers[-1])), rel=1e-6)


def test_every_fixture_has_an_expectation():
    assert sorted({*EXPECT, *FRONTIER, *REFUSED}) == FIXTURE_NAMES  # frontier: tests/test_frontier.py


# --- Qwen ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Qwen__Qwen3-8B", "Qwen__Qwen2.5-7B", "Qwen__Qwen2.5-7B-Instruct"])
def test_qwen_published_recipe_comes_out_exactly(name):
    cfg = load_fixture(name)
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4,
                                                        original_max_position_embeddings=32768))
    assert cfg["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                                   "beta_fast": 32.0, "beta_slow": 1.0}
    assert cfg["max_position_embeddings"] == 131072
    assert receipt.long_context["new_max_position_embeddings"] == 131072
    assert receipt.attention_scaling == pytest.approx(0.1 * math.log(4) + 1)
    by_target = plan(load_fixture(name), LongContextConfig(method="yarn", target_context=131072))
    assert (by_target.factor, by_target.original_window) == (4.0, 32768)


def test_qwen3_file_window_is_not_the_native_window():
    with pytest.raises(WindowMismatchError, match="40960.*32768"):
        plan(load_fixture("Qwen__Qwen3-8B"), LongContextConfig(method="yarn", factor=4,
                                                                original_max_position_embeddings=40960))


def test_qwen_native_window_follows_the_lineage_not_a_constant():
    # Qwen2.5-Math-7B keeps the Qwen2 layout with rope_theta 1e4 and a 4096 window
    math_cfg = {**load_fixture("Qwen__Qwen2.5-7B"), "rope_theta": 10000.0, "max_position_embeddings": 4096}
    assert plan(math_cfg, LongContextConfig(method="yarn", factor=4)).native_window == 4096
    # the 2507 releases: rope_theta 5e6, trained at 262144
    long_cfg = {**load_fixture("Qwen__Qwen3-8B"), "rope_theta": 5000000, "max_position_embeddings": 262144}
    assert plan(long_cfg, LongContextConfig(method="yarn", factor=4)).native_window == 262144


# --- Qwen-VL ------------------------------------------------------------------------------

def test_qwen25_vl_legacy_mrope_is_not_scaling_and_survives():
    cfg = load_fixture("Qwen__Qwen2.5-VL-7B-Instruct")
    vision = copy.deepcopy(cfg["vision_config"])
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert receipt["existing_scaling"] is None and receipt["policy"]["applied"] == "none"
    assert cfg["rope_scaling"] == {"rope_type": "yarn", "mrope_section": [16, 24, 24], "factor": 4.0,
                                   "original_max_position_embeddings": 32768, "beta_fast": 32.0, "beta_slow": 1.0}
    assert cfg["max_position_embeddings"] == 131072
    assert cfg["vision_config"] == vision


def test_qwen25_vl_with_a_top_level_mirror_patches_text_config_and_still_loads():
    # the shape transformers 4.57 saves a flat Qwen2.5-VL file in: a top-level copy and text_config
    flat = load_fixture("Qwen__Qwen2.5-VL-7B-Instruct")
    mirror = ("rope_scaling", "rope_theta", "max_position_embeddings", "hidden_size", "num_attention_heads")
    cfg = {**flat, "text_config": {"model_type": "qwen2_5_vl_text", **{k: copy.deepcopy(flat[k]) for k in mirror}}}
    top_before = {k: copy.deepcopy(v) for k, v in cfg.items() if k != "text_config"}
    p = plan(cfg, LongContextConfig(method="yarn", factor=4))
    assert [s.label for s in p.sites] == ["text_config.rope_scaling"]
    apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert {k: v for k, v in cfg.items() if k != "text_config"} == top_before
    assert cfg["text_config"]["rope_scaling"]["mrope_section"] == [16, 24, 24]
    assert cfg["text_config"]["max_position_embeddings"] == 131072
    rotary = rotary_from_config(_auto_config(cfg))  # loads on 4.57 and 5.x alike
    assert float(rotary.attention_scaling) == pytest.approx(0.1 * math.log(4) + 1, rel=1e-6)
    # why the mirror is left alone: a yarn dict there stops transformers 5.x from loading the file
    if transformers_major() >= 5:
        both = copy.deepcopy(cfg)
        both.update(rope_scaling=cfg["text_config"]["rope_scaling"], max_position_embeddings=131072)
        with pytest.raises(AttributeError):
            _auto_config(both)


def test_qwen3_vl_keeps_interleaved_mrope_in_text_config_only():
    cfg = load_fixture("Qwen__Qwen3-VL-4B-Instruct")
    top_before = {k: v for k, v in cfg.items() if k != "text_config"}
    apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    rope = cfg["text_config"]["rope_scaling"]
    assert rope["mrope_interleaved"] is True and rope["mrope_section"] == [24, 20, 20]
    assert (rope["factor"], rope["original_max_position_embeddings"]) == (4.0, 262144)
    assert {k: v for k, v in cfg.items() if k != "text_config"} == top_before


@pytest.mark.parametrize("name, section", [("Qwen__Qwen2.5-VL-7B-Instruct", [16, 24, 24]),
                                           ("Qwen__Qwen3-VL-4B-Instruct", [24, 20, 20])])
@pytest.mark.parametrize("on_existing, method, factor", [("compound", "yarn", 8.0), ("replace", "linear", 2.0)])
def test_mrope_keys_survive_compound_and_replace(name, section, on_existing, method, factor):
    cfg = load_fixture(name)
    apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))  # the model card's recipe, shipped
    apply_rope_scaling(cfg, LongContextConfig(method=method, factor=2, on_existing=on_existing))
    text = cfg.get("text_config", cfg)
    rope = text["rope_scaling"]
    assert rope["mrope_section"] == section and rope["rope_type"] == method and rope["factor"] == factor
    if "Qwen3" in name:
        assert rope["mrope_interleaved"] is True
    if method == "linear":
        assert not {"beta_fast", "beta_slow", "original_max_position_embeddings"} & set(rope)
    with no_transformers_warnings():
        rotary = rotary_from_config(_auto_config(cfg))
    assert float(rotary.inv_freq[-1]) == pytest.approx(
        (1e6 if "2.5" in name else 5e6) ** (-126 / 128) / factor, rel=1e-5)


# --- MoE ----------------------------------------------------------------------------------

def test_mixtral_gets_the_head_dim_transformers_needs():
    cfg = load_fixture("mistralai__Mixtral-8x7B-v0.1")
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert cfg["head_dim"] == 4096 // 32
    assert {"path": ["head_dim"], "before": None, "after": 128} in receipt["changes"]
    # the crash this prevents: the same patch with head_dim left null
    broken = {**cfg, "head_dim": None}
    with pytest.raises(TypeError):
        rotary_from_config(_auto_config(broken))


def test_deepseek_rotates_only_the_rope_part_and_keeps_mscale():
    cfg = load_fixture("deepseek-ai__DeepSeek-V3")
    assert "head_dim" not in cfg and cfg["hidden_size"] // cfg["num_attention_heads"] == 56
    with pytest.raises(CompoundingError, match=r"yarn x40 from 4096 -> 163840.*x80"):
        apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=2))
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=2, on_existing="compound",
                                                        allow_unstable=True))
    rope = cfg["rope_scaling"]
    assert receipt["rotary_dim"] == 64
    assert (rope["rope_type"], rope["factor"], rope["mscale"], rope["mscale_all_dim"]) == ("yarn", 80.0, 1.0, 1.0)
    assert "type" not in rope and cfg["max_position_embeddings"] == 80 * 4096


def test_deepseek_live_attention_scale_follows_the_new_factor():
    import torch
    from tiny_models import build, shrink

    model = build(shrink(load_fixture("deepseek-ai__DeepSeek-V3")))
    attention = [m for n, m in model.named_modules() if n.endswith("self_attn")]
    head = attention[0].qk_head_dim
    assert attention[0].scaling == pytest.approx(head ** -0.5 * (0.1 * math.log(40) + 1) ** 2)
    apply_rope_scaling(model, LongContextConfig(method="yarn", factor=2, on_existing="compound",
                                                allow_unstable=True))
    for module in attention:  # softmax scale x (0.1 mscale_all_dim ln s + 1)^2 at the new s = 80
        assert module.scaling == pytest.approx(head ** -0.5 * (0.1 * math.log(80) + 1) ** 2, rel=1e-9)
    assert torch.isfinite(model.model.rotary_emb.inv_freq).all()


def test_gpt_oss_keeps_truncate_false():
    cfg = _target("gpt_oss", "resaved")
    with pytest.raises(CompoundingError, match=r"yarn x32 from 4096.*x64"):
        plan(cfg, LongContextConfig(method="yarn", factor=2))
    apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=2, on_existing="compound", allow_unstable=True))
    rope = _rope_at(cfg, "")
    assert rope["truncate"] is False and rope["factor"] == 64.0 and cfg["max_position_embeddings"] == 64 * 4096


# --- Gemma 3 ------------------------------------------------------------------------------

def test_gemma3_defaults_are_known_and_written():
    cfg = load_fixture("google__gemma-3-4b-it")
    assert "max_position_embeddings" not in cfg["text_config"] and "rope_theta" not in cfg["text_config"]
    p = plan(cfg, LongContextConfig(method="linear", factor=4, on_existing="compound", allow_unstable=True))
    assert p.existing.to_json()["window"] == 131072  # transformers' class default
    apply_rope_scaling(cfg, LongContextConfig(method="linear", factor=4, on_existing="compound", allow_unstable=True))
    assert cfg["text_config"]["max_position_embeddings"] == 32 * 16384
    assert "rope_local_base_freq" not in cfg["text_config"]  # the local layers keep the class default


def test_gemma3_replace_drops_linear():
    cfg = load_fixture("google__gemma-3-4b-it")
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="yarn", target_context=262144, on_existing="replace"))
    rope = cfg["text_config"]["rope_scaling"]
    assert rope == {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 16384,
                    "beta_fast": 32.0, "beta_slow": 1.0}
    assert any("dropping shipped linear x8" in w for w in receipt["warnings"])


def test_gemma3_text_config_with_every_rope_value_left_to_defaults():
    text = {k: v for k, v in load_fixture("google__gemma-3-4b-it")["text_config"].items() if k != "rope_scaling"}
    p = plan(text, LongContextConfig(method="yarn", factor=4))
    assert (p.native_window, p.rotary_dim, p.new_window) == (131072, 256, 524288)
    apply_rope_scaling(text, LongContextConfig(method="yarn", factor=4))
    inv_freq, scaling = _global_buffers(rotary_from_config(_auto_config(text)))
    assert scaling == pytest.approx(0.1 * math.log(4) + 1, rel=1e-6)
    assert float(inv_freq[-1]) == pytest.approx(1e6 ** (-254 / 256) / 4, rel=1e-5)


@pytest.mark.skipif(transformers_major() < 5, reason="per-layer-type rope dicts are transformers 5.x")
def test_gemma3_sliding_layers_keep_their_own_rope():
    cfg = _auto_config(load_fixture("google__gemma-3-4b-it")).to_dict()
    sliding = copy.deepcopy(cfg["text_config"]["rope_parameters"]["sliding_attention"])
    apply_rope_scaling(cfg, LongContextConfig(method="linear", factor=4, on_existing="compound", allow_unstable=True))
    assert cfg["text_config"]["rope_parameters"]["sliding_attention"] == sliding
    rotary = rotary_from_config(_auto_config(cfg))
    local = rotary.sliding_attention_inv_freq.double().tolist()
    assert local == pytest.approx([1e4 ** (-2 * i / 256) for i in range(128)], rel=1e-6)
    assert float(rotary.sliding_attention_attention_scaling) == 1.0
    assert float(rotary.full_attention_attention_scaling) == 1.0
    assert float(rotary.full_attention_inv_freq[0]) == pytest.approx(1 / 32, rel=1e-6)  # linear x8 x4


# --- Phi-3 --------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["yarn", "linear", "dynamic"])
def test_phi3_refuses_methods_transformers_rejects(method):
    cfg = load_fixture("microsoft__Phi-3-mini-4k-instruct")
    with pytest.raises(UnsupportedMethodError) as err:
        apply_rope_scaling(cfg, LongContextConfig(method=method, factor=2))
    message = str(err.value)
    assert method in message and "longrope" in message and "method='ntk'" in message
    assert err.value.exit_code == 3 and "\n" not in message
    assert cfg == load_fixture("microsoft__Phi-3-mini-4k-instruct")


def test_phi3_auto_picks_ntk_and_says_why():
    p = plan(load_fixture("microsoft__phi-4"), LongContextConfig(factor=2))
    assert p.method.name == "ntk" and "only ntk" in p.method_reason


def test_phi3_replacing_longrope_leaves_a_config_transformers_accepts():
    cfg = load_fixture("microsoft__Phi-3-mini-4k-instruct")
    pairs = 3072 // 32 // 2
    cfg.update(max_position_embeddings=131072,
               rope_scaling={"type": "longrope", "short_factor": [1.0] * pairs, "long_factor": [4.0] * pairs})
    with pytest.raises(CompoundingError, match="longrope x32 from 4096"):
        plan(cfg, LongContextConfig(method="ntk", factor=2))
    apply_rope_scaling(cfg, LongContextConfig(method="ntk", factor=2, on_existing="replace"))
    assert cfg["rope_scaling"] is None and cfg["max_position_embeddings"] == 8192
    with no_transformers_warnings():
        rotary = rotary_from_config(_auto_config(cfg))
    assert float(rotary.inv_freq[-1]) == pytest.approx(1e4 ** (-94 / 96) / 2, rel=1e-5)


# --- VLM wrappers -------------------------------------------------------------------------

def test_llava_hands_its_text_config_to_the_llama_family():
    cfg = load_fixture("llava-hf__llava-1.5-7b-hf")
    top_before = {k: v for k, v in cfg.items() if k != "text_config"}
    p = plan(cfg, LongContextConfig(method="yarn", factor=4))
    assert p.family.name == "llama" and [s.label for s in p.sites] == ["text_config.rope_scaling"]
    apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert {k: v for k, v in cfg.items() if k != "text_config"} == top_before
    assert cfg["text_config"]["rope_scaling"]["factor"] == 4.0


def test_wrapper_without_text_model_type_uses_its_default_language_model():
    cfg = load_fixture("llava-hf__llava-1.5-7b-hf")
    del cfg["text_config"]["model_type"]
    assert plan(cfg, LongContextConfig(method="yarn", factor=4)).family.name == "llama"


def test_wrapper_around_an_unknown_language_model_says_which():
    cfg = load_fixture("llava-hf__llava-1.5-7b-hf")
    cfg["text_config"]["model_type"] = "no-such-lm"
    with pytest.raises(UnknownFamilyError) as err:
        plan(cfg, LongContextConfig(method="yarn", factor=4))
    assert "'llava'" in str(err.value) and "'no-such-lm'" in str(err.value) and "family=" in str(err.value)


def test_wrapper_around_a_local_rope_language_model_is_refused_naming_it():
    cfg = load_fixture("llava-hf__llava-1.5-7b-hf")
    cfg["text_config"]["model_type"] = "cohere2"
    with pytest.raises(ArchitectureError) as err:
        plan(cfg, LongContextConfig(method="yarn", factor=4))
    assert "'llava' ('cohere2' language model)" in str(err.value) and err.value.exit_code == 3


def test_llm_config_wrappers_are_patched_where_they_keep_the_language_model():
    qwen = load_fixture("Qwen__Qwen2.5-7B-Instruct")
    cfg = {"model_type": "internvl_chat", "llm_config": qwen, "vision_config": {"hidden_size": 1024}}
    p = plan(cfg, LongContextConfig(method="yarn", factor=4))
    assert (p.family.name, p.native_window, [s.label for s in p.sites]) == ("qwen", 32768, ["llm_config.rope_scaling"])


def test_mllama_refuses_by_default():
    cfg = load_fixture("meta-llama__Llama-3.2-11B-Vision-Instruct")
    with pytest.raises(CompoundingError, match=r"llama3 x8 from 8192.*text_config\.rope_scaling.*x32"):
        apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert cfg == load_fixture("meta-llama__Llama-3.2-11B-Vision-Instruct")


# --- lookup -------------------------------------------------------------------------------

BRIEF_MODEL_TYPES = {
    "qwen2": "qwen", "qwen3": "qwen", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl", "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl", "mixtral": "mixtral", "qwen2_moe": "qwen_moe", "qwen3_moe": "qwen_moe",
    "deepseek_v2": "deepseek", "deepseek_v3": "deepseek", "gpt_oss": "gpt_oss", "gemma3": "gemma3",
    "gemma3_text": "gemma3", "phi3": "phi3", "llava": "vlm", "llava_next": "vlm", "mllama": "vlm",
    "llama": "llama", "mistral": "llama",
}


@pytest.mark.parametrize("model_type, family", sorted(BRIEF_MODEL_TYPES.items()))
def test_lookup_answers_for_every_family_model_type(model_type, family):
    assert lookup(model_type).name == family


def test_families_lists_plugin_and_version():
    import importlib.metadata

    listed = {f["name"]: f for f in families()}
    assert set(BRIEF_MODEL_TYPES.values()) <= set(listed)
    for name, entry in listed.items():
        assert entry["plugin"].startswith("ropekit.plugins.")
        assert entry["version"] == importlib.metadata.version("ropekit")
        assert (entry["model_types"] or name == "generic") and entry["description"]
    assert listed["phi3"]["methods"] == ["ntk"]


def test_unknown_model_type_names_the_way_out():
    cfg = {**load_fixture("meta-llama__Llama-2-7b-hf"), "model_type": "no-such-arch"}
    with pytest.raises(UnknownFamilyError) as err:
        plan(cfg, LongContextConfig(method="yarn", factor=4))
    message = str(err.value)
    assert isinstance(err.value, RopekitError) and isinstance(err.value, KeyError) and err.value.exit_code == 4
    assert "'no-such-arch'" in message and "transformers does not know" in message
    assert "plugin" in message and "family=" in message and "ropekit plugins" in message
    assert "\n" not in message and len(message) < 400
    forced = plan(cfg, LongContextConfig(method="yarn", factor=4), family="llama")
    assert forced.family.name == "llama" and forced.new_window == 16384
    assert json.dumps(forced.to_json())
