"""Where ropekit writes, and what it copies: links, special files, the HF cache, foreign folders,
and the file system's refusals (read-only, full, immutable, names and paths too long)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES
from hf_cache import HFCache

from ropekit import LongContextConfig, files, resolve
from ropekit.cli import main
from ropekit.constants import RECEIPT_FILENAME
from ropekit.errors import FileAccessError, InvalidConfigError, PolicyError
from ropekit.folders.atomic import atomic_write

LLAMA3 = FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / "config.json"
YARN4 = LongContextConfig(method="yarn", factor=4.0)
ARGS = ("--factor", "4", "--method", "yarn")
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("COLUMNS", "300")


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(LLAMA3, folder / "config.json")
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 8192}\n')
    return folder


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str, code: int, expected: int = 4) -> str:
    lines = err.strip().splitlines()
    assert code == expected and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


# --- item 2: links out of the folder, special files, permissions --------------------------

def test_patch_out_never_follows_a_link_out_of_the_model_folder_nor_copies_special_files(model, tmp_path,
                                                                                           capsys):
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    (model / "vocab.txt").symlink_to(secret)
    (model / "special_tokens_map.json").symlink_to("/proc/self/environ")
    os.mkfifo(model / "merges.txt")
    (model / "real.model").write_bytes(b"sentencepiece")
    (model / "tokenizer.model").symlink_to("real.model")  # a link inside the folder is fine
    (model / "chat_template.jinja").write_text("{{ messages }}")
    (model / "chat_template.jinja").chmod(0o600)
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "patch", str(model), *ARGS, "--out", str(out))
    assert code == 0, err
    assert sorted(listing(out)) == ["chat_template.jinja", "config.json", "real.model", RECEIPT_FILENAME,
                                    "tokenizer.model", "tokenizer_config.json"]
    assert (out / "tokenizer.model").read_bytes() == b"sentencepiece" and not (out / "tokenizer.model").is_symlink()
    assert stat.S_IMODE((out / "chat_template.jinja").stat().st_mode) & 0o077 == 0  # no wider than the source
    assert not any(b"secret-hash" in data for data in listing(out).values())
    warnings = [line for line in stdout.splitlines() if line.startswith("warning: not copied: ")]
    for name, why in (("vocab.txt", f"a symlink to {secret}, outside the model folder"),
                      ("special_tokens_map.json", "outside the model folder"), ("merges.txt", "a fifo")):
        assert any(line.startswith(f"warning: not copied: {name} (") and why in line for line in warnings), stdout


def test_a_cache_snapshot_copies_its_own_blobs_but_not_links_elsewhere(tmp_path):
    cache = HFCache(tmp_path / "cache")
    commit = cache.add("acme/tiny", {"config.json": LLAMA3.read_bytes(), "tokenizer.json": b'{"v": 1}'})
    snapshot = cache.repo_folder("acme/tiny") / "snapshots" / commit
    other = cache.add("acme/other", {"secret.txt": b"not this repo's"})
    (snapshot / "vocab.txt").symlink_to(cache.repo_folder("acme/other") / "snapshots" / other / "secret.txt")
    result = files.patch_folder(resolve(snapshot), YARN4, out=tmp_path / "out", companions_from=snapshot)
    assert result.copied == ["tokenizer.json"]
    assert [item.split(" (")[0] for item in result.refused] == ["vocab.txt"]


# --- item 7: the Hugging Face cache is never edited in place -------------------------------

def test_in_place_writes_inside_the_hf_cache_are_refused_naming_out(tmp_path, monkeypatch, capsys):
    root = tmp_path / "hf-cache"
    commit = HFCache(root).add("acme/tiny", {"config.json": LLAMA3.read_bytes()})
    snapshot = root / "models--acme--tiny" / "snapshots" / commit
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    code, _, err = run(capsys, "patch", str(snapshot), *ARGS, "--in-place")
    line = one_error(err, code, 3)
    assert "Hugging Face cache" in line and "--out DIR" in line and str(snapshot) in line
    code, _, err = run(capsys, "revert", str(snapshot))
    assert "--out DIR" in one_error(err, code, 3)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before

    elsewhere = tmp_path / "copied" / "models--org--name" / "snapshots" / "0123abc"  # cache-shaped, anywhere
    shutil.copytree(snapshot, elsewhere)
    with pytest.raises(PolicyError, match="Hugging Face cache"):
        files.patch_folder(resolve(elsewhere), YARN4, in_place=True)

    plain = tmp_path / "home" / "hub" / "my-model"  # under HF_HOME/hub, read at call time
    plain.mkdir(parents=True)
    shutil.copy(LLAMA3, plain / "config.json")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(PolicyError, match="out=DIR"):
        files.patch_folder(resolve(plain), YARN4, in_place=True)
    assert sorted(listing(plain)) == ["config.json"]


# --- item 8: --out writes only into new or empty folders, or its own verified output ------

def test_patch_out_refuses_a_non_empty_folder_it_did_not_write(model, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "tokenizer_config.json").write_text("their own")
    with pytest.raises(InvalidConfigError, match="tokenizer_config.json, which ropekit did not write"):
        files.patch_folder(resolve(model), YARN4, out=theirs, companions_from=model)
    assert listing(theirs) == {"tokenizer_config.json": b"their own"}

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text('{"model_type": "bert"}')
    (junk / RECEIPT_FILENAME).write_text("junk")
    with pytest.raises(InvalidConfigError, match="does not verify"):
        files.patch_folder(resolve(model), YARN4, out=junk)
    assert listing(junk) == {"config.json": b'{"model_type": "bert"}', RECEIPT_FILENAME: b"junk"}


def test_an_earlier_output_is_repatched_but_files_changed_since_are_kept(model, tmp_path):
    out = tmp_path / "out"
    files.patch_folder(resolve(model), LongContextConfig(method="linear", factor=2.0), out=out,
                       companions_from=model)
    (out / "tokenizer_config.json").write_text("edited by hand")
    (out / "notes.txt").write_text("mine")
    result = files.patch_folder(resolve(model), YARN4, out=out, companions_from=model)
    assert files.verify_folder(out).ok and result.copied == []
    assert result.refused == [f"tokenizer_config.json (already in {out} with other content; kept)"]
    assert (out / "tokenizer_config.json").read_text() == "edited by hand"
    assert (out / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    files.patch_folder(resolve(model), YARN4, out=empty)
    assert files.verify_folder(empty).ok


# --- item 10: the file system's refusals are exit 4, naming the path, nothing half-written -

def failing(monkeypatch, name: str, code: int, when=lambda *a, **k: True) -> None:
    real = getattr(os, name)

    def fail(*args, **kwargs):
        if when(*args, **kwargs):
            raise OSError(code, os.strerror(code), str(args[0]) if args and isinstance(args[0], (str, Path))
                          else None)
        return real(*args, **kwargs)
    monkeypatch.setattr(os, name, fail)


def creating(path, flags=0, *args, **kwargs) -> bool:
    return bool(flags & os.O_CREAT)


@pytest.mark.parametrize("name,code,when", [
    ("open", errno.EROFS, creating),          # a read-only mount: nothing can be created
    ("open", errno.EACCES, creating),         # no write permission
    ("mkdir", errno.EPERM, lambda *a, **k: True),   # chattr +i
    ("write", errno.ENOSPC, lambda *a, **k: True),  # a full disk while the new files are staged
    ("replace", errno.ENOSPC, lambda *a, **k: True),  # ... or while the journal is committed
])
@pytest.mark.parametrize("command", ["in-place", "out", "revert"])
def test_file_system_refusals_are_one_line_exit_4_and_leave_nothing(model, tmp_path, monkeypatch, capsys,
                                                                   name, code, when, command):
    out = tmp_path / "new" / "out"  # neither exists: both are removed again
    if command == "revert":
        files.patch_folder(resolve(model), YARN4, in_place=True)
    before = listing(model)
    failing(monkeypatch, name, code, when)
    args = {"in-place": ("patch", str(model), *ARGS, "--in-place"), "out": ("patch", str(model), *ARGS, "--out",
            str(out)), "revert": ("revert", str(model))}[command]
    code_, _, err = run(capsys, *args)
    line = one_error(err, code_)
    assert os.strerror(code) in line and (str(model) in line or str(out) in line), line
    monkeypatch.undo()
    assert listing(model) == before and not (tmp_path / "new").exists()


def test_verify_reads_a_folder_it_cannot_write_unless_a_killed_change_is_pending(model, tmp_path, monkeypatch):
    out = tmp_path / "out"
    files.patch_folder(resolve(model), YARN4, out=out)
    failing(monkeypatch, "open", errno.EROFS, creating)
    assert files.verify_folder(out).ok  # no lock file can be made: read without it
    (out / ".ropekit-staging").mkdir()  # what a kill before the commit leaves
    with pytest.raises(FileAccessError, match="finish the change a killed ropekit left in .*Read-only file system"):
        files.verify_folder(out)


def test_a_read_only_folder_by_permissions(model, capsys):
    if AS_ROOT:
        pytest.skip("root writes through permission bits; the monkeypatched cases cover it")
    model.chmod(0o555)
    try:
        code, _, err = run(capsys, "patch", str(model), *ARGS, "--in-place")
        line = one_error(err, code)
        assert "Permission denied" in line and str(model) in line
    finally:
        model.chmod(0o755)


def test_an_immutable_folder(model, capsys):
    if not AS_ROOT or not shutil.which("chattr") or \
            subprocess.run(["chattr", "+i", str(model)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root and a file system that supports it")
    try:
        code, _, err = run(capsys, "patch", str(model), *ARGS, "--in-place")
        assert "Operation not permitted" in one_error(err, code)
    finally:
        subprocess.run(["chattr", "-i", str(model)], check=True)
    assert sorted(listing(model)) == ["config.json", "tokenizer_config.json"]


def test_out_names_too_long_dangling_links_and_procfs(model, tmp_path, capsys):
    long_name = tmp_path / ("o" * 256)
    deep = tmp_path.joinpath(*["d" * 200] * 25)  # over PATH_MAX (4096)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for out, words in ((long_name, "File name too long"), (deep, "File name too long"),
                       (dangling, "does not exist"), (Path("/proc/self/ropekit-out"), "/proc")):
        code, _, err = run(capsys, "patch", str(model), *ARGS, "--out", str(out))
        line = one_error(err, code)
        assert words in line and (str(out)[:60] in line), line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf-cache") == ["dangling", "model"]
    for command in ("verify", "revert"):
        code, _, err = run(capsys, command, str(deep))
        assert "File name too long" in one_error(err, code)


# --- item 11: long file names -------------------------------------------------------------

def test_a_250_character_companion_name_is_copied(model, tmp_path):
    name = "t" * 245 + ".json"
    (model / name).write_text("{}")
    result = files.patch_folder(resolve(model), YARN4, out=tmp_path / "out", companions_from=model)
    assert name in result.copied and (tmp_path / "out" / name).read_text() == "{}"
    atomic_write(tmp_path / "out" / name, b"[]")  # temporary names fit NAME_MAX too
    assert (tmp_path / "out" / name).read_bytes() == b"[]"
    assert files.verify_folder(tmp_path / "out").ok


def test_errors_name_in_use_folders_with_the_lock_timeout(model, monkeypatch):
    from ropekit.folders.lock import folder_lock

    monkeypatch.setenv("ROPEKIT_LOCK_TIMEOUT", "0")
    with folder_lock(model):
        pid = os.fork()
        if pid == 0:
            try:
                files.patch_folder(resolve(model), YARN4, in_place=True)
                code = 0
            except FileAccessError as exc:
                code = 40 + exc.exit_code if "in use by another ropekit" in str(exc) and str(model) in str(exc) \
                    else 2
            except BaseException:
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 44  # FolderInUseError, exit 4
    assert sorted(listing(model)) == ["config.json", "tokenizer_config.json"]
    monkeypatch.setenv("ROPEKIT_LOCK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="ROPEKIT_LOCK_TIMEOUT='soon'"):
        files.patch_folder(resolve(model), YARN4, in_place=True)
