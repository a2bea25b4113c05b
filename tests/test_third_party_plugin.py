"""A third-party plugin, found through a real entry point, extends ropekit end to end.

Nothing is installed: the test writes a ``*.dist-info`` folder (METADATA and
entry_points.txt) and the plugin module onto a temporary ``sys.path`` entry, which is
exactly what ``importlib.metadata`` and pluggy read for an installed package. The
plugin's source is the example in the README, so the walkthrough and the
test cannot drift apart.
"""

from __future__ import annotations

import math
import re
import sys

import pytest
from conftest import ROOT, load_fixture, no_transformers_warnings, rotary_from_config

from ropekit import LongContextConfig, apply_rope_scaling, plan
from ropekit.errors import UnknownFamilyError
from ropekit.registry import families, get_registry, lookup, reset_registry

MODULE = "acme_rope_granite"
DOC = ROOT / "README.md"


def example_plugin_source() -> str:
    text = DOC.read_text()
    marker = text.index("<!-- example-plugin")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


@pytest.fixture
def acme_installed(tmp_path, monkeypatch):
    """The doc's plugin as distribution acme-rope-granite 1.2.3, entry point ``acme`` in group ropekit."""
    (tmp_path / f"{MODULE}.py").write_text(example_plugin_source())
    dist = tmp_path / "acme_rope_granite-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rope-granite\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(f"[ropekit]\nacme = {MODULE}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ROPEKIT_NO_ENTRY_POINTS", raising=False)
    reset_registry()
    yield
    sys.modules.pop(MODULE, None)
    reset_registry()


def granite_config():
    """granite-3.0-8b-instruct's rope settings on transformers' own GraniteConfig."""
    from transformers import AutoConfig

    values = dict(max_position_embeddings=4096, rope_theta=10000.0, hidden_size=4096, num_attention_heads=32)
    return AutoConfig.for_model("granite", **values).to_dict()


def test_register_families_from_an_entry_point(acme_installed):
    family = lookup("granite")
    assert (family.name, family.plugin, family.version) == ("granite", "acme", "1.2.3")
    listed = {f["name"]: f for f in families()}
    assert listed["granite"]["plugin"] == "acme" and listed["granite"]["version"] == "1.2.3"
    assert lookup("qwen2").name == "qwen"  # the built-ins are all still there
    assert get_registry().faults == []


def test_third_party_family_lands_in_transformers(acme_installed):
    from transformers import AutoConfig

    cfg = granite_config()
    p = plan(cfg, LongContextConfig(method="yarn", factor=4))
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="yarn", factor=4))
    assert receipt["family"] == {"name": "granite", "plugin": "acme", "version": "1.2.3"}
    assert cfg["max_position_embeddings"] == 16384
    with no_transformers_warnings():
        rotary = rotary_from_config(AutoConfig.for_model(**cfg))
    got = rotary.inv_freq.double().tolist()
    assert got == pytest.approx(p.expected()[0], rel=1e-6)
    assert got[-1] == pytest.approx(10000.0 ** (-126 / 128) / 4, rel=1e-6)  # slowest pair: theta / s
    assert float(rotary.attention_scaling) == pytest.approx(0.1 * math.log(4) + 1, rel=1e-6)


def test_claim_config_from_a_third_party_plugin(acme_installed):
    cfg = {**granite_config(), "model_type": "granite_sft", "architectures": ["GraniteForCausalLM"]}
    assert plan(cfg, LongContextConfig(method="yarn", factor=4)).family.name == "granite"
    cfg["architectures"] = ["SomethingElse"]
    with pytest.raises(UnknownFamilyError, match="granite_sft"):
        plan(cfg, LongContextConfig(method="yarn", factor=4))


def test_register_scaling_methods_from_a_third_party_plugin(acme_installed):
    from transformers import AutoConfig

    cfg = load_fixture("meta-llama__Llama-2-7b-hf")
    receipt = apply_rope_scaling(cfg, LongContextConfig(method="llama3", factor=4))
    assert cfg["rope_scaling"] == {"rope_type": "llama3", "factor": 4.0, "original_max_position_embeddings": 4096,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    assert receipt.long_context["papers"] == ["arXiv:2407.21783"] and receipt.long_context["beta_fast"] is None
    with no_transformers_warnings():
        got = rotary_from_config(AutoConfig.for_model(**cfg)).inv_freq.double().tolist()
    # Meta's rule (Llama 3 paper, sec. 3.3): wavelengths under L0/4 keep their frequency,
    # above L0/1 are divided by s, in between a linear blend in L0/wavelength
    for i, freq in enumerate(got):
        theta = 10000.0 ** (-2 * i / 128)
        wavelength = 2 * math.pi / theta
        if wavelength < 4096 / 4:
            want = theta
        elif wavelength > 4096:
            want = theta / 4
        else:
            smooth = (4096 / wavelength - 1) / (4 - 1)
            want = (1 - smooth) * theta / 4 + smooth * theta
        assert freq == pytest.approx(want, rel=1e-6), i


def test_disable_plugins_blocks_an_entry_point_by_name(acme_installed, monkeypatch):
    monkeypatch.setenv("ROPEKIT_DISABLE_PLUGINS", "acme")
    reset_registry()
    with pytest.raises(UnknownFamilyError):
        lookup("granite")
    assert "llama3" not in get_registry().methods
    assert lookup("llama").name == "llama"


def test_no_entry_points_switch_keeps_third_parties_out(acme_installed, monkeypatch):
    monkeypatch.setenv("ROPEKIT_NO_ENTRY_POINTS", "1")
    reset_registry()
    with pytest.raises(UnknownFamilyError):
        lookup("granite")
