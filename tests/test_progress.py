"""Progress on stderr: at the grain of the work, only on a terminal, cleared at the end."""

from __future__ import annotations

import io
import shutil

from conftest import FIXTURES

from ropekit import verify_landing
from ropekit.cli import main
from ropekit.cli.progress import status


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_is_rewritten_in_place_and_cleared():
    out = Terminal()
    with status("verify", out) as report:
        report("step one")
        report("step two")
    text = out.getvalue()
    assert "verify: step one" in text and "verify: step two" in text
    assert text.endswith("\r\x1b[2K") and "\n" not in text


def test_no_progress_when_stderr_is_not_a_terminal():
    out = io.StringIO()
    with status("verify", out) as report:
        report("step")
    assert out.getvalue() == ""


def test_verify_landing_reports_every_step_and_every_rotary_module(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copyfile(FIXTURES / "google__gemma-3-4b-it" / "config.json", folder / "config.json")
    events: list[str] = []
    report = verify_landing(folder, progress=events.append)
    assert report.landed
    assert events[0] == "importing torch and transformers" and events[1].startswith("building the gemma3")
    built = [e for e in events if e.startswith("building rotary module")]
    checked = [e for e in events if e.startswith("checking rotary module")]
    modules = len(checked)
    assert modules >= 1 and len(built) == modules
    assert [e.split(" (")[0] for e in checked] == [f"checking rotary module {i}/{modules}"
                                                   for i in range(1, modules + 1)]


def test_cli_verify_landing_shows_progress_on_a_terminal(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "m"
    assert main(["patch", str(FIXTURES / "meta-llama__Llama-2-7b-hf"), "--factor", "2", "--method", "linear",
                 "--out", str(folder)]) == 0
    capsys.readouterr()
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["verify", str(folder), "--landing"]) == 0
    out = capsys.readouterr().out
    assert "ok: landing" in out
    shown = terminal.getvalue()
    assert "verify --landing: importing torch and transformers" in shown
    assert "verify --landing: checking rotary module 1/1" in shown and shown.endswith("\r\x1b[2K")


def test_doctor_says_what_it_waits_for_on_a_terminal(capsys, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["doctor", "--json"]) == 0
    assert "device" in capsys.readouterr().out
    shown = terminal.getvalue()
    assert "doctor: importing torch to read the GPU" in shown and shown.endswith("\r\x1b[2K")


def test_check_pack_with_a_tokenizer_shows_the_load_and_the_count_on_a_terminal(tmp_path, capsys, monkeypatch):
    import json

    from test_eval_pack import local_tokenizer

    tokenizer = tmp_path / "tok"
    local_tokenizer(tokenizer)
    pack = tmp_path / "pack.jsonl"
    pack.write_text("".join(json.dumps({"text": f"word {i} " * 20}) + "\n" for i in range(450)))
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["check-pack", str(pack), "--target-context", "8192", "--original-max", "4096",
                 "--tokenizer", str(tokenizer)]) == 0
    assert "450 examples" in capsys.readouterr().out
    shown = terminal.getvalue()
    assert f"check-pack: loading the tokenizer from {tokenizer}" in shown
    assert "check-pack: 200 examples counted" in shown and "check-pack: 400 examples counted" in shown
    assert shown.endswith("\r\x1b[2K")
