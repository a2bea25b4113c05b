"""Receipts signed with a user's key: HMAC-SHA256 over the manifest, checked by verify.

Without a key a receipt's hashes catch accidents only: anyone who rewrites config.json
can reseal the receipt and ``verify`` passes. With a key, the reseal is caught (exit 3,
naming the signature), and a missing signature is refused when a key is given.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, load_fixture

from ropekit import LongContextConfig, Receipt, apply_rope_scaling, files, resolve, verify_receipt
from ropekit.cli import main
from ropekit.cli.failure import flag
from ropekit.constants import RECEIPT_FILENAME
from ropekit.errors import ReceiptMismatchError, SignatureError, SigningKeyError
from ropekit.signing import key_id, read_key, sign_receipt, signature_status, verify_signature

LLAMA3 = "meta-llama__Meta-Llama-3-8B-Instruct"
YARN4 = LongContextConfig(method="yarn", factor=4)
KEY = b"0123456789abcdef-a-test-key"
OTHER = b"fedcba9876543210-another-key"


@pytest.fixture
def keyfile(tmp_path) -> Path:
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    return path


def patched(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "out"
    assert main(["patch", str(FIXTURES / LLAMA3), "--factor", "4", "--method", "yarn", "--out", str(out),
                 *extra]) == 0
    return out


def reseal_with_edit(folder: Path) -> None:
    """What anyone can do to an unsigned pair: edit config.json and write a matching receipt."""
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"]["beta_fast"] = 64
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    receipt = Receipt.load(folder / RECEIPT_FILENAME)
    forged = json.loads(apply_rope_scaling(load_fixture(LLAMA3), YARN4.model_copy(update={"beta_fast": 64})
                                           ).to_json())
    data = receipt.to_dict()
    data.update({k: v for k, v in forged.items() if k in ("changes", "rope_values", "config_fields_sha256",
                                                           "long_context")})
    data["model"] = {**data["model"], "config_sha256_after": forged["model"]["config_sha256_after"]}
    resealed = Receipt(data)  # new seals; a signature, if any, is copied over by the forger
    out = resealed.to_dict()
    if "signature" in receipt:
        out["signature"] = receipt["signature"]
    (folder / RECEIPT_FILENAME).write_text(json.dumps(out, indent=2, sort_keys=True))


def test_an_unsigned_pair_can_be_resealed_and_verify_says_it_is_unsigned(tmp_path, capsys):
    folder = patched(tmp_path)
    reseal_with_edit(folder)
    capsys.readouterr()
    assert main(["verify", str(folder)]) == 0  # the limitation the docs state
    assert "signature: unsigned: the hashes catch accidents, not someone who rewrites both files" \
        in capsys.readouterr().out


def test_a_signed_pair_resealed_after_an_edit_fails_verify_with_the_key(tmp_path, keyfile, capsys):
    folder = patched(tmp_path, "--sign-key", str(keyfile))
    assert Receipt.load(folder / RECEIPT_FILENAME)["signature"]["key_id"] == key_id(KEY)
    assert main(["verify", str(folder), "--sign-key", str(keyfile)]) == 0
    assert "hmac-sha256 signature by key" in capsys.readouterr().out
    reseal_with_edit(folder)
    assert main(["verify", str(folder)]) == 0  # hashes agree: without the key nothing can tell
    assert "not checked" in capsys.readouterr().out
    assert main(["verify", str(folder), "--sign-key", str(keyfile)]) == 3
    line, = capsys.readouterr().err.splitlines()
    assert "signature does not match its manifest" in line


def test_verify_with_a_key_refuses_an_unsigned_receipt_and_another_key(tmp_path, keyfile, capsys, monkeypatch):
    unsigned = patched(tmp_path)
    assert main(["verify", str(unsigned), "--sign-key", str(keyfile)]) == 3
    assert "signature is missing" in capsys.readouterr().err
    monkeypatch.setenv("ROPEKIT_SIGN_KEY", OTHER.decode())
    signed = tmp_path / "signed"
    assert main(["patch", str(FIXTURES / LLAMA3), "--factor", "4", "--out", str(signed)]) == 0  # env key signs
    assert "signed by key" in capsys.readouterr().out
    assert main(["verify", str(signed)]) == 0  # env key checks
    monkeypatch.delenv("ROPEKIT_SIGN_KEY")
    assert main(["verify", str(signed), "--sign-key", str(keyfile)]) == 3
    err = capsys.readouterr().err
    assert f"made with key '{key_id(OTHER)}'" in err and "not with the given key" in err


def test_a_short_or_missing_key_is_refused_before_anything_is_written(tmp_path, capsys):
    short = tmp_path / "short"
    short.write_text("tiny\n")
    out = tmp_path / "out"
    assert main(["patch", str(FIXTURES / LLAMA3), "--factor", "4", "--out", str(out), "--sign-key", str(short)]) == 4
    assert "4 bytes" in capsys.readouterr().err and not out.exists()
    assert main(["patch", str(FIXTURES / LLAMA3), "--factor", "4", "--out", str(out), "--sign-key",
                 str(tmp_path / "nope")]) == 4
    assert "cannot read the signing key file" in capsys.readouterr().err and not out.exists()


def test_python_api_signs_and_verifies(tmp_path):
    config = load_fixture(LLAMA3)
    receipt = apply_rope_scaling(config, YARN4, sign_key=KEY)
    assert signature_status(receipt) == f"signed by key {key_id(KEY)}"
    assert verify_receipt(receipt, config, sign_key=KEY) is receipt
    with pytest.raises(SignatureError, match="another|not with the given key"):
        verify_receipt(receipt, config, sign_key=OTHER)
    with pytest.raises(SignatureError, match="missing") as caught:
        verify_signature(receipt.with_fields(), KEY)  # any change makes a new, unsigned receipt
    assert "sign_key=KEY" in str(caught.value) and "--sign-key KEY" in caught.value.render(flag)
    with pytest.raises(SigningKeyError):
        apply_rope_scaling(load_fixture(LLAMA3), YARN4, sign_key=b"short")
    edited = receipt.to_dict()
    edited["long_context"]["factor"] = 8.0
    with pytest.raises(ReceiptMismatchError):
        verify_receipt(edited, config, sign_key=KEY)
    with pytest.raises(SignatureError, match="was edited"):
        sign_receipt(Receipt.from_json(json.dumps(edited)), KEY)


def test_patch_folder_signs_and_the_signature_survives_load(tmp_path, keyfile):
    shutil.copytree(FIXTURES / LLAMA3, tmp_path / "model")
    result = files.patch_folder(resolve(tmp_path / "model"), YARN4, in_place=True, sign_key=read_key(keyfile))
    loaded = Receipt.load(result.receipt_path)
    assert loaded == result.receipt and verify_signature(loaded, KEY).startswith("hmac-sha256")
    files.verify_folder(tmp_path / "model")
    files.revert_folder(tmp_path / "model")
    restored = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert restored == sorted(p.name for p in (FIXTURES / LLAMA3).iterdir())
