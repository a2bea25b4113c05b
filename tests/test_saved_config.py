"""A receipt verifies against the config a model's save_pretrained writes, in either rope layout."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import FIXTURES

from ropekit import LongContextConfig, files, resolve
from ropekit.constants import RECEIPT_FILENAME
from ropekit.errors import ReceiptMismatchError

LLAMA3 = FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct"
QWEN_VL = FIXTURES / "Qwen__Qwen2.5-VL-7B-Instruct"
YARN4 = LongContextConfig(method="yarn", factor=4.0)


def resaved(patched, tmp_path):
    """The patched folder's config loaded and saved by the installed transformers, receipt beside it."""
    from transformers import AutoConfig

    out = tmp_path / "resaved"
    AutoConfig.from_pretrained(patched).save_pretrained(out)
    shutil.copy(patched / RECEIPT_FILENAME, out / RECEIPT_FILENAME)
    return out


@pytest.fixture(params=[LLAMA3, QWEN_VL], ids=["llama3", "qwen2.5-vl"])
def saved(request, tmp_path):
    patched = tmp_path / "patched"
    files.patch_folder(resolve(request.param), YARN4, out=patched)
    return resaved(patched, tmp_path)


def rope_container(config: dict) -> tuple[dict, str]:
    node = config.get("text_config", config)
    layout = "rope_parameters" if "rope_parameters" in node else "rope_scaling"
    return node, layout


def test_the_resaved_config_verifies(saved):
    """The patch wrote a 4.x layout (rope_scaling + rope_theta); transformers 5 saves rope_parameters,
    and adds _name_or_path-free defaults, dtype and its version: still the same rope, still verified."""
    config = json.loads((saved / "config.json").read_text())
    assert config["transformers_version"]
    result = files.verify_folder(saved)
    assert result.ok
    assert "every rope value match a re-saved config" in result.checks[0].detail  # not "the config hash"


def test_the_untouched_patched_folder_matches_its_hash(tmp_path):
    patched = tmp_path / "patched"
    files.patch_folder(resolve(LLAMA3), YARN4, out=patched)
    assert "the config hash match" in files.verify_folder(patched).checks[0].detail


@pytest.mark.parametrize("key, value", [("factor", 8.0), ("rope_type", "linear"), ("beta_slow", 2.0),
                                        ("rope_theta", 10000.0)])
def test_a_rope_edit_in_the_resaved_layout_is_named(saved, key, value):
    config = json.loads((saved / "config.json").read_text())
    node, layout = rope_container(config)
    prefix = "text_config." if node is not config else ""
    if key == "rope_theta" and layout == "rope_scaling":
        node["rope_theta"] = value
        name = f"{prefix}rope_theta"
    else:
        node[layout][key] = value
        name = f"{prefix}{layout}.{key}"
    (saved / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(ReceiptMismatchError, match=name.replace(".", r"\.")):
        files.verify_folder(saved)


def test_a_second_layout_that_disagrees_is_named(saved):
    """A file holding both layouts is read both ways: the legacy copy must say the same."""
    config = json.loads((saved / "config.json").read_text())
    node, layout = rope_container(config)
    mirror = dict(node[layout])
    mirror["factor"] = 2.0
    node["rope_scaling" if layout == "rope_parameters" else "rope_parameters"] = mirror
    (saved / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(ReceiptMismatchError, match="factor is 2.0, receipt says 4.0"):
        files.verify_folder(saved)


def test_defaults_written_or_dropped_are_not_edits_but_other_values_are(saved):
    from transformers import AutoConfig

    config = json.loads((saved / "config.json").read_text())
    defaults = AutoConfig.for_model(config["model_type"]).to_dict()
    config["output_attentions"] = defaults["output_attentions"]  # a default written out: not an edit
    (saved / "config.json").write_text(json.dumps(config, indent=2))
    assert files.verify_folder(saved).ok
    config["output_attentions"] = not defaults["output_attentions"]
    (saved / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(ReceiptMismatchError, match="output_attentions"):
        files.verify_folder(saved)
