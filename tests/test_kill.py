"""A real kill: ``ropekit patch --in-place`` and ``ropekit revert`` SIGKILLed at every atomic step.

The child is the real command line. ``ROPEKIT_TEST_PAUSE_AT=<step>`` (ropekit/files.py)
makes it announce the step on stderr and sleep there; the test then SIGKILLs it and
checks the folder: config.json is exactly the old or exactly the new bytes (never a
mix or a truncated file), the backup and receipt are whole whenever present, a killed
temporary file is hidden and ignored, and the folder can always be reverted or
verified, ending byte-identical to the original.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from ropekit import LongContextConfig, files, resolve
from ropekit.constants import BACKUP_FILENAME, RECEIPT_FILENAME
from ropekit.errors import InvalidConfigError, ReceiptMismatchError

CONFIG = "config.json"
LLAMA3 = FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / CONFIG
PATCH_ARGS = ("--factor", "4", "--method", "yarn")
YARN4 = LongContextConfig(method="yarn", factor=4.0)

#: patch --in-place: backup, then config.json, then the receipt, each written then renamed
PATCH_STEPS = [f"{stage}:{name}" for name in (BACKUP_FILENAME, CONFIG, RECEIPT_FILENAME)
               for stage in ("written", "replaced")]
#: revert: config.json restored (written, renamed), then the receipt and the backup removed
REVERT_STEPS = [f"written:{CONFIG}", f"replaced:{CONFIG}", f"removed:{RECEIPT_FILENAME}",
                f"removed:{BACKUP_FILENAME}"]


@pytest.fixture
def model(tmp_path):
    """A model folder, and the bytes an uninterrupted patch of that same folder writes."""
    folder = tmp_path / "llama3"
    folder.mkdir()
    shutil.copy(LLAMA3, folder / CONFIG)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 8192}\n')
    original = (folder / CONFIG).read_bytes()
    files.patch_folder(resolve(folder), YARN4, in_place=True)  # the reference: same folder, same versions
    patched = (folder / CONFIG).read_bytes()
    receipt = (folder / RECEIPT_FILENAME).read_bytes()
    files.revert_folder(folder)
    assert (folder / CONFIG).read_bytes() == original
    return folder, original, patched, receipt


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def kill_at(step: str, *args: str) -> None:
    """Run ``python -m ropekit ARGS`` until it pauses at ``step``, then SIGKILL it."""
    env = {**os.environ, files.PAUSE_ENV: step, "HF_HUB_OFFLINE": "1", "ROPEKIT_NO_ENTRY_POINTS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ropekit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, text=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        line = proc.stderr.readline() if ready else ""
        assert line.strip() == f"ropekit: paused at {step}", (line, proc.poll())
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".")]


def assert_whole(folder: Path, original: bytes, patched: bytes, receipt: bytes) -> None:
    """Every file is one of the complete versions; a temporary file is hidden and complete too."""
    assert (folder / CONFIG).read_bytes() in (original, patched)
    if (folder / BACKUP_FILENAME).exists():
        assert (folder / BACKUP_FILENAME).read_bytes() == original
    if (folder / RECEIPT_FILENAME).exists():
        assert (folder / RECEIPT_FILENAME).read_bytes() == receipt
    for temp in temp_files(folder):  # mkstemp's name beside its target: .config.json.k3j_9xq2.tmp
        assert re.fullmatch(r"\.(config\.json|rope_receipt\.json|config\.json\.ropekit-orig)\.[a-z0-9_]{8}\.tmp",
                            temp.name), temp.name
        assert temp.read_bytes() in (original, patched, receipt)
    assert files.stale_temp_files(folder) == sorted(temp_files(folder))
    assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} <= \
        {CONFIG, BACKUP_FILENAME, RECEIPT_FILENAME, "tokenizer_config.json"}


def assert_recovers(folder: Path, original_listing: dict[str, bytes]) -> None:
    """Revert (or, with nothing to revert, patch + verify + revert) ends at the original folder."""
    if (folder / BACKUP_FILENAME).exists():
        files.revert_folder(folder)
    else:
        with pytest.raises(InvalidConfigError, match="nothing to revert"):
            files.revert_folder(folder)
        assert {k: v for k, v in listing(folder).items() if not k.startswith(".")} == original_listing
        files.patch_folder(resolve(folder), YARN4, in_place=True)  # also clears what a kill left
        assert not temp_files(folder)
        files.verify_folder(folder)
        files.revert_folder(folder)
    assert listing(folder) == original_listing


@pytest.mark.parametrize("step", PATCH_STEPS)
def test_patch_in_place_killed_at_every_step(model, step):
    folder, original, patched, receipt = model
    before = listing(folder)
    kill_at(step, "patch", str(folder), *PATCH_ARGS, "--in-place")

    done = PATCH_STEPS[: PATCH_STEPS.index(step) + 1]
    config_replaced = f"replaced:{CONFIG}" in done
    assert (folder / CONFIG).read_bytes() == (patched if config_replaced else original)
    assert (folder / BACKUP_FILENAME).exists() == (f"replaced:{BACKUP_FILENAME}" in done)
    assert (folder / RECEIPT_FILENAME).exists() == (f"replaced:{RECEIPT_FILENAME}" in done)
    assert bool(temp_files(folder)) == step.startswith("written:")
    assert_whole(folder, original, patched, receipt)
    if (folder / RECEIPT_FILENAME).exists():
        assert files.verify_folder(folder).ok  # the patch completed: the folder verifies
    assert_recovers(folder, before)


@pytest.mark.parametrize("step", REVERT_STEPS)
def test_revert_killed_at_every_step(model, step):
    folder, original, patched, receipt = model
    before = listing(folder)
    files.patch_folder(resolve(folder), YARN4, in_place=True)
    kill_at(step, "revert", str(folder))

    done = REVERT_STEPS[: REVERT_STEPS.index(step) + 1]
    restored = f"replaced:{CONFIG}" in done
    assert (folder / CONFIG).read_bytes() == (original if restored else patched)
    assert (folder / RECEIPT_FILENAME).exists() == (f"removed:{RECEIPT_FILENAME}" not in done)
    assert (folder / BACKUP_FILENAME).exists() == (f"removed:{BACKUP_FILENAME}" not in done)
    assert bool(temp_files(folder)) == (step == f"written:{CONFIG}")
    assert_whole(folder, original, patched, receipt)
    if not restored:  # killed before the rename: the patched folder still verifies, its temp file ignored
        assert files.verify_folder(folder).ok
    elif (folder / RECEIPT_FILENAME).exists():  # half reverted: verify says so instead of passing
        with pytest.raises(ReceiptMismatchError):
            files.verify_folder(folder)
    if (folder / BACKUP_FILENAME).exists():
        files.revert_folder(folder)  # running revert again finishes the job
    assert listing(folder) == before


def test_pause_hook_is_read_at_call_time_and_inert_for_other_steps(model, monkeypatch):
    """An unrelated step name changes nothing; the variable is read at each step, not at import."""
    folder, original, patched, _ = model
    monkeypatch.setenv(files.PAUSE_ENV, "written:some-other-file")
    slept = []
    monkeypatch.setattr(files.time, "sleep", slept.append)
    files.patch_folder(resolve(folder), YARN4, in_place=True)
    assert slept == []
    assert (folder / CONFIG).read_bytes() == patched
    files.revert_folder(folder)
    assert (folder / CONFIG).read_bytes() == original
