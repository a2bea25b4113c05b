"""Loading a local folder with transformers without ever running the Python code it ships.

Every ``from_pretrained`` call in ropekit passes ``trust_remote_code=False``: transformers
then never imports a folder's ``*.py`` files and never asks on stdin whether to. A
folder that cannot be loaded without its code (its ``auto_map`` names a class
transformers does not ship) fails; :func:`no_remote_code` turns that failure into a
one-line :class:`~ropekit.errors.RemoteCodeError` (exit 4).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ropekit.errors import RemoteCodeError

#: the files in which transformers looks for ``auto_map`` (classes defined by the folder's own code)
AUTO_MAP_FILES = ("config.json", "tokenizer_config.json")


def shipped_code(folder: str | Path, first: str = AUTO_MAP_FILES[0]) -> str | None:
    """Where a folder maps a transformers class to its own code (``file maps X to 'module.Class'``), or None.

    :param first: the file to look in first (the one the failed load read).
    """
    for name in sorted(AUTO_MAP_FILES, key=lambda name: name != first):
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if isinstance(auto_map, dict) and auto_map:
            key, value = next(iter(auto_map.items()))
            return f"{name} maps {key} to {value!r}"
    return None


@contextmanager
def no_remote_code(folder: str | Path, what: str) -> Iterator[None]:
    """Around a ``from_pretrained(..., trust_remote_code=False)`` of ``folder``: when loading fails and
    the folder ships code of its own, raise :class:`RemoteCodeError` naming it (other failures pass)."""
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        where = shipped_code(folder, "tokenizer_config.json" if what == "tokenizer" else "config.json")
        if where is None:
            raise
        raise RemoteCodeError(f"the {what} in {folder} loads only by running Python code the folder ships "
                              f"({where}), and ropekit never runs a folder's code; save the {what} with a "
                              "class transformers ships (save_pretrained from a built-in class) or pass "
                              "another folder") from exc
