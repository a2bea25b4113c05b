"""Folder operations behind ``ropekit patch``, ``verify`` and ``revert``.

Every write is atomic (a temporary file in the same folder, fsync, ``os.replace``,
fsync of the folder), so a crash leaves either the old file or the new one, never
half of one.

* :func:`patch_folder` writes the patched ``config.json`` and ``rope_receipt.json``
  into a new folder (``out``), or over the model's own ``config.json`` (in place)
  after saving the original bytes to ``config.json.ropekit-orig`` for
  :func:`revert_folder`.
* :func:`verify_folder` checks a folder's receipt against its ``config.json``.
* :func:`revert_folder` restores the original ``config.json`` byte for byte.

What a process killed at any instant (SIGKILL, power loss) leaves behind:

* ``patch --in-place`` writes the backup, then config.json, then the receipt. Killed
  before config.json is replaced, the folder holds the original config.json (and maybe
  the backup); killed after, the patched config.json and the backup, with or without
  the receipt. Whenever the backup exists ``ropekit revert`` restores the original;
  once the receipt exists ``ropekit verify`` passes.
* ``revert`` restores config.json, then removes the receipt, then the backup; killed
  anywhere, running ``ropekit revert`` again finishes the job.
* A kill between writing a temporary file and renaming it leaves a hidden
  ``.<name>.<random>.tmp`` file beside the target. Verify ignores such files, ``patch``
  never copies them, and the next ``patch`` or ``revert`` of the folder deletes them.

Test hook: ``ROPEKIT_TEST_PAUSE_AT=<step>`` (read at each step, one environment look-up
otherwise) makes the process print ``ropekit: paused at <step>`` on stderr and sleep, so
that a test can kill it there. Steps are ``written:<file>`` (temporary file written and
synced, not yet renamed), ``replaced:<file>`` (renamed into place) and ``removed:<file>``,
for config.json, rope_receipt.json and config.json.ropekit-orig.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropekit.constants import BACKUP_FILENAME, RECEIPT_FILENAME
from ropekit.errors import (
    InvalidConfigError,
    InvalidRequestError,
    PolicyError,
    ReceiptMismatchError,
    ResolutionError,
)
from ropekit.hub.resolve import ResolvedConfig
from ropekit.jsonio import read_bounded, read_config_file
from ropekit.receipt import Receipt, sha256_hex, verify_receipt
from ropekit.scaling.engine import Plan, apply_config
from ropekit.scaling.long_context import LongContextConfig

CONFIG_FILENAME = "config.json"

#: weight files are never copied by ``patch --out`` (link or copy them yourself)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack",
                   ".onnx", ".npz", ".npy", ".tflite", ".ot", ".pkl")
#: companion files larger than this are skipped as well (tokenizers are a few MB to ~35 MB)
MAX_COMPANION_BYTES = 64 * 1024 * 1024


# --- atomic files -------------------------------------------------------------------------


#: test hook (see the module docstring): the step at which to pause, read at call time
PAUSE_ENV = "ROPEKIT_TEST_PAUSE_AT"
PAUSE_SECONDS = 60.0
#: a temporary file :func:`atomic_write` leaves only when killed between write and rename
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def checkpoint(step: str) -> None:
    """Pause here when ``ROPEKIT_TEST_PAUSE_AT`` names ``step`` (tests kill the process there)."""
    if os.environ.get(PAUSE_ENV) == step:
        print(f"ropekit: paused at {step}", file=sys.stderr, flush=True)
        time.sleep(PAUSE_SECONDS)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, replace.

    An existing file keeps its permission bits; a new one gets the umask's default.
    A symlink at ``path`` is replaced by a regular file (its target is left alone).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = _default_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        checkpoint(f"written:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    checkpoint(f"replaced:{path.name}")


def stale_temp_files(folder: Path) -> list[Path]:
    """Temporary files a killed ropekit left in ``folder`` (for config.json, receipt, backup)."""
    own = {CONFIG_FILENAME, RECEIPT_FILENAME, BACKUP_FILENAME}
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if (m := _TEMP_NAME.match(p.name)) and m["target"] in own and p.is_file())


def remove_stale_temp_files(folder: Path) -> list[str]:
    """Delete :func:`stale_temp_files`; returns their names."""
    removed = []
    for path in stale_temp_files(folder):
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory
        pass
    finally:
        os.close(fd)


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
    """What :func:`patch_folder` wrote."""

    plan: Plan
    receipt: Receipt
    folder: Path
    in_place: bool
    config_path: Path
    receipt_path: Path
    backup_path: Path | None = None
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name (why)"

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder), "in_place": self.in_place, "config": str(self.config_path),
            "receipt": str(self.receipt_path), "backup": str(self.backup_path) if self.backup_path else None,
            "copied": list(self.copied), "skipped": list(self.skipped),
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
        _check_out_folder(folder, resolved)

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
        remove_stale_temp_files(folder)
        _write_in_place(result, original, patched)  # type: ignore[arg-type]
        return result

    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(folder)
    if companions_from is not None:
        result.copied, result.skipped = copy_companions(companions_from, folder)
    atomic_write(result.config_path, patched)
    atomic_write(result.receipt_path, receipt.to_json().encode("utf-8"))
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
    if (folder / BACKUP_FILENAME).exists():
        raise PolicyError(
            f"{folder} was already patched in place ({BACKUP_FILENAME} holds the original); "
            f"run 'ropekit revert {folder}' first, or patch into a new folder with --out DIR"
        )
    return folder


def _check_out_folder(folder: Path, resolved: ResolvedConfig) -> None:
    if resolved.path is not None and folder.resolve() == Path(resolved.path).parent.resolve():
        raise InvalidConfigError(f"--out {folder} is the model's own folder; use --in-place to patch it "
                                 "there (a backup is kept for revert), or choose a new folder")
    if folder.exists() and not folder.is_dir():
        raise InvalidConfigError(f"--out {folder} exists and is not a folder; choose a new folder")
    if (folder / CONFIG_FILENAME).exists() and not (folder / RECEIPT_FILENAME).exists():
        raise InvalidConfigError(f"--out {folder} already holds a config.json that ropekit did not write; "
                                 "choose an empty or new folder")


def _write_in_place(result: PatchResult, original: bytes, patched: bytes) -> None:
    """Backup first, then config, then receipt; undo what was written if a later step fails."""
    backup = result.folder / BACKUP_FILENAME
    atomic_write(backup, original)
    result.backup_path = backup
    try:
        atomic_write(result.config_path, patched)
        try:
            atomic_write(result.receipt_path, result.receipt.to_json().encode("utf-8"))
        except BaseException:
            atomic_write(result.config_path, original)
            raise
    except BaseException:
        backup.unlink(missing_ok=True)
        raise


def copy_companions(source: Path, dest: Path) -> tuple[list[str], list[str]]:
    """Copy a model folder's small non-weight top-level files (tokenizer, generation config...).

    Never copies weights, config.json, ropekit's own files, hidden files or sub-folders.
    Returns the names copied and the names skipped with the reason.
    """
    copied: list[str] = []
    skipped: list[str] = []
    own = {CONFIG_FILENAME, RECEIPT_FILENAME, BACKUP_FILENAME}
    for entry in sorted(Path(source).iterdir(), key=lambda p: p.name):
        name = entry.name
        if name in own or name.startswith("."):
            continue
        if entry.is_dir():
            skipped.append(f"{name}/ (folder)")
        elif name.lower().endswith(WEIGHT_SUFFIXES):
            skipped.append(f"{name} (weights)")
        elif entry.is_file():
            size = entry.stat().st_size
            if size > MAX_COMPANION_BYTES:
                skipped.append(f"{name} ({size // (1024 * 1024)} MiB, over the "
                               f"{MAX_COMPANION_BYTES // (1024 * 1024)} MiB limit)")
            else:
                atomic_write(dest / name, entry.read_bytes())
                copied.append(name)
    return copied, skipped


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
    if target.is_dir():
        return target
    if target.is_file():
        return target.parent
    raise ResolutionError(f"no folder or file at {str(target)!r}; give the folder ropekit patched")


def verify_folder(target: Path) -> VerifyResult:
    """Check the folder's receipt against its config.json (values and hash).

    Raises :class:`ReceiptMismatchError` naming the first difference.
    """
    folder = locate_folder(target)
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
    detail = (f"{len(receipt['changes'])} recorded changes and the config hash match "
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
    if current != original:
        atomic_write(config_path, original)
    removed = []
    for path in (receipt_path, backup):
        if path.exists():
            path.unlink()
            _fsync_dir(folder)
            checkpoint(f"removed:{path.name}")
            removed.append(path.name)
    removed += remove_stale_temp_files(folder)
    _fsync_dir(folder)
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
