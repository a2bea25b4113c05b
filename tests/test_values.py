"""Values that plan once accepted and patch then refused for the wrong reason, and JSON that was refused wrongly.

A lone UTF-16 surrogate (``"\\ud800"``) in a config string and a folder name that is not
UTF-8 passed ``plan`` and failed ``patch`` with "cannot be written as canonical JSON ...
remove NaN, Infinity": both are now refused by both commands, naming the real cause. A
string of 200,000 ``{`` counted toward the container limit and a valid config was refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from ropekit import LongContextConfig, plan
from ropekit.errors import InvalidConfigError
from ropekit.jsonio import MAX_JSON_CONTAINERS, count_containers, parse_json

ROOT = Path(__file__).resolve().parents[1]
LLAMA3_TEXT = (FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / "config.json").read_text()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ropekit", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_braces_inside_strings_do_not_count_toward_the_container_limit(tmp_path):
    text = LLAMA3_TEXT.replace('"silu"', '"' + "{" * 200_000 + '"', 1)
    assert count_containers(text) == count_containers(LLAMA3_TEXT) < 10
    assert parse_json(text, "config.json", "fix it")["hidden_act"] == "{" * 200_000
    (tmp_path / "config.json").write_text(text)
    assert plan(str(tmp_path), LongContextConfig(method="yarn", factor=4)).new_window == 32768


def test_escaped_quotes_do_not_hide_brackets_from_the_count():
    bomb = '{"a": "\\"", "b": [' + "[]," * MAX_JSON_CONTAINERS + "[]]}"
    with pytest.raises(InvalidConfigError, match="objects and arrays"):
        parse_json(bomb, "config.json", "fix it")


def write_surrogate(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(LLAMA3_TEXT.replace('"silu"', '"si\\ud800lu"', 1))
    return folder


def test_a_lone_surrogate_is_refused_by_plan_and_patch_for_what_it_is(tmp_path):
    folder = write_surrogate(tmp_path / "model")
    planned = run("plan", str(folder), "--factor", "4")
    patched = run("patch", str(folder), "--factor", "4", "--out", str(tmp_path / "out"))
    assert planned.returncode == patched.returncode == 4
    assert planned.stderr == patched.stderr
    assert "lone UTF-16 surrogate \\ud800 at hidden_act" in planned.stderr and "NaN" not in planned.stderr
    assert not (tmp_path / "out").exists()


def test_a_valid_surrogate_pair_is_a_character_and_passes():
    text = LLAMA3_TEXT.replace('"silu"', '"si\\ud83d\\ude00lu"', 1)
    assert parse_json(text, "config.json", "fix it")["hidden_act"] == "si\U0001f600lu"


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
def test_a_folder_name_that_is_not_utf8_is_refused_by_plan_and_patch_alike(tmp_path):
    folder = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/model\xff"))
    folder.mkdir()
    (folder / "config.json").write_text(LLAMA3_TEXT)
    planned = run("plan", str(folder), "--factor", "4")
    patched = run("patch", str(folder), "--factor", "4", "--in-place")
    assert planned.returncode == patched.returncode == 4
    assert planned.stderr == patched.stderr
    assert "is not UTF-8 text (byte b'\\xff')" in planned.stderr and "rename the folder" in planned.stderr
    assert json.loads((folder / "config.json").read_text()) == json.loads(LLAMA3_TEXT)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
