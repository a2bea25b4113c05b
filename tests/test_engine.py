"""The engine on real configs: the done-criteria of the core issue."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import no_transformers_warnings, rotary_from_config, transformers_major

from ropekit import LongContextConfig, RopekitError, apply_rope_scaling, plan
from ropekit.errors import (
    CompoundingError,
    InvalidConfigError,
    InvalidRequestError,
    UnknownFamilyError,
    UnstableFactorError,
    WindowMismatchError,
)

LLAMA3 = "meta-llama__Meta-Llama-3-8B-Instruct"
LLAMA31 = "meta-llama__Llama-3.1-8B-Instruct"
YARN4 = dict(method="yarn", factor=4.0, original_max_position_embeddings=8192)
EXPECTED_BLOCK = {"method": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
                  "new_max_position_embeddings": 32768, "attn_factor": 1.0, "beta_fast": 32, "beta_slow": 1,
                  "papers": ["arXiv:2309.00071", "arXiv:2306.15595"]}


def test_llama3_yarn_x4_on_a_dict(fixture_config):
    cfg = fixture_config(LLAMA3)
    receipt = apply_rope_scaling(cfg, LongContextConfig(**YARN4))
    assert cfg["rope_scaling"]["rope_type"] == "yarn"
    assert cfg["rope_scaling"]["factor"] == 4.0
    assert cfg["rope_scaling"]["original_max_position_embeddings"] == 8192
    assert cfg["max_position_embeddings"] == 32768
    assert cfg["rope_theta"] == 500000.0
    assert "type" not in cfg["rope_scaling"]
    assert receipt.long_context == EXPECTED_BLOCK
    assert round(receipt.attention_scaling, 4) == 1.1386
    from transformers import LlamaConfig

    with no_transformers_warnings():
        loaded = LlamaConfig(**cfg)
        rotary = rotary_from_config(loaded)
    assert float(rotary.attention_scaling) == pytest.approx(1.1386, abs=5e-5)


def test_llama3_yarn_x4_on_a_transformers_config(fixture_config):
    from transformers import LlamaConfig

    config = LlamaConfig(**fixture_config(LLAMA3))
    receipt = apply_rope_scaling(config, LongContextConfig(**YARN4))
    assert receipt.long_context == EXPECTED_BLOCK
    assert config.max_position_embeddings == 32768
    if transformers_major() >= 5:
        rope = config.rope_parameters
        assert rope["rope_theta"] == 500000.0
    else:
        rope = config.rope_scaling
        assert config.rope_theta == 500000.0
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("yarn", 4.0, 8192)
    with no_transformers_warnings():
        reloaded = LlamaConfig(**config.to_dict())
        rotary = rotary_from_config(reloaded)
    assert float(rotary.attention_scaling) == pytest.approx(receipt.attention_scaling, rel=1e-6)


def test_llama31_refuses_to_compound_silently(fixture_config):
    cfg = fixture_config(LLAMA31)
    before = copy.deepcopy(cfg)
    with pytest.raises(CompoundingError) as err:
        apply_rope_scaling(cfg, LongContextConfig(**YARN4))
    message = str(err.value)
    assert "llama3" in message and "x8" in message and "x32" in message
    assert cfg == before


def test_llama31_compound_gives_yarn_x32_from_8192(fixture_config):
    cfg = fixture_config(LLAMA31)
    receipt = apply_rope_scaling(cfg, LongContextConfig(**YARN4, on_existing="compound"))
    rope = cfg["rope_scaling"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 32.0
    assert rope["original_max_position_embeddings"] == 8192
    assert cfg["max_position_embeddings"] == 262144
    assert "low_freq_factor" not in rope and "high_freq_factor" not in rope
    assert receipt["policy"] == {"on_existing": "compound", "applied": "compound", "requested_factor": 4.0}
    assert receipt["existing_scaling"]["rope_type"] == "llama3"


def test_llama31_replace_drops_llama3_and_warns(fixture_config):
    cfg = fixture_config(LLAMA31)
    receipt = apply_rope_scaling(cfg, LongContextConfig(**YARN4, on_existing="replace"))
    assert cfg["rope_scaling"]["factor"] == 4.0 and cfg["max_position_embeddings"] == 32768
    assert any("dropping shipped llama3" in w for w in receipt["warnings"])


@pytest.mark.parametrize("method", ["linear", "ntk", "dynamic", "yarn"])
@pytest.mark.parametrize("as_object", [False, True])
def test_transformers_builds_the_closed_form(fixture_config, method, as_object):
    import torch
    from transformers import LlamaConfig

    raw = fixture_config("meta-llama__Llama-2-7b-hf")
    target = LlamaConfig(**raw) if as_object else raw
    factor = 2.0 if method == "ntk" else 4.0
    p = plan(target, LongContextConfig(method=method, factor=factor))
    apply_rope_scaling(target, LongContextConfig(method=method, factor=factor))
    config = target if as_object else LlamaConfig(**target)
    rotary = rotary_from_config(config)
    expected, attention = p.expected()
    got = rotary.inv_freq.to(torch.float64)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)
    assert float(rotary.attention_scaling) == pytest.approx(attention, rel=1e-6)


def test_ntk_changes_only_the_base(fixture_config):
    cfg = fixture_config("meta-llama__Llama-2-7b-hf")
    apply_rope_scaling(cfg, LongContextConfig(method="ntk", factor=2.0))
    assert cfg["rope_theta"] == pytest.approx(20221, abs=1)
    assert cfg["rope_scaling"] is None  # rope type untouched
    assert cfg["max_position_embeddings"] == 8192


def test_dynamic_keeps_the_threshold_window(fixture_config):
    cfg = fixture_config("meta-llama__Llama-2-7b-hf")
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="dynamic", factor=4.0))
    assert cfg["max_position_embeddings"] == 4096
    assert cfg["rope_scaling"] == {"rope_type": "dynamic", "factor": 4.0}
    assert receipt.long_context["new_max_position_embeddings"] == 16384


def test_target_context_derives_the_factor(fixture_config):
    p = plan(fixture_config(LLAMA3), LongContextConfig(method="yarn", target_context=65536))
    assert p.factor == 8.0 and p.new_window == 65536


def test_auto_picks_yarn_and_says_why(fixture_config):
    p = plan(fixture_config(LLAMA3), LongContextConfig(factor=4))
    assert p.method.name == "yarn" and "4x" in p.method_reason


def test_stable_band_refused_unless_allowed(fixture_config):
    cfg = fixture_config(LLAMA3)
    with pytest.raises(UnstableFactorError, match="x8 is beyond"):
        plan(cfg, LongContextConfig(method="ntk", factor=8))
    assert plan(cfg, LongContextConfig(method="ntk", factor=8, allow_unstable=True)).factor == 8


def test_declared_window_must_match_native(fixture_config):
    cfg = fixture_config(LLAMA3)
    with pytest.raises(WindowMismatchError, match="4096.*8192"):
        apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4, original_max_position_embeddings=4096))
    assert cfg == load(LLAMA3)


def load(name):
    from conftest import load_fixture

    return load_fixture(name)


@pytest.mark.parametrize("mutate, error", [
    (lambda c: c.__setitem__("rope_scaling", [1, 2]), InvalidConfigError),
    (lambda c: c.__setitem__("max_position_embeddings", -4096), InvalidConfigError),
    (lambda c: c.__setitem__("rope_theta", float("nan")), InvalidConfigError),
    (lambda c: c.pop("model_type"), InvalidConfigError),
    (lambda c: c.__setitem__("model_type", "no-such-arch"), UnknownFamilyError),
])
def test_bad_configs_raise_one_sentence_and_leave_input_alone(fixture_config, mutate, error):
    cfg = fixture_config(LLAMA3)
    mutate(cfg)
    before = json.dumps(cfg, sort_keys=True)
    with pytest.raises(error) as err:
        apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert isinstance(err.value, RopekitError)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600  # the unknown-family line lists the families
    assert json.dumps(cfg, sort_keys=True) == before


@pytest.mark.parametrize("kwargs, names", [
    (dict(factor=1.0), "factor"), (dict(factor=0.5), "factor"), (dict(factor=float("nan")), "nan"),
    (dict(factor=4, method="rerope"), "rerope"), (dict(factor=4, original_max_position_embeddings=-1), "-1"),
    (dict(factor=4, target_context=8), "exactly one"),
])
def test_bad_requests_name_the_value(fixture_config, kwargs, names):
    cfg = fixture_config(LLAMA3)
    before = copy.deepcopy(cfg)
    with pytest.raises(InvalidRequestError) as err:
        apply_rope_scaling(cfg, LongContextConfig(**kwargs))
    assert names in str(err.value)
    assert cfg == before


def test_a_transformers_config_is_restored_when_refused(fixture_config):
    from transformers import LlamaConfig

    config = LlamaConfig(**fixture_config(LLAMA31))
    before = config.to_dict()
    with pytest.raises(CompoundingError):
        apply_rope_scaling(config, LongContextConfig(**YARN4))
    assert config.to_dict() == before


@pytest.mark.parametrize("mutate, method, error, names", [
    (lambda c: c.__setitem__("head_dim", 2), "ntk", InvalidConfigError, "rotary dimension 2"),
    (lambda c: c.__setitem__("partial_rotary_factor", 0.01), "yarn", InvalidConfigError, "rotary dimension 1"),
    (lambda c: c.__setitem__("rope_theta", 1), "yarn", InvalidConfigError, "rope_theta is 1"),
    (lambda c: c.__setitem__("rope_theta", 1e308), "ntk", InvalidRequestError, "inf"),
    (lambda c: c.__setitem__("rope_scaling", {"rope_type": ["yarn"], "factor": 4.0}), "yarn",
     InvalidConfigError, "rope_type"),
    (lambda c: c.__setitem__("rope_parameters", {"full_attention": {"rope_type": "default"}, "factor": 2.0}),
     "yarn", InvalidConfigError, "mixes per-layer-type"),
])
def test_degenerate_rope_values_are_refused_by_name(fixture_config, mutate, method, error, names):
    cfg = fixture_config(LLAMA3)
    mutate(cfg)
    before = copy.deepcopy(cfg)
    with pytest.raises(error, match=names):
        apply_rope_scaling(cfg, LongContextConfig(method=method, factor=2.0))
    assert cfg == before


def test_a_vlm_wrapper_never_patches_its_top_level(fixture_config):
    cfg = fixture_config("llava-hf__llava-1.5-7b-hf")
    cfg["max_position_embeddings"] = 4096  # a stray top-level copy some exports carry
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4.0))
    assert cfg["max_position_embeddings"] == 4096 and "rope_scaling" not in cfg
    assert receipt["sites"] == ["text_config.rope_scaling"]
    assert cfg["text_config"]["max_position_embeddings"] == 16384


@pytest.mark.parametrize("ref", [123, "", "   "])
def test_resolve_refuses_empty_or_non_string_references(ref):
    from ropekit import resolve
    from ropekit.errors import ResolutionError

    with pytest.raises(ResolutionError, match="empty or not a string"):
        resolve(ref)
