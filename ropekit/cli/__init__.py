"""The ``ropekit`` command line: a thin shell over the Python API.

Commands live in the modules of :data:`COMMAND_MODULES`; each exposes a
``commands`` list of click commands. Errors become one ``error: ...`` line on
stderr with the exit code of the error class (0 done, 2 usage, 3 refused by
policy, 4 bad input, 1 only for bugs); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from typing import Any

import click

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


def emit_json(data: Any) -> None:
    """Print machine-readable output (``--json``)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False))


def _split_debug(args: list[str]) -> tuple[list[str], bool]:
    """Accept ``--debug`` anywhere before ``--`` (not only right after ``ropekit``)."""
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    return [a for a in args[:end] if a != "--debug"] + args[end:], debug


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ropekit`` script; returns the exit code."""
    args, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    _load_commands()
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
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click.UsageError) and ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        click.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
        return exc.exit_code
    except click.Abort:
        click.echo("error: aborted", err=True)
        return 1
    except RopekitError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug: say so plainly
        if debug:
            traceback.print_exc()
        click.echo(f"error: internal error ({type(exc).__name__}: {_one_line(str(exc))}); this is a ropekit "
                   "bug, rerun with --debug and report the traceback", err=True)
        return 1


def _one_line(message: str) -> str:
    return " ".join(message.split())


def run() -> None:
    sys.exit(main())
