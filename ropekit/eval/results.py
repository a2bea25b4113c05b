"""A results file written record by record, so an interrupted run keeps what it measured.

The file is JSON lines: the first line holds the settings of the run (``"record":
"settings"``), every later line one finished record (a profile cell, a fine-tune, a
passkey trial), appended and synced to disk the moment it is done. Opening the file
again resumes: records already there are read back and their work is skipped. A file
written with other settings is refused rather than mixed with; a last line cut short by
a kill is dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ropekit.errors import InvalidRequestError
from ropekit.files import atomic_write


class ResultsLog:
    """Append-only JSON-lines results with resume; ``key(record)`` identifies a unit of work."""

    def __init__(self, path: str | Path, settings: dict[str, Any], key_fields: Iterable[str]) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # what it reads back as, for the comparison
        self.key_fields = tuple(key_fields)
        self.records: dict[tuple[Any, ...], dict[str, Any]] = {}
        if self.path.exists():
            self._read()
        else:
            if not self.path.resolve().parent.is_dir():
                raise InvalidRequestError(f"folder {self.path.parent} of the results file does not exist; "
                                          "create it or pick another path")
            self._append({"record": "settings", **self.settings})

    def key(self, record: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(record.get(name) for name in self.key_fields)

    def get(self, **fields: Any) -> dict[str, Any] | None:
        """The finished record with these key fields, if the file holds one."""
        return self.records.get(tuple(fields.get(name) for name in self.key_fields))

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` now (appended, flushed and synced) and remember it."""
        self._append(record)
        self.records[self.key(record)] = record
        return record

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _read(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        complete, partial = lines[:-1], lines[-1]
        records = []
        for number, line in enumerate(complete, 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise InvalidRequestError(f"{self.path} line {number} is not JSON; it is not a ropekit results "
                                          "file (pass another --results path)") from None
        if not records or records[0].get("record") != "settings":
            raise InvalidRequestError(f"{self.path} does not start with a ropekit settings record; "
                                      "pass another --results path")
        stored = {k: v for k, v in records[0].items() if k != "record"}
        if stored != self.settings:
            differ = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
            raise InvalidRequestError(f"{self.path} holds a run with other settings ({', '.join(differ)} differ); "
                                      "pass the same settings to resume it, or another --results path")
        if partial:  # a line cut short by a kill: keep the complete ones
            atomic_write(self.path, "".join(line + "\n" for line in complete).encode("utf-8"))
        for record in records[1:]:
            self.records[self.key(record)] = record
