"""Hostile input: every bad id, revision, config.json or receipt gives one clear RopekitError line.

Each case goes through the Python API (in process, tracemalloc peak measured) and the
real command line (``python -m ropekit`` in a child, with the child's peak RSS read
from ``os.wait4`` and compared with a bare ``ropekit --version``). The limit asserted
is memory that never follows the file (a 100 MiB config.json must not be read) and a
command line that stays light (no torch or transformers import on an input error).
Speed is measured in ``bench/run.py``, never asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FIXTURES

from ropekit import LongContextConfig, RopekitError, files, plan, resolve
from ropekit.constants import RECEIPT_FILENAME
from ropekit.errors import InvalidConfigError, ResolutionError
from ropekit.jsonio import MAX_JSON_BYTES, MAX_JSON_DEPTH, parse_json
from ropekit.registry import get_registry
from ropekit.serving.export import load_serve_spec

LLAMA31 = FIXTURES / "meta-llama__Llama-3.1-8B-Instruct" / "config.json"
LLAMA3 = FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / "config.json"
YARN4 = LongContextConfig(method="yarn", factor=4.0)
MIB = 1024 * 1024
PEAK_LIMIT = 8 * MIB  # in-process tracemalloc peak
RSS_LIMIT_KIB = 32 * 1024  # child's peak RSS above a bare ``ropekit --version``


def llama31_text() -> str:
    return LLAMA31.read_text()


def substituted(old: str, new: str) -> bytes:
    text = llama31_text()
    assert old in text
    return text.replace(old, new, 1).encode()


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


# name -> (bytes of config.json, words the error must contain)
CONFIG_CASES: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "deep-array-10000": (nested(10_000).encode(), ("deeper",)),
    "deep-object-10000": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, ("deeper",)),
    "deep-parsable-200": (substituted('"vocab_size": 128256', f'"vocab_size": {nested(200)}'),
                          (f"deeper than {MAX_JSON_DEPTH} levels", "vocab_size[0][0]")),
    "object-bomb": (b"[" + b"{}," * 200_000 + b"{}]", ("objects and arrays",)),
    "not-utf8": (substituted('"silu"', '"silu#"').replace(b"#", b"\xff"), ("not UTF-8", "b'\\xff'")),
    "utf16": (llama31_text().encode("utf-16"), ("not UTF-8", "UTF-16")),
    "utf8-bom": (b"\xef\xbb\xbf" + llama31_text().encode(), ("byte-order mark", "remove the first three bytes")),
    "nan": (substituted('"factor": 8.0', '"factor": NaN'), ("NaN", "rope_scaling.factor")),
    "infinity": (substituted('"max_position_embeddings": 131072', '"max_position_embeddings": Infinity'),
                 ("Infinity", "max_position_embeddings")),
    "float-overflow": (substituted('"rope_theta": 500000.0', '"rope_theta": 1e400'), ("Infinity", "rope_theta")),
    "int-5000-digits": (substituted('"vocab_size": 128256', '"vocab_size": ' + "9" * 5000), ("number",)),
    "duplicate-top-level": (substituted("{\n", '{\n  "rope_theta": 10000.0,\n'), ("repeats the key rope_theta",)),
    "duplicate-nested": (substituted('"factor": 8.0,', '"factor": 8.0, "factor": 2.0,'),
                         ("repeats the key rope_scaling.factor",)),
    "control-character": (substituted('"silu"', '"si\x01lu"'), ("not valid JSON",)),
    "empty": (b"", ("not valid JSON",)),
    "top-level-list": (b"[]", ("holds a JSON list", "expected an object")),
}
#: non-finite numbers are read as transformers reads them, and refused only where ropekit reads a number
NONFINITE_ROPE = {"nan", "infinity", "float-overflow"}


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    """One model folder per case, plus a 100 MiB config.json, a FIFO and a patched folder."""
    root = tmp_path_factory.mktemp("hostile")
    for name, (data, _) in CONFIG_CASES.items():
        (root / name).mkdir()
        (root / name / "config.json").write_bytes(data)
    huge = root / "huge-100MiB"
    huge.mkdir()
    with open(huge / "config.json", "wb") as handle:  # real bytes, written 1 MiB at a time
        handle.write(b'{"model_type": "llama", "padding": "')
        chunk = b"x" * MIB
        for _ in range(100):
            handle.write(chunk)
        handle.write(b'"}')
    fifo = root / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "config.json")
    return root


CONFIG_WORDS = {**{name: words for name, (_, words) in CONFIG_CASES.items()},
                "huge-100MiB": ("100.0 MiB", f"{MAX_JSON_BYTES // MIB} MiB limit", "a few KB"),
                "fifo": ("not a regular file",)}


def target_of(hostile_dir: Path, name: str) -> str:
    """The folder, or for the FIFO the config.json itself (a folder's FIFO is simply 'no config.json')."""
    return str(hostile_dir / name / "config.json") if name == "fifo" else str(hostile_dir / name)


@dataclass
class Measured:
    peak_bytes: int


def measured(call) -> tuple[BaseException | None, Measured]:
    """Run ``call`` in process; the exception it raised and its tracemalloc peak."""
    get_registry()  # the registry is built once per process in real use: not part of the call
    tracemalloc.start()
    raised = None
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        raised = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return raised, Measured(peak)


def assert_one_clear_error(raised: BaseException | None, words: tuple[str, ...], cost: Measured,
                           kind: type = RopekitError) -> None:
    assert isinstance(raised, kind), f"expected {kind.__name__}, got {raised!r}"
    message = str(raised)
    assert "\n" not in message and len(message) < 700, message
    for word in words:
        assert word in message, (word, message)
    assert raised.exit_code == 4
    assert cost.peak_bytes < PEAK_LIMIT, cost


# --- the Python API -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIG_WORDS))
def test_hostile_config_json_through_resolve_and_plan(hostile_dir, name):
    target = target_of(hostile_dir, name)
    calls = [lambda: plan(target, YARN4)] if name in NONFINITE_ROPE else [lambda: resolve(target),
                                                                         lambda: plan(target, YARN4)]
    if name in NONFINITE_ROPE:
        resolve(target)  # read as data; the rope field is refused when the plan reads it
    for call in calls:
        raised, cost = measured(call)
        assert_one_clear_error(raised, CONFIG_WORDS[name], cost, InvalidConfigError)


def test_infinity_outside_rope_settings_loads_and_patches(tmp_path):
    """Non-finite numbers in fields ropekit never reads (Nemotron-H's time_step_limit) are no error."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(substituted("128009\n", "-Infinity\n"))
    assert resolve(folder).config["eos_token_id"][2] == float("-inf")
    result = files.patch_folder(resolve(folder), YARN4.model_copy(update={"on_existing": "compound"}),
                                out=tmp_path / "out")
    assert b"-Infinity" in result.config_path.read_bytes()
    files.verify_folder(tmp_path / "out")


def test_devices_are_refused_without_reading_them():
    raised, cost = measured(lambda: resolve("/dev/zero"))
    assert_one_clear_error(raised, ("/dev/zero", "not a regular file"), cost, InvalidConfigError)


def test_a_100_mib_config_is_refused_before_it_is_read(hostile_dir):
    """The cap is checked on the open file; tracemalloc sees nothing near the file's size."""
    raised, cost = measured(lambda: resolve(hostile_dir / "huge-100MiB"))
    assert_one_clear_error(raised, CONFIG_WORDS["huge-100MiB"], cost, InvalidConfigError)
    assert cost.peak_bytes < MIB


def test_a_utf8_bom_is_refused_because_transformers_cannot_load_it(hostile_dir):
    """The decision on BOMs follows transformers: AutoConfig itself fails on such a file."""
    from transformers import AutoConfig

    folder = hostile_dir / "utf8-bom"
    with pytest.raises((OSError, ValueError)):
        AutoConfig.from_pretrained(str(folder))
    with pytest.raises(InvalidConfigError, match="byte-order mark"):
        resolve(folder)


def test_duplicate_keys_are_refused_although_json_and_transformers_keep_the_last():
    """Two readers of one file must not see two configs: json.loads keeps the last value silently."""
    raw = CONFIG_CASES["duplicate-nested"][0]
    assert json.loads(raw)["rope_scaling"]["factor"] == 2.0  # what transformers would read
    with pytest.raises(InvalidConfigError, match="rope_scaling.factor"):
        parse_json(raw, "config.json", "fix it")


def test_nesting_limit_is_exact_and_the_deepest_accepted_config_patches_verifies_and_reverts(tmp_path):
    """The deepest config accepted goes through every step that walks or hashes it, without recursion."""
    deepest = f'"vocab_size": {nested(MAX_JSON_DEPTH - 1)}'
    config = json.loads(substituted('"vocab_size": 128256', deepest))
    assert parse_json(json.dumps(config), "config.json", "fix") == config
    too_deep = substituted('"vocab_size": 128256', f'"vocab_size": {nested(MAX_JSON_DEPTH)}')
    with pytest.raises(InvalidConfigError, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        parse_json(too_deep, "config.json", "fix")

    folder = tmp_path / "deep-model"
    folder.mkdir()
    original = LLAMA3.read_text().replace('"vocab_size": 128256', deepest).encode()
    (folder / "config.json").write_bytes(original)
    files.patch_folder(resolve(folder), YARN4, in_place=True)
    files.verify_folder(folder)
    files.revert_folder(folder)
    assert (folder / "config.json").read_bytes() == original


# --- ids and revisions --------------------------------------------------------------------

HOSTILE_IDS = ["../../etc", "/abs", "a/../b", "org/..", "a\0b", "org/name\n", "x" * 100_000,
               "org/" + "n" * 10_000, "org/name/extra", "org--name/x", ".hidden/x"]
HOSTILE_REVISIONS = ["../../refs", "/abs", "a/../b", "main\0", "main\n", "refs//heads", "v1/", "r" * 100_000,
                     "-rf"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Offline, an empty HF cache, and a working folder where none of the hostile paths exist."""
    cache = tmp_path / "hf-cache"
    cwd = tmp_path / "cwd" / "deeper"
    cwd.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(cwd)
    return cache


def no_files_under(folder: Path) -> bool:
    return not folder.exists() or not any(folder.rglob("*"))


@pytest.mark.parametrize("ref", HOSTILE_IDS, ids=lambda r: repr(r[:24]))
def test_hostile_repo_ids_are_refused_before_any_file_is_touched(offline, tmp_path, ref):
    raised, cost = measured(lambda: plan(ref, YARN4))
    assert_one_clear_error(raised, ("Hub id of the form",), cost, ResolutionError)
    assert len(str(raised)) < 600  # a 100,000-character id is cut in the message
    assert no_files_under(offline) and not (tmp_path / "etc").exists()


@pytest.mark.parametrize("revision", HOSTILE_REVISIONS, ids=lambda r: repr(r[:24]))
def test_hostile_revisions_are_refused_before_any_file_is_touched(offline, revision):
    raised, cost = measured(lambda: resolve("meta-llama/Llama-3.1-8B-Instruct", revision=revision))
    assert_one_clear_error(raised, ("is not a branch, tag or commit",), cost, ResolutionError)
    assert len(str(raised)) < 600
    assert no_files_under(offline)


# --- receipts read by verify, revert and export -------------------------------------------

@pytest.fixture(scope="module")
def patched_receipt(tmp_path_factory):
    """A folder patched in place (so revert reads the receipt) and its receipt's text."""
    folder = tmp_path_factory.mktemp("patched") / "llama3"
    folder.mkdir()
    shutil.copy(LLAMA3, folder / "config.json")
    files.patch_folder(resolve(folder), YARN4, in_place=True)
    return folder, (folder / RECEIPT_FILENAME).read_text()


def receipt_cases(text: str) -> dict[str, tuple[bytes, tuple[str, ...]]]:
    def sub(old: str, new: str) -> bytes:
        assert old in text, old
        return text.replace(old, new, 1).encode()

    return {
        "deep": (nested(10_000).encode(), ("deeper",)),
        "deep-parsable": (sub('"warnings": []', f'"warnings": {nested(300)}'), ("deeper than",)),
        "not-utf8": (text.encode() + b"\xff", ("not UTF-8",)),
        "utf8-bom": (b"\xef\xbb\xbf" + text.encode(), ("byte-order mark",)),
        "nan": (sub('"factor": 4.0', '"factor": NaN'), ("NaN", "long_context.factor")),
        "infinity": (sub('"attention_scaling": ', '"attention_scaling": -Infinity, "x": '), ("-Infinity",)),
        "duplicate-key": (sub('"factor": 4.0', '"factor": 4.0, "factor": 8.0'), ("repeats the key", "factor")),
        "duplicate-manifest": (sub('"manifest_sha256": ', '"manifest_sha256": "0", "manifest_sha256": '),
                               ("repeats the key manifest_sha256",)),
        "not-a-receipt": (LLAMA3.read_bytes(), ("not a ropekit receipt",)),
        "huge": (b"", ("MiB limit",)),  # written sparse below: 100 MiB that must never be read
    }


def write_receipt(folder: Path, name: str, data: bytes) -> None:
    path = folder / RECEIPT_FILENAME
    path.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
        if name == "huge":
            handle.truncate(100 * MIB)


RECEIPT_CASE_NAMES = ["deep", "deep-parsable", "not-utf8", "utf8-bom", "nan", "infinity", "duplicate-key",
                      "duplicate-manifest", "not-a-receipt", "huge"]


@pytest.mark.parametrize("name", RECEIPT_CASE_NAMES)
def test_hostile_receipt_through_verify_revert_and_export(patched_receipt, tmp_path, name):
    source, text = patched_receipt
    data, words = receipt_cases(text)[name]
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    write_receipt(folder, name, data)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != RECEIPT_FILENAME}
    for call in (lambda: files.verify_folder(folder), lambda: files.revert_folder(folder),
                 lambda: load_serve_spec(folder)):
        raised, cost = measured(call)
        assert_one_clear_error(raised, words, cost, InvalidConfigError)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != RECEIPT_FILENAME} == before


# --- the command line ---------------------------------------------------------------------

@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    maxrss_kib: int


def ropekit_child(*args: str, cwd: Path, env: dict[str, str]) -> Run:
    """``python -m ropekit ARGS`` with its exit code, output and peak RSS (from wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "ropekit", *args], stdout=out, stderr=err, cwd=cwd,
                                env=env)
        watchdog = threading.Timer(120, proc.kill)  # catches a hang only
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(proc.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss)


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """Runs the CLI offline from an empty working folder; ``baseline`` is ``ropekit --version``."""
    root = tmp_path_factory.mktemp("cli")
    cwd = root / "cwd" / "deeper"
    cwd.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / "hf-cache"),
           "ROPEKIT_NO_ENTRY_POINTS": "1", "COLUMNS": "200"}
    env.pop("ROPEKIT_DISABLE_PLUGINS", None)
    runs = [ropekit_child("--version", cwd=cwd, env=env) for _ in range(3)]
    assert all(r.code == 0 for r in runs)
    baseline = Run(0, "", "", max(r.maxrss_kib for r in runs))

    def run(*args: str) -> Run:
        return ropekit_child(*args, cwd=cwd, env=env)

    run.baseline = baseline  # type: ignore[attr-defined]
    run.cache = root / "hf-cache"  # type: ignore[attr-defined]
    return run


def assert_cli_error(run: Run, baseline: Run, words: tuple[str, ...], code: int = 4) -> None:
    lines = run.stderr.strip().splitlines()
    assert run.code == code, (run.code, run.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert run.maxrss_kib - baseline.maxrss_kib < RSS_LIMIT_KIB, (run.maxrss_kib, baseline.maxrss_kib)


@pytest.mark.parametrize("name", sorted(CONFIG_WORDS))
def test_cli_plan_on_hostile_config_json(child, hostile_dir, name):
    result = child("plan", target_of(hostile_dir, name), "--factor", "4")
    assert_cli_error(result, child.baseline, CONFIG_WORDS[name])


@pytest.mark.parametrize("name", ["huge-100MiB", "deep-array-10000", "nan", "duplicate-nested", "utf8-bom", "fifo"])
def test_cli_inspect_on_hostile_config_json(child, hostile_dir, name):
    result = child("inspect", target_of(hostile_dir, name))
    assert_cli_error(result, child.baseline, CONFIG_WORDS[name])


def test_cli_audit_reports_every_hostile_config_in_its_row_and_goes_on(child, hostile_dir):
    names = ["huge-100MiB", "deep-object-10000", "infinity", "duplicate-top-level", "not-utf8", "fifo"]
    result = child("audit", "--strict", "--json", *(target_of(hostile_dir, n) for n in names),
                   str(LLAMA3.parent))
    assert result.code == 4, result.stderr  # --strict: some rows have errors
    rows = json.loads(result.stdout)["rows"]
    assert len(rows) == len(names) + 1
    for name, row in zip(names, rows):
        assert all(word in row["error"] for word in CONFIG_WORDS[name]), (name, row["error"])
    assert rows[-1]["error"] is None and rows[-1]["long_context"]["new_max_position_embeddings"] == 32768
    assert result.maxrss_kib - child.baseline.maxrss_kib < RSS_LIMIT_KIB


@pytest.mark.parametrize("ref", ["../../etc", "/abs", "a/../b", "org/..", "x" * 5000, "org/" + "n" * 3000])
def test_cli_hostile_repo_ids(child, ref):
    result = child("plan", ref, "--factor", "4")
    assert_cli_error(result, child.baseline, ("Hub id of the form",))
    assert len(result.stderr) < 700
    assert no_files_under(child.cache)


@pytest.mark.parametrize("revision", ["../../refs", "/abs", "a/../b", "r" * 5000])
def test_cli_hostile_revisions(child, revision):
    result = child("inspect", "meta-llama/Llama-3.1-8B-Instruct", "--revision", revision)
    assert_cli_error(result, child.baseline, ("is not a branch, tag or commit",))
    assert no_files_under(child.cache)


@pytest.mark.parametrize("name", ["huge", "deep", "nan", "duplicate-key", "utf8-bom"])
def test_cli_verify_and_revert_on_hostile_receipt(child, patched_receipt, tmp_path, name):
    source, text = patched_receipt
    data, words = receipt_cases(text)[name]
    folder = tmp_path / "model"
    shutil.copytree(source, folder)
    write_receipt(folder, name, data)
    for command in ("verify", "revert"):
        assert_cli_error(child(command, str(folder)), child.baseline, words)
    assert (folder / "config.json.ropekit-orig").read_bytes() == LLAMA3.read_bytes()
