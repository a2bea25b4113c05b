"""Reading JSON files as data: bounded in size, strict in content, one-line errors naming the place."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable

from ropekit.errors import InvalidConfigError, ResolutionError

#: largest JSON file ropekit reads: a Hugging Face config.json is a few KB, the biggest
#: (id2label tables of ~22k classes) about 1 MB, and a receipt a few KB
MAX_JSON_BYTES = 16 * 1024 * 1024
#: deepest nesting accepted: Hub configs nest at most 4 levels (text_config.rope_parameters...)
MAX_JSON_DEPTH = 64
#: most objects and arrays accepted (counted as '{' and '[' characters before parsing): Hub
#: configs hold a few dozen; the limit keeps a file of 16 MiB of ``{}`` from taking GBs
MAX_JSON_CONTAINERS = 100_000
_MIB = 1024 * 1024
_BOM = b"\xef\xbb\xbf"
#: an escape that may make a lone UTF-16 surrogate, and such a surrogate in a parsed string
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: a JSON string with its escapes (the unrolled form: linear time, no backtracking)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def read_bounded(path: Path, *, limit: int = MAX_JSON_BYTES, kind: str = "config.json") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, refused by size before reading.

    FIFOs, devices and sockets are refused without blocking (``open`` is non-blocking and
    the type is checked on the open descriptor, so a swapped file cannot slip in).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise ResolutionError(f"{path} is a folder without {kind}; point at a model folder") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResolutionError(f"cannot read {path} ({reason}); check the path and permissions") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise ResolutionError(f"{path} is a folder without {kind}; point at a model folder")
        if not stat.S_ISREG(info.st_mode):
            raise InvalidConfigError(f"{path} is not a regular file (a pipe, device or socket); "
                                     f"point at the model's {kind} file")
        if info.st_size > limit:
            raise InvalidConfigError(_too_big(path, info.st_size, limit, kind))
        data = handle.read(info.st_size + 1)
        while len(data) <= limit:  # the file grew since fstat: read on, in small steps, up to the limit
            more = handle.read(min(64 * 1024, limit + 1 - len(data)))
            if not more:
                break
            data += more
    if len(data) > limit:
        raise InvalidConfigError(_too_big(path, len(data), limit, kind))
    return data


def _too_big(path: Path, size: int, limit: int, kind: str) -> str:
    return (f"{path} is {size / _MIB:.1f} MiB, over ropekit's {limit / _MIB:g} MiB limit for a {kind} "
            f"(a Hugging Face config.json or a ropekit receipt is a few KB); point at the model's real {kind}, "
            "not a weights or data file")


def parse_json(raw: bytes | str, where: str, fix: str) -> Any:
    """Parse JSON strictly, with one-line errors that name ``where`` and end with ``fix``.

    Stricter than ``json.loads``, so that every reader of the file sees the same values:
    text must be UTF-8 without a byte-order mark (transformers 4.57 and 5.x cannot load a
    config.json that starts with one); a key repeated in one object is
    refused (``json.loads`` and transformers silently keep the last one, other parsers the
    first); nesting deeper than :data:`MAX_JSON_DEPTH`, or more than
    :data:`MAX_JSON_CONTAINERS` objects and arrays, is refused. Whitespace, key order and
    escapes are free: two files that parse to the same values are the same file.
    Time and memory stay bounded (about a second and a few hundred MB at worst, for a
    16 MiB file of small numbers); nothing recurses on the parsed value.

    ``NaN``, ``Infinity`` and ``-Infinity`` are read as Python's json reads them (transformers
    loads them too: Nemotron-H's ``time_step_limit`` holds ``Infinity``); they are an error
    only where ropekit reads a number (rope settings, windows, dimensions), which checks them.
    """
    text = _decode(raw, where, fix)
    containers = count_containers(text)
    if containers > MAX_JSON_CONTAINERS:
        raise InvalidConfigError(f"{where} holds over {MAX_JSON_CONTAINERS} JSON objects and arrays ({containers} "
                                 "'{' and '[' outside strings; a Hugging Face config holds a few dozen); " + fix)
    duplicates: dict[int, str] = {}  # id of an object -> a key it repeats (named with its path later)

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            duplicates[id(obj)] = _first_repeat(key for key, _ in pairs)
        return obj

    try:
        value = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(f"{where} is not valid JSON (line {exc.lineno}: {exc.msg}); {fix}") from None
    except RecursionError:
        raise InvalidConfigError(f"{where} nests JSON deeper than Python can parse (a Hugging Face config "
                                 f"nests at most a few levels, ropekit accepts {MAX_JSON_DEPTH}); {fix}") from None
    except ValueError as exc:  # e.g. an integer longer than Python's 4300-digit limit
        raise InvalidConfigError(f"{where} holds a number Python cannot read ({str(exc).splitlines()[0]}); "
                                 f"{fix}") from None
    _check_tree(value, where, fix, duplicates, containers)
    if _SURROGATE_ESCAPE.search(text):  # only an escape can make one: UTF-8 text cannot hold a surrogate
        _check_surrogates(value, where, fix)
    return value


def _check_surrogates(value: Any, where: str, fix: str) -> None:
    """Refuse a lone UTF-16 surrogate (``"\\ud800"``) in any key or string: it cannot be written back as UTF-8."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if type(node) is dict:
            for key, child in node.items():
                if _SURROGATE.search(key):
                    _surrogate_error(where, fix, (*path, key), key)
                stack.append((child, (*path, key)))
        elif type(node) is list:
            stack.extend((child, (*path, i)) for i, child in enumerate(node))
        elif type(node) is str and _SURROGATE.search(node):
            _surrogate_error(where, fix, path, node)


def _surrogate_error(where: str, fix: str, path: tuple[str | int, ...], text: str) -> None:
    found = _SURROGATE.search(text)
    code = f"\\u{ord(found.group()):04x}" if found else "a surrogate"
    raise InvalidConfigError(f"{where} holds a lone UTF-16 surrogate {code} at {json_path(path)[:120]}, which is "
                             "not a character and cannot be written back as UTF-8 (the patched config.json and "
                             f"its receipt could not be saved); replace the escape with the character meant; {fix}")


def count_containers(text: str) -> int:
    """The '{' and '[' outside JSON strings: an upper bound on the objects and arrays ``text`` parses to.

    Brackets inside strings (a 200,000-character string of '{' is a valid value) do not count;
    one C-speed regex pass removes the strings first (an unterminated string stays, and its
    brackets count: such a text is not JSON anyway).
    """
    outside = _STRING.sub("", text)
    return outside.count("{") + outside.count("[")


def _decode(raw: bytes | str, where: str, fix: str) -> str:
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise InvalidConfigError(_bom_message(where, fix))
        return raw
    if raw.startswith(_BOM):
        raise InvalidConfigError(_bom_message(where, fix))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        encoding = " (it looks like UTF-16 or UTF-32)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") \
            or b"\x00" in raw[:4] else ""
        raise InvalidConfigError(f"{where} is not UTF-8 text{encoding}: byte {exc.start} is "
                                 f"{raw[exc.start:exc.start + 1]!r}; {fix}") from None


def _first_repeat(keys: Any) -> str:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return ""


def _bom_message(where: str, fix: str) -> str:
    return (f"{where} starts with a UTF-8 byte-order mark, which transformers cannot load; save it as "
            f"UTF-8 without a BOM (remove the first three bytes); {fix}")


def _check_tree(value: Any, where: str, fix: str, duplicates: dict[int, str], containers: int) -> None:
    """Walk the parsed value without recursion: depth and repeated keys.

    Items are scanned only while containers remain undiscovered (``containers`` counts them
    from above), so a long flat list costs nothing.
    """
    if type(value) is not dict and type(value) is not list:
        return
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    found = 1
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:
            raise InvalidConfigError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels at "
                                     f"{json_path(path)[:120]} (a Hugging Face config nests at most a few); {fix}")
        if type(node) is dict and id(node) in duplicates:
            key = json_path((*path, duplicates[id(node)]))
            raise InvalidConfigError(f"{where} repeats the key {key} in one object (transformers would "
                                     f"silently keep the last value); remove the duplicate; {fix}")
        if found >= containers:
            continue  # every container is already found: nothing below this one to look at
        for key, child in (node.items() if type(node) is dict else enumerate(node)):
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, (*path, key)))
                found += 1
                if found >= containers:
                    break


def nonfinite_literal(value: Any) -> str | None:
    """``NaN``, ``Infinity`` or ``-Infinity`` as JSON readers write them, for a non-finite float; else None."""
    if not isinstance(value, float) or -math.inf < value < math.inf:
        return None
    return "NaN" if value != value else ("-Infinity" if value < 0 else "Infinity")


def nonfinite_path(value: Any) -> tuple[tuple[str | int, ...], str] | None:
    """The key path and literal of the first non-finite number in a parsed value (no recursion)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        literal = nonfinite_literal(node)
        if literal is not None:
            return path, literal
        if type(node) is dict:
            stack.extend((child, (*path, key)) for key, child in reversed(list(node.items())))
        elif type(node) is list:
            stack.extend((child, (*path, i)) for i, child in reversed(list(enumerate(node))))
    return None


def json_path(path: tuple[str | int, ...]) -> str:
    """A key path as config.json readers write it: ``text_config.rope_scaling.factor``, ``layer_types[3]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the top level"


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a config.json as data; one-line errors for anything unusable (see :func:`parse_json`)."""
    config = parse_json(read_bounded(path), str(path), "fix or re-download the config.json")
    if not isinstance(config, dict):
        raise InvalidConfigError(f"{path} holds a JSON {type(config).__name__}; expected an object")
    return config



def shown(value: Any, limit: int = 300, render: Callable[[Any], str] = repr) -> str:
    """``render(value)``, cut to ``limit`` characters so that a hostile value keeps errors to one line."""
    try:
        text = render(value)
    except ValueError:  # an integer over Python's 4300-digit repr limit
        return "an integer of over 4300 digits"
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[:limit]}... ({size} characters)"
