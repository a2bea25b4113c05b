"""Tamper detection: any edit to a patched config.json or to its receipt fails verify, naming the field.

Decision (documented in ``verify_receipt``): the receipt hashes the config's RFC 8785
canonical JSON, so a rewrite that parses to the same values (whitespace, indentation,
line endings, key order, string escapes, ``4`` for ``4.0``) is not an edit and verifies;
everything else is. Python raises ReceiptMismatchError naming the field; the command
line exits 3 with the name on its one ``error:`` line.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from ropekit import LongContextConfig, files, resolve
from ropekit.cli import main
from ropekit.constants import RECEIPT_FILENAME
from ropekit.errors import InvalidConfigError, ReceiptMismatchError

LLAMA3 = FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct"
YARN4 = LongContextConfig(method="yarn", factor=4.0)
CONFIG = "config.json"


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    """A folder written by ``patch --out``: Llama 3 8B (rope_scaling null, 8192) under yarn x4."""
    out = tmp_path_factory.mktemp("tamper") / "llama3-32k"
    files.patch_folder(resolve(LLAMA3), YARN4, out=out)
    return out


@pytest.fixture
def folder(patched, tmp_path):
    copy_ = tmp_path / "model"
    shutil.copytree(patched, copy_)
    return copy_


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def cli_verify(capsys, folder: Path) -> tuple[int, str]:
    code = main(["verify", str(folder)])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_named(folder: Path, capsys, name: str) -> None:
    """verify fails naming ``name``: in Python and on the command line (exit 3, one error line)."""
    with pytest.raises(ReceiptMismatchError) as caught:
        files.verify_folder(folder)
    assert name in str(caught.value), (name, str(caught.value))
    code, err = cli_verify(capsys, folder)
    assert code == 3, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and name in err, err


# --- edits to the patched config.json -----------------------------------------------------

def set_at(*path_and_value):
    *path, value = path_and_value

    def edit(config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def remove_at(*path):
    def edit(config: dict) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


# (name the error must carry, edit); the rope keys are the five yarn writes (DESIGN) and rope_theta
CONFIG_EDITS = [
    ("rope_scaling.rope_type", set_at("rope_scaling", "rope_type", "linear")),
    ("rope_scaling.factor", set_at("rope_scaling", "factor", 8.0)),
    ("rope_scaling.factor", set_at("rope_scaling", "factor", "4.0")),
    ("rope_scaling.original_max_position_embeddings",
     set_at("rope_scaling", "original_max_position_embeddings", 4096)),
    ("rope_scaling.beta_fast", set_at("rope_scaling", "beta_fast", 16.0)),
    ("rope_scaling.beta_slow", set_at("rope_scaling", "beta_slow", 2.0)),
    ("rope_theta", set_at("rope_theta", 10000.0)),
    ("max_position_embeddings", set_at("max_position_embeddings", 131072)),
    ("vocab_size", set_at("vocab_size", 128257)),
    ("tie_word_embeddings", set_at("tie_word_embeddings", 0)),  # false and 0 are different JSON
    ("eos_token_id", set_at("eos_token_id", [128001, 128009])),
    ("vocab_size", remove_at("vocab_size")),
    ("rope_scaling.factor", remove_at("rope_scaling", "factor")),
    ("rope_scaling.rope_type", remove_at("rope_scaling")),
    ("max_position_embeddings", remove_at("max_position_embeddings")),
    ("unrelated_new_key", set_at("unrelated_new_key", 1)),
    ("rope_scaling.attention_factor", set_at("rope_scaling", "attention_factor", 2.0)),
]


@pytest.mark.parametrize("name, edit", CONFIG_EDITS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(CONFIG_EDITS)])
def test_any_config_edit_fails_verify_naming_the_field(folder, capsys, name, edit):
    config = read_json(folder / CONFIG)
    edit(config)
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    assert_named(folder, capsys, name)


def reformatted(text: str) -> dict[str, str]:
    """Rewrites of the same JSON values: these are not edits."""
    data = json.loads(text)
    factor_as_int = copy.deepcopy(data)
    factor_as_int["rope_scaling"]["factor"] = 4
    return {
        "compact": json.dumps(data, separators=(",", ":")),
        "indent-4-sorted": json.dumps(data, indent=4, sort_keys=True),
        "tabs": json.dumps(data, indent="\t"),
        "crlf": text.replace("\n", "\r\n"),
        "no-trailing-newline": text.rstrip("\n"),
        "escaped": text.replace('"silu"', '"\\u0073ilu"'),
        "reversed-keys": json.dumps(dict(reversed(list(data.items()))), indent=2),
        "factor-written-as-4": json.dumps(factor_as_int, indent=2),
    }


@pytest.mark.parametrize("style", ["compact", "indent-4-sorted", "tabs", "crlf", "no-trailing-newline", "escaped",
                                   "reversed-keys", "factor-written-as-4"])
def test_rewrites_to_the_same_values_still_verify(folder, capsys, style):
    text = (folder / CONFIG).read_text()
    new = reformatted(text)[style]
    assert new != text
    (folder / CONFIG).write_bytes(new.encode())
    assert files.verify_folder(folder).ok
    code, err = cli_verify(capsys, folder)
    assert (code, err) == (0, "")


# --- edits to the receipt -----------------------------------------------------------------

def edited(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-edited"
    if value is None:
        return 0
    if isinstance(value, list):
        return [*value, "edited"]
    return {**value, "edited": True}


def field_names(receipt: dict) -> list[tuple[str, str, object]]:
    """(name, top-level key, sub key or index) for every field the receipt seals: one level into
    objects, each list item; the seals themselves excluded."""
    out = []
    for key, value in receipt.items():
        if key in ("fields_sha256", "manifest_sha256"):
            continue
        if isinstance(value, dict) and value:
            out += [(f"{key}.{sub}", key, sub) for sub in value]
        elif isinstance(value, list) and value:
            out += [(f"{key}[{i}]", key, i) for i in range(len(value))]
        else:
            out.append((key, key, None))
    return out


def edit_field(receipt: dict, key: str, sub) -> None:
    if sub is None:
        receipt[key] = edited(receipt[key])
    else:
        receipt[key][sub] = edited(receipt[key][sub])


#: the fields DESIGN names for the receipt, each of which must exist and be guarded
DESIGN_FIELDS = [
    ("long_context.method", "long_context", "method"),
    ("long_context.factor", "long_context", "factor"),
    ("long_context.original_max_position_embeddings", "long_context", "original_max_position_embeddings"),
    ("long_context.new_max_position_embeddings", "long_context", "new_max_position_embeddings"),
    ("long_context.attn_factor", "long_context", "attn_factor"),
    ("long_context.beta_fast", "long_context", "beta_fast"),
    ("long_context.beta_slow", "long_context", "beta_slow"),
    ("long_context.papers", "long_context", "papers"),
    ("attention_scaling", "attention_scaling", None),
    ("model.id", "model", "id"),
    ("model.revision", "model", "revision"),
    ("model.source", "model", "source"),
    ("model.config_sha256_before", "model", "config_sha256_before"),
    ("model.config_sha256_after", "model", "config_sha256_after"),
    ("model.file_sha256_before", "model", "file_sha256_before"),
    ("model.file_sha256_after", "model", "file_sha256_after"),
    ("versions.ropekit", "versions", "ropekit"),
    ("versions.transformers", "versions", "transformers"),
    ("versions.python", "versions", "python"),
    ("existing_scaling", "existing_scaling", None),
    ("policy.on_existing", "policy", "on_existing"),
    ("family.name", "family", "name"),
    ("schema", "schema", None),
]


@pytest.mark.parametrize("name, key, sub", DESIGN_FIELDS, ids=[n for n, _, _ in DESIGN_FIELDS])
def test_editing_a_design_receipt_field_fails_verify_naming_it(folder, capsys, name, key, sub):
    receipt = read_json(folder / RECEIPT_FILENAME)
    edit_field(receipt, key, sub)
    write_json(folder / RECEIPT_FILENAME, receipt)
    assert_named(folder, capsys, f"receipt field '{name}'")


@pytest.mark.parametrize("index", range(6))
def test_editing_a_recorded_change_fails_verify_naming_it(folder, capsys, index):
    """yarn writes five rope keys and max_position_embeddings: six changes, each guarded."""
    receipt = read_json(folder / RECEIPT_FILENAME)
    assert len(receipt["changes"]) == 6
    receipt["changes"][index]["after"] = edited(receipt["changes"][index]["after"])
    write_json(folder / RECEIPT_FILENAME, receipt)
    assert_named(folder, capsys, f"receipt field 'changes[{index}]'")


def test_editing_any_sealed_field_fails_verify_naming_it(folder):
    """Every field the receipt holds, not only those DESIGN lists (Python only: one verify each)."""
    original = read_json(folder / RECEIPT_FILENAME)
    names = field_names(original)
    assert len(names) > 60  # config_fields_sha256 alone has one entry per config key
    for name, key, sub in names:
        receipt = copy.deepcopy(original)
        edit_field(receipt, key, sub)
        write_json(folder / RECEIPT_FILENAME, receipt)
        with pytest.raises(ReceiptMismatchError, match=re.escape(f"receipt field '{name}'")):
            files.verify_folder(folder)


@pytest.mark.parametrize("edit, name", [
    (lambda r: r.__setitem__("attention_scaling_extra", 1), "attention_scaling_extra"),
    (lambda r: r.pop("attention_scaling"), "attention_scaling"),
    (lambda r: r.pop("schema"), "schema"),
    (lambda r: r["long_context"].pop("beta_fast"), "long_context.beta_fast"),
    (lambda r: r["changes"].pop(), "changes[5]"),
], ids=["field-added", "field-removed", "schema-removed", "sub-field-removed", "change-removed"])
def test_adding_or_removing_receipt_fields_fails_verify_naming_them(folder, capsys, edit, name):
    receipt = read_json(folder / RECEIPT_FILENAME)
    edit(receipt)
    write_json(folder / RECEIPT_FILENAME, receipt)
    assert_named(folder, capsys, f"receipt field '{name}'")


def first_hash_key(receipt: dict) -> str:
    return sorted(receipt["fields_sha256"])[0]


@pytest.mark.parametrize("edit", [
    lambda r: r["fields_sha256"].__setitem__(first_hash_key(r), "0" * 64),
    lambda r: r["fields_sha256"].pop(first_hash_key(r)),
    lambda r: r["fields_sha256"].__setitem__("long_context.extra", "0" * 64),
    lambda r: r["fields_sha256"].__setitem__("long_context.extra", None),
    lambda r: r.__setitem__("fields_sha256", "deadbeef"),
    lambda r: r.pop("fields_sha256"),
], ids=["hash-changed", "hash-removed", "hash-added", "null-hash-added", "replaced-by-a-string", "removed"])
def test_editing_fields_sha256_is_named_as_such(folder, capsys, edit):
    receipt = read_json(folder / RECEIPT_FILENAME)
    edit(receipt)
    write_json(folder / RECEIPT_FILENAME, receipt)
    assert_named(folder, capsys, "receipt field 'fields_sha256'")


@pytest.mark.parametrize("edit", [
    lambda r: r.__setitem__("manifest_sha256", r["manifest_sha256"][::-1]),
    lambda r: r.__setitem__("manifest_sha256", None),
    lambda r: r.pop("manifest_sha256"),
], ids=["changed", "null", "removed"])
def test_editing_manifest_sha256_is_named_as_such(folder, capsys, edit):
    receipt = read_json(folder / RECEIPT_FILENAME)
    edit(receipt)
    write_json(folder / RECEIPT_FILENAME, receipt)
    assert_named(folder, capsys, "receipt field 'manifest_sha256'")


def test_reformatting_the_receipt_is_not_an_edit(folder, capsys):
    receipt = read_json(folder / RECEIPT_FILENAME)
    (folder / RECEIPT_FILENAME).write_text(json.dumps(receipt, separators=(",", ":")))
    assert files.verify_folder(folder).ok
    assert cli_verify(capsys, folder) == (0, "")


def test_revert_refuses_a_tampered_receipt_by_name(tmp_path):
    folder = tmp_path / "inplace"
    shutil.copytree(LLAMA3, folder)
    original = (folder / CONFIG).read_bytes()
    files.patch_folder(resolve(folder), YARN4, in_place=True)
    receipt = read_json(folder / RECEIPT_FILENAME)
    receipt["model"]["file_sha256_before"] = "0" * 64
    write_json(folder / RECEIPT_FILENAME, receipt)
    with pytest.raises(ReceiptMismatchError, match="receipt field 'model.file_sha256_before'"):
        files.revert_folder(folder)
    assert (folder / CONFIG).read_bytes() != original  # nothing was restored on a lie
    files.revert_folder(folder, force=True)
    assert (folder / CONFIG).read_bytes() == original


def test_the_real_entry_point_exits_3_naming_the_field(folder):
    """The console entry point in a child process, for one config edit and one receipt edit."""
    patched_bytes = (folder / CONFIG).read_bytes()
    config = read_json(folder / CONFIG)
    config["rope_scaling"]["beta_fast"] = 16.0
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    run = subprocess.run([sys.executable, "-m", "ropekit", "verify", str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 3 and "rope_scaling.beta_fast" in run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ")

    (folder / CONFIG).write_bytes(patched_bytes)
    receipt = read_json(folder / RECEIPT_FILENAME)
    receipt["long_context"]["factor"] = 8.0
    write_json(folder / RECEIPT_FILENAME, receipt)
    run = subprocess.run([sys.executable, "-m", "ropekit", "verify", str(folder)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 3 and "receipt field 'long_context.factor'" in run.stderr


@pytest.mark.parametrize("field, value, words", [
    ("changes", "abc", "receipt field 'changes' is 'abc'"),
    ("changes", [{"path": 5, "after": 1}], "receipt field 'changes[0]'"),
    ("changes", [["max_position_embeddings", 32768]], "receipt field 'changes[0]'"),
    ("model", ["id"], "receipt field 'model.config_sha256_after'"),
    ("schema", "ropekit.receipt/2", "receipt schema 'ropekit.receipt/2'"),
], ids=["changes-a-string", "path-not-a-list", "change-not-an-object", "model-a-list", "future-schema"])
def test_a_resealed_receipt_verify_cannot_read_is_refused_naming_the_field(folder, capsys, field, value, words):
    """Seals are plain hashes anyone can recompute: a resealed receipt of the wrong shape is bad input
    (exit 4, naming the field), never a crash."""
    from ropekit.receipt import Receipt

    data = read_json(folder / RECEIPT_FILENAME)
    data[field] = value
    (folder / RECEIPT_FILENAME).write_text(Receipt(data).to_json())  # sealed again after the edit
    with pytest.raises(InvalidConfigError, match=re.escape(words)):
        files.verify_folder(folder)
    assert main(["verify", str(folder)]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
