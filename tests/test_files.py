"""Folder operations: atomic writes, patch --out / --in-place, verify, revert."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import pytest
from conftest import (
    FIXTURE_NAMES,
    FIXTURES,
    no_transformers_warnings,
    rotary_from_config,
)

from ropekit import LongContextConfig, files, resolve
from ropekit.constants import BACKUP_FILENAME, RECEIPT_FILENAME
from ropekit.errors import (
    CompoundingError,
    InvalidConfigError,
    InvalidRequestError,
    PolicyError,
    ReceiptMismatchError,
)
from ropekit.folders import companions, journal
from ropekit.hub.resolve import ResolvedConfig

LLAMA3 = "meta-llama__Meta-Llama-3-8B-Instruct"
LLAMA31 = "meta-llama__Llama-3.1-8B-Instruct"
YARN4 = LongContextConfig(method="yarn", factor=4.0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path):
    """A writable copy of the Llama 3 fixture with a tokenizer, a weight file and a sub-folder."""
    folder = tmp_path / "llama3"
    folder.mkdir()
    (folder / "config.json").write_bytes((FIXTURES / LLAMA3 / "config.json").read_bytes())
    (folder / "config.json").chmod(0o644)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 8192}\n')
    (folder / "generation_config.json").write_text('{"do_sample": true}\n')
    (folder / "model-00001-of-00004.safetensors").write_bytes(b"\0" * 64)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 64)
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / "original").mkdir()
    (folder / "original" / "params.json").write_text("{}")
    return folder


# --- atomic writes ------------------------------------------------------------------------

def test_atomic_write_replaces_content_keeps_mode_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "config.json"
    target.write_bytes(b"old")
    target.chmod(0o640)
    files.atomic_write(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_atomic_write_failure_keeps_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_bytes(b"original")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        files.atomic_write(target, b"half")
    assert target.read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


#: files whose arrays were wrapped by hand (inline pairs, rows of 24 numbers): written back in the
#: json.dumps style the Hub's own files use, so only their content round-trips, not their bytes
HAND_WRAPPED = ("MiniMaxAI__MiniMax-M2.5", "XiaomiMiMo__MiMo-V2-Flash")


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_unchanged_config_serializes_to_the_same_bytes(name):
    raw = (FIXTURES / name / "config.json").read_bytes()
    if name in HAND_WRAPPED:
        out = files.dump_like(json.loads(raw), raw)
        assert json.loads(out) == json.loads(raw) and out.startswith(b'{\n  "') and out.endswith(b"}\n")
    else:
        assert files.dump_like(json.loads(raw), raw) == raw


def test_serialization_follows_the_original_style():
    raw = b'{\r\n\t"a": 1,\r\n\t"b": [1, 2]\r\n}'
    out = files.dump_like({"a": 2, "b": [1, 2]}, raw)
    assert out == b'{\r\n\t"a": 2,\r\n\t"b": [\r\n\t\t1,\r\n\t\t2\r\n\t]\r\n}'
    assert files.dump_like({"a": 1}, b'{"a": 0}') == b'{"a": 1}'
    assert files.dump_like({"a": 1}, None) == b'{\n  "a": 1\n}\n'


# --- patch --out --------------------------------------------------------------------------

def test_patch_out_writes_config_receipt_and_small_files_but_never_weights(model_dir, tmp_path):
    original = (model_dir / "config.json").read_bytes()
    out = tmp_path / "out"
    result = files.patch_folder(resolve(model_dir), YARN4, out=out, companions_from=model_dir)

    expected = json.loads(original)
    expected["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192,
                                "beta_fast": 32.0, "beta_slow": 1.0}
    expected["max_position_embeddings"] = 32768
    written = (out / "config.json").read_bytes()
    assert json.loads(written) == expected
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", RECEIPT_FILENAME,
                                                      "tokenizer_config.json"]
    assert result.copied == ["generation_config.json", "tokenizer_config.json"]
    assert "model-00001-of-00004.safetensors (weights)" in result.skipped
    assert "pytorch_model.bin (weights)" in result.skipped
    assert "original/ (folder)" in result.skipped
    assert (model_dir / "config.json").read_bytes() == original  # the source is untouched

    receipt = json.loads((out / RECEIPT_FILENAME).read_text())
    assert receipt["model"]["file_sha256_before"] == sha(original)
    assert receipt["model"]["file_sha256_after"] == sha(written)
    assert receipt["files"] == {"config": "config.json", "mode": "out", "backup": None}
    assert receipt["long_context"]["new_max_position_embeddings"] == 32768
    assert round(receipt["attention_scaling"], 4) == round(0.1 * math.log(4) + 1, 4)


def test_patch_out_loads_in_transformers_with_the_yarn_temperature(model_dir, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "out"
    files.patch_folder(resolve(model_dir), YARN4, out=out)
    with no_transformers_warnings():
        config = AutoConfig.from_pretrained(out)
        rotary = rotary_from_config(config)
    assert config.max_position_embeddings == 32768
    assert float(rotary.attention_scaling) == pytest.approx(0.1 * math.log(4) + 1, abs=1e-6)


def test_a_refused_patch_writes_nothing(tmp_path):
    folder = tmp_path / "llama31"
    shutil.copytree(FIXTURES / LLAMA31, folder)
    before = (folder / "config.json").read_bytes()
    with pytest.raises(CompoundingError):
        files.patch_folder(resolve(folder), YARN4, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CompoundingError):
        files.patch_folder(resolve(folder), YARN4, in_place=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    assert (folder / "config.json").read_bytes() == before


def test_patch_out_refuses_a_folder_with_a_foreign_config_and_the_source_folder(model_dir, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(InvalidConfigError, match="did not write"):
        files.patch_folder(resolve(model_dir), YARN4, out=foreign)
    assert (foreign / "config.json").read_text() == "{}"
    with pytest.raises(InvalidConfigError, match="--in-place"):
        files.patch_folder(resolve(model_dir), YARN4, out=model_dir)


def test_patch_out_may_overwrite_its_own_earlier_output(model_dir, tmp_path):
    out = tmp_path / "out"
    files.patch_folder(resolve(model_dir), YARN4, out=out)
    files.patch_folder(resolve(model_dir), LongContextConfig(method="linear", factor=2.0), out=out)
    assert json.loads((out / "config.json").read_text())["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}


def test_patch_needs_exactly_one_destination(model_dir, tmp_path):
    with pytest.raises(InvalidRequestError):
        files.patch_folder(resolve(model_dir), YARN4)
    with pytest.raises(InvalidRequestError):
        files.patch_folder(resolve(model_dir), YARN4, out=tmp_path / "o", in_place=True)


def test_large_companions_are_skipped(model_dir, monkeypatch):
    monkeypatch.setattr(companions, "MAX_COMPANION_BYTES", 10)
    found = companions.read_companions(model_dir, {"config.json"})
    assert found.files == [] and found.refused == []
    assert any(s.startswith("tokenizer_config.json (") and "limit" in s for s in found.skipped)


# --- patch --in-place and revert ----------------------------------------------------------

def test_in_place_patch_keeps_a_backup_and_revert_restores_the_bytes(model_dir):
    original = (model_dir / "config.json").read_bytes()
    result = files.patch_folder(resolve(model_dir), LongContextConfig(method="linear", factor=2.0), in_place=True)
    assert (model_dir / BACKUP_FILENAME).read_bytes() == original
    patched = json.loads((model_dir / "config.json").read_text())
    assert patched["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert patched["max_position_embeddings"] == 16384
    assert result.receipt["model"]["file_sha256_before"] == sha(original)
    assert (model_dir / "config.json").stat().st_mode & 0o777 == 0o644
    files.verify_folder(model_dir)

    reverted = files.revert_folder(model_dir)
    assert (model_dir / "config.json").read_bytes() == original
    assert reverted.config_sha256 == sha(original)
    assert sorted(reverted.removed) == sorted([RECEIPT_FILENAME, BACKUP_FILENAME])
    assert not (model_dir / BACKUP_FILENAME).exists() and not (model_dir / RECEIPT_FILENAME).exists()


def test_a_second_in_place_patch_is_refused_until_reverted(model_dir):
    files.patch_folder(resolve(model_dir), YARN4, in_place=True)
    with pytest.raises(PolicyError, match="revert"):
        files.patch_folder(resolve(model_dir), YARN4, in_place=True)


def test_in_place_needs_a_local_source(tmp_path):
    config = json.loads((FIXTURES / LLAMA3 / "config.json").read_text())
    catalog = ResolvedConfig(config, model_id="meta-llama/Meta-Llama-3-8B-Instruct", source="catalog",
                             captured="2025-01-01")
    with pytest.raises(InvalidConfigError, match="--out"):
        files.patch_folder(catalog, YARN4, in_place=True)
    result = files.patch_folder(catalog, YARN4, out=tmp_path / "out")
    receipt = json.loads(result.receipt_path.read_text())
    assert receipt["model"]["source"] == "catalog" and receipt["model"]["captured"] == "2025-01-01"
    assert receipt["model"]["file_sha256_before"] is None
    assert config["max_position_embeddings"] == 8192  # the resolved config was not mutated


def test_revert_refuses_when_the_config_was_edited_after_the_patch(model_dir):
    original = (model_dir / "config.json").read_bytes()
    files.patch_folder(resolve(model_dir), YARN4, in_place=True)
    edited = json.loads((model_dir / "config.json").read_text())
    edited["torch_dtype"] = "float16"
    (model_dir / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ReceiptMismatchError, match="edited after the patch"):
        files.revert_folder(model_dir)
    files.revert_folder(model_dir, force=True)
    assert (model_dir / "config.json").read_bytes() == original


def test_revert_refuses_a_changed_backup(model_dir):
    files.patch_folder(resolve(model_dir), YARN4, in_place=True)
    (model_dir / BACKUP_FILENAME).write_text('{"model_type": "llama"}')
    with pytest.raises(ReceiptMismatchError, match=BACKUP_FILENAME):
        files.revert_folder(model_dir)


def test_revert_finishes_an_interrupted_revert(model_dir):
    original = (model_dir / "config.json").read_bytes()
    files.patch_folder(resolve(model_dir), YARN4, in_place=True)
    (model_dir / "config.json").write_bytes(original)  # config restored, clean-up not done yet
    files.revert_folder(model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["config.json", "generation_config.json", "tokenizer_config.json", "model-00001-of-00004.safetensors",
         "pytorch_model.bin", ".gitattributes", "original"])


def test_nothing_to_revert(model_dir, tmp_path):
    with pytest.raises(InvalidConfigError, match="nothing to revert"):
        files.revert_folder(model_dir)
    out = tmp_path / "out"
    files.patch_folder(resolve(model_dir), YARN4, out=out)
    with pytest.raises(InvalidConfigError, match="patch --out"):
        files.revert_folder(out)


# --- verify -------------------------------------------------------------------------------

def test_verify_names_an_edited_rope_value(model_dir, tmp_path):
    out = tmp_path / "out"
    files.patch_folder(resolve(model_dir), YARN4, out=out)
    assert files.verify_folder(out).ok
    assert files.verify_folder(out / "config.json").ok
    config = json.loads((out / "config.json").read_text())
    config["rope_scaling"]["beta_fast"] = 16.0
    (out / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(ReceiptMismatchError, match=r"rope_scaling\.beta_fast is 16\.0"):
        files.verify_folder(out)


def test_verify_ignores_formatting_but_not_other_fields(model_dir, tmp_path):
    out = tmp_path / "out"
    files.patch_folder(resolve(model_dir), YARN4, out=out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config, sort_keys=True))  # reformatted only
    assert files.verify_folder(out).ok
    config["vocab_size"] = 1
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ReceiptMismatchError, match="vocab_size"):
        files.verify_folder(out)


def test_verify_without_receipt(model_dir):
    with pytest.raises(InvalidConfigError, match=RECEIPT_FILENAME):
        files.verify_folder(model_dir)


# --- the journal ----------------------------------------------------------------------------

@pytest.mark.parametrize("text,words", [
    ("not json", "is not a ropekit journal"),
    ('{"moves": [["0", "../../outside"]], "removals": []}', "names files outside its folder"),
    ('{"moves": [], "removals": ["/etc/passwd"]}', "names files outside its folder"),
])
def test_a_journal_ropekit_did_not_write_is_refused_and_nothing_is_touched(model_dir, text, words):
    (model_dir / journal.JOURNAL_NAME).write_text(text)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    with pytest.raises(InvalidConfigError, match=words):
        files.revert_folder(model_dir)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == before


def test_an_uncommitted_transaction_is_discarded_and_a_committed_one_finished(model_dir):
    txn = journal.Transaction(model_dir)
    txn.write("new.txt", b"staged only", 0o644)  # never committed: a kill here changes nothing visible
    assert journal.pending(model_dir) and journal.recover(model_dir)
    assert not (model_dir / "new.txt").exists() and not journal.pending(model_dir)
    (model_dir / journal.STAGING_NAME).mkdir()
    (model_dir / journal.STAGING_NAME / "0").write_bytes(b"committed")
    (model_dir / journal.JOURNAL_NAME).write_text('{"moves": [["0", "new.txt"]], "removals": ["pytorch_model.bin"]}')
    assert journal.recover(model_dir)
    assert (model_dir / "new.txt").read_bytes() == b"committed" and not (model_dir / "pytorch_model.bin").exists()
    assert not journal.pending(model_dir) and not journal.recover(model_dir)
