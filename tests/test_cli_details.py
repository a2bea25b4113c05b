"""Small things a first hour runs into: typos, patched folders in audit, rope windows in memory, help texts."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import FIXTURES

from ropekit.cli import _load_commands, cli, main


@pytest.fixture
def run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))

    def call(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return call


@pytest.mark.parametrize("typo, meant", [("Qwen/Qwen2.5-7B-Instrcut", "Qwen/Qwen2.5-7B-Instruct"),
                                         ("meta-llama/llama-3.1-8b-instruc", "meta-llama/Llama-3.1-8B-Instruct")])
def test_a_hub_id_typo_gets_a_suggestion_from_the_catalog(run, typo, meant):
    code, _, err = run("plan", typo, "--factor", "4")
    assert code == 4 and f"(did you mean '{meant}'?)" in err


def test_no_suggestion_for_an_id_nothing_resembles(run):
    code, _, err = run("inspect", "acme/a-model-nobody-has")
    assert code == 4 and "did you mean" not in err


def test_audit_tells_a_valid_ropekit_patch_from_shipped_scaling(run, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    assert run("patch", str(FIXTURES / "Qwen__Qwen2.5-7B-Instruct"), "--factor", "4", "--method", "yarn",
               "--out", str(models / "q128"))[0] == 0
    shutil.copytree(FIXTURES / "deepseek-ai__DeepSeek-V3", models / "ds")
    code, out, _ = run("audit", str(models))
    assert code == 0
    rows = {line.split()[0].rsplit("/", 1)[-1]: line for line in out.splitlines()[2:-1]}
    assert "(patched by ropekit, receipt valid)" in rows["q128"]
    assert "yarn x40 from 4096 -> 163840" in rows["ds"] and "ropekit" not in rows["ds"]

    config = json.loads((models / "q128" / "config.json").read_text())
    config["rope_scaling"]["beta_fast"] = 16.0
    (models / "q128" / "config.json").write_text(json.dumps(config))
    code, out, _ = run("audit", str(models), "--json")
    statuses = {row["model"].rsplit("/", 1)[-1]: row["ropekit_receipt"] for row in json.loads(out)["rows"]}
    assert statuses["ds"] is None and statuses["q128"].startswith("invalid: ")
    assert "beta_fast" in statuses["q128"]


def test_memory_compares_the_context_with_the_rope_window_and_labels_the_catalog(run):
    code, out, _ = run("memory", "Qwen/Qwen2.5-7B-Instruct", "--context", "131072", "--gpu", "H100")
    assert code == 0
    assert out.splitlines()[0].startswith("source: bundled catalog copy of Qwen/Qwen2.5-7B-Instruct, captured ")
    assert "note: context 131,072 is beyond the 32,768 tokens the model's rope settings carry" in out

    code, out, _ = run("memory", "meta-llama/Llama-3.1-8B-Instruct", "--context", "8192", "--json")
    report = json.loads(out)
    assert report["rope_window"] == 131072  # llama3 x8 from 8192, as shipped
    longest = max(gpu["max_context"] for gpu in report["gpus"])
    assert longest > 131072
    assert report["rope_window_notes"] == [
        f"memory allows up to {longest:,} tokens, but the model's rope settings carry 131,072; longer contexts "
        "need RoPE scaling (ropekit plan meta-llama/Llama-3.1-8B-Instruct --target-context N)"]


def test_engine_is_case_insensitive_like_method(run, tmp_path):
    assert run("patch", str(FIXTURES / "Qwen__Qwen2.5-7B-Instruct"), "--factor", "4", "--method", "YARN",
               "--out", str(tmp_path / "q"))[0] == 0
    lower = run("export", str(tmp_path / "q"), "--engine", "vllm")
    upper = run("export", str(tmp_path / "q"), "--engine", "VLLM")
    assert lower[0] == upper[0] == 0 and lower[1] == upper[1]


def test_help_examples_use_ids_an_installed_package_resolves(run):
    """No example points at fixtures/ (an installed package has none); model ids resolve offline."""
    _load_commands()
    for name, command in cli.commands.items():
        code, out, _ = run(name, "--help")
        assert code == 0 and "fixtures/" not in out, name
    for model in ("Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"):
        assert run("inspect", model)[0] == 0
