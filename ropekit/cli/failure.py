"""How the command line reports a failure: one ``error:`` line, and with ``--json`` one document.

Errors raised by the Python API name its parameters (:class:`ropekit.errors.Param`);
here they are spelled as the flags a user of the command line types
(``on_existing='compound'`` becomes ``--on-existing compound``). A parameter with
no flag keeps its Python spelling.
"""

from __future__ import annotations

from typing import Any

from ropekit.errors import Param, RopekitError

# Python parameter -> the command-line flag that sets it.
FLAGS: dict[str, str] = {
    "allow_unstable": "--allow-unstable",
    "attn_factor": "--attn-factor",
    "beta_fast": "--beta-fast",
    "beta_slow": "--beta-slow",
    "context": "--context",
    "factor": "--factor",
    "family": "--family",
    "gpu": "--gpu",
    "gpu_memory_gib": "--gpu-memory-gib",
    "in_place": "--in-place",
    "method": "--method",
    "on_existing": "--on-existing",
    "original_max_position_embeddings": "--original-max",
    "out": "--out",
    "revision": "--revision",
    "sign_key": "--sign-key",
    "target_context": "--target-context",
}

BUG_FIX = "rerun with --debug and report the traceback"


def flag(param: Param) -> str:
    """``param`` as a user of the command line would type it."""
    option = FLAGS.get(param.name)
    if option is None:
        return str(param)
    if param.has_value:
        return option if param.value is True else f"{option} {param.value}"
    return f"{option} {param.placeholder}" if param.placeholder else option


def one_line(message: str) -> str:
    return " ".join(message.split())


def message(exc: BaseException) -> str:
    """The error's message for the command line: one line, flags instead of parameters."""
    if isinstance(exc, RopekitError):
        return one_line(exc.render(flag))
    return one_line(str(exc))


def split_fix(text: str) -> tuple[str, str | None]:
    """A one-sentence message as ``(problem, fix)``: the problem ends at the first ``;`` outside
    brackets, the fix follows the last one (``None`` when there is none)."""
    depth, cuts = 0, []
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        elif char == ";" and depth == 0:
            cuts.append(i)
    if not cuts:
        return text, None
    return text[:cuts[0]], text[cuts[-1] + 1:].strip() or None


def document(exit_code: int, error_class: str, text: str, fix: str | None = None,
             report: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``--json`` document of a failure; a report the command had built is kept beside it."""
    derived = split_fix(text)[1]
    return {**(report or {}), "ok": False, "exit_code": exit_code,
            "error": {"class": error_class, "message": text, "fix": fix or derived}}
