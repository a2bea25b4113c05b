"""Signing receipts with a key of your own: HMAC-SHA256 over the receipt's manifest hash.

A receipt's ``manifest_sha256`` is computed without a key, so it proves integrity only
against accidents: anyone who can rewrite both config.json and rope_receipt.json can
reseal an edited pair. A signature closes that gap for whoever holds the key.

The signature lives inside the receipt, as its ``signature`` field (a seal, like
``manifest_sha256``, left out of the manifest it signs)::

    "signature": {"algorithm": "hmac-sha256", "key_id": "<16 hex>", "mac": "<64 hex>"}

``mac`` is ``HMAC-SHA256(key, "ropekit-receipt-v1:" + manifest_sha256)``; ``key_id`` is the
first 16 hex digits of ``sha256("ropekit-key-id:" + key)``, which names the key without
revealing it. A key is any secret of at least :data:`MIN_KEY_BYTES` bytes, read from a file
(``--sign-key FILE``, surrounding whitespace stripped) or from the ``ROPEKIT_SIGN_KEY``
environment variable (the key itself). Any change of the receipt (``Receipt.with_fields``,
a training step) makes a new, unsigned receipt: sign it again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any, Protocol

from ropekit.errors import Param, SignatureError, SigningKeyError

#: the receipt field a signature lives in (a seal: left out of the manifest it signs)
SIGNATURE_FIELD = "signature"


class Sealed(Protocol):
    """What signing needs of a :class:`ropekit.receipt.Receipt` (which imports this module)."""

    @property
    def manifest_sha256(self) -> str: ...

    def get(self, key: str, default: Any = None) -> Any: ...

    def tampered_field(self) -> str | None: ...

    def signed(self, signature: dict[str, str]) -> Any: ...

ALGORITHM = "hmac-sha256"
#: shortest key accepted (128 bits)
MIN_KEY_BYTES = 16
#: longest key file read
MAX_KEY_FILE_BYTES = 64 * 1024
KEY_ENV = "ROPEKIT_SIGN_KEY"
_DOMAIN = b"ropekit-receipt-v1:"
_KEY = Param("sign_key", placeholder="KEY")


def read_key(path: str | Path) -> bytes:
    """The key held in a file, surrounding whitespace stripped; refused when unreadable or short."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key file {path} ({exc.strerror or exc}); "
                              "check the path given to --sign-key") from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"signing key file {path} is over {MAX_KEY_FILE_BYTES // 1024} KiB; a key is a short "
                              "secret (e.g. 32 random bytes: head -c 32 /dev/urandom | base64 > key)")
    return checked_key(raw.strip(), f"signing key file {path}")


def key_from_env() -> bytes | None:
    """The key in ``ROPEKIT_SIGN_KEY`` (read at call time), or None when unset or empty."""
    value = os.environ.get(KEY_ENV, "").strip()
    return checked_key(value.encode("utf-8", "surrogateescape"), KEY_ENV) if value else None


def checked_key(key: bytes | str, where: str = "sign_key") -> bytes:
    """``key`` as bytes (text is UTF-8), refused when shorter than :data:`MIN_KEY_BYTES`."""
    data = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(data) < MIN_KEY_BYTES:
        raise SigningKeyError(f"{where} holds a key of {len(data)} bytes; a signing key must be at least "
                              f"{MIN_KEY_BYTES} bytes (e.g. head -c 32 /dev/urandom | base64 > key)")
    return data


def key_id(key: bytes | str) -> str:
    """A name for the key that does not reveal it: 16 hex digits of ``sha256("ropekit-key-id:" + key)``."""
    return hashlib.sha256(b"ropekit-key-id:" + checked_key(key)).hexdigest()[:16]


def _mac(key: bytes, manifest: str) -> str:
    return hmac.new(key, _DOMAIN + manifest.encode("ascii", "replace"), hashlib.sha256).hexdigest()


def sign_receipt(receipt: Sealed, key: bytes | str) -> Any:
    """A copy of ``receipt`` carrying a signature by ``key``; an edited receipt is refused."""
    key = checked_key(key)
    edited = receipt.tampered_field()
    if edited is not None:
        raise SignatureError(f"receipt field {edited!r} was edited after the receipt was written; a signature "
                             "would vouch for the edit: re-run the patch, then sign")
    return receipt.signed({"algorithm": ALGORITHM, "key_id": key_id(key), "mac": _mac(key, receipt.manifest_sha256)})


def signature_status(receipt: Sealed) -> str:
    """``unsigned``, or ``signed`` (with a key id) when the receipt carries a signature, unchecked."""
    signature = receipt.get(SIGNATURE_FIELD)
    if signature is None:
        return "unsigned"
    found = signature.get("key_id") if isinstance(signature, dict) else None
    return f"signed by key {found}" if isinstance(found, str) else "signed"


def verify_signature(receipt: Sealed, key: bytes | str) -> str:
    """Check the receipt's signature with ``key``; return a one-line description.

    Raises :class:`SignatureError` (exit code 3) naming the signature when it is missing,
    made with another key, or does not match the receipt's manifest; and when the
    manifest itself no longer matches the receipt's fields.
    """
    key = checked_key(key)
    signature = receipt.get(SIGNATURE_FIELD)
    if signature is None:
        raise SignatureError("the receipt's signature is missing (it is unsigned); a signing key was given, so "
                             "an unsigned receipt is refused: re-run the patch with ", _KEY)
    if not isinstance(signature, dict) or signature.get("algorithm") != ALGORITHM \
            or not isinstance(signature.get("mac"), str):
        raise SignatureError(f"the receipt's signature is not an {ALGORITHM} signature ropekit wrote; "
                             "re-run the patch with ", _KEY)
    edited = receipt.tampered_field()
    if edited is not None:
        raise SignatureError(f"the receipt's signature covers a manifest that no longer matches: receipt field "
                             f"{edited!r} was edited; re-run the patch with ", _KEY)
    wanted = key_id(key)
    if signature.get("key_id") != wanted:
        raise SignatureError(f"the receipt's signature was made with key {str(signature.get('key_id'))[:16]!r}, "
                             f"not with the given key ({wanted}); pass the key the patch was signed with")
    if not hmac.compare_digest(signature["mac"], _mac(key, receipt.manifest_sha256)):
        raise SignatureError("the receipt's signature does not match its manifest under the given key: the "
                             "receipt was resealed or the signature edited; re-run the patch with ", _KEY)
    return f"{ALGORITHM} signature by key {wanted} matches the manifest {receipt.manifest_sha256[:16]}"
