"""The patch lands: live models, rotary rebuilds, config folders, transformers version quirks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_fixture
from tiny_models import build, shrink

from ropekit import (
    LongContextConfig,
    apply_rope_scaling,
    load_model,
    plan,
    verify_landing,
)
from ropekit.errors import LandingError, TransformersVersionError
from ropekit.landing.rotary import rotary_modules
from ropekit.scaling.transformers_support import check_transformers_support

CASES = {
    "meta-llama__Meta-Llama-3-8B-Instruct": dict(method="yarn", factor=4.0),
    "Qwen__Qwen2.5-VL-7B-Instruct": dict(method="yarn", factor=4.0),
    "Qwen__Qwen3-VL-4B-Instruct": dict(method="yarn", factor=4.0),
    "mistralai__Mixtral-8x7B-v0.1": dict(method="yarn", factor=4.0),
    "deepseek-ai__DeepSeek-V3": dict(method="yarn", factor=2.0, on_existing="compound", allow_unstable=True),
    "google__gemma-3-4b-it": dict(method="linear", factor=2.0, on_existing="compound", allow_unstable=True),
}


def _logits(model, original_window):
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (1, 16))
    positions = torch.arange(original_window - 8, original_window + 8).unsqueeze(0)
    if "mrope_section" in json.dumps(model.config.to_dict()):
        positions = positions.unsqueeze(0).expand(3, 1, 16)
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions).logits


def _vision_state(model):
    out = {}
    for name, module in model.named_modules():
        if ("visual" in name or "vision" in name) and "language" not in name:
            for key, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                out[f"{name}.{key}"] = (id(module), tensor.detach().clone())
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_live_patch_lands_and_changes_logits_past_the_window(name):
    model = build(shrink(load_fixture(name)))
    request = LongContextConfig(**CASES[name])
    p = plan(model, request)
    before = _logits(model, p.original_window)
    vision_before = _vision_state(model)

    receipt = apply_rope_scaling(model, request)

    assert receipt["landing"]["landed"] is True
    assert receipt["landing"]["max_rel_error"] <= 1e-6
    expected, attention = p.expected()
    checked = 0
    for qualified, _parent, _attr, module in rotary_modules(model):
        for buffer, tensor in module.named_buffers(recurse=False):
            if buffer.endswith("inv_freq") and not buffer.endswith("original_inv_freq") and \
                    buffer in ("inv_freq", "full_attention_inv_freq") and "local" not in qualified:
                got = tensor.to(torch.float64)
                want = torch.tensor(expected, dtype=torch.float64)
                assert torch.allclose(got, want, rtol=1e-6, atol=0), qualified
                assert tensor.dtype == torch.float32
                checked += 1
    assert checked >= 1
    after = _logits(model, p.original_window)
    assert (after - before).abs().max() > 1e-4
    vision_after = _vision_state(model)
    assert vision_after.keys() == vision_before.keys()
    for key, (module_id, tensor) in vision_before.items():
        assert vision_after[key][0] == module_id, f"{key} was rebuilt"
        assert torch.equal(vision_after[key][1], tensor), f"{key} changed"


def test_qwen25_vl_vision_outputs_are_bit_identical():
    model = build(shrink(load_fixture("Qwen__Qwen2.5-VL-7B-Instruct")))
    visual = model.model.visual
    vc = model.config.vision_config
    grid = torch.tensor([[1, 2, 2]])
    torch.manual_seed(2)
    pixels = torch.randn(4, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2)
    with torch.no_grad():
        before = visual(pixels, grid_thw=grid)
    apply_rope_scaling(model, LongContextConfig(method="yarn", factor=4.0))
    with torch.no_grad():
        after = visual(pixels, grid_thw=grid)
    before = before.last_hidden_state if hasattr(before, "last_hidden_state") else before
    after = after.last_hidden_state if hasattr(after, "last_hidden_state") else after
    assert torch.equal(before, after)


def _naive_patch(model, rope):
    config = model.config
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = {**config.rope_parameters, **rope}
    else:
        config.rope_scaling = {**(config.rope_scaling or {}), **rope}


def test_naive_config_patch_is_reported_not_landed():
    model = build(shrink(load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")))
    _naive_patch(model, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192})
    model.config.max_position_embeddings = 32768
    report = verify_landing(model)
    assert not report.landed
    assert "model.rotary_emb" in report.first_problem()
    assert "'default'" in report.first_problem() and "'yarn'" in report.first_problem()
    with pytest.raises(LandingError, match="model.rotary_emb"):
        report.raise_if_not_landed()


def test_naive_theta_patch_names_expected_and_found_values():
    model = build(shrink(load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")))
    _naive_patch(model, {"rope_theta": 1_000_000.0})
    if not hasattr(model.config, "rope_parameters"):
        model.config.rope_theta = 1_000_000.0
    problem = verify_landing(model).first_problem()
    assert "model.rotary_emb.inv_freq[" in problem and "expected" in problem


def test_failed_live_patch_leaves_model_untouched():
    model = build(shrink(load_fixture("meta-llama__Llama-3.1-8B-Instruct")))
    config_before = model.config.to_dict()
    modules_before = [m for *_, m in rotary_modules(model)]
    with pytest.raises(Exception):
        apply_rope_scaling(model, LongContextConfig(method="yarn", factor=4.0))  # refused: ships llama3
    assert model.config.to_dict() == config_before
    assert [m for *_, m in rotary_modules(model)] == modules_before


def test_load_model_builds_from_the_patched_config(tmp_path):
    model = build(shrink(load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")))
    model.save_pretrained(tmp_path)
    loaded, receipt = load_model(tmp_path, LongContextConfig(method="yarn", factor=4.0), for_training=False)
    assert receipt["landing"]["landed"] is True
    assert receipt.long_context["new_max_position_embeddings"] == 32768
    assert verify_landing(loaded).landed
    assert receipt.attention_scaling == pytest.approx(1.1386, abs=5e-5)


def test_load_model_for_training_refuses_long_targets_without_flash_attention(tmp_path, monkeypatch):
    from ropekit.errors import AttentionBackendError
    from ropekit.training import attention

    model = build(shrink(load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")))
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(attention, "detect_device", lambda: attention.DeviceInfo("cpu", "CPU"))
    with pytest.raises(AttentionBackendError, match="32768"):
        load_model(tmp_path, LongContextConfig(method="yarn", factor=4.0))
    _, receipt = load_model(tmp_path, LongContextConfig(method="linear", factor=2.0))  # 16384: SDPA is enough
    assert receipt["landing"]["landed"] is True


def test_config_folder_is_checked_without_weights(tmp_path):
    config = load_fixture("meta-llama__Llama-2-7b-hf")
    apply_rope_scaling(config, LongContextConfig(method="linear", factor=2.0))
    (tmp_path / "config.json").write_text(json.dumps(config))
    report = verify_landing(tmp_path)
    assert report.landed and report.to_json()["modules_checked"] >= 1


@pytest.mark.parametrize("version, rope, max_pos, refused", [
    ("4.48.0", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}, 32768, True),
    ("4.53.1", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}, 32768, False),
    ("4.53.1", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}, 8192, True),
    ("4.57.6", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}, 8192, False),
    ("4.48.0", {"rope_type": "linear", "factor": 4.0}, 32768, False),
])
def test_transformers_versions_that_mishandle_yarn_are_refused(version, rope, max_pos, refused):
    if refused:
        with pytest.raises(TransformersVersionError, match=version.replace(".", r"\.") + ".*upgrade"):
            check_transformers_support(rope, max_pos, version)
    else:
        check_transformers_support(rope, max_pos, version)


def test_deepseek_attention_softmax_scale_follows_the_new_factor():
    import math

    model = build(shrink(load_fixture("deepseek-ai__DeepSeek-V3")))
    attentions = [m for n, m in model.named_modules() if n.endswith("self_attn")]
    qk_head_dim = attentions[0].qk_head_dim
    mscale_40 = 0.1 * math.log(40) + 1  # shipped: yarn x40, mscale_all_dim 1
    assert attentions[0].scaling == pytest.approx(qk_head_dim ** -0.5 * mscale_40 ** 2, rel=1e-9)
    apply_rope_scaling(model, LongContextConfig(**CASES["deepseek-ai__DeepSeek-V3"]))
    mscale_80 = 0.1 * math.log(80) + 1  # compounded: x40 * x2
    for attention in attentions:
        assert attention.scaling == pytest.approx(qk_head_dim ** -0.5 * mscale_80 ** 2, rel=1e-9)
