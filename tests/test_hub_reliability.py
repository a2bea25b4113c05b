"""The Hub side of "nothing hangs": a silent endpoint and a tampered cache.

An HF_ENDPOINT that accepts connections and never answers once held ``ropekit inspect``
in huggingface_hub's retries (minutes, a log line each) before the bundled catalog
answered; a cache whose ``refs/main`` holds ``../../..`` raised a bare ValueError (exit 1).
Children run under a timeout that only catches a hang.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import FIXTURES
from hf_cache import HFCache

ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 120  # catches a hang only


@pytest.fixture
def silent_endpoint():
    """``http://127.0.0.1:PORT`` of a server that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def child(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    try:
        return subprocess.run([sys.executable, "-m", "ropekit", *args], env={**base, "PYTHONPATH": str(ROOT), **env},
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ropekit {' '.join(args)} still ran after {CHILD_TIMEOUT} s against a silent endpoint")


def test_a_silent_endpoint_falls_back_to_the_catalog_at_once_and_quietly(tmp_path, silent_endpoint):
    proc = child(["inspect", "meta-llama/Llama-3.1-8B-Instruct", "--json"],
                 {"HF_ENDPOINT": silent_endpoint, "HF_HUB_CACHE": str(tmp_path / "hub"),
                  "HF_HOME": str(tmp_path / "home"), "ROPEKIT_HUB_TIMEOUT": "0.5"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no retry lines from huggingface_hub
    report = json.loads(proc.stdout)
    assert report["model"]["source"] == "catalog"
    assert any("could not be reached" in note for note in report["model"]["notes"])


def test_a_bad_hub_timeout_is_named(tmp_path, silent_endpoint):
    proc = child(["inspect", "meta-llama/Llama-3.1-8B-Instruct"],
                 {"HF_ENDPOINT": silent_endpoint, "HF_HUB_CACHE": str(tmp_path / "hub"),
                  "ROPEKIT_HUB_TIMEOUT": "soon"})
    assert proc.returncode == 4
    assert proc.stderr.startswith("error: ROPEKIT_HUB_TIMEOUT='soon' is not a number of seconds") and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("held", ["../../..", "../../../etc", "main\n../x"])
def test_a_cache_ref_that_is_not_a_commit_is_refused_naming_the_path(tmp_path, held):
    cache = HFCache(tmp_path / "hub")
    config = (FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct" / "config.json").read_bytes()
    cache.add("acme/llama", {"config.json": config})
    (tmp_path / "hub" / "config.json").write_bytes(config)  # what ../../.. would reach
    ref = cache.repo_folder("acme/llama") / "refs" / "main"
    ref.write_text(held)
    proc = child(["inspect", "acme/llama"], {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert proc.returncode == 4, proc.stderr
    line, = proc.stderr.splitlines()
    assert str(ref) in line and "not a 40-character commit sha" in line and "ropekit bug" not in line
