"""Failures on the command line: one ``error:`` line, one JSON document with ``--json``, flags in words.

The Python API names its parameters (``on_existing='compound'``); the command line
names the flags that set them (``--on-existing compound``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from ropekit import LongContextConfig, plan
from ropekit.cli import _load_commands, cli, main
from ropekit.cli.failure import FLAGS, flag, split_fix
from ropekit.errors import Param, RopekitError

LLAMA2 = str(FIXTURES / "meta-llama__Llama-2-7b-hf")
LLAMA31 = str(FIXTURES / "meta-llama__Llama-3.1-8B-Instruct")


@pytest.fixture
def run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")

    def call(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return call


def patched_folder(tmp_path: Path, run) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copyfile(FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / "config.json", folder / "config.json")
    assert run("patch", str(folder), "--factor", "4", "--method", "yarn", "--in-place")[0] == 0
    return folder


# One failing invocation per command: (arguments, expected exit code, expected error class).
FAILURES: dict[str, tuple[list[str], int, str]] = {
    "inspect": (["inspect", "no-such-folder/"], 4, "ResolutionError"),
    "plan": (["plan", LLAMA31, "--factor", "4", "--method", "yarn"], 3, "CompoundingError"),
    "patch": (["patch", LLAMA2, "--factor", "64", "--method", "yarn", "--out", "out"], 3, "UnstableFactorError"),
    "verify": (["verify", "{tampered}"], 3, "ReceiptMismatchError"),
    "revert": (["revert", "no-such-folder"], 4, "ResolutionError"),
    "audit": (["audit", LLAMA2, "--method", "rope9"], 2, "InvalidRequestError"),
    "plugins": (["plugins", "--no-such-option"], 2, "NoSuchOption"),
    "doctor": (["doctor", "--target-context", "0"], 2, "BadParameter"),
    "memory": (["memory", LLAMA2, "--context", "4096", "--gpu", "Voodoo5"], 2, "InvalidRequestError"),
    "check-pack": (["check-pack", "no-such-pack.jsonl", "--target-context", "8192"], 4, "ResolutionError"),
    "export": (["export", "no-such-folder", "--engine", "vllm"], 4, "ResolutionError"),
    "profile": (["profile", "--factors", "two"], 2, "BadParameter"),
    "convert-gguf": (["convert-gguf", "no-such-model.gguf"], 2, "MissingParameter"),
}


def test_every_command_has_a_failure_case():
    _load_commands()
    assert set(FAILURES) == set(cli.commands)


@pytest.mark.parametrize("command", sorted(FAILURES))
def test_json_failure_is_one_document_on_stdout(command, run, tmp_path):
    args, code, error_class = FAILURES[command]
    if "{tampered}" in args:
        folder = patched_folder(tmp_path, run)
        receipt = json.loads((folder / "rope_receipt.json").read_text())
        receipt["long_context"]["factor"] = 2.0
        (folder / "rope_receipt.json").write_text(json.dumps(receipt))
        args = [str(folder) if a == "{tampered}" else a for a in args]
    got, out, err = run(*args, "--json")
    assert got == code, err
    document = json.loads(out)  # exactly one document: json.loads refuses trailing data
    assert document["ok"] is False and document["exit_code"] == code
    assert document["error"]["class"] == error_class
    line = err.strip()
    assert "\n" not in line and line == f"error: {document['error']['message']}" + line.partition(
        document["error"]["message"])[2]
    assert document["error"]["fix"], document  # every failure says what to do

    plain_code, plain_out, plain_err = run(*args)  # without --json: nothing on stdout, the same line
    assert plain_code == code and plain_out == "" and plain_err == err


def test_a_report_built_before_the_failure_is_kept_in_the_one_document(run, monkeypatch):
    """doctor --json refusing a target still prints its report, with the error beside it."""
    from ropekit.training import attention

    real = attention.choose_attention_backend
    monkeypatch.setattr(attention, "choose_attention_backend",
                        lambda target: real(target, device=attention.DeviceInfo("cpu", "CPU")))
    code, out, err = run("doctor", "--target-context", "131072", "--json")
    assert code == 3
    document = json.loads(out)
    assert document["allowed"] is False and document["ok"] is False and document["exit_code"] == 3
    assert document["error"]["class"] == "AttentionBackendError"


def test_success_json_is_unchanged_by_the_failure_document(run):
    code, out, _ = run("plan", LLAMA2, "--factor", "4", "--method", "yarn", "--json")
    assert code == 0
    document = json.loads(out)
    assert "error" not in document and document["long_context"]["factor"] == 4.0


@pytest.mark.parametrize("fails", [False, True])
def test_json_stdout_holds_the_document_alone_whatever_prints_meanwhile(run, monkeypatch, fails):
    """A library's log line on import (DeepSpeed's accelerator notice) goes to stderr under --json."""
    from ropekit.cli import models

    real = models.plan_config

    def noisy(*args, **kwargs):
        print("[WARNING] [real_accelerator.py] Setting accelerator to CPU.")
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "plan_config", noisy)
    args = ["plan", LLAMA31 if fails else LLAMA2, "--factor", "4", "--method", "yarn", "--json"]
    code, out, err = run(*args)
    assert code == (3 if fails else 0)
    document = json.loads(out)
    if fails:
        assert document["ok"] is False and document["error"]["class"] == "CompoundingError"
    else:
        assert "long_context" in document
    assert "Setting accelerator to CPU" in err and "Setting accelerator" not in out


# --- flags on the command line, parameters in the API --------------------------------------

@pytest.mark.parametrize("args, api, flags", [
    (["plan", LLAMA2, "--factor", "64", "--method", "yarn"], dict(method="yarn", factor=64.0), ["--allow-unstable"]),
    (["plan", LLAMA2, "--factor", "4", "--original-max", "1000"],
     dict(factor=4.0, original_max_position_embeddings=1000), ["drop --original-max or set it to 4096"]),
    (["plan", LLAMA2, "--target-context", "100"], dict(target_context=100), ["--target-context 100 is not"]),
])
def test_command_line_names_flags_and_the_api_names_parameters(run, args, api, flags):
    code, out, err = run(*args)
    for words in flags:
        assert words in err, err
    assert not re.search(r"\b(on_existing|allow_unstable|original_max_position_embeddings|target_context)\b", err)
    with pytest.raises(RopekitError) as raised:
        plan(args[1], LongContextConfig(**api))
    message = str(raised.value)
    assert "--" not in message, message  # the API never speaks in flags
    names = {param.name for param in raised.value.params}
    assert names and all(name in message for name in names)


def test_compounding_refusal_gives_the_flags_to_type(run):
    """The policy's refusal names both spellings and a command that works; the line ends with it."""
    code, _, err = run("plan", LLAMA31, "--factor", "4", "--method", "yarn")
    assert code == 3 and "--on-existing compound" in err
    assert err.strip().endswith("--on-existing compound")


def test_request_validation_names_flags_on_the_command_line(run):
    code, _, err = run("plan", LLAMA2, "--factor", "4", "--beta-fast", "1", "--beta-slow", "2")
    assert code == 2 and "--beta-fast (1) must exceed --beta-slow (2)" in err
    with pytest.raises(RopekitError, match=r"beta_fast \(1\) must exceed beta_slow \(2\)"):
        LongContextConfig(factor=4, beta_fast=1, beta_slow=2)


def test_family_hint_names_the_flag(run, tmp_path):
    (tmp_path / "m").mkdir()
    config = json.loads((FIXTURES / "meta-llama__Llama-2-7b-hf" / "config.json").read_text())
    config["model_type"] = "llama_sft"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    code, _, err = run("plan", str(tmp_path / "m"), "--factor", "2")
    assert code == 4 and "pass --family NAME" in err and "family=NAME" not in err
    code, _, _ = run("plan", str(tmp_path / "m"), "--factor", "2", "--family", "llama")
    assert code == 0


def test_param_spellings():
    assert (str(Param("on_existing", "compound")), flag(Param("on_existing", "compound"))) == \
        ("on_existing='compound'", "--on-existing compound")
    assert (str(Param("allow_unstable", True)), flag(Param("allow_unstable", True))) == \
        ("allow_unstable=True", "--allow-unstable")
    assert (str(Param("family", placeholder="NAME")), flag(Param("family", placeholder="NAME"))) == \
        ("family=NAME", "--family NAME")
    assert flag(Param("for_training", False)) == "for_training=False"  # no flag: the Python spelling stays


def test_every_flag_in_the_table_exists_and_every_param_raised_has_a_spelling():
    _load_commands()
    options = {opt for command in cli.commands.values() for param in command.params for opt in param.opts}
    assert set(FLAGS.values()) <= options, set(FLAGS.values()) - options
    raised = set()
    for path in (ROOT / "ropekit").rglob("*.py"):
        raised |= set(re.findall(r'Param\("([a-z_]+)"', path.read_text()))
    assert raised and raised <= set(FLAGS), raised - set(FLAGS)


def test_split_fix():
    assert split_fix("bad value (a; b); do this") == ("bad value (a; b)", "do this")
    assert split_fix("model ships x; asking more; pass --x") == ("model ships x", "pass --x")
    assert split_fix("no fix here") == ("no fix here", None)


def test_input_errors_come_before_heavy_imports_in_every_command(tmp_path):
    """A failure in the arguments or the input is reported without importing torch or transformers."""
    import subprocess
    import sys

    probe = ("import json, sys\nfrom ropekit.cli import main\nmain(json.loads(sys.argv[1]))\n"
             "print('HEAVY', sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n")
    heavy = {}
    for command, (args, code, _) in sorted(FAILURES.items()):
        if "{tampered}" in args:
            args = ["verify", str(tmp_path / "no-such-folder"), "--landing"]
        proc = subprocess.run([sys.executable, "-c", probe, json.dumps(args)], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert proc.stderr.startswith("error: "), (command, proc.stderr)
        if "HEAVY []" not in proc.stderr:
            heavy[command] = proc.stderr.strip().splitlines()[-1]
    assert heavy == {}


def test_doctor_imports_what_it_checks_and_not_transformers(tmp_path):
    import subprocess
    import sys

    probe = ("import sys\nfrom ropekit.cli import main\nmain(['doctor', '--json'])\n"
             "print('TRANSFORMERS', 'transformers' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "TRANSFORMERS False" in proc.stderr, proc.stderr
    assert "device" in json.loads(proc.stdout)
