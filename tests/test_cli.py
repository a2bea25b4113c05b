"""The command line: exit codes, one-line errors, tables and --json.

The done-criteria run the real console entry point in a subprocess
(``python -m ropekit``, so they follow the interpreter running the tests); the
detailed checks call ``ropekit.cli.main(argv)`` in-process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURE_NAMES, FIXTURES, ROOT

from ropekit.cli import main
from ropekit.constants import BACKUP_FILENAME, RECEIPT_FILENAME

LLAMA2 = "fixtures/meta-llama__Llama-2-7b-hf"
LLAMA3 = "fixtures/meta-llama__Meta-Llama-3-8B-Instruct"
LLAMA31 = "fixtures/meta-llama__Llama-3.1-8B-Instruct"
LLAMA32_1B = "fixtures/meta-llama__Llama-3.2-1B-Instruct"
QWEN25 = "fixtures/Qwen__Qwen2.5-7B-Instruct"
YARN_PAPERS = ["arXiv:2309.00071", "arXiv:2306.15595"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test reaches the network: the Hub is off and the HF cache is an empty folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def ropekit(*args: str) -> subprocess.CompletedProcess:
    """The real entry point in a child process (it inherits the offline environment)."""
    return subprocess.run([sys.executable, "-m", "ropekit", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``ropekit ARGS`` in-process from the repository root; returns (code, stdout, stderr)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- done-criteria, through the real entry point --------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("ropekit.plugins.qwen") is None,
                    reason="needs the qwen family plugin (ropekit/plugins/qwen.py)")
def test_qwen25_yarn_x4_plan_json():
    proc = ropekit("plan", QWEN25, "--factor", "4", "--method", "yarn", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["long_context"] == {
        "method": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
        "new_max_position_embeddings": 131072, "attn_factor": 1.0, "beta_fast": 32, "beta_slow": 1,
        "papers": YARN_PAPERS}


def test_llama31_yarn_x4_is_refused_naming_llama3_8_and_32():
    proc = ropekit("plan", LLAMA31, "--factor", "4", "--method", "yarn")
    assert proc.returncode == 3
    line = one_error_line(proc.stderr)
    assert "llama3" in line and "x8" in line and "x32" in line
    assert proc.stdout == ""


def test_patch_verify_edit_and_in_place_revert(tmp_path):
    out = tmp_path / "out"
    proc = ropekit("patch", LLAMA3, "--factor", "4", "--method", "yarn", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert ropekit("verify", str(out)).returncode == 0

    config = json.loads((out / "config.json").read_text())
    config["rope_scaling"]["factor"] = 8.0
    (out / "config.json").write_text(json.dumps(config, indent=2))
    proc = ropekit("verify", str(out))
    assert proc.returncode == 3
    assert "rope_scaling.factor" in one_error_line(proc.stderr)

    model = tmp_path / "model"
    model.mkdir()
    shutil.copyfile(ROOT / LLAMA3 / "config.json", model / "config.json")
    original = sha(model / "config.json")
    proc = ropekit("patch", str(model), "--factor", "2", "--method", "linear", "--in-place")
    assert proc.returncode == 0, proc.stderr
    assert sha(model / "config.json") != original
    proc = ropekit("revert", str(model))
    assert proc.returncode == 0, proc.stderr
    assert sha(model / "config.json") == original
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], int]]:
    (tmp / "malformed").mkdir()
    (tmp / "malformed" / "config.json").write_text('{"model_type": "llama",')
    (tmp / "untyped").mkdir()
    (tmp / "untyped" / "config.json").write_text('{"max_position_embeddings": 4096, "rope_theta": 10000.0}')
    return {
        "missing": (["plan", str(tmp / "nowhere"), "--factor", "4"], 4),
        "malformed": (["plan", str(tmp / "malformed"), "--factor", "4"], 4),
        "untyped": (["inspect", str(tmp / "untyped")], 4),
        "factor0": (["plan", LLAMA3, "--factor", "0"], 2),
    }


@pytest.mark.parametrize("case", ["missing", "malformed", "untyped", "factor0"])
def test_bad_input_exit_codes_one_line_no_traceback(case, tmp_path):
    args, code = bad_inputs(tmp_path)[case]
    proc = ropekit(*args)
    assert proc.returncode == code
    line = one_error_line(proc.stderr)
    expected_words = {"missing": "nowhere", "malformed": "not valid JSON", "untyped": "model_type", "factor0": "factor"}
    assert expected_words[case] in line


def test_audit_all_fixtures_one_row_each():
    proc = ropekit("audit", "fixtures", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert sorted(Path(r["model"]).name for r in rows) == FIXTURE_NAMES


# --- plan ---------------------------------------------------------------------------------

def test_plan_table_shows_each_change_and_the_block(cli):
    code, out, err = cli("plan", LLAMA3, "--factor", "4", "--method", "yarn")
    assert code == 0, err
    assert "source: local file" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("(root)")}
    assert "(absent) -> 'yarn'" in lines["rope_scaling.rope_type"]
    assert "(absent) -> 4.0" in lines["rope_scaling.factor"]
    assert "(absent) -> 8192" in lines["rope_scaling.original_max_position_embeddings"]
    assert "8192 -> 32768" in lines["max_position_embeddings"]
    assert "new_max_position_embeddings       32768" in out
    assert f"attention scaling {0.1 * math.log(4) + 1:.4f}" in out


def test_plan_json_ntk_theta_matches_the_formula(cli):
    code, out, _ = cli("plan", LLAMA3, "--factor", "4", "--method", "ntk", "--json")
    assert code == 0
    plan = json.loads(out)
    theta = next(c for c in plan["changes"] if c["path"] == ["rope_theta"])
    assert theta["before"] == 500000.0
    assert theta["after"] == pytest.approx(500000.0 * 4 ** (128 / 126), rel=1e-12)
    assert plan["long_context"]["beta_fast"] is None and plan["long_context"]["attn_factor"] is None
    assert plan["model"]["source"] == "local"


def test_plan_auto_says_why(cli):
    code, out, _ = cli("plan", LLAMA3, "--factor", "4")
    assert code == 0
    assert "method yarn (auto): yarn: x4 is 4x or more" in out
    code, out, _ = cli("plan", LLAMA3, "--factor", "2", "--json")
    reason = json.loads(out)["method_reason"]
    assert reason.startswith("yarn") and "ntk" in reason


def test_plan_target_context_and_compound_and_replace(cli):
    code, out, _ = cli("plan", LLAMA3, "--target-context", "32768", "--method", "linear", "--json")
    assert code == 0
    assert json.loads(out)["long_context"]["factor"] == 4.0

    code, out, _ = cli("plan", LLAMA31, "--factor", "2", "--method", "yarn", "--on-existing", "compound", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["long_context"]["factor"] == 16.0
    assert plan["long_context"]["original_max_position_embeddings"] == 8192
    assert plan["long_context"]["new_max_position_embeddings"] == 16 * 8192
    removed = {c["path"][-1] for c in plan["changes"] if c.get("removed")}
    assert removed == {"low_freq_factor", "high_freq_factor"}

    code, out, _ = cli("plan", LLAMA31, "--factor", "2", "--method", "yarn", "--on-existing", "replace")
    assert code == 0
    assert "warning: dropping shipped llama3 x8" in out


@pytest.mark.parametrize("args, code, word", [
    (["--factor", "2", "--original-max", "8192"], 3, "4096"),
    (["--factor", "64", "--method", "yarn"], 3, "--allow-unstable"),
    (["--factor", "2", "--beta-fast", "1"], 2, "--beta-fast"),
    (["--factor", "2", "--method", "rope9"], 2, "rope9"),
    (["--factor", "abc"], 2, "--factor"),
    ([], 2, "--factor"),
    (["--factor", "2", "--target-context", "9000"], 2, "--target-context"),
    (["--factor", "2", "--family", "nonesuch"], 4, "nonesuch"),
])
def test_plan_errors(cli, args, code, word):
    got, out, err = cli("plan", LLAMA2, *args)
    assert got == code
    assert word in one_error_line(err)
    assert out == ""


def test_allow_unstable(cli):
    code, out, _ = cli("plan", LLAMA2, "--factor", "64", "--method", "yarn", "--allow-unstable", "--json")
    assert code == 0
    assert json.loads(out)["long_context"]["new_max_position_embeddings"] == 64 * 4096


# --- inspect and sources ------------------------------------------------------------------

def test_inspect_llama31(cli):
    code, out, _ = cli("inspect", LLAMA31)
    assert code == 0
    assert "ships llama3 x8 from 8192 -> 131072" in out
    code, out, _ = cli("inspect", LLAMA31, "--json")
    facts = json.loads(out)
    assert (facts["family"], facts["native_window"], facts["max_position_embeddings"]) == ("llama", 8192, 131072)
    assert facts["effective_window"] == 131072
    assert facts["rope_theta"] == 500000.0
    assert facts["rotary_dim"] == 4096 // 32
    assert facts["shipped_scaling"]["rope_type"] == "llama3" and facts["shipped_scaling"]["factor"] == 8.0
    assert facts["sites"] == [{"site": "rope_scaling", "rope_type": "llama3", "rope_theta": 500000.0}]
    assert facts["methods"] == ["dynamic", "linear", "ntk", "yarn"]


def test_inspect_unscaled_model_and_head_dim(cli):
    code, out, _ = cli("inspect", LLAMA32_1B, "--json")
    assert json.loads(out)["rotary_dim"] == 64  # head_dim 64, not 2048 / 32
    code, out, _ = cli("inspect", LLAMA2, "--json")
    facts = json.loads(out)
    assert facts["shipped_scaling"] is None and facts["effective_window"] == 4096 and facts["rope_theta"] == 10000.0


def test_a_catalog_config_is_labelled(cli):
    code, out, _ = cli("inspect", "meta-llama/Llama-3.1-8B-Instruct")
    assert code == 0
    assert out.startswith("source: bundled catalog copy of meta-llama/Llama-3.1-8B-Instruct")
    assert "ships llama3 x8 from 8192 -> 131072" in out
    code, out, _ = cli("plan", "meta-llama/Llama-3.1-8B-Instruct", "--factor", "2", "--on-existing", "replace",
                       "--json")
    assert code == 0 and json.loads(out)["model"]["source"] == "catalog"
    code, out, err = cli("patch", "meta-llama/Llama-3.1-8B-Instruct", "--factor", "2", "--in-place")
    assert code == 4 and "--out" in one_error_line(err)


def test_a_hub_id_from_the_hf_cache(cli, offline, tmp_path):
    from hf_cache import HFCache

    raw = (FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / "config.json").read_bytes()
    commit = HFCache(offline).add("acme/llama3-clone", {"config.json": raw, "tokenizer.json": b"{}"})
    code, out, err = cli("inspect", "acme/llama3-clone")
    assert code == 0, err
    assert out.startswith(f"source: Hugging Face cache: acme/llama3-clone @ {commit}")
    code, out, err = cli("patch", "acme/llama3-clone", "--factor", "4", "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["config.json", RECEIPT_FILENAME]
    model = json.loads((tmp_path / "o" / RECEIPT_FILENAME).read_text())["model"]
    assert (model["id"], model["revision"], model["source"]) == ("acme/llama3-clone", commit, "cache")
    assert model["file_sha256_before"] == hashlib.sha256(raw).hexdigest()
    code, _, err = cli("patch", "acme/llama3-clone", "--factor", "4", "--in-place")
    assert code == 4 and "local model folder" in one_error_line(err)


# --- patch, verify, revert ----------------------------------------------------------------

def test_patch_out_reports_files_and_weights(cli, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copyfile(ROOT / LLAMA3 / "config.json", model / "config.json")
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 8)
    code, out, err = cli("patch", str(model), "--factor", "4", "--method", "yarn", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "copied: tokenizer.json" in out
    assert "model.safetensors (weights)" in out and "ln -s" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["config.json", RECEIPT_FILENAME, "tokenizer.json"]

    code, out, _ = cli("patch", str(model), "--factor", "2", "--method", "linear", "--in-place", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["backup"] == str(model / BACKUP_FILENAME) and report["in_place"] is True
    receipt = json.loads((model / RECEIPT_FILENAME).read_text())
    assert report["manifest_sha256"] == receipt["manifest_sha256"]


def test_verify_and_revert_json(cli, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copyfile(ROOT / LLAMA3 / "config.json", model / "config.json")
    original = sha(model / "config.json")
    assert cli("patch", str(model), "--factor", "4", "--in-place")[0] == 0
    code, out, _ = cli("verify", str(model), "--json")
    assert code == 0 and json.loads(out)["ok"] is True

    receipt = json.loads((model / RECEIPT_FILENAME).read_text())
    receipt["long_context"]["factor"] = 2.0
    (model / RECEIPT_FILENAME).write_text(json.dumps(receipt))
    code, out, err = cli("verify", str(model), "--json")
    assert code == 3 and json.loads(out)["ok"] is False
    assert "long_context.factor" in one_error_line(err)

    code, out, err = cli("revert", str(model))
    assert code == 3, "a receipt edited after the patch no longer vouches for the backup"
    code, out, _ = cli("revert", str(model), "--force", "--json")
    assert code == 0 and json.loads(out)["config_sha256"] == original == sha(model / "config.json")

    code, _, err = cli("revert", str(model))
    assert code == 4 and "nothing to revert" in one_error_line(err)


# --- audit --------------------------------------------------------------------------------

def test_audit_rows_with_errors_never_stop_the_run(cli, tmp_path):
    shutil.copytree(ROOT / LLAMA2, tmp_path / "a" / "llama2")
    shutil.copytree(ROOT / LLAMA31, tmp_path / "a" / "nested" / "llama31")
    (tmp_path / "a" / "broken").mkdir()
    (tmp_path / "a" / "broken" / "config.json").write_text("{")
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "config.json").write_text("{")
    code, out, _ = cli("audit", str(tmp_path / "a"), str(tmp_path / "nowhere"), "--json")
    assert code == 0
    rows = {Path(r["model"]).name: r for r in json.loads(out)["rows"]}
    assert sorted(rows) == ["broken", "llama2", "llama31", "nowhere"]
    assert rows["llama2"]["extension"] == "yarn x4 -> 16384"
    assert rows["llama2"]["long_context"]["new_max_position_embeddings"] == 4 * 4096
    assert rows["llama31"]["shipped"] == "ships llama3 x8 from 8192 -> 131072"
    assert rows["llama31"]["effective_window"] == 131072
    assert "x32" in rows["llama31"]["refused"] and rows["llama31"]["refused_kind"] == "CompoundingError"
    assert "not valid JSON" in rows["broken"]["error"]
    assert "nowhere" in rows["nowhere"]["error"]

    code, out, _ = cli("audit", str(tmp_path / "a"), "--factor", "2", "--method", "linear")
    assert code == 0
    assert "linear x2 -> 8192" in out
    assert "refused: would compound to x16 (see --on-existing)" in out
    assert "error: " + str(tmp_path / "a" / "broken" / "config.json") + " is not valid JSON" in out
    assert "3 models: 1 can take x2, 1 refused, 1 with errors" in out
    assert cli("audit", str(tmp_path / "a"), "--strict")[0] == 4
    code, out, err = cli("audit", str(tmp_path / "a"), "--method", "rope9")
    assert code == 2 and out == "" and "rope9" in one_error_line(err)


def test_audit_table_has_one_row_per_fixture(cli):
    code, out, _ = cli("audit", "fixtures")
    assert code == 0
    for name in FIXTURE_NAMES:
        assert sum(line.startswith(f"fixtures/{name} ") for line in out.splitlines()) == 1, name


# --- plugins, help, debug -----------------------------------------------------------------

def test_plugins_lists_families_methods_and_faults(cli, monkeypatch):
    from ropekit import hookimpl
    from ropekit.registry import manager

    class Faulty:
        @hookimpl
        def register_families(self, register):
            raise RuntimeError("cannot read my table")

    pm = manager.make_plugin_manager(entry_points=False)
    pm.register(Faulty(), name="faulty-plugin")
    monkeypatch.setattr(manager, "_default", manager.Registry.from_manager(pm))
    code, out, _ = cli("plugins", "--json")
    assert code == 0
    data = json.loads(out)
    llama = next(f for f in data["families"] if f["name"] == "llama")
    assert llama["plugin"] == "ropekit.plugins.llama" and llama["model_types"] == ["llama", "mistral"]
    bands = {m["name"]: m["stable_max_factor"] for m in data["methods"]}
    assert {k: bands[k] for k in ("linear", "ntk", "dynamic", "yarn")} == {"linear": 8, "ntk": 4, "dynamic": 8,
                                                                          "yarn": 32}
    assert data["faults"] == [{"plugin": "faulty-plugin", "hook": "register_families",
                               "error": "RuntimeError: cannot read my table"}]
    code, out, _ = cli("plugins")
    assert code == 0
    assert "llama, mistral" in out and "faulty-plugin" in out and "cannot read my table" in out


def test_every_command_help_has_an_example(cli):
    for command in ("inspect", "plan", "patch", "verify", "revert", "audit", "plugins"):
        code, out, _ = cli(command, "--help")
        assert code == 0
        assert "Example:" in out and f"ropekit {command} " in out, command


def test_debug_shows_the_traceback_and_bugs_exit_1(cli, monkeypatch):
    code, _, err = cli("plan", "nowhere-at-all", "--factor", "2", "--debug")
    assert code == 4 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")

    from ropekit.cli import models

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")
    monkeypatch.setattr(models, "model_facts", broken)
    code, _, err = cli("inspect", LLAMA2)
    assert code == 1
    assert "ZeroDivisionError" in one_error_line(err) and "bug" in err
