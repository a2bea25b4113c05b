"""Closed forms against hand-computed anchors from the papers."""

from __future__ import annotations

import math

import pytest

from ropekit.scaling.methods import (
    closed_form,
    default_inv_freq,
    ntk_base,
    yarn_mscale,
    yarn_untouched_and_interpolated,
)


def test_ntk_aware_base_matches_yarn_table_1():
    # YaRN paper, Table 1: "NTK (theta = 20k)" for Llama 2 (d=128) at s=2: 10000 * 2**(128/126)
    assert ntk_base(10000, 2.0, 128) == pytest.approx(20221, abs=1)


def test_yarn_llama2_pairs_untouched_and_interpolated():
    untouched, interpolated = yarn_untouched_and_interpolated(128, 10000, 4096)
    assert list(untouched) == list(range(0, 21))
    assert list(interpolated) == list(range(46, 64))
    inv, attention = closed_form({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                                  "original_max_position_embeddings": 4096}, 128, 32768)
    theta = default_inv_freq(10000.0, 128)
    for i in range(0, 21):
        assert inv[i] == theta[i]
    for i in range(46, 64):
        assert inv[i] == pytest.approx(theta[i] / 8, rel=1e-12)
    for i in range(21, 46):
        assert theta[i] / 8 < inv[i] < theta[i]
    assert attention == pytest.approx(0.1 * math.log(8) + 1)


def test_yarn_temperature_anchors():
    assert yarn_mscale(4) == pytest.approx(1.1386, abs=5e-5)
    assert yarn_mscale(8) == pytest.approx(1.208, abs=5e-4)  # YaRN App. A.2
    assert yarn_mscale(1) == 1.0


def test_linear_divides_every_frequency():
    inv, attention = closed_form({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, 64, 4096)
    assert inv == pytest.approx([t / 4 for t in default_inv_freq(10000.0, 64)], rel=1e-15)
    assert attention == 1.0


def test_dynamic_is_plain_rope_inside_the_window_and_ntk_past_it():
    rope = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}
    inside, _ = closed_form(rope, 32, 64, seq_len=50)
    assert inside == default_inv_freq(10000.0, 32)
    past, _ = closed_form(rope, 32, 64, seq_len=100)
    # emozilla's rule: b' = b * (s*l/L - (s-1)) ** (d/(d-2)); measured 35157 in the notes
    assert 10000 * (4 * 100 / 64 - 3) ** (32 / 30) == pytest.approx(35157, abs=1)
    assert past == pytest.approx(default_inv_freq(10000 * (4 * 100 / 64 - 3) ** (32 / 30), 32), rel=1e-12)


def test_llama3_rule_splits_llama31_pairs_29_6_29():
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    inv, _ = closed_form(rope, 128, 131072)
    theta = default_inv_freq(500000.0, 128)
    kept = sum(1 for a, b in zip(inv, theta) if a == b)
    divided = sum(1 for a, b in zip(inv, theta) if a == pytest.approx(b / 8, rel=1e-12))
    assert (kept, 64 - kept - divided, divided) == (29, 6, 29)
