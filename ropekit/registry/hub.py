"""Resolve a model reference to its config.json, read as data (never remote code).

Resolution order: a local folder or file; the Hugging Face cache and Hub through
huggingface_hub; the bundled catalog of well-known configs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidConfigError, ResolutionError
from .family import ShippedScaling


@dataclass
class ResolvedConfig:
    """A config.json and where it came from."""

    config: dict[str, Any]
    model_id: str | None = None
    revision: str | None = None  # the resolved commit for Hub sources
    source: str = "local"  # local | hub | cache | catalog
    path: Path | None = None  # the config.json file, for local sources
    captured: str | None = None  # catalog capture date
    inherited: ShippedScaling | None = None  # scaling shipped by a base model (lineage)
    notes: list[str] = field(default_factory=list)

    def receipt_model(self) -> dict[str, Any]:
        """The receipt's ``model`` fields for this source."""
        out: dict[str, Any] = {"id": self.model_id, "revision": self.revision, "source": self.source}
        if self.captured:
            out["captured"] = self.captured
        return out


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a config.json as data; one-line errors for anything unusable."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ResolutionError(f"{path} is a folder without config.json; point at a model folder") from None
    except OSError as exc:
        raise ResolutionError(f"cannot read {path} ({exc.strerror}); check the path and permissions") from None
    try:
        config = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidConfigError(f"{path} is not UTF-8 text; expected a Hugging Face config.json") from None
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}); "
                                 "fix or re-download the config.json") from None
    if not isinstance(config, dict):
        raise InvalidConfigError(f"{path} holds a JSON {type(config).__name__}; expected an object")
    return config


def resolve(ref: str | Path, revision: str | None = None) -> ResolvedConfig:
    """Resolve a local folder, a config.json file, or a Hub id to its config."""
    path = Path(ref)
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise ResolutionError(f"{path} has no config.json; point at a Hugging Face model folder")
        return ResolvedConfig(read_config_file(file), model_id=str(path), path=file)
    if path.is_file():
        return ResolvedConfig(read_config_file(path), model_id=str(path.parent), path=path)
    raise ResolutionError(f"no folder or file at {ref!r}; check the path")
