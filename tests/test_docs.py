"""The documentation runs: every console block and Python example in README.md and docs/*.md.

What counts as an example (fenced code blocks):

- **console**: a block tagged ``console``, or an untagged block whose first line starts with ``$ ``.
  Each ``$ COMMAND`` line runs with ``bash -c`` and the lines after it, up to the next ``$ `` line,
  are what it must print (stdout and stderr together, as a terminal shows them).
- **python**: a block tagged ``python``. Written with ``>>>`` prompts it is a doctest: each output is
  compared (``ELLIPSIS``, ``NORMALIZE_WHITESPACE``; an exception is shown as doctest shows it). Without
  prompts the block must run without raising.
- **bash** / **sh**: run; each must exit 0.
- Other blocks (``toml``, untagged usage syntax) are not examples.

Each document runs in its own temporary working folder, blocks in order, so a block may use what an
earlier one wrote or defined (Python blocks of a document share one namespace). The folder holds a link
``fixtures`` to the repository's fixtures; ``ropekit`` on the PATH is this checkout's command line;
the Hugging Face cache is empty and offline (Hub ids resolve from the bundled catalog).

To refresh documented output after a deliberate change, run the test with ``ROPEKIT_DOCS_UPDATE=1``:
console steps that no longer match are rewritten with what they printed (review the diff, restore
elisions). Python examples are never rewritten.

A block that must not run is preceded by ``<!-- not-run: REASON -->`` (it installs packages, needs
model weights or a GPU, or runs for minutes); keep those few and say why. The plugin example, installed
by ``tests/test_third_party_plugin.py``, is marked ``<!-- example-plugin: ... -->`` and runs there.

Elision, written by the author: a line ``...`` stands for any number of lines, and ``...`` inside a
line for any text within that line.

Normalisation, applied to the expected and the actual text alike, and nothing else:

1. versions: ``NAME X.Y[.Z...]`` for transformers, torch, ropekit, Python, vLLM (and a plugin's
   ``(ropekit.plugins.NAME X.Y.Z)``) become ``NAME <version>``;
2. hashes: runs of 12 or more hex digits become ``<hash>``;
3. timings: a number followed by ``s``, ``ms`` or ``seconds`` becomes ``<time>``;
4. temporary paths: the document's working folder becomes ``<tmp>``;
5. trailing spaces at the end of lines are dropped.
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

UPDATE_ENV = "ROPEKIT_DOCS_UPDATE"  # =1: rewrite failing console outputs in place (then review the diff)
UPDATES: list[tuple["Block", str]] = []
PLUGIN_MODULE = "acme_rope_granite"  # the module name the README's entry point names
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = re.compile(r"<!--\s*(not-run|example-plugin):\s*(.+?)\s*-->")
FENCE = re.compile(r"^```([\w.+-]*)\s*$")


@dataclass
class Block:
    document: Path
    line: int  # 1-based line of the opening fence
    kind: str  # console | python | bash
    text: str
    skip: str | None  # the reason given in a not-run marker
    marker: str | None = None  # not-run | example-plugin

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The example blocks of a document, in order."""
    lines = document.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        tag, start = fence.group(1), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = lines[start + 1:end]
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = SKIP_MARK.search(previous)
        kind = {"console": "console", "python": "python", "bash": "bash", "sh": "bash"}.get(tag)
        if tag == "" and body and body[0].startswith("$ "):
            kind = "console"
        if kind:
            found.append(Block(document, start + 1, kind, "\n".join(body) + "\n", mark.group(2) if mark else None,
                               mark.group(1) if mark else None))
        i = end + 1
    return found


# --- normalisation and elision --------------------------------------------------------------

VERSION = re.compile(r"\b(transformers|torch|ropekit|Python|python|vLLM|SGLang)( >= | )\d+\.\d+(\.\d+)*([.+-]?\w+)*")
PLUGIN_VERSION = re.compile(r"(\(ropekit\.plugins\.\w+|\(ropekit) \d+\.\d+\.\d+\)")
HASH = re.compile(r"\b[0-9a-f]{12,}\b")
TIMING = re.compile(r"\b\d+(\.\d+)?\s?(s|ms|seconds)\b")


def normalise(text: str, workdir: Path) -> list[str]:
    text = text.replace(str(workdir.resolve()), "<tmp>").replace(str(workdir), "<tmp>")
    text = VERSION.sub(lambda m: f"{m.group(1)}{m.group(2)}<version>", text)
    text = PLUGIN_VERSION.sub(lambda m: f"{m.group(1)} <version>)", text)
    text = HASH.sub("<hash>", text)
    text = TIMING.sub("<time>", text)
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def _line_matches(expected: str, actual: str) -> bool:
    if "..." not in expected:
        return expected == actual
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def matches(expected: list[str], actual: list[str]) -> bool:
    """``expected`` (with ``...`` elisions) against ``actual``, line by line."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head == "...":
        return any(matches(rest, actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and _line_matches(head, actual[0]) and matches(rest, actual[1:])


# --- running ---------------------------------------------------------------------------------

def workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "work"
    work.mkdir()
    (work / "fixtures").symlink_to(FIXTURES)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "ropekit"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ropekit "$@"\n')
    shim.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
           "ROPEKIT_NO_ENTRY_POINTS": "1", "NO_COLOR": "1"}
    for name in ("COLUMNS", "ROPEKIT_DISABLE_PLUGINS", "HF_TOKEN", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # the documented doctor output is the one of a machine without a GPU
    return work, env


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    for line in text.rstrip("\n").splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


STEP_MARK = "@@ropekit-docs-step@@"


def run_console(block: Block, work: Path, env: dict[str, str]) -> list[str]:
    """Run the block's commands in one shell (so ``$?`` and ``cd`` carry over) and compare each output."""
    steps = console_steps(block.text)
    script = "".join(f'__rc=$?; printf "\\n{STEP_MARK}\\n"; (exit $__rc); {command}\n' for command, _ in steps)
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    outputs = proc.stdout.split(f"\n{STEP_MARK}\n")[1:]
    problems, updated = [], []
    for (command, expected), printed in zip(steps, outputs + [""] * (len(steps) - len(outputs))):
        want, got = normalise("\n".join(expected), work), normalise(printed, work)
        if matches(want, got):
            updated.append((command, expected))
            continue
        updated.append((command, [line.rstrip() for line in printed.replace(str(work.resolve()), "...").replace(str(work), "...").rstrip("\n").splitlines()]))
        problems.append(f"{block.where}: $ {command}\n--- documented\n" + "\n".join(want)
                        + "\n--- printed\n" + "\n".join(got))
    if problems and os.environ.get(UPDATE_ENV) == "1":
        UPDATES.append((block, "".join(f"$ {c}\n" + "".join(f"{line}\n" for line in out) for c, out in updated)))
    return problems


def run_bash(block: Block, work: Path, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(["bash", "-e", "-c", block.text], cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    return [] if proc.returncode == 0 else [f"{block.where}: exit {proc.returncode}\n{proc.stdout[-2000:]}"]


def run_python(block: Block, work: Path, namespace: dict) -> list[str]:
    if ">>> " not in block.text:
        try:
            exec(compile(block.text, block.where, "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - reported as the block's failure
            return [f"{block.where}: {type(exc).__name__}: {exc}"]
        return []
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.text, namespace, block.where, str(block.document), block.line)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    report: list[str] = []

    class Checker(doctest.OutputChecker):
        def check_output(self, want: str, got: str, optionflags: int) -> bool:
            want_lines, got_lines = normalise(want, work), normalise(got, work)
            return super().check_output("\n".join(want_lines) + "\n", "\n".join(got_lines) + "\n", optionflags)

    runner = doctest.DocTestRunner(checker=Checker(), optionflags=flags)
    runner.run(test, out=report.append, clear_globs=False)
    namespace.update(test.globs)
    return ["".join(report)] if runner.failures else []


def install_example_plugin(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install the README's plugin as the distribution it describes, for the blocks after it."""
    from ropekit.registry import reset_registry

    site = tmp_path / "site"
    site.mkdir()
    (site / f"{PLUGIN_MODULE}.py").write_text(block.text)
    dist = site / "acme_rope_granite-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rope-granite\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(f"[ropekit]\nacme = {PLUGIN_MODULE}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("ROPEKIT_NO_ENTRY_POINTS", raising=False)
    monkeypatch.setitem(sys.modules, PLUGIN_MODULE, None)  # removed again after the test
    del sys.modules[PLUGIN_MODULE]
    reset_registry()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_document_examples_run_and_print_what_they_show(document, tmp_path, monkeypatch):
    work, env = workspace(tmp_path)
    monkeypatch.chdir(work)
    for key in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "ROPEKIT_NO_ENTRY_POINTS"):
        monkeypatch.setenv(key, env[key])
    namespace: dict = {"__name__": "__docs__"}
    problems: list[str] = []
    for block in blocks(document):
        if block.marker == "example-plugin":
            install_example_plugin(block, tmp_path, monkeypatch)
        if block.skip:
            continue
        if block.kind == "console":
            problems += run_console(block, work, env)
        elif block.kind == "bash":
            problems += run_bash(block, work, env)
        else:
            problems += run_python(block, work, namespace)
    from ropekit.registry import reset_registry

    reset_registry()
    if UPDATES:
        write_updates(document)
    assert not problems, "\n\n".join(problems)


def write_updates(document: Path) -> None:
    """``ROPEKIT_DOCS_UPDATE=1``: write what the failing console steps printed into the document.

    Steps that matched keep their text (and elisions); re-add elisions by hand where the new
    output is longer than the document should show.
    """
    lines = document.read_text().splitlines(keepends=True)
    for block, text in sorted((u for u in UPDATES if u[0].document == document), key=lambda u: -u[0].line):
        end = next(j for j in range(block.line, len(lines)) if lines[j].startswith("```"))
        lines[block.line:end] = [text]
    document.write_text("".join(lines))
    UPDATES[:] = [u for u in UPDATES if u[0].document != document]


def test_not_run_markers_are_few_and_give_a_reason():
    marked = [b for d in DOCUMENTS for b in blocks(d) if b.skip]
    assert all(len(b.skip) >= 10 for b in marked), [b.where for b in marked]
    total = sum(len(blocks(d)) for d in DOCUMENTS)
    assert len(marked) * 2 <= total, f"{len(marked)} of {total} blocks are not run"


def test_harness_elision_and_normalisation(tmp_path):
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"]) and matches(["a", "...", "b"], ["a", "b"])
    assert not matches(["a", "...", "d"], ["a", "b"])
    assert matches(["source: x (...)"], ["source: x (anything at all)"])
    assert normalise(f"transformers 5.25.0 at {tmp_path}/q (manifest 4e207f228d9f) in 1.5 s", tmp_path) == \
        ["transformers <version> at <tmp>/q (manifest <hash>) in <time>"]
