"""The 2025-2026 frontier families on their real configs, proven with the installed transformers.

Expectations (native windows, rotary dimensions, the base of the scaled rope, shipped
scaling) are written out by hand from the model cards and from transformers' config
classes (``models/<type>/configuration_<type>.py``), not read from ropekit. Each fixture
goes through ``ropekit patch --factor 4`` (compounding where scaling ships) and
``ropekit verify --landing``; the rotary modules transformers builds from the patched file
must then match the closed form within 1e-6. Where the installed transformers lacks a
model type (4.57 knows none of these but DeepSeek-V3), the tests that build modules skip,
saying so.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

import pytest
from conftest import ROOT, load_fixture, rotary_from_config

from ropekit import LongContextConfig, apply_rope_scaling, plan
from ropekit.cli import main
from ropekit.errors import CompoundingError, InvalidConfigError, UnsupportedMethodError
from ropekit.registry import lookup

YARN4 = 0.1 * math.log(4) + 1  # YaRN Eq. 22 at s = 4


@dataclass(frozen=True)
class Frontier:
    family: str
    model_type: str  # the type the installed transformers must know to build it
    native: int  # trained window (model card)
    rotary_dim: int
    theta: float  # the base of the rope that is scaled
    attention: float  # attention scaling after the patch (independent formula)
    shipped: tuple[str, float, int] | None = None  # (rope_type, factor, original window)
    buffer: str = "inv_freq"  # the scaled buffer of the language model's rotary module


FRONTIER = {
    # text_config, head_dim 256 x partial 0.25
    "Qwen__Qwen3.5-35B-A3B": Frontier("qwen3_5", "qwen3_5_moe", 262144, 64, 1e7, YARN4),
    # MLA: qk_rope_head_dim 64
    "zai-org__GLM-5": Frontier("glm_moe_dsa", "glm_moe_dsa", 202752, 64, 1e6, YARN4),
    # yarn x40 with mscale = mscale_all_dim = 1: (0.1 ln s + 1) / (0.1 ln s + 1) = 1
    "deepseek-ai__DeepSeek-V3.2": Frontier("deepseek_v32", "deepseek_v32", 4096, 64, 1e4, 1.0, ("yarn", 40, 4096)),
    # text_config is DeepSeek-V3 (kimi_k2), yarn x64 with mscale 1
    "moonshotai__Kimi-K2.5": Frontier("deepseek", "kimi_k25", 4096, 64, 5e4, 1.0, ("yarn", 64, 4096)),
    # rotary_dim 64 of head_dim 128
    "MiniMaxAI__MiniMax-M2.5": Frontier("minimax_m2", "minimax_m2", 196608, 64, 5e6, YARN4),
    # compress rope: compress_rope_theta 160000, 512 x 64/512, attention_factor forced to 1
    "deepseek-ai__DeepSeek-V4-Flash": Frontier("deepseek_v4", "deepseek_v4", 65536, 64, 1.6e5, 1.0,
                                               ("yarn", 16, 65536), "compress_inv_freq"),
    # the class-built full_attention rope: 5e6, int(192 x 0.334) = 64
    "XiaomiMiMo__MiMo-V2-Flash": Frontier("mimo_v2_flash", "mimo_v2_flash", 262144, 64, 5e6, YARN4,
                                          buffer="full_attention_inv_freq"),
}


def transformers_knows(model_type: str) -> bool:
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def needs(model_type: str):
    """Skip, naming the reason, where the installed transformers has no such model type."""
    import transformers

    if not transformers_knows(model_type):
        pytest.skip(f"transformers {transformers.__version__} has no model_type {model_type!r}")


def _request(exp: Frontier, **extra) -> LongContextConfig:
    compound = dict(on_existing="compound", allow_unstable=True) if exp.shipped else {}
    return LongContextConfig(method="yarn", factor=4.0, **compound, **extra)


def _auto_config(data: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(**{k: v for k, v in data.items() if k != "auto_map"})


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return run


# --- what each family knows (data only: both transformers versions) ----------------------

@pytest.mark.parametrize("name", FRONTIER)
def test_family_window_rotary_dim_and_shipped_scaling(name):
    exp = FRONTIER[name]
    cfg = load_fixture(name)
    if exp.shipped:
        rope_type, factor, original = exp.shipped
        with pytest.raises(CompoundingError, match=rf"{rope_type} x{factor:g} from {original}.*x{4 * factor:g}"):
            apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
        assert cfg == load_fixture(name)  # nothing written
    p = plan(cfg, _request(exp))
    total = 4.0 * (exp.shipped[1] if exp.shipped else 1)
    original = exp.shipped[2] if exp.shipped else exp.native
    assert (p.family.name, p.native_window, p.rotary_dim) == (exp.family, exp.native, exp.rotary_dim)
    assert (p.factor, p.original_window, p.new_window) == (total, original, int(total * original))
    assert p.final_ropes[p.primary_site.label]["rope_theta"] == exp.theta
    assert p.attention_scaling == pytest.approx(exp.attention, rel=1e-12)


def test_qwen35_patches_text_config_and_keeps_interleaved_mrope():
    cfg = load_fixture("Qwen__Qwen3.5-35B-A3B")
    vision = copy.deepcopy(cfg["vision_config"])
    apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert cfg["text_config"]["rope_parameters"] == {
        "mrope_interleaved": True, "mrope_section": [11, 11, 10], "rope_type": "yarn", "rope_theta": 10000000,
        "partial_rotary_factor": 0.25, "factor": 4.0, "original_max_position_embeddings": 262144,
        "beta_fast": 32.0, "beta_slow": 1.0}
    assert cfg["vision_config"] == vision and "rope_parameters" not in cfg and "max_position_embeddings" not in cfg


def test_qwen35_partial_rotary_defaults_to_a_quarter():
    cfg = load_fixture("Qwen__Qwen3.5-35B-A3B")
    del cfg["text_config"]["rope_parameters"]["partial_rotary_factor"]
    assert plan(cfg, LongContextConfig(method="ntk", factor=2)).rotary_dim == 256 // 4


def test_minimax_rotary_dim_becomes_partial_half():
    cfg = load_fixture("MiniMaxAI__MiniMax-M2.5")
    apply_rope_scaling(cfg, LongContextConfig(method="ntk", factor=4))
    d = 64  # rotary_dim, not head_dim 128: NTK's exponent d / (d - 2) depends on it
    assert cfg["rope_theta"] == pytest.approx(5e6 * 4 ** (d / (d - 2)), rel=1e-12)
    assert cfg["rotary_dim"] == 64 and cfg["head_dim"] == 128


def test_mimo_writes_the_class_built_rope_and_scales_full_attention_only():
    cfg = load_fixture("XiaomiMiMo__MiMo-V2-Flash")
    apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    # the file's keys stay as they were: transformers reads none of them
    assert (cfg["rope_theta"], cfg["swa_rope_theta"], cfg["partial_rotary_factor"]) == (5000000, 10000, 0.334)
    assert cfg["rope_parameters"] == {
        "full_attention": {"rope_type": "yarn", "rope_theta": 5e6, "partial_rotary_factor": 0.334, "factor": 4.0,
                           "original_max_position_embeddings": 262144, "beta_fast": 32.0, "beta_slow": 1.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.334}}
    assert cfg["max_position_embeddings"] == 4 * 262144


def test_mimo_ntk_raises_the_full_attention_base_only():
    cfg = load_fixture("XiaomiMiMo__MiMo-V2-Flash")
    apply_rope_scaling(cfg, LongContextConfig(method="ntk", factor=2))
    assert cfg["rope_parameters"]["full_attention"]["rope_theta"] == pytest.approx(5e6 * 2 ** (64 / 62), rel=1e-12)
    assert cfg["rope_parameters"]["sliding_attention"]["rope_theta"] == 1e4


def test_deepseek_v4_scales_the_compress_rope_only():
    cfg = load_fixture("deepseek-ai__DeepSeek-V4-Flash")
    apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=2, on_existing="compound"))
    # attention_factor 1.0 written out: transformers injects it only when it folds a flat rope_scaling
    assert cfg["rope_scaling"] == {"attention_factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                                   "original_max_position_embeddings": 65536, "rope_type": "yarn"}
    assert (cfg["rope_theta"], cfg["compress_rope_theta"]) == (10000, 160000)  # main's base, compress's base
    assert cfg["max_position_embeddings"] == 32 * 65536
    with pytest.raises(UnsupportedMethodError, match="deepseek_v4.*'ntk'.*compress rope.*method='yarn'"):
        plan(load_fixture("deepseek-ai__DeepSeek-V4-Flash"), LongContextConfig(method="ntk", factor=2,
                                                                            on_existing="replace"))


def test_kimi_k25_hands_text_config_to_deepseek():
    cfg = load_fixture("moonshotai__Kimi-K2.5")
    assert lookup("kimi_k25").name == "kimi_k25"
    apply_rope_scaling(cfg, _request(FRONTIER["moonshotai__Kimi-K2.5"]))
    rope = cfg["text_config"]["rope_scaling"]
    assert (rope["rope_type"], rope["factor"], rope["mscale"], rope["mscale_all_dim"]) == ("yarn", 256.0, 1.0, 1.0)
    assert cfg["text_config"]["max_position_embeddings"] == 256 * 4096 and "type" not in rope
    assert "max_position_embeddings" not in cfg and "rope_scaling" not in cfg


@pytest.mark.parametrize("name", ["zai-org__GLM-5", "deepseek-ai__DeepSeek-V3.2"])
def test_mla_rotary_dim_is_the_rope_head_dim_whatever_head_dim_says(name):
    cfg = {**load_fixture(name), "head_dim": 192}  # transformers forces head_dim = qk_rope_head_dim
    assert plan(cfg, _request(FRONTIER[name])).rotary_dim == cfg["qk_rope_head_dim"] == 64


# --- patch, verify --landing, and the buffers transformers builds -------------------------

@pytest.mark.parametrize("name", FRONTIER)
def test_patch_then_verify_landing(name, cli, tmp_path):
    exp = FRONTIER[name]
    needs(exp.model_type)
    out = tmp_path / "patched"
    args = ["patch", f"fixtures/{name}", "--factor", "4", "--method", "yarn", "--out", str(out)]
    if exp.shipped:
        args += ["--on-existing", "compound", "--allow-unstable"]
    code, _, err = cli(*args)
    assert code == 0, err
    code, stdout, err = cli("verify", str(out), "--landing")
    assert code == 0, err
    assert "ok: landing:" in stdout and "match the closed form" in stdout

    # what transformers builds from the patched file, against the closed form and by hand
    patched = json.loads((out / "config.json").read_text())
    p = plan(load_fixture(name), _request(exp))
    expected, attention = p.expected()
    rotary = rotary_from_config(_auto_config(patched))
    got = getattr(rotary, exp.buffer).double().tolist()
    scaling = getattr(rotary, exp.buffer.replace("inv_freq", "attention_scaling"))
    assert len(got) == exp.rotary_dim // 2
    assert max(abs(g - e) / e for g, e in zip(got, expected)) <= 1e-6
    assert float(scaling) == pytest.approx(attention, rel=1e-6) and attention == pytest.approx(exp.attention)
    d, total = exp.rotary_dim, p.factor  # pair 0 keeps its frequency; the slowest is divided by s
    assert got[0] == pytest.approx(1.0, rel=1e-6)
    assert got[-1] == pytest.approx(exp.theta ** (-(d - 2) / d) / total, rel=1e-5)


@pytest.mark.parametrize("variant", ["resaved", "object"])
@pytest.mark.parametrize("name", FRONTIER)
def test_installed_layout_and_config_objects_land_too(name, variant):
    """The file re-saved by the installed transformers (5.x: rope_parameters), and the config object."""
    exp = FRONTIER[name]
    needs(exp.model_type)
    config = _auto_config(load_fixture(name))
    target = config if variant == "object" else config.to_dict()
    p = plan(target, _request(exp))
    assert (p.family.name, p.rotary_dim) == (exp.family, exp.rotary_dim)
    apply_rope_scaling(target, _request(exp))
    rotary = rotary_from_config(target if variant == "object" else _auto_config(target))
    expected, attention = p.expected()
    got = getattr(rotary, exp.buffer).double().tolist()
    assert len(got) == exp.rotary_dim // 2
    assert max(abs(g - e) / e for g, e in zip(got, expected)) <= 1e-6
    assert getattr(rotary, exp.buffer.replace("inv_freq", "attention_scaling")) == pytest.approx(exp.attention)


@pytest.mark.parametrize("name, kept, theta", [("XiaomiMiMo__MiMo-V2-Flash", "sliding_attention", 1e4),
                                               ("deepseek-ai__DeepSeek-V4-Flash", "main", 1e4)])
def test_unscaled_rope_of_a_two_rope_model_is_untouched(name, kept, theta):
    needs(FRONTIER[name].model_type)
    cfg = load_fixture(name)
    apply_rope_scaling(cfg, _request(FRONTIER[name]))
    rotary = rotary_from_config(_auto_config(cfg))
    assert rotary.rope_type[kept] == "default"
    got = getattr(rotary, f"{kept}_inv_freq").double().tolist()
    assert got == pytest.approx([theta ** (-2 * i / 64) for i in range(32)], rel=1e-6)
    assert getattr(rotary, f"{kept}_attention_scaling") == 1.0


def test_step37_class_defaults_scale_full_attention():
    needs("step3p7")
    from transformers import AutoConfig

    config = AutoConfig.for_model("step3p7")
    p = plan(config, LongContextConfig(method="yarn", factor=4))
    assert (p.family.name, p.native_window, p.rotary_dim) == ("step3p7", 128000, 128)
    assert [s.label for s in p.sites] == ["text_config.rope_parameters.full_attention"]
    apply_rope_scaling(config, LongContextConfig(method="yarn", factor=4))
    rotary = rotary_from_config(config)
    expected, attention = p.expected()
    got = rotary.full_attention_inv_freq.double().tolist()
    assert max(abs(g - e) / e for g, e in zip(got, expected)) <= 1e-6
    assert rotary.full_attention_attention_scaling == pytest.approx(YARN4, rel=1e-6)


# --- live models: MLA softmax scales follow the patch --------------------------------------

def _attentions(model):
    return [m for n, m in model.named_modules() if n.endswith("self_attn")]


@pytest.mark.parametrize("name", ["deepseek-ai__DeepSeek-V3.2", "zai-org__GLM-5"])
def test_mla_live_softmax_scale_follows_the_patch(name):
    from tiny_models import build, shrink

    exp = FRONTIER[name]
    needs(exp.model_type)
    model = build(shrink(load_fixture(name)))
    attentions = _attentions(model)
    qk_head_dim = attentions[0].qk_head_dim

    def softmax_scale(rope):  # qk_head_dim^-0.5 x (0.1 mscale_all_dim ln s + 1)^2 when not default
        m_all = rope.get("mscale_all_dim")
        mscale = 0.1 * m_all * math.log(rope["factor"]) + 1 if m_all and rope["rope_type"] != "default" else 1.0
        return qk_head_dim ** -0.5 * mscale ** 2

    fixture = load_fixture(name)
    before = dict(fixture.get("rope_scaling") or fixture["rope_parameters"])
    before["rope_type"] = before.get("rope_type") or before["type"]
    assert attentions[0].scaling == pytest.approx(softmax_scale(before), rel=1e-9)
    receipt = apply_rope_scaling(model, _request(exp))
    assert receipt["landing"]["landed"]
    after = model.config.rope_parameters
    assert after["rope_type"] == "yarn"
    for attention in attentions:
        assert attention.scaling == pytest.approx(softmax_scale(after), rel=1e-9)
    if exp.shipped:  # x40 -> x160: the scale moved
        assert attentions[0].scaling == pytest.approx(qk_head_dim ** -0.5 * (0.1 * math.log(160) + 1) ** 2)


def test_mla_live_scale_with_mscale_all_dim_on_glm5():
    """GLM-5 ships no mscale; given one, the live scale folds it in at the new factor."""
    from tiny_models import build, shrink

    needs("glm_moe_dsa")
    cfg = shrink(load_fixture("zai-org__GLM-5"))
    cfg["rope_parameters"] = {**cfg["rope_parameters"], "rope_type": "yarn", "factor": 2.0,
                              "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 1.0}
    cfg["max_position_embeddings"] = 8192
    model = build(cfg)
    attention = _attentions(model)[0]
    assert attention.scaling == pytest.approx(attention.qk_head_dim ** -0.5 * (0.1 * math.log(2) + 1) ** 2)
    apply_rope_scaling(model, LongContextConfig(method="yarn", factor=4, on_existing="compound"))
    assert attention.scaling == pytest.approx(attention.qk_head_dim ** -0.5 * (0.1 * math.log(8) + 1) ** 2)



def test_kimi_text_config_lands_as_the_deepseek_v3_transformers_builds():
    """transformers 4.57 has no kimi_k25 wrapper, but it has the DeepSeek-V3 language model it wraps."""
    cfg = load_fixture("moonshotai__Kimi-K2.5")
    p = plan(cfg, _request(FRONTIER["moonshotai__Kimi-K2.5"]))
    apply_rope_scaling(cfg, _request(FRONTIER["moonshotai__Kimi-K2.5"]))
    text = {k: v for k, v in cfg["text_config"].items() if k not in ("auto_map", "quantization_config")}
    rotary = rotary_from_config(_auto_config({**text, "model_type": "deepseek_v3"}))
    expected, attention = p.expected()
    got = rotary.inv_freq.double().tolist()
    assert len(got) == 32 and max(abs(g - e) / e for g, e in zip(got, expected)) <= 1e-6
    assert got[-1] == pytest.approx(5e4 ** (-62 / 64) / 256, rel=1e-5)
    assert float(rotary.attention_scaling) == pytest.approx(1.0, rel=1e-6)  # mscale = mscale_all_dim


# --- live models with two ropes: every rotary module is rebuilt, the unscaled rope stays ----

def _tiny(name: str) -> dict:
    from tiny_models import shrink

    cfg = shrink(load_fixture(name))
    if name == "deepseek-ai__DeepSeek-V4-Flash":  # one sliding, one compressed, one heavily compressed layer
        cfg.update(num_hidden_layers=3, compress_ratios=[0, 4, 128], num_hash_layers=1, head_dim=64,
                   qk_rope_head_dim=8, o_lora_rank=16, o_groups=2, index_head_dim=16, index_n_heads=2)
    if name == "XiaomiMiMo__MiMo-V2-Flash":  # int(48 x 0.334) = 16 rotary dimensions
        cfg.update(head_dim=48, v_head_dim=16)
    return cfg


@pytest.mark.parametrize("name, scaled, kept", [("deepseek-ai__DeepSeek-V4-Flash", "compress", "main"),
                                                ("XiaomiMiMo__MiMo-V2-Flash", "full_attention", "sliding_attention")])
def test_live_two_rope_model_lands_in_every_rotary_module(name, scaled, kept):
    from tiny_models import build

    from ropekit.landing.rotary import rotary_modules

    exp = FRONTIER[name]
    needs(exp.model_type)
    model = build(_tiny(name))
    kept_before = {n: getattr(m, f"{kept}_inv_freq").clone() for n, _, _, m in rotary_modules(model)}
    p = plan(model, _request(exp))
    receipt = apply_rope_scaling(model, _request(exp))
    assert receipt["landing"]["landed"] and receipt["landing"]["modules_checked"] == 2 * len(kept_before)
    expected, _ = p.expected()
    modules = list(rotary_modules(model))
    assert {n for n, _, _, _ in modules} == set(kept_before)  # the model's, compressors' and indexers' alike
    for name_, _, _, module in modules:
        got = getattr(module, f"{scaled}_inv_freq").double().tolist()
        assert module.rope_type[scaled] == "yarn", name_
        assert max(abs(g - e) / e for g, e in zip(got, expected)) <= 1e-6, name_
        assert getattr(module, f"{scaled}_attention_scaling") == pytest.approx(exp.attention, rel=1e-6)
        assert (getattr(module, f"{kept}_inv_freq") == kept_before[name_]).all(), name_


def test_step_legacy_per_layer_theta_list_is_refused_with_the_way_out():
    text = {"model_type": "step3p5", "num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"],
            "rope_theta": [5e6, 1e4], "head_dim": 128, "max_position_embeddings": 65536}
    cfg = {"model_type": "step3p7", "text_config": text}
    with pytest.raises(InvalidConfigError, match=r"text_config.rope_theta is a list.*save it again"):
        apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert cfg["text_config"]["rope_theta"] == [5e6, 1e4]  # nothing written


def test_generic_mla_model_gets_its_softmax_scale_refreshed_too():
    """An MLA model_type no named family claims (GLM-4.7-Flash's glm4_moe_lite) is read generically,
    and its live attention scales follow the patch all the same."""
    import torch
    from transformers import AutoConfig

    from ropekit.landing.rotary import model_class_for

    needs("glm4_moe_lite")
    config = AutoConfig.for_model(
        "glm4_moe_lite", vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
        first_k_dense_replace=1, max_position_embeddings=8192,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096})
    torch.manual_seed(0)
    model = model_class_for(config)._from_config(config).eval()
    attention = _attentions(model)[0]
    assert attention.scaling == pytest.approx(16 ** -0.5 * (0.1 * math.log(2) + 1) ** 2)
    receipt = apply_rope_scaling(model, LongContextConfig(method="yarn", factor=4, on_existing="compound"))
    assert receipt["family"]["name"] == "generic" and receipt["landing"]["landed"]
    assert attention.scaling == pytest.approx(16 ** -0.5 * (0.1 * math.log(8) + 1) ** 2, rel=1e-9)


def test_kimi_k25_live_model_patches_its_language_model_and_refreshes_the_scale():
    from tiny_models import build, shrink

    needs("kimi_k25")
    model = build(shrink(load_fixture("moonshotai__Kimi-K2.5")))
    attentions = [m for n, m in model.named_modules() if n.endswith("self_attn") and hasattr(m, "qk_head_dim")]
    head = attentions[0].qk_head_dim
    assert attentions[0].scaling == pytest.approx(head ** -0.5 * (0.1 * math.log(64) + 1) ** 2)  # shipped x64
    receipt = apply_rope_scaling(model, _request(FRONTIER["moonshotai__Kimi-K2.5"]))
    assert receipt["landing"]["landed"] and receipt["family"]["name"] == "deepseek"
    text = model.config.get_text_config()
    assert (text.rope_parameters["rope_type"], text.rope_parameters["factor"]) == ("yarn", 256.0)
    for attention in attentions:  # x64 -> x256
        assert attention.scaling == pytest.approx(head ** -0.5 * (0.1 * math.log(256) + 1) ** 2, rel=1e-9)
