"""The audit receipt: RFC 8785 canonical JSON, a sha256 manifest, and verification.

A receipt records what was asked, what the config held before and after each
change, the policy applied and the versions involved. ``manifest_sha256`` is
the sha256 of the RFC 8785 canonical JSON of every other field, so any edit to
the receipt is detected; the recorded changes and the config's hash catch any
edit to the patched config.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import rfc8785

from ropekit.config_match import (
    ROPE_KEYS,
    field_differences,
    is_rope_field,
    read_as_transformers,
    rope_differences,
    same_value,
)
from ropekit.errors import InvalidConfigError, ReceiptMismatchError, ResolutionError
from ropekit.jsonio import json_path, nonfinite_path, parse_json, read_bounded
from ropekit.scaling.config_view import ConfigView, is_missing
from ropekit.signing import SIGNATURE_FIELD, verify_signature

SCHEMA = "ropekit.receipt/1"


def canonical_json(data: Any) -> bytes:
    """RFC 8785 (JCS) canonical bytes of a JSON-compatible value."""
    try:
        return rfc8785.dumps(data)
    except RecursionError:
        raise InvalidConfigError("config nests deeper than JSON can be written; pass the config.json "
                                 "values") from None
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidConfigError(f"value cannot be written as canonical JSON ({exc}); remove NaN, "
                                 "Infinity or non-JSON values from the config") from None


#: stands in for a non-finite number while RFC 8785 writes the rest (a NUL cannot start a config key)
_NONFINITE = "\x00ropekit-nonfinite:"
_LITERALS = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}


def config_canonical_json(data: Any) -> bytes:
    """RFC 8785 canonical bytes of a config, with the literals NaN, Infinity and -Infinity where it holds them.

    RFC 8785 has no encoding for non-finite numbers, but Hub configs hold them outside the
    rope settings (Nemotron-H: ``time_step_limit: [0.0, Infinity]``) and transformers loads
    them. Such a value is written as the literal Python's json module reads and writes, so
    the hash still changes with every edit; receipts themselves never hold one.
    """
    found: list[bool] = []
    marked = _mark_nonfinite(data, found)
    out = canonical_json(marked)
    if found:
        for name, literal in _LITERALS.items():
            out = out.replace(b'"\\u0000ropekit-nonfinite:' + name.encode() + b'"', literal)
    return out


def _mark_nonfinite(value: Any, found: list[bool]) -> Any:
    stack: list[Any] = []
    root: list[Any] = [value]
    stack.append((root, 0))
    while stack:
        holder, key = stack.pop()
        item = holder[key]
        if isinstance(item, float) and not math.isfinite(item):
            found.append(True)
            holder[key] = _NONFINITE + repr(item)
        elif isinstance(item, dict):
            copied = dict(item)
            holder[key] = copied
            stack.extend((copied, k) for k in copied)
        elif isinstance(item, list):
            copied_list = list(item)
            holder[key] = copied_list
            stack.extend((copied_list, i) for i in range(len(copied_list)))
    return root[0]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def config_sha256(config: Any) -> str:
    """sha256 of a config's canonical JSON (a dict, or a transformers config object)."""
    view = config if isinstance(config, ConfigView) else ConfigView(config)
    return sha256_hex(config_canonical_json(_json_safe(view.json_dict())))


def _json_safe(value: Any) -> Any:
    """Round-trip through json so tuples, numpy scalars and the like become plain JSON."""
    try:
        return json.loads(json.dumps(value, default=str))
    except RecursionError:
        raise InvalidConfigError("config nests deeper than JSON can be written; pass the config.json "
                                 "values") from None


class Receipt(Mapping[str, Any]):
    """A receipt: a read-only mapping over its JSON fields, seals included.

    ``receipt["long_context"]``, ``"landing" in receipt``, ``list(receipt)`` (the field
    names), ``len(receipt)`` and ``dict(receipt)`` work as for a dict; values are copies,
    so editing one never changes the receipt (:meth:`with_fields` makes a new one).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        body = {k: copy.deepcopy(v) for k, v in data.items() if k not in _SEALS}
        body["fields_sha256"] = field_hashes(body)
        body["manifest_sha256"] = sha256_hex(canonical_json(body))
        self._data = body

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    @property
    def long_context(self) -> dict[str, Any]:
        return dict(self._data["long_context"])

    @property
    def attention_scaling(self) -> float:
        return float(self._data["attention_scaling"])

    @property
    def manifest_sha256(self) -> str:
        return str(self._data["manifest_sha256"])

    def compute_manifest(self) -> str:
        return sha256_hex(canonical_json({k: v for k, v in self._data.items()
                                          if k not in ("manifest_sha256", SIGNATURE_FIELD)}))

    def tampered_field(self) -> str | None:
        """The field edited since the receipt was sealed, if any (``None`` when intact).

        A value edit is named by its field (``long_context.factor``, ``changes[0]``); an
        edit of the seals themselves is named ``fields_sha256`` or ``manifest_sha256``:
        when the values still match the manifest, only the per-field hashes were touched.
        """
        recorded = self._data.get("fields_sha256")
        body = {k: v for k, v in self._data.items() if k not in _SEALS}
        current = field_hashes(body)
        sealed = sha256_hex(canonical_json({**body, "fields_sha256": current}))
        values_intact = sealed == self._data.get("manifest_sha256")
        if recorded != current:
            if values_intact or not isinstance(recorded, dict):
                return "fields_sha256"
            return next((key for key in sorted(set(recorded) | set(current))
                         if recorded.get(key) != current.get(key)), "fields_sha256")
        if not values_intact:
            return "manifest_sha256"
        return None

    def signed(self, signature: dict[str, str]) -> "Receipt":
        """This receipt with ``signature`` as its signature seal (see :func:`ropekit.signing.sign_receipt`)."""
        return _as_loaded({**self._data, SIGNATURE_FIELD: copy.deepcopy(signature)})

    def with_fields(self, **fields: Any) -> "Receipt":
        """A new receipt with fields replaced and the seals recomputed."""
        data = {k: v for k, v in self._data.items() if k not in _SEALS}
        data.update(copy.deepcopy(fields))
        return Receipt(data)

    def to_json(self) -> str:
        """Stable, human-readable JSON (sorted keys, two-space indent, trailing newline)."""
        return json.dumps(self._data, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "receipt") -> "Receipt":
        """A receipt exactly as stored, parsed as strictly as config.json (see ``jsonio.parse_json``).

        A receipt whose ``schema`` or one of its seals was edited or removed still loads, so
        that verification names the edit; a file that was never a receipt is refused.
        """

        fix = "restore the receipt from the patch output or re-run the patch"
        data = parse_json(text, where, fix)
        found = nonfinite_path(data)
        if found is not None:  # ropekit never writes one: RFC 8785 cannot seal it
            raise InvalidConfigError(f"{where} holds {found[1]} at {json_path(found[0])}; a receipt never holds "
                                     f"a non-finite number (JSON has none); {fix}")
        hashes = data.get("fields_sha256") if isinstance(data, dict) else None
        sealed = isinstance(data, dict) and (
            (data.get("schema") == SCHEMA and "manifest_sha256" in data)
            or (isinstance(hashes, dict) and "schema" in hashes))  # a receipt with a seal or the schema edited
        if not sealed:
            raise InvalidConfigError(f"{where} is not a ropekit receipt (expected schema {SCHEMA!r} and a "
                                     "manifest_sha256); pass the rope_receipt.json that ropekit patch wrote")
        return _as_loaded(data)

    @classmethod
    def load(cls, path: str | Path) -> "Receipt":
        """Read a receipt file (at most ``jsonio.MAX_JSON_BYTES``, a regular file)."""

        try:
            raw = read_bounded(Path(path), kind="rope_receipt.json")
        except ResolutionError:
            if not Path(path).is_file():
                raise InvalidConfigError(f"no receipt at {path}; patch the model with ropekit first") from None
            raise
        return cls.from_json(raw, where=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Receipt) and other._data == self._data

    def __repr__(self) -> str:
        lc = self._data.get("long_context", {})
        return f"<Receipt {lc.get('method')} x{lc.get('factor')} manifest={self.manifest_sha256[:12]}>"


_SEALS = ("fields_sha256", "manifest_sha256", SIGNATURE_FIELD)


def field_hashes(body: dict[str, Any], canonical: Any = canonical_json) -> dict[str, str]:
    """sha256 of each field (one level into objects, each list item), so an edit can be named."""
    out: dict[str, str] = {}
    for key, value in body.items():
        if isinstance(value, dict) and value:
            items = {f"{key}.{sub}": v for sub, v in value.items()}
        elif isinstance(value, list) and value:
            items = {f"{key}[{i}]": v for i, v in enumerate(value)}
        else:
            items = {key: value}
        out.update({name: sha256_hex(canonical(v)) for name, v in items.items()})
    return out


def _as_loaded(data: dict[str, Any]) -> Receipt:
    """A receipt exactly as stored, seals included, so verification can check them."""
    receipt = Receipt.__new__(Receipt)
    receipt._data = copy.deepcopy(data)
    return receipt


def verify_receipt(receipt: Receipt | dict[str, Any], config: Any, *,
                   sign_key: bytes | str | None = None) -> Receipt:
    """Check a receipt against a config; return it, or raise naming the first difference.

    Raises :class:`ReceiptMismatchError` when a receipt field was edited (naming it),
    when a recorded value differs in the config (naming its key path), or when the
    config differs anywhere else from what was written (naming the top-level field, or
    ``field.key`` one level down). The config is compared as canonical JSON, so
    whitespace, key order, escapes and ``4`` for ``4.0`` are not edits. It may be the
    folder a trainer saved: rope values are compared as transformers reads them, in
    either layout (``rope_values``), and what ``save_pretrained`` rewrites without
    touching rope is not an edit (see :mod:`ropekit.config_match`).
    Raises :class:`InvalidConfigError` for a receipt whose seals hold but whose
    fields verify cannot read (written by another schema or by hand).

    :param sign_key: the key the receipt was signed with (see :mod:`ropekit.signing`):
        a missing or non-matching signature raises :class:`SignatureError`. Without a
        key, the hashes prove integrity against accidents only, not against someone who
        can rewrite both files.
    """
    if isinstance(receipt, dict):
        receipt = _as_loaded(receipt)
    field = receipt.tampered_field()
    if field is not None:
        raise ReceiptMismatchError(
            f"receipt field {field!r} was edited after the receipt was written; "
            "re-run the patch to regenerate it"
        )
    if sign_key is not None:
        verify_signature(receipt, sign_key)
    _check_readable(receipt)
    view = config if isinstance(config, ConfigView) else ConfigView(config)
    recorded_rope = receipt.get("rope_values")
    rope_by_value = isinstance(recorded_rope, dict)  # receipts before rope_values compare rope keys by path
    recorded_family = receipt.get("family")
    family_name = recorded_family.get("name") if isinstance(recorded_family, dict) else None
    rope_problems = rope_differences(recorded_rope, view, family_name) if rope_by_value else []
    read = transformers_reading(view)
    for change in receipt["changes"]:
        if not (rope_by_value and any(part in ROPE_KEYS for part in change["path"])):
            _check_change(change, view, read)  # rope values are compared below, as transformers reads them
    if rope_problems:
        where, found, wanted = rope_problems[0]
        raise ReceiptMismatchError(f"config field {where} is {_shown(found)}, receipt says {_shown(wanted)}; "
                                   "re-run the patch or revert")
    if receipt["model"]["config_sha256_after"] == config_sha256(view):
        return receipt
    current = field_hashes(_json_safe(view.json_dict()), config_canonical_json)
    differing = field_differences(_recorded_fields(receipt), current, read, rope_by_value=rope_by_value)
    if differing:
        raise ReceiptMismatchError(
            f"config field {differing[0]!r} differs from the patched config the receipt recorded; "
            "re-run the patch or revert"
        )
    return receipt


def _recorded_fields(receipt: Receipt) -> dict[str, Any]:
    """The config's per-field hashes as recorded, with the non-rope fields a trainer set
    (``training.config_fields_sha256``; null: removed) laid over them."""
    recorded = receipt.get("config_fields_sha256")
    recorded = dict(recorded) if isinstance(recorded, dict) else {}
    training = receipt.get("training")
    updates = training.get("config_fields_sha256") if isinstance(training, dict) else None
    for name, value in (updates.items() if isinstance(updates, dict) else ()):
        if is_rope_field(name):
            continue  # rope values are never taken from the training section
        if value is None:
            recorded.pop(name, None)
        else:
            recorded[name] = value
    return recorded


def _check_change(change: dict[str, Any], view: ConfigView,
                  read: Callable[[str | None], dict[str, str] | None]) -> None:
    """A value the patch wrote must still be at its config.json path, unless the config lacks
    it and the installed transformers does not hold it at all (a key ``save_pretrained`` drops,
    such as a flat VLM config's top-level ``max_position_embeddings`` on transformers 5)."""
    path = change["path"]
    dotted = ".".join(path)
    value = view.lookup_path(path)
    if is_missing(value) and not change.get("removed") and len(path) <= 2:
        held = read(None)
        if held is not None and dotted not in held:
            return
    if change.get("removed"):
        if not is_missing(value):
            raise ReceiptMismatchError(f"config field {dotted} should be absent but is {_shown(value)}; "
                                       "re-run the patch or revert")
        return
    if is_missing(value) or not same_value(value, change["after"]):
        found = "absent" if is_missing(value) else _shown(value)
        raise ReceiptMismatchError(f"config field {dotted} is {found}, receipt says {_shown(change['after'])}; "
                                   "re-run the patch or revert")


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _check_readable(receipt: Receipt) -> None:
    """Refuse, naming the field, a sealed receipt whose fields are not what verify reads."""
    fix = "re-run ropekit patch to write a new receipt"
    if receipt.get("schema") != SCHEMA:
        raise InvalidConfigError(f"receipt schema {_shown(receipt.get('schema'))} is not {SCHEMA!r}; "
                                 f"use the ropekit that wrote it, or {fix}")
    model = receipt.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("config_sha256_after"), str):
        raise InvalidConfigError(f"receipt field 'model.config_sha256_after' is missing or not a string; {fix}")
    changes = receipt.get("changes")
    if not isinstance(changes, list):
        raise InvalidConfigError(f"receipt field 'changes' is {_shown(changes)}, not a list of changes; {fix}")
    for i, change in enumerate(changes):
        path = change.get("path") if isinstance(change, dict) else None
        if not (isinstance(path, list) and path and all(isinstance(k, str) for k in path) and "after" in change):
            raise InvalidConfigError(f"receipt field 'changes[{i}]' is {_shown(change)}, not a change "
                                     f"(a path of keys and an after value); {fix}")


def transformers_reading(view: ConfigView) -> Callable[[str | None], dict[str, str] | None]:
    """``read(name)``: per-field hashes of the config as the installed transformers reads it,
    with field ``name`` removed first (see :func:`ropekit.config_match.field_differences`)."""
    data = _json_safe(view.json_dict())
    cache: dict[str | None, dict[str, str] | None] = {}

    def read(without: str | None) -> dict[str, str] | None:
        if without not in cache:
            built = read_as_transformers(data, without)
            cache[without] = None if built is None else config_field_hashes(built)
        return cache[without]
    return read


def config_field_hashes(config: Any) -> dict[str, str]:
    """Per-field hashes of a config, recorded so that verify can name an edited field."""
    view = config if isinstance(config, ConfigView) else ConfigView(config)
    return field_hashes(_json_safe(view.json_dict()), config_canonical_json)
