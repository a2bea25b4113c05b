"""The bundled catalog: real Hub config.json files of well-known models, shipped as package data.

It answers only when neither a local path nor the Hugging Face cache or Hub can
(offline with an empty cache, no network, a gated repo without a token). Each
entry records when its copy was captured and where it was copied from; the
files are byte-for-byte copies, checked against the sha256 in ``index.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ropekit.errors import InvalidConfigError

INDEX = "index.json"


@dataclass(frozen=True)
class CatalogEntry:
    """One bundled config and its provenance."""

    model_id: str
    file: str
    sha256: str
    captured: str
    provenance: dict[str, str]
    hub_revision: str | None = None
    caveat: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def provenance_text(self) -> str:
        p = self.provenance
        return f"{p['repository']} {p['path']} @ {p['commit']}"

    def read_config(self) -> dict[str, Any]:
        """The bundled config.json, verified against the index's sha256."""
        data = _catalog_dir().joinpath(self.file).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise InvalidConfigError(
                f"bundled catalog file {self.file} does not match its recorded sha256; "
                "reinstall ropekit"
            )
        return json.loads(data)


def _catalog_dir() -> Any:
    return resources.files("ropekit").joinpath("catalog")


@functools.lru_cache(maxsize=1)
def _load() -> tuple[dict[str, CatalogEntry], dict[str, str]]:
    index = json.loads(_catalog_dir().joinpath(INDEX).read_text(encoding="utf-8"))
    entries: dict[str, CatalogEntry] = {}
    names: dict[str, str] = {}  # lower-cased id or alias -> canonical id
    for model_id, raw in index["models"].items():
        entry = CatalogEntry(model_id=model_id, file=raw["file"], sha256=raw["sha256"],
                             captured=raw["captured"], provenance=dict(raw["provenance"]),
                             hub_revision=raw.get("hub_revision"), caveat=raw.get("caveat"),
                             aliases=tuple(raw.get("aliases", ())))
        entries[model_id] = entry
        for name in (model_id, *entry.aliases):
            names[name.lower()] = model_id
    return entries, names


def entries() -> list[CatalogEntry]:
    """Every bundled model, sorted by Hub id."""
    return sorted(_load()[0].values(), key=lambda e: e.model_id.lower())


def lookup(model_id: str) -> CatalogEntry | None:
    """The entry for a Hub id (case-insensitive, as the Hub is; former names included), or None."""
    found, names = _load()
    canonical = names.get(model_id.lower())
    return found[canonical] if canonical else None
