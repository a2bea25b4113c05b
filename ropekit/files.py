"""Folder operations behind ``ropekit patch``, ``verify`` and ``revert``.

* :func:`patch_folder` writes the patched ``config.json`` and ``rope_receipt.json``
  into a new or empty folder (``out``), or an earlier ropekit output whose receipt
  verifies; or over the model's own ``config.json`` (in place) after saving the
  original bytes to ``config.json.ropekit-orig`` for :func:`revert_folder`.
* :func:`verify_folder` checks a folder's receipt against its ``config.json``.
* :func:`revert_folder` restores the original ``config.json`` byte for byte.

Every command that writes a folder holds its lock (:mod:`ropekit.folders.lock`), so
two ropekit processes never interleave their writes, and changes the folder in one
transaction (:mod:`ropekit.folders.journal`): killed at any instant, the folder is the
old state or the new one (patched, with its receipt) once the next ropekit command has
touched it. The file system's refusals (read-only, full, permissions, names too long)
are one-line :class:`~ropekit.errors.FileAccessError` errors (exit 4), with nothing
half-written left.

Test hook: ``ROPEKIT_TEST_PAUSE_AT=<step>`` (see :mod:`ropekit.folders.atomic`) pauses
at ``staged:<file>`` (written in the staging folder), ``committed`` (journal written),
``replaced:<file>`` (renamed into place) and ``removed:<file>``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ropekit.constants import BACKUP_FILENAME, RECEIPT_FILENAME
from ropekit.errors import (
    FileAccessError,
    FolderInUseError,
    InvalidConfigError,
    InvalidRequestError,
    Param,
    PolicyError,
    ReceiptMismatchError,
    ResolutionError,
    RopekitError,
)
from ropekit.folders.atomic import PAUSE_ENV, atomic_write, default_mode
from ropekit.folders.companions import read_companions
from ropekit.folders.guard import access_error, file_access, hub_cache_root, shown_path, special_root
from ropekit.folders.journal import JOURNAL_NAME, STAGING_NAME, Transaction, pending, recover
from ropekit.folders.lock import LOCK_NAME, folder_lock
from ropekit.hub.resolve import ResolvedConfig
from ropekit.jsonio import read_bounded, read_config_file
from ropekit.receipt import Receipt, config_sha256, sha256_hex, verify_receipt
from ropekit.scaling.engine import Plan, apply_config
from ropekit.scaling.long_context import LongContextConfig

__all__ = ["CONFIG_FILENAME", "PAUSE_ENV", "Check", "PatchResult", "RevertResult", "VerifyResult", "atomic_write",
           "dump_like", "locate_folder", "patch_folder", "revert_folder", "verify_folder"]

CONFIG_FILENAME = "config.json"
#: ropekit's own files in a folder: never copied, never counted as the user's
OWN_FILES = {CONFIG_FILENAME, RECEIPT_FILENAME, BACKUP_FILENAME, LOCK_NAME, JOURNAL_NAME, STAGING_NAME}


def dump_like(config: dict[str, Any], original: bytes | None) -> bytes:
    """Serialize ``config`` in the style of the original file (indent, newline, line ending).

    Key order is kept as read. Without an original, the Hugging Face style is used
    (two-space indent, trailing newline).
    """
    indent: int | str | None = 2
    newline, trailing = "\n", True
    ensure_ascii = True
    if original is not None:
        text = original.decode("utf-8", errors="replace")
        newline = "\r\n" if "\r\n" in text else "\n"
        trailing = text.endswith(("\n", "\r"))
        ensure_ascii = original.isascii()
        lines = text.strip().splitlines()
        if len(lines) <= 1:
            indent = None
        else:
            second = lines[1]
            stripped = second.lstrip(" \t")
            lead = second[: len(second) - len(stripped)]
            indent = "\t" if lead.startswith("\t") else (len(lead) or 2)
    # a non-finite number outside the rope settings goes back as it was read (NaN, Infinity)
    text = json.dumps(config, indent=indent, ensure_ascii=ensure_ascii)
    if newline != "\n":
        text = text.replace("\n", newline)
    return (text + (newline if trailing else "")).encode("utf-8")


# --- patch --------------------------------------------------------------------------------

@dataclass
class PatchResult:
    """What :func:`patch_folder` wrote; ``refused`` names files not copied for safety."""

    plan: Plan
    receipt: Receipt
    folder: Path
    in_place: bool
    config_path: Path
    receipt_path: Path
    backup_path: Path | None = None
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name (why)"
    refused: list[str] = field(default_factory=list)  # "name (why)": links out, special files, foreign files

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "in_place": self.in_place, "config": str(self.config_path),
            "receipt": str(self.receipt_path), "backup": str(self.backup_path) if self.backup_path else None,
            "copied": list(self.copied), "skipped": list(self.skipped), "refused": list(self.refused),
            "manifest_sha256": self.receipt.manifest_sha256, "plan": self.plan.to_json(),
        }


def patch_folder(resolved: ResolvedConfig, request: LongContextConfig, *, out: Path | None = None,
                 in_place: bool = False, family: str | None = None,
                 companions_from: Path | None = None, sign_key: bytes | str | None = None) -> PatchResult:
    """Patch a resolved config into ``out`` or in place; nothing is written unless the plan succeeds.

    :param companions_from: a local model folder whose small non-weight files
        (tokenizer, generation config, chat template) are copied into ``out``.
    :param sign_key: sign the receipt with this key (see :mod:`ropekit.signing`).
    """
    if (out is None) == (not in_place):
        raise InvalidRequestError("give exactly one of out=DIR or in_place=True (--out DIR or --in-place)")
    original = _original_bytes(resolved)
    config = copy.deepcopy(resolved.config)  # the caller's config is never mutated
    if in_place:
        folder = _in_place_folder(resolved)
    else:
        folder = Path(out)  # type: ignore[arg-type]
        with file_access("write to", folder):
            _check_out_target(folder, resolved)

    model = {**resolved.receipt_model(), "file_sha256_before": sha256_hex(original) if original else None}
    plan, receipt = apply_config(config, request, family=family, inherited=resolved.inherited, model=model)
    patched = dump_like(config, original)
    layout = {"config": CONFIG_FILENAME, "mode": "in-place" if in_place else "out",
             "backup": BACKUP_FILENAME if in_place else None}
    receipt = receipt.with_fields(model={**receipt["model"], "file_sha256_after": sha256_hex(patched)},
                                  files=layout)
    if sign_key is not None:
        from ropekit.signing import sign_receipt

        receipt = sign_receipt(receipt, sign_key)
    result = PatchResult(plan, receipt, folder, in_place, folder / CONFIG_FILENAME, folder / RECEIPT_FILENAME)
    if in_place:
        with file_access("write to", folder), _locked(folder):
            _write_in_place(result, original, patched)  # type: ignore[arg-type]
        return result
    _write_out(result, patched, companions_from)
    return result


def _original_bytes(resolved: ResolvedConfig) -> bytes | None:
    if resolved.path is None:
        return None
    return read_bounded(Path(resolved.path))


def _in_place_folder(resolved: ResolvedConfig) -> Path:
    if resolved.source != "local" or resolved.path is None:
        raise InvalidConfigError(
            f"--in-place needs a local model folder, but the config came from the {resolved.source} "
            f"({resolved.model_id}); write the patch elsewhere with --out DIR"
        )
    folder = Path(resolved.path).parent
    _refuse_hub_cache(folder, "other programs read them")
    _refuse_patched(folder)
    return folder


def _refuse_hub_cache(folder: Path, why: str) -> None:
    cache = hub_cache_root(folder)
    if cache is not None:
        raise PolicyError(f"{shown_path(folder)} is inside the Hugging Face cache {shown_path(cache)}, which "
                          f"ropekit never edits in place (its files are shared; {why}); patch into a new folder with ",
                          Param("out", placeholder="DIR"))


def _refuse_patched(folder: Path) -> None:
    if os.path.lexists(folder / BACKUP_FILENAME):
        raise PolicyError(
            f"{folder} was already patched in place ({BACKUP_FILENAME} holds the original); "
            f"run 'ropekit revert {folder}' first, or patch into a new folder with --out DIR"
        )


def _write_in_place(result: PatchResult, original: bytes, patched: bytes) -> None:
    """Backup, config and receipt in one transaction, under the folder's lock."""
    folder = result.folder
    _refuse_patched(folder)  # again, under the lock: another ropekit may have patched it meanwhile
    config_path = result.config_path
    if read_bounded(config_path) != original:
        raise PolicyError(f"{config_path} changed while this command waited for another ropekit on {folder}; "
                          "run the command again to patch the config as it is now")
    mode = os.stat(config_path).st_mode & 0o7777
    with Transaction(folder) as txn:
        txn.write(BACKUP_FILENAME, original, mode)
        txn.write(CONFIG_FILENAME, patched, mode)
        txn.write(RECEIPT_FILENAME, result.receipt.to_json().encode("utf-8"), default_mode())
    result.backup_path = folder / BACKUP_FILENAME


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock, first finishing or discarding a change a killed ropekit left there."""
    with folder_lock(folder):
        recover(folder)
        yield


def _check_out_target(folder: Path, resolved: ResolvedConfig) -> None:
    if resolved.path is not None and os.path.realpath(folder) == os.path.realpath(Path(resolved.path).parent):
        raise InvalidConfigError(f"--out {folder} is the model's own folder; use --in-place to patch it "
                                 "there (a backup is kept for revert), or choose a new folder")
    if folder.is_symlink() and not folder.exists():
        raise FileAccessError(f"--out {shown_path(folder)} is a symlink to {shown_path(os.readlink(folder))}, "
                              "which does not exist; choose a real folder")
    special = special_root(folder)
    if special is not None:
        raise FileAccessError(f"--out {shown_path(folder)} lies in {special}, which holds no files to write; "
                              "choose a folder on a disk")
    if os.path.lexists(folder) and not folder.is_dir():
        raise InvalidConfigError(f"--out {shown_path(folder)} exists and is not a folder; choose a new folder")


def _write_out(result: PatchResult, patched: bytes, companions_from: Path | None) -> None:
    """Into a new or empty folder, or an earlier ropekit output whose receipt verifies."""
    folder = result.folder
    created = [folder, *(p for p in folder.parents if not os.path.lexists(p))] if not os.path.lexists(folder) else []
    try:
        with file_access("write to", folder):
            folder.mkdir(parents=True, exist_ok=True)
            with _locked(folder):
                earlier = _earlier_output(folder)
                with Transaction(folder) as txn:
                    if companions_from is not None:
                        _stage_companions(result, txn, companions_from, earlier)
                    txn.write(CONFIG_FILENAME, patched, default_mode())
                    txn.write(RECEIPT_FILENAME, result.receipt.to_json().encode("utf-8"), default_mode())
    except BaseException:
        with contextlib.suppress(OSError):
            for path in created:  # the folders this call made, innermost first, each only when empty
                path.rmdir()
        raise


def _earlier_output(folder: Path) -> bool:
    """False for an empty folder, True for an earlier ropekit output; anything else is refused."""
    names = sorted(n for n in os.listdir(folder) if n not in (LOCK_NAME, JOURNAL_NAME, STAGING_NAME))
    if not names:
        return False
    problem = f"holds {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}, which ropekit did not write"
    if RECEIPT_FILENAME in names:
        try:
            _verify_unlocked(folder)
            return True
        except RopekitError as exc:
            problem = f"holds a {RECEIPT_FILENAME} that does not verify ({exc})"
    raise InvalidConfigError(f"--out {shown_path(folder)} {problem}; ropekit writes only into a new or empty folder "
                             "or its own earlier output; choose an empty or new folder")


def _stage_companions(result: PatchResult, txn: Transaction, source: Path, earlier: bool) -> None:
    found = read_companions(source, OWN_FILES)
    result.skipped, result.refused = found.skipped, found.refused
    for item in found.files:
        target = result.folder / item.name
        if earlier and os.path.lexists(target):
            if (target.is_symlink() or not target.is_file() or target.stat().st_size != len(item.data)
                    or target.read_bytes() != item.data):
                result.refused.append(f"{item.name} (already in {shown_path(result.folder)} with other content; kept)")
                continue
        txn.write(item.name, item.data, item.mode)
        result.copied.append(item.name)


# --- verify -------------------------------------------------------------------------------

@dataclass
class Check:
    """One verification step and its outcome."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_folder`; further checks append to ``checks``."""

    folder: Path
    receipt: Receipt
    config: dict[str, Any]
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "ok": self.ok,
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
                "long_context": self.receipt.get("long_context"),
                "manifest_sha256": self.receipt.get("manifest_sha256")}


def locate_folder(target: Path) -> Path:
    """The model folder for a folder or a path to its config.json."""
    target = Path(target)
    with file_access("read", target):
        if target.is_dir():
            return target
        if target.is_file():
            return target.parent
    raise ResolutionError(f"no folder or file at {str(target)!r}; give the folder ropekit patched")


def verify_folder(target: Path) -> VerifyResult:
    """Check the folder's receipt against its config.json (values and hash).

    Holds the folder's lock when it can (finishing first a change a killed ropekit left);
    a folder ropekit cannot write is read without it. Raises :class:`ReceiptMismatchError`
    naming the first difference.
    """
    folder = locate_folder(target)
    with contextlib.ExitStack() as stack:
        if hub_cache_root(folder) is None:
            try:
                stack.enter_context(folder_lock(folder))
            except FolderInUseError:
                raise
            except OSError as exc:  # read-only or not ours: nothing to repair, or say why it cannot be
                if pending(folder):
                    raise access_error(exc, "finish the change a killed ropekit left in", folder) from None
            else:
                with file_access("finish the change a killed ropekit left in", folder):
                    recover(folder)
        return _verify_unlocked(folder)


def _verify_unlocked(folder: Path) -> VerifyResult:
    receipt_path = folder / RECEIPT_FILENAME
    if not receipt_path.is_file():
        raise InvalidConfigError(f"{folder} has no {RECEIPT_FILENAME}; patch it with 'ropekit patch' first")
    config_path = folder / CONFIG_FILENAME
    if not config_path.is_file():
        raise ResolutionError(f"{folder} has a receipt but no {CONFIG_FILENAME}; restore the patched config")
    receipt = Receipt.load(receipt_path)
    config = read_config_file(config_path)
    verify_receipt(receipt, config)
    long_context = receipt.get("long_context")
    long_context = long_context if isinstance(long_context, dict) else {}
    if receipt["model"]["config_sha256_after"] == config_sha256(config):
        matched = "the config hash match"
    else:  # re-saved (by a trainer's save_pretrained): every rope value and recorded change holds
        matched = "every rope value match a re-saved config (fields save_pretrained rewrites ignored)"
    detail = (f"{len(receipt['changes'])} recorded changes and {matched} "
              f"({long_context.get('method')} x{long_context.get('factor')})")
    return VerifyResult(folder, receipt, config, [Check("receipt", True, detail)])


# --- revert -------------------------------------------------------------------------------

@dataclass
class RevertResult:
    """What :func:`revert_folder` restored and removed."""

    folder: Path
    config_sha256: str
    removed: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "config_sha256": self.config_sha256, "removed": self.removed}


def revert_folder(target: Path, *, force: bool = False) -> RevertResult:
    """Restore the config.json a ``patch --in-place`` replaced, byte for byte.

    Refuses (exit 3) when the backup is not the file the receipt recorded, or
    when config.json was edited after the patch, unless ``force``.
    """
    folder = locate_folder(target)
    _refuse_hub_cache(folder, "nothing ropekit wrote there can be reverted")
    with file_access("write to", folder), _locked(folder):
        return _revert_locked(folder, force)


def _revert_locked(folder: Path, force: bool) -> RevertResult:
    backup = folder / BACKUP_FILENAME
    receipt_path = folder / RECEIPT_FILENAME
    config_path = folder / CONFIG_FILENAME
    if not backup.is_file():
        if receipt_path.is_file():
            raise InvalidConfigError(
                f"{folder} holds a receipt but no {BACKUP_FILENAME}: it was written by 'patch --out', "
                "so its original is the source folder; delete this folder instead of reverting it"
            )
        raise InvalidConfigError(f"nothing to revert in {folder}: no {BACKUP_FILENAME} or {RECEIPT_FILENAME}; "
                                 "only folders patched with 'ropekit patch --in-place' can be reverted")
    original = read_bounded(backup, kind=BACKUP_FILENAME)
    current = _current_config(config_path, force)
    if current != original and receipt_path.is_file() and not force:
        _check_revertible(Receipt.load(receipt_path), original, current, folder)
    removed = [path.name for path in (receipt_path, backup) if os.path.lexists(path)]
    with Transaction(folder) as txn:
        if current != original:
            mode = os.stat(config_path if current is not None else backup).st_mode & 0o7777
            txn.write(CONFIG_FILENAME, original, mode)
        for name in removed:
            txn.remove(name)
    return RevertResult(folder, sha256_hex(original), removed)


def _current_config(config_path: Path, force: bool) -> bytes | None:
    """config.json's bytes (None when absent); one too large to be ropekit's is refused unless forced."""
    if not config_path.is_file():
        return None  # absent, or not a file: the backup replaces it
    try:
        return read_bounded(config_path)
    except InvalidConfigError as exc:  # over the size limit
        if force:
            return None  # replaced whatever it is by the backup
        raise ReceiptMismatchError(f"{CONFIG_FILENAME} is not the file ropekit wrote ({exc}); pass --force to "
                                   "restore the original anyway") from None


def _check_revertible(receipt: Receipt, original: bytes, current: bytes | None, folder: Path) -> None:
    edited = receipt.tampered_field()
    if edited is not None:
        raise ReceiptMismatchError(
            f"receipt field {edited!r} in {folder} was edited after the patch, so its hashes cannot vouch for "
            f"{BACKUP_FILENAME}; pass --force to restore the backup anyway"
        )
    model = receipt.get("model")
    model = model if isinstance(model, dict) else {}
    before, after = model.get("file_sha256_before"), model.get("file_sha256_after")
    if before and sha256_hex(original) != before:
        raise ReceiptMismatchError(
            f"{BACKUP_FILENAME} in {folder} is not the file the receipt recorded (sha256 {before[:12]}...); "
            "it was changed after the patch; pass --force to restore it anyway"
        )
    if after and current is not None and sha256_hex(current) != after:
        raise ReceiptMismatchError(
            f"{CONFIG_FILENAME} in {folder} was edited after the patch; reverting would discard those edits; "
            "pass --force to restore the original anyway"
        )
