"""All-or-nothing changes to a folder's files: stage, commit a journal, apply, clean up.

A :class:`Transaction` writes each new file into the hidden staging folder
``<folder>/.ropekit-staging/`` (short names, synced), then commits by writing the journal
``<folder>/.ropekit-journal.json`` atomically: the list of renames (staged file -> its
place) and removals, in order. Then it applies them and removes the journal and the
staging folder. Every step of applying is idempotent (a staged file already moved is
gone from the staging folder; a removed file is already absent).

Killed at any instant, the folder is repaired by :func:`recover`, which every ropekit
command that writes the folder runs first, under the folder's lock:

* no journal: the change was never committed; the staging folder is deleted and the
  folder is exactly as before;
* a journal: the change was committed; the remaining renames and removals are done.

So after a kill the folder is the old state or the new one, once any ropekit command
has touched it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ropekit.errors import InvalidConfigError
from ropekit.folders.atomic import atomic_write, checkpoint, fsync_dir, stale_temp_files, write_new

JOURNAL_NAME = ".ropekit-journal.json"
STAGING_NAME = ".ropekit-staging"
_MAX_JOURNAL_BYTES = 1024 * 1024


class Transaction:
    """Changes to the files of one folder that land together or not at all.

    As a context manager it commits when the block ends and is discarded when it raises.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.staging = self.folder / STAGING_NAME
        self._moves: list[tuple[str, str]] = []
        self._removals: list[str] = []

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.commit()

    def write(self, name: str, data: bytes, mode: int) -> None:
        """Stage ``data`` as the new content of ``folder/name`` (nothing visible changes yet)."""
        if not self._moves:
            os.mkdir(self.staging, 0o700)
        staged = str(len(self._moves))
        write_new(self.staging / staged, data, mode)
        checkpoint(f"staged:{name}")
        self._moves.append((staged, name))

    def remove(self, name: str) -> None:
        """Remove ``folder/name`` when the transaction commits."""
        self._removals.append(name)

    def commit(self) -> None:
        """Make the staged changes durable, then apply them."""
        if self._moves:
            fsync_dir(self.staging)
        journal = {"moves": [list(move) for move in self._moves], "removals": self._removals}
        try:
            atomic_write(self.folder / JOURNAL_NAME, json.dumps(journal).encode("utf-8"), 0o600)
        except BaseException:  # not committed: the folder is as it was
            self.abort()
            raise
        checkpoint("committed")
        _apply(self.folder, journal)

    def abort(self) -> None:
        """Forget the staged changes (the folder was never changed)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def recover(folder: Path) -> bool:
    """Finish a committed transaction a killed ropekit left, or discard an uncommitted one.

    Call it holding the folder's lock. Returns True when there was something to repair.
    """
    folder = Path(folder)
    journal_path = folder / JOURNAL_NAME
    leftovers = stale_temp_files(folder, {JOURNAL_NAME})
    for temp in leftovers:
        temp.unlink(missing_ok=True)
    if journal_path.is_file() and not journal_path.is_symlink():
        _apply(folder, _read_journal(journal_path))
        return True
    if os.path.lexists(folder / STAGING_NAME):
        _remove_staging(folder)
        return True
    return bool(leftovers)


def pending(folder: Path) -> bool:
    """True when a killed ropekit left a change in ``folder`` that :func:`recover` would repair."""
    return os.path.lexists(Path(folder) / JOURNAL_NAME) or os.path.lexists(Path(folder) / STAGING_NAME)


def _apply(folder: Path, journal: dict[str, Any]) -> None:
    staging = folder / STAGING_NAME
    for staged, name in journal["moves"]:
        source = staging / staged
        if os.path.lexists(source):
            os.replace(source, folder / name)
            checkpoint(f"replaced:{name}")
    fsync_dir(folder)
    for name in journal["removals"]:
        target = folder / name
        if os.path.lexists(target):
            os.unlink(target)
            checkpoint(f"removed:{name}")
    fsync_dir(folder)
    os.unlink(folder / JOURNAL_NAME)
    fsync_dir(folder)
    _remove_staging(folder)


def _remove_staging(folder: Path) -> None:
    staging = folder / STAGING_NAME
    if staging.is_symlink() or not staging.is_dir():
        if os.path.lexists(staging):
            os.unlink(staging)
        return
    for entry in os.listdir(staging):
        os.unlink(staging / entry)
    os.rmdir(staging)


def _read_journal(path: Path) -> dict[str, Any]:
    fix = f"ropekit wrote no such file; delete {path} and check the folder by hand"
    with open(path, "rb") as handle:
        raw = handle.read(_MAX_JOURNAL_BYTES + 1)
    try:
        journal = json.loads(raw)
        moves = [(str(staged), str(name)) for staged, name in journal["moves"]]
        removals = [str(name) for name in journal["removals"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidConfigError(f"{path} is not a ropekit journal ({type(exc).__name__}); {fix}") from None
    names = [name for _, name in moves] + removals + [staged for staged, _ in moves]
    if len(raw) > _MAX_JOURNAL_BYTES or any(not n or "/" in n or n in (".", "..") for n in names):
        raise InvalidConfigError(f"{path} names files outside its folder; {fix}")
    return {"moves": moves, "removals": removals}
