"""Model commands: inspect, plan, patch, verify, revert, audit, plugins.

Each command parses its options, calls the Python API and prints: tables for
people (rich; audit uses one plain line per model), ``--json`` for machines. Errors are raised as ropekit errors and
mapped to exit codes by :func:`ropekit.cli.main`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from ropekit import files, signing
from ropekit.api import resolve
from ropekit.cli import emit_json, progress, render
from ropekit.constants import RECEIPT_FILENAME
from ropekit.errors import ArchitectureError, PolicyError, RopekitError, VerificationError
from ropekit.hub.resolve import ResolvedConfig
from ropekit.registry import families as registry_families
from ropekit.registry import get_registry
from ropekit.registry.family import ShippedScaling
from ropekit.scaling import file_compat
from ropekit.scaling.config_view import ConfigView
from ropekit.scaling.engine import Plan, locate, plan_config
from ropekit.scaling.long_context import LongContextConfig

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
family_option = click.option("--family", metavar="NAME",
                             help="Use this family instead of the one model_type selects.")
revision_option = click.option("--revision", metavar="REV", help="Hub revision (branch, tag or commit).")
sign_key_option = click.option(
    "--sign-key", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
    help="A file holding a secret key (default: env ROPEKIT_SIGN_KEY, the key itself): patch signs the "
         "receipt with it (HMAC-SHA256), verify checks the signature.")


def read_sign_key(path: Path | None) -> bytes | None:
    """The key from ``--sign-key FILE``, else ``ROPEKIT_SIGN_KEY``, else None."""
    return signing.read_key(path) if path is not None else signing.key_from_env()


def scaling_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by plan and patch; they become a ``request`` argument."""
    options = [
        click.option("--factor", type=float, help="Scale factor (4 = four times the original window)."),
        click.option("--target-context", type=int, metavar="N", help="Target window in tokens, instead of --factor."),
        click.option("--method", default="auto", show_default=True, metavar="linear|ntk|dynamic|yarn|auto",
                     help="Scaling method; auto follows ropekit's guidance and says why."),
        click.option("--original-max", type=int, metavar="N",
                     help="The original (trained) window; defaults to the family's native window."),
        click.option("--on-existing", type=click.Choice(["refuse", "compound", "replace"]), default="refuse",
                     show_default=True, help="What to do when the model already ships scaling."),
        click.option("--beta-fast", type=float, help="YaRN beta_fast (default 32)."),
        click.option("--beta-slow", type=float, help="YaRN beta_slow (default 1)."),
        click.option("--attn-factor", type=float, help="Multiplier on YaRN's 0.1 ln s + 1 (default 1)."),
        click.option("--allow-unstable", is_flag=True, help="Allow a factor beyond the method's stable band."),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, factor: float | None, target_context: int | None, method: str,
                original_max: int | None, on_existing: str, beta_fast: float | None,
                beta_slow: float | None, attn_factor: float | None, allow_unstable: bool,
                **kwargs: Any) -> Any:
        if (factor is None) == (target_context is None):
            raise click.UsageError("give exactly one of --factor F or --target-context N")
        given = {"method": method, "factor": factor, "target_context": target_context,
                 "original_max_position_embeddings": original_max, "on_existing": on_existing,
                 "beta_fast": beta_fast, "beta_slow": beta_slow, "attn_factor": attn_factor,
                 "allow_unstable": allow_unstable}
        request = LongContextConfig(**{k: v for k, v in given.items() if v is not None})
        try:
            return command(*args, request=request, **kwargs)
        except RopekitError as exc:
            suggestion = getattr(exc, "suggestion", None)
            if suggestion is None or "model" not in kwargs:
                raise
            line = " ".join(["ropekit plan", kwargs["model"], *request_flags(suggestion)])
            raise type(exc)(*(exc.parts or (str(exc),)), f"; run: {line}") from None

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def request_flags(request: LongContextConfig) -> list[str]:
    """The command-line options that ask for ``request`` (defaults left out)."""
    defaults = LongContextConfig(factor=2.0)
    flags = [] if request.method == "auto" else ["--method", request.method]
    flags += ["--factor", f"{request.factor:g}"] if request.factor is not None \
        else ["--target-context", str(request.target_context)]
    if request.original_max_position_embeddings is not None:
        flags += ["--original-max", str(request.original_max_position_embeddings)]
    if request.on_existing != defaults.on_existing:
        flags += ["--on-existing", request.on_existing]
    for name, flag in (("beta_fast", "--beta-fast"), ("beta_slow", "--beta-slow"), ("attn_factor", "--attn-factor")):
        if getattr(request, name) != getattr(defaults, name):
            flags += [flag, f"{getattr(request, name):g}"]
    return flags + (["--allow-unstable"] if request.allow_unstable else [])


# --- shared helpers -----------------------------------------------------------------------

def describe_source(resolved: ResolvedConfig) -> str:
    """Where the config came from, in words; the bundled catalog is labelled as such."""
    rev = f" @ {resolved.revision}" if resolved.revision else ""
    if resolved.source == "catalog":
        when = f", captured {resolved.captured}" if resolved.captured else ""
        return (f"bundled catalog copy of {resolved.model_id}{when} (not read from the Hub or a local "
                "folder; it may differ from the live config)")
    if resolved.source == "local":
        return f"local file {resolved.path}"
    if resolved.source == "cache":
        return f"Hugging Face cache: {resolved.model_id}{rev}"
    if resolved.source == "hub":
        return f"Hugging Face Hub: {resolved.model_id}{rev}"
    return f"{resolved.source}: {resolved.model_id}{rev}"


def source_json(resolved: ResolvedConfig) -> dict[str, Any]:
    return {**resolved.receipt_model(), "path": str(resolved.path) if resolved.path else None,
            "description": describe_source(resolved), "notes": list(resolved.notes)}


def model_facts(config: dict[str, Any], *, inherited: ShippedScaling | None = None,
                family: str | None = None) -> dict[str, Any]:
    """What ropekit knows about a config: family, sites, theta, windows, shipped scaling."""
    registry = get_registry()
    view = ConfigView(config)
    located = locate(view, registry, family=family, inherited=inherited)
    fam, sites, primary = located.family, located.sites, located.primary
    native, shipped = located.native_window, located.existing
    rope = fam.rope(view, primary)
    return {
        "model_type": view.model_type(),
        "family": fam.name, "plugin": fam.plugin, "plugin_version": fam.version, "family_note": located.note,
        "sites": [{"site": s.label, "rope_type": r["rope_type"], "rope_theta": r["rope_theta"]}
                  for s, r in ((s, fam.rope(view, s)) for s in sites)],
        "rope_theta": rope["rope_theta"],
        "rope_type": rope["rope_type"],
        "rotary_dim": fam.rotary_dim(view, primary),
        "native_window": native,
        "max_position_embeddings": fam.max_position_embeddings(view, primary),
        "shipped_scaling": shipped.to_json() if shipped else None,
        "shipped": shipped.describe() if shipped else None,
        "effective_window": shipped.window if shipped else native,
        "methods": list(fam.methods) if fam.methods is not None else sorted(registry.methods),
        "traps": file_compat.traps(view, fam),
    }


def model_header(con: Any, resolved: ResolvedConfig) -> None:
    con.print(f"source: {describe_source(resolved)}", style="yellow" if resolved.source == "catalog" else None)
    for note in resolved.notes:
        con.print(f"note: {note}")


def print_plan(con: Any, plan: Plan) -> None:
    con.print(f"family {plan.family.name} ({plan.family.plugin} {plan.family.version})")
    if plan.family_note:
        con.print(f"why this family: {plan.family_note}")
    if plan.request.method == "auto":
        con.print(f"method {plan.method.name} (auto): {plan.method_reason}")
    else:
        con.print(f"method {plan.method.name} (requested)")
    if plan.existing:
        con.print(f"existing scaling: {plan.existing.describe()}; policy {plan.policy}")
    if plan.changes:
        con.print(render.table(("site", "key", "before -> after"), render.change_rows(plan.changes),
                               title="changes"))
    else:
        con.print("changes: none (the config already says this)")
    con.print(render.key_values(render.long_context_rows(plan.long_context), title="long_context"))
    con.print(plan.windows.describe())
    con.print(f"attention scaling {plan.attention_scaling:.4f}; rotary dim {plan.rotary_dim}; "
              f"native window {plan.native_window}")
    render.warn_lines(con, plan.warnings)


# --- commands -----------------------------------------------------------------------------

@click.command("inspect")
@click.argument("model")
@family_option
@revision_option
@json_option
def inspect_command(model: str, family: str | None, revision: str | None, as_json: bool) -> None:
    """Show a model's rope settings, windows and shipped scaling.

    \b
    Example:
      ropekit inspect meta-llama/Llama-3.1-8B-Instruct
      ropekit inspect Qwen/Qwen2.5-7B-Instruct --json
    """
    resolved = resolve(model, revision=revision)
    facts = model_facts(resolved.config, inherited=resolved.inherited, family=family)
    if as_json:
        emit_json({"model": source_json(resolved), **facts})
        return
    con = render.console()
    model_header(con, resolved)
    con.print(render.key_values([
        ("model_type", facts["model_type"]),
        ("family", f"{facts['family']} ({facts['plugin']} {facts['plugin_version']})"),
        *([("why this family", facts["family_note"])] if facts["family_note"] else []),
        ("rope sites", ", ".join(f"{s['site']} ({s['rope_type']})" for s in facts["sites"])),
        ("rope theta", render.value(facts["rope_theta"])),
        ("rotary dimension", facts["rotary_dim"]),
        ("native window (unscaled)", facts["native_window"]),
        ("max positions", facts["max_position_embeddings"]),
        ("shipped scaling", facts["shipped"] or "none"),
        ("effective window", facts["effective_window"]),
        ("methods", ", ".join(facts["methods"])),
    ]))
    render.warn_lines(con, facts["traps"])


@click.command("plan")
@click.argument("model")
@scaling_options
@family_option
@revision_option
@json_option
def plan_command(model: str, request: LongContextConfig, family: str | None, revision: str | None,
         as_json: bool) -> None:
    """Show every change a patch would make, writing nothing.

    \b
    Example:
      ropekit plan Qwen/Qwen2.5-7B-Instruct --factor 4 --method yarn
      ropekit plan meta-llama/Llama-3.1-8B-Instruct --factor 2 --on-existing compound
    """
    resolved = resolve(model, revision=revision)
    result = plan_config(resolved.config, request, family=family, inherited=resolved.inherited)
    if as_json:
        emit_json({**result.to_json(), "model": source_json(resolved)})
        return
    con = render.console()
    model_header(con, resolved)
    print_plan(con, result)


@click.command("patch")
@click.argument("model")
@scaling_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write the patched config.json and rope_receipt.json into this folder.")
@click.option("--in-place", is_flag=True, help="Patch the model folder itself (the original is kept for revert).")
@family_option
@revision_option
@sign_key_option
@json_option
def patch_command(model: str, request: LongContextConfig, out: Path | None, in_place: bool, family: str | None,
          revision: str | None, sign_key: Path | None, as_json: bool) -> None:
    """Write the patched config.json and rope_receipt.json, atomically.

    With --out DIR, DIR gets config.json, rope_receipt.json and, for a local model
    folder, its small non-weight files (tokenizer, generation config); weights are
    never copied: link them into DIR yourself. DIR must be new, empty or an earlier
    ropekit output. With --in-place the original config.json is kept as
    config.json.ropekit-orig for 'ropekit revert' (never inside the Hugging Face cache).

    \b
    Example:
      ropekit patch Qwen/Qwen2.5-7B-Instruct --factor 4 --method yarn --out qwen-128k
      ropekit patch ./my-llama --factor 2 --method linear --in-place
    """
    if (out is None) == (not in_place):
        raise click.UsageError("give exactly one of --out DIR or --in-place")
    key = read_sign_key(sign_key)  # read before anything is resolved or written
    resolved = resolve(model, revision=revision)
    companions = resolved.path.parent if (out is not None and resolved.source == "local"
                                          and resolved.path is not None and Path(model).is_dir()) else None
    result = files.patch_folder(resolved, request, out=out, in_place=in_place, family=family,
                                companions_from=companions, sign_key=key)
    if as_json:
        emit_json({**result.to_json(), "model": source_json(resolved)})
        return
    con = render.console()
    model_header(con, resolved)
    print_plan(con, result.plan)
    status = signing.signature_status(result.receipt)
    con.print(f"wrote {result.config_path} and {result.receipt_path} (manifest "
              f"{result.receipt.manifest_sha256[:16]}{'' if status == 'unsigned' else ', ' + status})", style="green")
    if result.backup_path:
        con.print(f"original kept as {result.backup_path}; undo with: ropekit revert {result.folder}")
    if result.copied:
        con.print(f"copied: {', '.join(result.copied)}")
    if result.skipped:
        con.print(f"not copied: {', '.join(result.skipped)}")
    render.warn_lines(con, (f"not copied: {item}" for item in result.refused))
    if any(item.endswith("(weights)") for item in result.skipped):
        con.print(f"weights are never copied; link them: ln -s {Path(model).resolve()}/*.safetensors "
                  f"{result.folder.resolve()}/")
    elif out is not None and companions is None:
        con.print(f"only config.json and the receipt were written; load the weights from {model} "
                  f"with this config, or copy the model's other files into {result.folder}")


@click.command("verify")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--landing", is_flag=True,
              help="Also build the rotary modules with the installed transformers (no weights) and "
                   "compare them with the closed form.")
@click.option("--family", metavar="NAME",
              help="Read the config with this family (default: the one the receipt recorded).")
@sign_key_option
@json_option
def verify_command(folder: Path, landing: bool, family: str | None, sign_key: Path | None, as_json: bool) -> None:
    """Check a patched folder's receipt against its config.json.

    Exits 0 when they match and 3, naming the first differing key, when they do not.
    With --landing, also proves that the installed transformers builds the scaling.

    \b
    Example:
      ropekit verify qwen-128k --landing
    """
    try:
        result = files.verify_folder(folder)
    except VerificationError:
        if as_json:
            emit_json({"folder": str(folder), "ok": False})
        raise
    result.checks.append(signature_check(result.receipt, read_sign_key(sign_key)))
    report = None
    if landing:
        from ropekit.api import verify_landing

        with progress.status("verify --landing") as report_step:
            report = verify_landing(result.folder, family=family, progress=report_step)
        summary = report.to_json()
        detail = (f"{summary['modules_checked']} rotary buffers built by transformers {summary['transformers']} "
                  f"match the closed form (max relative error {report.max_rel_error:.2g})"
                  + (f"; {len(report.softmax)} attention softmax scales match the temperature the rope "
                     "settings imply" if report.softmax else "")
                  if report.landed else report.first_problem())
        result.checks.append(files.Check("landing", report.landed, detail))
    if as_json:
        emit_json({**result.to_json(), "landing": report.to_json() if report else None})
    else:
        con = render.console()
        for check in result.checks:
            con.print(f"{'ok' if check.ok else 'FAILED'}: {check.name}: {check.detail}",
                      style="green" if check.ok else "red")
    if report is not None and not report.landed:
        report.raise_if_not_landed()


def signature_check(receipt: Any, key: bytes | None) -> files.Check:
    """The signature line of verify: checked with a key (exit 3 on a mismatch), else said as it is."""
    if key is not None:
        return files.Check("signature", True, signing.verify_signature(receipt, key))
    status = signing.signature_status(receipt)
    if status == "unsigned":
        return files.Check("signature", True, "unsigned: the hashes catch accidents, not someone who rewrites "
                                               "both files (sign with patch --sign-key)")
    return files.Check("signature", True, f"{status}, not checked (pass --sign-key FILE or set ROPEKIT_SIGN_KEY)")


@click.command("revert")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Restore the backup even if config.json was edited since the patch.")
@json_option
def revert_command(folder: Path, force: bool, as_json: bool) -> None:
    """Undo 'patch --in-place': restore the original config.json byte for byte.

    \b
    Example:
      ropekit revert ./my-llama
    """
    result = files.revert_folder(folder, force=force)
    if as_json:
        emit_json(result.to_json())
        return
    render.console().print(f"restored {result.folder / files.CONFIG_FILENAME} (sha256 {result.config_sha256}); "
                           f"removed {', '.join(result.removed) or 'nothing'}", style="green")


# --- audit --------------------------------------------------------------------------------

def audit_targets(refs: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """``(label, ref)`` per model: folders are searched recursively for config.json."""
    for ref in refs:
        if not os.path.isdir(ref):
            yield ref, ref
            continue
        found = False
        for root, dirs, names in os.walk(ref):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if "config.json" in names:
                found = True
                yield root, os.path.join(root, "config.json")
        if not found:
            yield ref, ref  # resolve() explains what is missing


def audit_row(label: str, ref: str, request: LongContextConfig) -> dict[str, Any]:
    """One audit row; any error is recorded in the row, never raised."""
    row: dict[str, Any] = {"model": label, "source": None, "family": None, "native_window": None,
                           "shipped": None, "effective_window": None, "extension": None,
                           "shipped_scaling": None, "long_context": None, "refused": None, "refused_kind": None,
                           "traps": [], "ropekit_receipt": None, "error": None}
    try:
        resolved = resolve(ref)
        row["source"] = resolved.source
        facts = model_facts(resolved.config, inherited=resolved.inherited)
        row.update(family=facts["family"], native_window=facts["native_window"], shipped=facts["shipped"],
                   shipped_scaling=facts["shipped_scaling"], effective_window=facts["effective_window"],
                   traps=facts["traps"], ropekit_receipt=receipt_status(resolved))
    except ArchitectureError as exc:  # the architecture cannot carry scaling at all: a refusal, not an error
        row.update(family=exc.family, refused=str(exc), refused_kind=type(exc).__name__,
                   extension=f"refused: {exc}")
        return row
    except RopekitError as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # a bug on one config must not stop the audit
        row["error"] = f"internal error ({type(exc).__name__}: {exc})"
        return row
    try:
        result = plan_config(resolved.config, request, inherited=resolved.inherited)
        row["long_context"] = result.long_context
        row["extension"] = f"{result.method.name} x{result.factor:g} -> {result.new_window}"
    except PolicyError as exc:
        row["refused"], row["refused_kind"] = str(exc), type(exc).__name__
        row["extension"] = f"refused: {exc}"
    except Exception as exc:
        row["error"] = str(exc) if isinstance(exc, RopekitError) else f"internal error ({type(exc).__name__}: {exc})"
        row["extension"] = f"error: {row['error']}"
    return row


def receipt_status(resolved: ResolvedConfig) -> str | None:
    """For a local folder ropekit patched: ``valid``, or ``invalid: WHY``; None when it has no receipt."""
    if resolved.source != "local" or resolved.path is None:
        return None
    folder = resolved.path.parent
    if not (folder / RECEIPT_FILENAME).is_file():
        return None
    try:
        files.verify_folder(folder)
    except RopekitError as exc:
        return f"invalid: {render.first_clause(str(exc))}"
    return "valid"


def audit_cells(row: dict[str, Any], factor: float) -> list[Any]:
    """A row as the human table shows it (messages cut to their first clause)."""
    if row["long_context"]:
        outcome = row["extension"]
    elif row["refused_kind"] == "CompoundingError" and row["shipped_scaling"]:
        total = row["shipped_scaling"]["factor"] * factor
        outcome = f"refused: would compound to x{total:g} (see --on-existing)"
    elif row["refused"]:
        outcome = f"refused: {render.first_clause(row['refused'])}"
    else:
        outcome = f"error: {render.first_clause(row['error'])}"
    shipped = row["shipped"].removeprefix("ships ") if row["shipped"] else ("none" if row["native_window"] else None)
    if row["ropekit_receipt"] == "valid":
        shipped = f"{shipped} (patched by ropekit, receipt valid)"
    elif row["ropekit_receipt"]:
        shipped = f"{shipped} (ropekit receipt {row['ropekit_receipt']})"
    return [row["model"], row["family"], row["native_window"], shipped, row["effective_window"], outcome]


@click.command("audit")
@click.argument("models", nargs=-1, required=True, metavar="PATH_OR_ID...")
@click.option("--factor", type=float, default=4.0, show_default=True, help="The extension to try on each model.")
@click.option("--method", default="auto", show_default=True, metavar="METHOD", help="The method to try.")
@click.option("--on-existing", type=click.Choice(["refuse", "compound", "replace"]), default="refuse",
              show_default=True, help="Policy for models that already ship scaling.")
@click.option("--strict", is_flag=True, help="Exit 4 when any row has an error.")
@json_option
def audit_command(models: tuple[str, ...], factor: float, method: str, on_existing: str, strict: bool,
                  as_json: bool) -> int:
    """Audit many models at once, one row each (folders are searched for config.json).

    \b
    Example:
      ropekit audit ./models meta-llama/Llama-3.1-8B-Instruct
      ropekit audit ~/models Qwen/Qwen3-8B --factor 2 --json
    """
    request = LongContextConfig(method=method, factor=factor, on_existing=on_existing)
    if request.method != "auto":
        get_registry().method(request.method)  # a typo is a usage error, not an error in every row
    rows = [audit_row(label, ref, request) for label, ref in audit_targets(models)]
    failed = sum(1 for row in rows if row["error"])
    if as_json:
        emit_json({"request": request.model_dump(exclude_none=True), "rows": rows})
    else:
        refused = sum(1 for r in rows if r["refused"])
        planned = sum(1 for r in rows if r["long_context"])
        click.echo(render.plain_table(
            ("model", "family", "native", "shipped scaling", "effective", f"x{factor:g} extension"),
            [audit_cells(r, factor) for r in rows]))
        click.echo(f"{len(rows)} models: {planned} can take x{factor:g}, {refused} refused, {failed} with errors"
                   + ("; --json gives the full messages" if refused or failed else ""))
        for row in rows:
            for trap in row["traps"]:
                click.echo(f"warning: {row['model']}: {trap}")
    return 4 if strict and failed else 0


@click.command("plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List plugins: families, model_types, methods and faults.

    \b
    Example:
      ropekit plugins --json
    """
    registry = get_registry()
    fams = registry_families()
    methods = [{"name": m.name, "plugin": m.plugin, "stable_max_factor": m.stable_max_factor,
                "papers": list(m.papers)} for m in sorted(registry.methods.values(), key=lambda m: m.name)]
    faults = [{"plugin": f.plugin, "hook": f.hook, "error": f.error} for f in registry.faults]
    if as_json:
        emit_json({"families": fams, "methods": methods, "faults": faults})
        return
    con = render.console()
    con.print(render.table(("family", "plugin", "version", "model_types", "methods"),
                           ([f["name"], f["plugin"], f["version"], ", ".join(f["model_types"]),
                             ", ".join(f["methods"])] for f in fams), title="families"))
    con.print(render.table(("method", "plugin", "stable up to", "papers"),
                           ([m["name"], m["plugin"], f"x{m['stable_max_factor']:g}", ", ".join(m["papers"])]
                            for m in methods), title="scaling methods"))
    if faults:
        con.print(render.table(("plugin", "hook", "error"),
                               ([f["plugin"], f["hook"], f["error"]] for f in faults), title="faults"))


commands = [inspect_command, plan_command, patch_command, verify_command, revert_command, audit_command,
            plugins_command]
