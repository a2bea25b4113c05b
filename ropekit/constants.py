"""Environment switches, read at call time (never cached at import)."""

from __future__ import annotations

import math
import os

ENTRY_POINT_GROUP = "ropekit"
RECEIPT_FILENAME = "rope_receipt.json"
BACKUP_FILENAME = "config.json.ropekit-orig"

_TRUE = {"1", "true", "yes", "on"}


def dist_version(name: str) -> str | None:
    """The installed version of a distribution (metadata only: nothing is imported), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def env_seconds(name: str, default: float, *, zero_allowed: bool = False, most: float = 3600.0) -> float:
    """Seconds from the environment variable ``name`` (``default`` when unset or empty), read at call time.

    Raises :class:`ropekit.errors.SettingError` naming the variable for anything but a number of
    seconds above 0 (or from 0, with ``zero_allowed``) and at most ``most``.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 <= value if zero_allowed else 0 < value) or not value <= most:
        from ropekit.errors import SettingError

        low = "from 0 (fail at once)" if zero_allowed else "above 0"
        raise SettingError(f"{name}={raw[:40]!r} is not a number of seconds {low} to {most:g}; set it to one "
                           f"(default {default:g}) or unset it")
    return value


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [item.strip() for item in raw.split(",") if item.strip()]


def disabled_plugins() -> list[str]:
    """Plugin names listed in ``ROPEKIT_DISABLE_PLUGINS`` (comma separated)."""
    return _env_list("ROPEKIT_DISABLE_PLUGINS")


def load_entry_points() -> bool:
    """False when ``ROPEKIT_NO_ENTRY_POINTS`` is set: only the built-in plugins load."""
    return os.environ.get("ROPEKIT_NO_ENTRY_POINTS", "").lower() not in _TRUE


def hf_hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks to stay off the network."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.lower() in _TRUE
