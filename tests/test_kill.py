"""Killed at any instant, a folder is the old state or the new one once the next command touches it.

Two kinds of kill:

* the real command line, SIGKILLed where ``ROPEKIT_TEST_PAUSE_AT=<step>`` makes it pause
  (each named step of ``patch --in-place``, ``patch --out`` and ``revert``);
* a forked child running the Python API that SIGKILLs itself before its N-th file-system
  call (``os.open``, ``write``, ``fsync``, ``replace``, ``unlink``, ``mkdir``, ...), for
  every N until the call completes, so that every write, rename and removal is a kill
  point; some of the repairs are then killed too.

After each kill the next command (``verify``, as a user would run it) must find the folder
"original" (exactly the files it had, nothing of ropekit's left) or "patched with its
receipt" (verifying, and reverting to the original bytes).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from conftest import FIXTURES

from ropekit import LongContextConfig, files, resolve
from ropekit.constants import BACKUP_FILENAME, RECEIPT_FILENAME
from ropekit.errors import InvalidConfigError

CONFIG = "config.json"
LLAMA3 = FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / CONFIG
PATCH_ARGS = ("--factor", "4", "--method", "yarn")
YARN4 = LongContextConfig(method="yarn", factor=4.0)
LINEAR2 = LongContextConfig(method="linear", factor=2.0)

#: the named steps of each command (see ropekit/files.py)
IN_PLACE_STEPS = [f"staged:{n}" for n in (BACKUP_FILENAME, CONFIG, RECEIPT_FILENAME)] + ["committed"] + \
    [f"replaced:{n}" for n in (BACKUP_FILENAME, CONFIG, RECEIPT_FILENAME)]
OUT_STEPS = ["staged:tokenizer_config.json", f"staged:{RECEIPT_FILENAME}", "committed", f"replaced:{CONFIG}",
             f"replaced:{RECEIPT_FILENAME}"]
REVERT_STEPS = [f"staged:{CONFIG}", "committed", f"replaced:{CONFIG}", f"removed:{RECEIPT_FILENAME}",
                f"removed:{BACKUP_FILENAME}"]
#: the os functions a forked child counts; it kills itself before the N-th call
FS_CALLS = ("open", "write", "fsync", "replace", "rename", "unlink", "rmdir", "mkdir", "fchmod", "chmod")


@pytest.fixture
def model(tmp_path):
    """A model folder with a tokenizer file."""
    folder = tmp_path / "llama3"
    folder.mkdir()
    shutil.copy(LLAMA3, folder / CONFIG)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 8192}\n')
    return folder


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def state_after(folder: Path) -> str:
    """What the next command sees: "patched" (verifies) or "original" (no receipt), nothing else."""
    try:
        files.verify_folder(folder)
    except InvalidConfigError as exc:
        assert "has no rope_receipt.json" in str(exc), exc
        return "original"
    return "patched"


# --- the real command line, killed at each named step ---------------------------------------

def kill_at(step: str, *args: str) -> None:
    """Run ``python -m ropekit ARGS`` until it pauses at ``step``, then SIGKILL it."""
    env = {**os.environ, files.PAUSE_ENV: step, "HF_HUB_OFFLINE": "1", "ROPEKIT_NO_ENTRY_POINTS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ropekit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, text=True)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 60)
        line = proc.stderr.readline() if ready else ""
        assert line.strip() == f"ropekit: paused at {step}", (line, proc.poll())
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize("step", IN_PLACE_STEPS)
def test_cli_patch_in_place_killed_at_each_step(model, step):
    before = listing(model)
    kill_at(step, "patch", str(model), *PATCH_ARGS, "--in-place")
    committed = IN_PLACE_STEPS.index(step) >= IN_PLACE_STEPS.index("committed")
    assert state_after(model) == ("patched" if committed else "original")
    if committed:
        assert (model / BACKUP_FILENAME).read_bytes() == before[CONFIG]
        files.revert_folder(model)
    assert listing(model) == before


@pytest.mark.parametrize("step", OUT_STEPS)
def test_cli_patch_out_killed_at_each_step(model, tmp_path, step):
    out = tmp_path / "out"
    kill_at(step, "patch", str(model), *PATCH_ARGS, "--out", str(out))
    committed = OUT_STEPS.index(step) >= OUT_STEPS.index("committed")
    assert state_after(out) == ("patched" if committed else "original")
    assert sorted(listing(out)) == ([CONFIG, RECEIPT_FILENAME, "tokenizer_config.json"] if committed else [])
    files.patch_folder(resolve(model), LINEAR2, out=out, companions_from=model)  # the folder takes a new patch
    assert files.verify_folder(out).ok


@pytest.mark.parametrize("step", REVERT_STEPS)
def test_cli_revert_killed_at_each_step(model, step):
    before = listing(model)
    files.patch_folder(resolve(model), YARN4, in_place=True)
    patched = listing(model)
    kill_at(step, "revert", str(model))
    committed = REVERT_STEPS.index(step) >= REVERT_STEPS.index("committed")
    assert state_after(model) == ("original" if committed else "patched")
    assert listing(model) == (before if committed else patched)


def test_pause_hook_is_read_at_call_time_and_inert_for_other_steps(model, monkeypatch):
    """An unrelated step name changes nothing; the variable is read at each step, not at import."""
    from ropekit.folders import atomic

    before = listing(model)
    monkeypatch.setenv(files.PAUSE_ENV, "staged:some-other-file")
    slept: list[float] = []
    monkeypatch.setattr(atomic.time, "sleep", slept.append)
    files.patch_folder(resolve(model), YARN4, in_place=True)
    files.revert_folder(model)
    assert slept == [] and listing(model) == before


# --- every file-system call a kill point (forked children) ----------------------------------

def run_killed(action: Callable[[], object], n: int, *, may_fail: bool = False) -> bool:
    """Run ``action`` in a forked child that SIGKILLs itself before its ``n``-th file-system call.

    Returns True when it was killed, False when it finished first (raising only if ``may_fail``).
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            calls = [0]

            def counted(real: Callable[..., object]) -> Callable[..., object]:
                def call(*args: object, **kwargs: object) -> object:
                    calls[0] += 1
                    if calls[0] == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)
                return call

            for name in FS_CALLS:
                setattr(os, name, counted(getattr(os, name)))
            action()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert may_fail or os.WEXITSTATUS(status) == 0, "the child failed without being killed"
    return False


def kill_everywhere(action: Callable[[], object], check: Callable[[], None], folder: Path) -> int:
    """Kill ``action`` before each of its file-system calls in turn, then ``check()`` the folder.

    Before each check the repair (a ``verify``) is killed too, at one of its first calls, so
    that the command after a killed repair must still repair. Returns the number of kills.
    """
    kills = 0
    for n in range(1, 1000):
        if not run_killed(action, n):
            return kills
        kills += 1
        if folder.exists():
            kills += run_killed(lambda: files.verify_folder(folder), n % 7 + 1, may_fail=True)
        check()
    raise AssertionError("the action never finished")


def test_every_kill_of_in_place_patch_and_revert_ends_original_or_patched(model):
    before = listing(model)
    resolved = resolve(model)
    files.patch_folder(resolved, YARN4, in_place=True)
    patched = listing(model)
    files.revert_folder(model)
    seen: set[str] = set()

    def check_patch() -> None:
        seen.add(state := state_after(model))
        assert listing(model) == (patched if state == "patched" else before)
        if state == "patched":
            files.revert_folder(model)
            assert listing(model) == before

    def check_revert() -> None:
        seen.add(state := state_after(model))
        assert listing(model) == (patched if state == "patched" else before)
        if state == "original":
            files.patch_folder(resolved, YARN4, in_place=True)

    kills = kill_everywhere(lambda: files.patch_folder(resolved, YARN4, in_place=True), check_patch, model)
    assert listing(model) == patched
    kills += kill_everywhere(lambda: files.revert_folder(model), check_revert, model)
    assert listing(model) == before
    assert seen == {"original", "patched"} and kills >= 100, kills


def test_every_kill_of_patch_out_ends_original_or_patched(model, tmp_path):
    """A new output folder, and a second patch over an earlier output, killed at every call."""
    resolved = resolve(model)
    reference = tmp_path / "reference"
    files.patch_folder(resolved, YARN4, out=reference, companions_from=model)
    new = listing(reference)
    files.patch_folder(resolved, LINEAR2, out=reference, companions_from=model)
    old = listing(reference)
    out = tmp_path / "out"

    def into_new() -> None:
        state = state_after(out) if out.exists() else "original"
        assert listing(out) == (new if state == "patched" else {})
        shutil.rmtree(out, ignore_errors=True)

    def over_earlier() -> None:
        state = state_after(out)
        assert listing(out) == (new if listing(out)[CONFIG] == new[CONFIG] else old), state
        assert state == "patched"  # the earlier output, or the new one: never neither
        shutil.rmtree(out)
        files.patch_folder(resolved, LINEAR2, out=out, companions_from=model)

    patch = lambda: files.patch_folder(resolved, YARN4, out=out, companions_from=model)  # noqa: E731
    kills = kill_everywhere(patch, into_new, out)
    assert listing(out) == new
    shutil.rmtree(out)
    files.patch_folder(resolved, LINEAR2, out=out, companions_from=model)
    kills += kill_everywhere(patch, over_earlier, out)
    assert listing(out) == new
    assert kills >= 100, kills  # 200 or more SIGKILLs with the in-place test
