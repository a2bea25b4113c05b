"""Receipts: canonical JSON, stable bytes, seals, verification."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import rfc8785
from conftest import load_fixture

from ropekit import LongContextConfig, Receipt, apply_rope_scaling, verify_receipt
from ropekit.errors import ReceiptMismatchError
from ropekit.receipt import canonical_json, config_sha256

GOLDEN = Path(__file__).parent / "golden" / "llama3-yarn4.receipt.json"
PINNED_VERSIONS = {"ropekit": "0.1.0", "transformers": "pinned", "python": "pinned"}


def _receipt(name="meta-llama__Meta-Llama-3-8B-Instruct", **kwargs):
    config = load_fixture(name)
    request = LongContextConfig(**({"method": "yarn", "factor": 4.0} | kwargs))
    return config, apply_rope_scaling(config, request)


def test_same_input_same_bytes_same_hash():
    _, first = _receipt()
    _, second = _receipt()
    assert first.to_json() == second.to_json()
    assert first.manifest_sha256 == second.manifest_sha256


def test_golden_receipt_bytes():
    _, receipt = _receipt()
    pinned = receipt.with_fields(versions=PINNED_VERSIONS)
    assert pinned.to_json() == GOLDEN.read_text()


def test_manifest_is_sha256_of_rfc8785_canonical_json():
    _, receipt = _receipt()
    data = receipt.to_dict()
    manifest = data.pop("manifest_sha256")
    assert manifest == hashlib.sha256(rfc8785.dumps(data)).hexdigest()
    # RFC 8785: sorted keys, no whitespace, shortest round-trip numbers
    assert canonical_json({"b": 1.0, "a": [1e21, 0.1]}) == b'{"a":[1e+21,0.1],"b":1}'


def test_config_hashes_before_and_after():
    original = load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    config, receipt = _receipt()
    assert receipt["model"]["config_sha256_before"] == hashlib.sha256(rfc8785.dumps(original)).hexdigest()
    assert receipt["model"]["config_sha256_after"] == config_sha256(config)
    assert receipt["model"]["config_sha256_before"] != receipt["model"]["config_sha256_after"]


def test_receipt_records_sites_changes_policy_versions():
    _, receipt = _receipt("meta-llama__Llama-3.1-8B-Instruct", on_existing="compound")
    assert receipt["sites"] == ["rope_scaling"]
    changes = {tuple(c["path"]): c for c in receipt["changes"]}
    assert changes[("rope_scaling", "factor")]["before"] == 8.0
    assert changes[("rope_scaling", "factor")]["after"] == 32.0
    assert changes[("rope_scaling", "low_freq_factor")]["removed"] is True
    assert changes[("max_position_embeddings",)] == {"path": ["max_position_embeddings"], "before": 131072,
                                                      "after": 262144}
    assert receipt["existing_scaling"]["rope_type"] == "llama3"
    assert receipt["policy"] == {"on_existing": "compound", "applied": "compound", "requested_factor": 4.0}
    assert set(receipt["versions"]) == {"ropekit", "transformers", "python"}
    assert receipt["family"]["name"] == "llama"


def test_round_trip_through_json_and_verify():
    config, receipt = _receipt()
    loaded = Receipt.from_json(receipt.to_json())
    assert loaded == receipt
    assert verify_receipt(loaded, config) == receipt


def test_verify_names_an_edited_rope_value():
    config, receipt = _receipt()
    edited = copy.deepcopy(config)
    edited["rope_scaling"]["factor"] = 8.0
    with pytest.raises(ReceiptMismatchError, match="rope_scaling.factor"):
        verify_receipt(receipt, edited)


def test_verify_names_an_edited_receipt_field():
    config, receipt = _receipt()
    data = json.loads(receipt.to_json())
    data["long_context"]["factor"] = 8.0
    with pytest.raises(ReceiptMismatchError, match="long_context.factor"):
        verify_receipt(data, config)


def test_receipt_is_a_complete_read_only_mapping():
    """``in``, iteration, ``len``, ``dict()`` and ``get`` behave as on the receipt's own JSON."""
    from collections.abc import Mapping

    _, receipt = _receipt()
    stored = json.loads(receipt.to_json())
    assert isinstance(receipt, Mapping)
    assert "landing" in receipt and "long_context" in receipt and "no-such-field" not in receipt
    assert sorted(receipt) == sorted(stored) and len(receipt) == len(stored)
    assert dict(receipt) == stored
    assert dict(receipt.items()) == stored and sorted(receipt.keys()) == sorted(stored)
    assert receipt.get("no-such-field") is None and receipt.get("no-such-field", 7) == 7
    with pytest.raises(KeyError):
        receipt["no-such-field"]
    with pytest.raises(TypeError):
        receipt["long_context"] = {}  # type: ignore[index]

    edited = receipt["long_context"]
    edited["factor"] = 64.0  # a copy: the receipt and its seal are untouched
    assert receipt["long_context"]["factor"] == 4.0 and receipt.tampered_field() is None
