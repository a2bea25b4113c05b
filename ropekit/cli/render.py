"""Human output for the command line: rich tables, plain text when piped.

Markup is off everywhere (config values such as ``[16, 24, 24]`` must print as
they are); styles are applied explicitly.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Sequence

from ropekit.cli.failure import split_fix
from ropekit.scaling.config_view import Change, is_missing

PIPED_WIDTH = 160


def console() -> Any:
    """A rich console on the current stdout (so click's test runner captures it)."""
    from rich.console import Console

    stream = sys.stdout
    width = None
    if not (hasattr(stream, "isatty") and stream.isatty()) and "COLUMNS" not in os.environ:
        width = PIPED_WIDTH  # piped output: do not squeeze tables into 80 columns
    return Console(file=stream, width=width, markup=False, highlight=False, emoji=False, soft_wrap=True)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
          no_wrap_first: bool = False) -> Any:
    """A simple table; cells are rendered with ``str`` (None becomes ``-``)."""
    from rich import box
    from rich.table import Table

    out = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, pad_edge=False)
    for i, name in enumerate(columns):
        out.add_column(name, overflow="fold", no_wrap=no_wrap_first and i == 0)
    for row in rows:
        out.add_row(*("-" if cell is None else str(cell) for cell in row))
    return out


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned text table with exactly one line per row (fast; easy to grep and count)."""
    cells = [[" ".join(("-" if c is None else str(c)).split()) for c in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def key_values(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> Any:
    """A two-column table of labels and values."""
    from rich.table import Table

    out = Table(title=title, box=None, show_header=False, title_justify="left", pad_edge=False)
    out.add_column(style="bold", no_wrap=True)
    out.add_column(overflow="fold")
    for key, value in pairs:
        out.add_row(key, "-" if value is None else str(value))
    return out


def value(v: Any) -> str:
    """A config value as the change table shows it."""
    if is_missing(v):
        return "(absent)"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return f"{v:.1f}"
    return repr(v) if isinstance(v, str) else str(v)


def change_rows(changes: Sequence[Change]) -> list[tuple[str, str, str]]:
    """``(site, key, before -> after)`` for each change."""
    rows = []
    for change in changes:
        site = ".".join(change.container) or "(root)"
        after = "(removed)" if change.removed else value(change.after)
        rows.append((site, ".".join(change.key), f"{value(change.before)} -> {after}"))
    return rows


def long_context_rows(block: dict[str, Any]) -> list[tuple[str, Any]]:
    """The long_context block as label/value pairs, in the receipt's order."""
    return [(key, ", ".join(v) if isinstance(v, list) else v) for key, v in block.items()]


def first_clause(message: str) -> str:
    """The part of a one-sentence error before its first ``;`` outside brackets (the fix is left out)."""
    return split_fix(message)[0]


def warn_lines(con: Any, warnings: Iterable[str]) -> None:
    for line in warnings:
        con.print(f"warning: {line}", style="yellow")
