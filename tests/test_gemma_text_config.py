"""A Gemma 3 (multimodal) config whose ``text_config`` is null or missing.

transformers builds such a model's language tower from ``Gemma3TextConfig`` defaults
(plain RoPE at 131072 tokens) and ignores top-level rope settings. ropekit once patched
the top level, exited 0, and ``verify --landing`` said ok; now the config is refused, and
the landing check compares the site the receipt scaled with the one transformers reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_fixture

from ropekit import LongContextConfig, files, plan, resolve
from ropekit.errors import InvalidConfigError
from ropekit.plugins.gemma import Gemma3Family
from ropekit.registry.family import Family

ROOT = Path(__file__).resolve().parents[1]
GEMMA3 = "google__gemma-3-4b-it"
LINEAR2 = LongContextConfig(method="linear", factor=2.0)


def without_text_config(how: str) -> dict:
    config = load_fixture(GEMMA3)
    if how == "null":
        config["text_config"] = None
    else:
        del config["text_config"]
    return config


@pytest.mark.parametrize("how", ["null", "missing"])
def test_plan_refuses_naming_text_config_and_the_fix(how):
    with pytest.raises(InvalidConfigError) as caught:
        plan(without_text_config(how), LINEAR2)
    message = str(caught.value)
    assert f"text_config is {how}" in message and "Gemma3TextConfig defaults" in message
    assert "restore the model's text_config" in message


def test_patch_exits_4_in_one_line_and_writes_nothing(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(without_text_config("null")))
    proc = subprocess.run([sys.executable, "-m", "ropekit", "patch", str(folder), "--factor", "2", "--method",
                           "linear", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 4
    line, = proc.stderr.splitlines()
    assert "text_config is null" in line
    assert not (tmp_path / "out").exists()


def test_landing_fails_a_receipt_that_scaled_a_site_transformers_does_not_read(tmp_path, monkeypatch):
    """A folder an earlier ropekit patched at the top level: hashes agree, the landing does not."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(without_text_config("null")))
    with monkeypatch.context() as old:  # the earlier ropekit: no text_config check
        old.setattr(Gemma3Family, "rope_sites", Family.rope_sites)
        files.patch_folder(resolve(folder), LINEAR2, out=tmp_path / "out")
    files.verify_folder(tmp_path / "out")  # the receipt matches its config...
    from ropekit.api import verify_landing

    report = verify_landing(tmp_path / "out")
    assert not report.landed  # ...but transformers builds plain RoPE from text_config defaults
    problem = report.first_problem()
    assert "holds rope_type 'default' at text_config" in problem and "receipt promises linear x2.0" in problem
