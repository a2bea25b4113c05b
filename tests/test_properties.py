"""Property tests: whatever reaches ropekit, only RopekitError escapes, failures mutate nothing,
and every successful patch verifies (receipt and landing)."""

from __future__ import annotations

import copy
import json
import math

from conftest import FIXTURE_NAMES, load_fixture
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ropekit import LongContextConfig, RopekitError, apply_rope_scaling, verify_receipt

ROPE_KEYS = ["rope_type", "type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
             "mscale", "mscale_all_dim", "low_freq_factor", "high_freq_factor", "mrope_section", "rope_theta",
             "attention_factor", "truncate", "partial_rotary_factor"]
CONTAINER_KEYS = ["rope_scaling", "rope_theta", "rope_parameters", "max_position_embeddings", "head_dim",
                  "hidden_size", "num_attention_heads", "model_type", "text_config", "partial_rotary_factor",
                  "qk_rope_head_dim", "original_max_position_embeddings"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**40, max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["yarn", "linear", "dynamic", "llama3", "longrope", "default", "mrope", "llama", "qwen2"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(ROPE_KEYS), inner, max_size=5)), max_leaves=8)


@st.composite
def mutated_configs(draw):
    config = load_fixture(draw(st.sampled_from(FIXTURE_NAMES)))
    for _ in range(draw(st.integers(0, 3))):
        node = config
        if isinstance(config.get("text_config"), dict) and draw(st.booleans()):
            node = config["text_config"]
        key = draw(st.sampled_from(CONTAINER_KEYS))
        if draw(st.integers(0, 4)) == 0:
            node.pop(key, None)
        elif key in ("rope_scaling", "rope_parameters") and isinstance(node.get(key), dict) and draw(st.booleans()):
            node[key] = dict(node[key], **{draw(st.sampled_from(ROPE_KEYS)): draw(values)})
        else:
            node[key] = draw(values)
    return config


requests = st.builds(
    dict,
    method=st.sampled_from(["linear", "ntk", "dynamic", "yarn", "auto", "bogus", ""]),
    factor=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 64)),
    original_max_position_embeddings=st.one_of(st.none(), st.integers(-5, 300000)),
    on_existing=st.sampled_from(["refuse", "compound", "replace", "merge"]),
    allow_unstable=st.booleans(),
)

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(mutated_configs(), requests)
def test_only_ropekit_errors_escape_and_failures_mutate_nothing(config, request_kwargs):
    before = json.dumps(config, sort_keys=True, default=repr)
    try:
        request = LongContextConfig(**request_kwargs)
        receipt = apply_rope_scaling(config, request)
    except RopekitError as err:
        assert json.dumps(config, sort_keys=True, default=repr) == before
        assert "\n" not in str(err) and str(err)
        return
    verify_receipt(receipt, config)
    lc = receipt.long_context
    assert lc["factor"] > 1 and math.isfinite(lc["factor"])
    assert lc["new_max_position_embeddings"] == round(lc["factor"] * lc["original_max_position_embeddings"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.sampled_from(FIXTURE_NAMES), st.sampled_from(["linear", "ntk", "dynamic", "yarn"]),
       st.sampled_from([2.0, 3.5, 4.0, 8.0]), st.sampled_from(["compound", "replace"]))
def test_every_successful_patch_verifies_and_lands(name, method, factor, on_existing):
    from ropekit.landing.check import check_model
    from ropekit.landing.rotary import skeleton_with_rotaries

    from transformers import CONFIG_MAPPING

    config = copy.deepcopy(load_fixture(name))
    assume(config["model_type"] in CONFIG_MAPPING)  # 4.57 cannot build the 2025-2026 types
    try:
        receipt = apply_rope_scaling(config, LongContextConfig(method=method, factor=factor,
                                                               on_existing=on_existing, allow_unstable=True))
    except RopekitError:
        return  # a refusal (e.g. a family that cannot carry the method) is a valid outcome
    verify_receipt(receipt, config)
    report = check_model(skeleton_with_rotaries(config), receipt=receipt)
    assert report.landed, report.first_problem()
