"""Racing writers on one folder: the lock serializes them and the original always survives.

Each round forks two or three children that wait on one pipe and are released together;
each then runs the real code path (resolve the folder, then ``patch --in-place`` or
``revert``). After every round the folder must be consistent: exactly the original files,
or patched with a receipt that verifies and a backup holding the original bytes, which
``revert`` gives back byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from conftest import FIXTURES

from ropekit import LongContextConfig, files, resolve
from ropekit.constants import BACKUP_FILENAME, RECEIPT_FILENAME
from ropekit.errors import RopekitError

LLAMA3 = FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / "config.json"
YARN4 = LongContextConfig(method="yarn", factor=4.0)
LINEAR2 = LongContextConfig(method="linear", factor=2.0)
BUG = 99  # a child's exit status for an exception that is not a ropekit error


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("ROPEKIT_LOCK_TIMEOUT", "120")  # a loser waits; a busy machine must not make it give up
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(LLAMA3, folder / "config.json")
    return folder


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def race(actions: list[Callable[[], object]]) -> list[int]:
    """Run the actions in forked children released at the same instant; their exit statuses.

    0: done; 10 + exit code: a ropekit error (refused, in use); 99: anything else (a bug).
    """
    read_end, write_end = os.pipe()
    pids = []
    for action in actions:
        pid = os.fork()
        if pid == 0:
            code = BUG
            try:
                os.close(write_end)
                os.read(read_end, 1)  # the start signal
                action()
                code = 0
            except RopekitError as exc:
                code = 10 + exc.exit_code
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(read_end)
    os.write(write_end, b"x" * len(actions))
    os.close(write_end)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def patcher(folder: Path, request: LongContextConfig) -> Callable[[], object]:
    return lambda: files.patch_folder(resolve(folder), request, in_place=True)


def assert_consistent_then_original(folder: Path, original: dict[str, bytes]) -> str:
    """The folder is original, or patched with a receipt and the original in the backup; revert to original."""
    if listing(folder) == original:
        return "original"
    assert files.verify_folder(folder).ok
    assert (folder / BACKUP_FILENAME).read_bytes() == original["config.json"]
    assert sorted(listing(folder)) == sorted(["config.json", BACKUP_FILENAME, RECEIPT_FILENAME])
    files.revert_folder(folder)
    assert listing(folder) == original  # byte for byte
    return "patched"


SCENARIOS = {
    "same patch twice": lambda m: [patcher(m, YARN4), patcher(m, YARN4)],
    "two different patches": lambda m: [patcher(m, YARN4), patcher(m, LINEAR2)],
    "patch, patch and revert": lambda m: [patcher(m, YARN4), lambda: files.revert_folder(m), patcher(m, LINEAR2)],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_racing_in_place_patches_and_reverts_never_lose_the_original(model, scenario):
    original = listing(model)
    outcomes = set()
    for round_ in range(20):
        if scenario == "patch, patch and revert" and round_ % 2:
            files.patch_folder(resolve(model), YARN4, in_place=True)  # the revert has something to do
        codes = race(SCENARIOS[scenario](model))
        assert BUG not in codes and all(code in (0, 13, 14) for code in codes), codes
        patches = codes if scenario != "patch, patch and revert" else [codes[0], codes[2]]
        assert patches.count(0) <= 1 or scenario == "patch, patch and revert", codes  # one patch wins
        outcomes.add(assert_consistent_then_original(model, original))
    assert "patched" in outcomes


def test_back_to_back_command_lines_one_patches_the_other_is_refused(model):
    """The real CLI, twice at once: one exits 0, the other 3 (already patched); revert restores."""
    original = listing(model)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ROPEKIT_NO_ENTRY_POINTS": "1"}
    for factor in ("2", "4", "8"):
        procs = [subprocess.Popen([sys.executable, "-m", "ropekit", "patch", str(model), "--factor", f,
                                   "--method", "linear", "--in-place"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env, text=True) for f in (factor, "2")]
        results = [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]
        for proc in procs:
            proc.stderr.close()
        assert sorted(code for code, _ in results) == [0, 3], results
        refused = next(err for code, err in results if code == 3)
        assert "already patched in place" in refused or "changed while this command waited" in refused, refused
        assert assert_consistent_then_original(model, original) == "patched"
