"""The ``ropekit`` command line: a thin shell over the Python API.

Commands live in the modules of :data:`COMMAND_MODULES`; each exposes a
``commands`` list of click commands. Errors become one ``error: ...`` line on
stderr with the exit code of the error class (0 done, 2 usage, 3 refused by
policy, 4 bad input, 1 only for bugs); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import traceback
from typing import Any

import click

from ropekit.cli import failure
from ropekit.errors import RopekitError

COMMAND_MODULES: tuple[str, ...] = (
    "ropekit.cli.models",
    "ropekit.cli.training",
    "ropekit.cli.profile",
)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="ropekit", prog_name="ropekit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """ropekit: extend a Hugging Face model's context by RoPE scaling, correctly, with proof.

    \b
    Example:
      ropekit plan Qwen/Qwen2.5-7B-Instruct --factor 4 --method yarn
    """


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        for command in getattr(module, "commands", ()):
            cli.add_command(command)


class _Output:
    """The JSON document of the running command; printed once, by :func:`main`."""

    collecting = False
    document: Any = None


def emit_json(data: Any) -> None:
    """Print machine-readable output (``--json``).

    Inside :func:`main` the document is held until the command ends, so that a
    failure after it still gives one document: the report, with the error added.
    """
    if _Output.collecting:
        _Output.document = data
    else:
        _print_json(data)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False))


def _split_debug(args: list[str]) -> tuple[list[str], bool]:
    """Accept ``--debug`` anywhere before ``--`` (not only right after ``ropekit``)."""
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    return [a for a in args[:end] if a != "--debug"] + args[end:], debug


def _wants_json(args: list[str]) -> bool:
    end = args.index("--") if "--" in args else len(args)
    return "--json" in args[:end]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ropekit`` script; returns the exit code.

    A failure is one ``error: ...`` line on stderr; with ``--json`` it is also one
    JSON document on stdout: ``ok`` (false), ``exit_code``, ``error`` (``class``,
    ``message``, ``fix``), beside any report the command had built.
    """
    args, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    as_json = _wants_json(args)
    _load_commands()
    _Output.collecting, _Output.document = True, None
    # with --json, stdout carries the document alone: whatever else prints while the command runs
    # (a library's log line on import, a plugin's print) goes to stderr
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with quiet_stdout:
            code = _run(args, debug)
    finally:
        _Output.collecting = False
    if isinstance(code, _Failure):
        click.echo(f"error: {code.text}{code.hint}", err=True)
        if as_json:
            _print_json(failure.document(code.exit_code, code.error_class, code.text, code.fix,
                                         _Output.document if isinstance(_Output.document, dict) else None))
        return code.exit_code
    if _Output.document is not None:
        _print_json(_Output.document)
    return code


class _Failure:
    """What :func:`main` reports for a failed command."""

    def __init__(self, exit_code: int, error_class: str, text: str, fix: str | None = None, hint: str = "") -> None:
        self.exit_code, self.error_class, self.text, self.fix, self.hint = exit_code, error_class, text, fix, hint


def _run(args: list[str], debug: bool) -> "int | _Failure":
    try:
        result = cli.main(args=args, prog_name="ropekit", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:  # bare ``ropekit``: the help, as click shows it
        click.echo(exc.format_message(), err=True)
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: bad option values, missing arguments
        if debug:
            traceback.print_exc()
        ctx = getattr(exc, "ctx", None)
        fix, hint = None, ""
        if isinstance(exc, click.UsageError) and ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
            fix = f"see '{ctx.command_path} --help'"
        return _Failure(exc.exit_code, type(exc).__name__, failure.one_line(exc.format_message()), fix, hint)
    except click.Abort:
        return _Failure(1, "Abort", "aborted")
    except RopekitError as exc:
        if debug:
            traceback.print_exc()
        return _Failure(exc.exit_code, type(exc).__name__, failure.message(exc))
    except KeyboardInterrupt:
        return _Failure(130, "KeyboardInterrupt", "interrupted")
    except Exception as exc:  # a bug: say so plainly
        if debug:
            traceback.print_exc()
        return _Failure(1, type(exc).__name__,
                        f"internal error ({type(exc).__name__}: {failure.one_line(str(exc))}); this is a ropekit "
                        f"bug, {failure.BUG_FIX}", failure.BUG_FIX)


def run() -> None:
    sys.exit(main())
