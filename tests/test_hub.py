"""Hub resolution, lineage and the bundled catalog, against a real on-disk HF cache.

Every test runs the real huggingface_hub code. The cache is built in its real
layout by ``hf_cache.HFCache``; "online" tests talk to a small Hub-shaped HTTP
server on 127.0.0.1. Any other connection attempt fails the test.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import FIXTURES, ROOT, load_fixture
from hf_cache import HFCache, card, git_blob_sha1

import ropekit
from ropekit import LongContextConfig
from ropekit.errors import CompoundingError, ResolutionError, UnknownFamilyError
from ropekit.hub.resolve import ResolvedConfig, _cache_miss, resolve
from ropekit.registry import get_registry
from ropekit.scaling.engine import apply_config

LLAMA3_ID = "meta-llama/Meta-Llama-3-8B-Instruct"
LLAMA31_ID = "meta-llama/Llama-3.1-8B-Instruct"
COMMIT_MAIN = "1" * 40
COMMIT_V2 = "2" * 40
YARN4 = LongContextConfig(method="yarn", factor=4)
CATALOG_INDEX = json.loads((ROOT / "ropekit" / "catalog" / "index.json").read_text())


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name / "config.json").read_bytes()


def as_bytes(config: dict) -> bytes:
    return json.dumps(config, indent=2).encode()


def fine_tune_of_llama31() -> dict:
    """A Llama-3.1 fine-tune whose saved config lost its rope scaling (rope_scaling: null)."""
    config = load_fixture("meta-llama__Llama-3.1-8B-Instruct")
    config["rope_scaling"] = None
    return config


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any connection that is not to 127.0.0.1 (the local Hub-shaped server)."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"test tried to reach {address}")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", None):
            raise AssertionError(f"test tried to resolve {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)


def set_offline(monkeypatch, offline: bool) -> None:
    """HF_HUB_OFFLINE for this test, as a fresh process would see it.

    ropekit reads the variable at call time, but huggingface_hub reads it once at
    import into ``constants.HF_HUB_OFFLINE`` (both 0.36 and 1.x+ consult that
    attribute on each request); whichever test imported it first must not decide
    for the others, so the attribute is set the way huggingface_hub's own test
    suite sets it.
    """
    from huggingface_hub import constants

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> HFCache:
    """An empty HF cache in tmp, offline, read through the environment at call time."""
    set_offline(monkeypatch, True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    return HFCache(tmp_path / "hub")


# --- resolving by id from the cache ---------------------------------------------------------
def test_resolve_by_id_from_the_offline_cache(hf_cache):
    hf_cache.add(LLAMA3_ID, {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")},
                 commit=COMMIT_MAIN)
    resolved = ropekit.resolve(LLAMA3_ID)
    assert resolved.config == load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    assert (resolved.model_id, resolved.revision, resolved.source) == (LLAMA3_ID, COMMIT_MAIN, "cache")
    assert resolved.path == hf_cache.repo_folder(LLAMA3_ID) / "snapshots" / COMMIT_MAIN / "config.json"
    assert resolved.inherited is None


@pytest.mark.parametrize("revision", [COMMIT_V2, "v2"], ids=["commit-sha", "branch"])
def test_resolve_a_revision_and_record_its_commit_in_the_receipt(hf_cache, revision):
    main = load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    v2 = dict(main, max_position_embeddings=4096)
    hf_cache.add(LLAMA3_ID, {"config.json": as_bytes(main)}, commit=COMMIT_MAIN)
    hf_cache.add(LLAMA3_ID, {"config.json": as_bytes(v2)}, refs=("v2",), commit=COMMIT_V2)

    resolved = ropekit.resolve(LLAMA3_ID, revision=revision)
    assert resolved.config == v2
    assert resolved.revision == COMMIT_V2
    assert ropekit.resolve(LLAMA3_ID).revision == COMMIT_MAIN

    config = copy.deepcopy(resolved.config)
    _, receipt = apply_config(config, YARN4, model=resolved.receipt_model())
    model = receipt["model"]
    assert (model["id"], model["revision"], model["source"]) == (LLAMA3_ID, COMMIT_V2, "cache")
    assert model.get("ref") == (None if revision == COMMIT_V2 else "v2")
    assert receipt.long_context["original_max_position_embeddings"] == 4096  # v2's window, not main's
    assert receipt.long_context["new_max_position_embeddings"] == 4 * 4096


def test_cache_layout_matches_what_huggingface_hub_writes(hf_cache):
    """The helper's blob names are git blob ids, as huggingface_hub names non-LFS files."""
    data = b"hello\n"
    assert git_blob_sha1(data) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`
    hf_cache.add("acme/tiny", {"config.json": data}, commit=COMMIT_MAIN)
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hf_cache.root)
    (repo,) = info.repos
    assert repo.repo_id == "acme/tiny" and {r.commit_hash for r in repo.revisions} == {COMMIT_MAIN}
    assert repo.refs["main"].commit_hash == COMMIT_MAIN


def test_hf_hub_cache_is_read_at_call_time(tmp_path, monkeypatch):
    set_offline(monkeypatch, True)
    first, second = HFCache(tmp_path / "a"), HFCache(tmp_path / "b")
    first.add(LLAMA3_ID, {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")}, commit=COMMIT_MAIN)
    second.add(LLAMA3_ID, {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")}, commit=COMMIT_V2)
    monkeypatch.setenv("HF_HUB_CACHE", str(first.root))
    assert ropekit.resolve(LLAMA3_ID).revision == COMMIT_MAIN
    monkeypatch.setenv("HF_HUB_CACHE", str(second.root))
    assert ropekit.resolve(LLAMA3_ID).revision == COMMIT_V2


# --- lineage --------------------------------------------------------------------------------
@pytest.mark.parametrize("base_cached", [True, False], ids=["base-in-cache", "base-from-catalog"])
def test_fine_tune_inherits_llama3_scaling_from_its_card(hf_cache, base_cached):
    if base_cached:
        hf_cache.add(LLAMA31_ID, {"config.json": fixture_bytes("meta-llama__Llama-3.1-8B-Instruct"),
                                  "README.md": card("meta-llama/Llama-3.1-8B")})
    hf_cache.add("acme/llama31-chat", {"config.json": as_bytes(fine_tune_of_llama31()),
                                       "README.md": card(LLAMA31_ID)})

    with pytest.raises(CompoundingError) as err:
        ropekit.plan("acme/llama31-chat", YARN4)
    message = str(err.value)
    assert LLAMA31_ID in message and "llama3 x8" in message
    assert "compounds to yarn x32 from 8192" in message  # 8 (shipped by the base) x 4 (asked)

    resolved = ropekit.resolve("acme/llama31-chat")
    assert resolved.lineage == [LLAMA31_ID]
    assert (resolved.inherited.rope_type, resolved.inherited.factor,
            resolved.inherited.original_max_position_embeddings) == ("llama3", 8.0, 8192)
    assert resolved.inherited.source == LLAMA31_ID

    compound = ropekit.plan("acme/llama31-chat", LongContextConfig(method="yarn", factor=4, on_existing="compound"))
    assert (compound.factor, compound.original_window, compound.new_window) == (32.0, 8192, 262144)


def test_without_a_card_the_same_config_is_scaled_from_its_own_window(hf_cache):
    """The contrast: lineage is what turns a silent x4 on top of llama3 x8 into a refusal."""
    hf_cache.add("acme/llama31-chat", {"config.json": as_bytes(fine_tune_of_llama31())})
    plan = ropekit.plan("acme/llama31-chat", YARN4)
    assert plan.existing is None
    assert (plan.original_window, plan.new_window) == (131072, 4 * 131072)
    (note,) = ropekit.resolve("acme/llama31-chat").notes
    assert "README.md of 'acme/llama31-chat'" in note and "lineage not followed" in note


def test_lineage_follows_two_hops_breadth_first(hf_cache):
    hf_cache.add("acme/mid", {"config.json": as_bytes(fine_tune_of_llama31()), "README.md": card(LLAMA31_ID)})
    hf_cache.add("acme/leaf", {"config.json": as_bytes(fine_tune_of_llama31()),
                               "README.md": card(["acme/not-cached", "acme/mid"])})
    resolved = ropekit.resolve("acme/leaf")
    assert resolved.lineage == ["acme/mid", LLAMA31_ID]
    assert resolved.inherited.source == LLAMA31_ID and resolved.inherited.factor == 8.0
    assert any("acme/not-cached" in note for note in resolved.notes)


def test_lineage_stops_after_three_hops_and_survives_cycles(hf_cache):
    chain = ["acme/a1", "acme/a2", "acme/a3", "acme/a4"]
    hf_cache.add("acme/leaf", {"config.json": as_bytes(fine_tune_of_llama31()), "README.md": card(chain[0])})
    for name, base in zip(chain, chain[1:] + [LLAMA31_ID]):
        hf_cache.add(name, {"config.json": as_bytes(fine_tune_of_llama31()), "README.md": card(base)})
    resolved = ropekit.resolve("acme/leaf")
    assert resolved.lineage == chain[:3] and resolved.inherited is None
    assert any("stopped after 3 hops" in note for note in resolved.notes)

    hf_cache.add("acme/x", {"config.json": as_bytes(fine_tune_of_llama31()), "README.md": card("acme/y")})
    hf_cache.add("acme/y", {"config.json": as_bytes(fine_tune_of_llama31()), "README.md": card("acme/x")})
    cyclic = ropekit.resolve("acme/x")
    assert cyclic.lineage == ["acme/y"] and cyclic.inherited is None


def test_ancestor_trained_longer_than_the_config_declares(hf_cache):
    """A trainer wrote its 2048-token cutoff into max_position_embeddings; the base trained at 8192."""
    config = load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    config["max_position_embeddings"] = 2048
    hf_cache.add("acme/llama3-short", {"config.json": as_bytes(config), "README.md": card(LLAMA3_ID)})

    with pytest.raises(CompoundingError) as err:
        ropekit.plan("acme/llama3-short", YARN4)
    assert LLAMA3_ID in str(err.value)
    resolved = ropekit.resolve("acme/llama3-short")
    inherited = resolved.inherited
    assert (inherited.rope_type, inherited.factor, inherited.original_max_position_embeddings,
            inherited.source) == ("trained", 1.0, 8192, LLAMA3_ID)
    compound = ropekit.plan("acme/llama3-short", LongContextConfig(method="yarn", factor=4, on_existing="compound"))
    assert (compound.original_window, compound.new_window) == (8192, 32768)


def test_an_unscaled_base_with_the_same_window_is_not_inherited(hf_cache):
    hf_cache.add("acme/llama3-chat", {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct"),
                                      "README.md": card(LLAMA3_ID)})
    resolved = ropekit.resolve("acme/llama3-chat")
    assert resolved.lineage == [LLAMA3_ID] and resolved.inherited is None
    assert ropekit.plan("acme/llama3-chat", YARN4).new_window == 32768


def test_a_config_that_ships_scaling_speaks_for_itself(hf_cache):
    """Llama-3.1's own llama3 x8 decides; its card's base (not cached) is never looked up."""
    hf_cache.add("acme/llama31-copy", {"config.json": fixture_bytes("meta-llama__Llama-3.1-8B-Instruct"),
                                       "README.md": card("acme/never-cached")})
    resolved = ropekit.resolve("acme/llama31-copy")
    assert (resolved.inherited, resolved.lineage, resolved.notes) == (None, [], [])
    with pytest.raises(CompoundingError, match="ships llama3 x8 from 8192 -> 131072 at rope_scaling"):
        ropekit.plan("acme/llama31-copy", YARN4)


def test_lineage_failures_never_fail_resolution(hf_cache, tmp_path):
    broken = b"---\nbase_model: [unclosed\n---\n"
    local_base = tmp_path / "local-base"
    local_base.mkdir()
    (local_base / "config.json").write_bytes(fixture_bytes("meta-llama__Llama-3.1-8B-Instruct"))
    cards = {"acme/broken-card": broken, "acme/bad-id": card("../../etc"),
             "acme/local-path": card(str(local_base)), "acme/gone": card("acme/never-cached")}
    for repo, readme in cards.items():
        hf_cache.add(repo, {"config.json": as_bytes(fine_tune_of_llama31()), "README.md": readme})
    for repo in cards:
        resolved = ropekit.resolve(repo)
        assert resolved.config == fine_tune_of_llama31() and resolved.inherited is None, repo
        assert resolved.notes, repo
    # a card can never make ropekit read a local folder, even one that exists and ships scaling
    local = ropekit.resolve("acme/local-path")
    assert local.lineage == [] and any("never local paths" in note for note in local.notes)


def test_local_folder_card_is_followed(hf_cache, tmp_path):
    folder = tmp_path / "my-finetune"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(fine_tune_of_llama31()))
    (folder / "README.md").write_bytes(card(LLAMA31_ID))
    resolved = ropekit.resolve(folder)
    assert resolved.source == "local" and resolved.inherited.source == LLAMA31_ID
    with pytest.raises(CompoundingError, match="llama3 x8"):
        ropekit.plan(str(folder), YARN4)


# --- remote code is never run ---------------------------------------------------------------
def run_python(code: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_auto_map_config_is_read_as_data_and_imports_nothing(hf_cache, tmp_path):
    marker = tmp_path / "remote-code-ran"
    config = load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    config["auto_map"] = {"AutoConfig": "configuration_acme.AcmeConfig",
                          "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"}
    evil = f"open({str(marker)!r}, 'w').write('ran')\n".encode()
    hf_cache.add("acme/custom", {"config.json": as_bytes(config), "configuration_acme.py": evil,
                                 "modeling_acme.py": evil})
    result = run_python("""
        import json, sys
        before = set(sys.modules)
        import ropekit
        resolved = ropekit.resolve("acme/custom")
        plan = ropekit.plan("acme/custom", ropekit.LongContextConfig(method="yarn", factor=4))
        new = set(sys.modules) - before
        print(json.dumps({"new": sorted(new), "notes": resolved.notes, "window": plan.new_window,
                          "auto_map": resolved.config["auto_map"]}))
    """, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache.root), "HF_ENDPOINT": "http://127.0.0.1:9"})
    new = result["new"]
    assert not [m for m in new if m.split(".")[-1] in ("configuration_acme", "modeling_acme") or "acme" in m]
    assert not [m for m in new if m.split(".")[0] in ("transformers", "torch")]
    assert not marker.exists()
    assert result["window"] == 32768 and result["auto_map"] == config["auto_map"]
    assert any("auto_map" in note for note in result["notes"])


def test_import_is_light_and_local_paths_do_not_import_huggingface_hub():
    result = run_python(f"""
        import json, sys
        import ropekit
        after_import = sorted(m for m in sys.modules if m.split(".")[0] in
                              ("torch", "transformers", "huggingface_hub"))
        ropekit.resolve({str(FIXTURES / "meta-llama__Llama-3.1-8B-Instruct")!r})
        ropekit.plan({str(FIXTURES / "meta-llama__Llama-3.1-8B-Instruct" / "config.json")!r},
                     ropekit.LongContextConfig(method="yarn", factor=2, on_existing="compound"))
        after_local = sorted(m for m in sys.modules if m.split(".")[0] in
                             ("torch", "transformers", "huggingface_hub"))
        print(json.dumps({{"import": after_import, "local": after_local}}))
    """, {})
    assert result == {"import": [], "local": []}


# --- the bundled catalog --------------------------------------------------------------------
def test_catalog_files_are_byte_copies_of_the_hub_fixtures():
    models = CATALOG_INDEX["models"]
    required = {"Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen3-8B", LLAMA31_ID, LLAMA3_ID, "meta-llama/Llama-2-7b-hf",
                "mistralai/Mixtral-8x7B-v0.1", "deepseek-ai/DeepSeek-V3", "google/gemma-3-4b-it",
                "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen3-VL-4B-Instruct", "microsoft/Phi-3-mini-4k-instruct",
                "microsoft/phi-4"}
    assert required <= set(models)
    sources = (FIXTURES / "SOURCES.md").read_text()
    for model_id, entry in models.items():
        data = (ROOT / "ropekit" / "catalog" / entry["file"]).read_bytes()
        assert data == fixture_bytes(model_id.replace("/", "__")), model_id
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], model_id
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["captured"])
        row = next(line for line in sources.splitlines() if line.startswith(f"| `{model_id}` |"))
        assert entry["provenance"]["commit"] in row and entry["provenance"]["path"] in row, model_id


def test_empty_offline_cache_answers_from_the_catalog(hf_cache):
    for model_id, entry in CATALOG_INDEX["models"].items():
        resolved = ropekit.resolve(model_id)
        assert resolved.source == "catalog" and resolved.model_id == model_id
        assert resolved.config == load_fixture(model_id.replace("/", "__"))
        assert resolved.captured == entry["captured"]
        assert entry["provenance"]["commit"] in resolved.receipt_model()["provenance"]
    plan = ropekit.plan(LLAMA3_ID, YARN4)
    assert (plan.original_window, plan.new_window) == (8192, 32768)
    assert ropekit.resolve(LLAMA3_ID.lower()).model_id == LLAMA3_ID  # Hub ids are case-insensitive
    assert ropekit.resolve("meta-llama/Meta-Llama-3.1-8B-Instruct").model_id == LLAMA31_ID  # former name


def test_empty_offline_cache_and_an_unknown_id_give_one_clear_sentence(hf_cache):
    with pytest.raises(ResolutionError) as err:
        ropekit.resolve("acme/not-a-real-model")
    message = str(err.value)
    assert "acme/not-a-real-model" in message and "HF_HUB_OFFLINE" in message
    assert str(hf_cache.root) in message and message.count(". ") == 0 and "\n" not in message
    assert err.value.exit_code == 4


def test_qwen25_plans_offline_from_the_catalog(hf_cache):
    try:
        get_registry().lookup("qwen2")
    except UnknownFamilyError:
        pytest.skip("the qwen family plugin is not installed in this build")
    plan = ropekit.plan("Qwen/Qwen2.5-7B-Instruct", YARN4)
    # Qwen2.5 docs: 32,768 natively, 131,072 with YaRN x4
    assert (plan.original_window, plan.new_window) == (32768, 131072)


def test_a_cached_copy_wins_over_the_catalog(hf_cache):
    hf_cache.add(LLAMA3_ID, {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")},
                 commit=COMMIT_MAIN)
    resolved = ropekit.resolve(LLAMA3_ID)
    assert (resolved.source, resolved.revision, resolved.captured) == ("cache", COMMIT_MAIN, None)


def test_a_pinned_revision_is_never_answered_by_the_catalog(hf_cache):
    with pytest.raises(ResolutionError, match="drop the revision"):
        ropekit.resolve(LLAMA3_ID, revision=COMMIT_MAIN)


# --- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["../x", "../../nowhere/at/all", "/definitely/not/here", "~/nope", "org/na..me",
                                 "org--x/name", "a/b/c", "org/", "/org", "C:\\models\\x", "x" * 97])
def test_path_traversal_and_malformed_ids_are_rejected(hf_cache, ref):
    with pytest.raises(ResolutionError) as err:
        ropekit.resolve(ref)
    assert repr(ref) in str(err.value) or str(ref) in str(err.value)


@pytest.mark.parametrize("revision", ["../main", "/main", "main/..", "a b", "main/", "", "x" * 256])
def test_malformed_revisions_are_rejected(hf_cache, revision):
    with pytest.raises(ResolutionError, match="revision"):
        ropekit.resolve(LLAMA3_ID, revision=revision)


def test_a_revision_with_a_local_path_is_refused():
    with pytest.raises(ResolutionError, match="applies to Hub ids"):
        resolve(FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct", revision="main")


def test_offline_revision_missing_from_the_cache_names_it(hf_cache):
    hf_cache.add("acme/model", {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")})
    with pytest.raises(ResolutionError) as err:
        ropekit.resolve("acme/model", revision="v9")
    assert "revision 'v9' of 'acme/model'" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


# --- online, against a Hub-shaped server on 127.0.0.1 ---------------------------------------
class FakeHub:
    """Answers ``/{repo}/resolve/{revision}/{file}`` the way the Hub does (headers and error codes)."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.gated: dict[str, str] = {}  # repo -> the token that may read it
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                repo, revision, filename = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", self.path).groups()
                token = hub.gated.get(repo)
                if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                    return self.fail(401, "GatedRepo")
                if repo not in hub.repos:
                    return self.fail(401, "RepoNotFound")
                if revision not in hub.repos[repo]:
                    return self.fail(404, "RevisionNotFound")
                commit, files = hub.repos[repo][revision]
                if filename not in files:
                    return self.fail(404, "EntryNotFound")
                data = files[filename]
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{git_blob_sha1(data)}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def fail(self, status: int, code: str) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def add(self, repo: str, files: dict[str, bytes], commit: str = COMMIT_MAIN, revision: str = "main") -> None:
        self.repos.setdefault(repo, {})[revision] = (commit, files)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = FakeHub()
    set_offline(monkeypatch, False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_online_download_lands_in_the_cache_and_then_works_offline(hub, monkeypatch):
    hub.add("acme/live", {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")})
    online = ropekit.resolve("acme/live")
    assert (online.source, online.revision) == ("hub", COMMIT_MAIN)
    set_offline(monkeypatch, True)
    hub.repos.clear()  # the Hub forgets it: only the cache can answer now
    offline = ropekit.resolve("acme/live")
    assert (offline.source, offline.revision, offline.config) == ("cache", COMMIT_MAIN, online.config)


def test_a_live_hub_copy_wins_over_the_catalog(hub):
    hub.add(LLAMA3_ID, {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")})
    resolved = ropekit.resolve(LLAMA3_ID)
    assert (resolved.source, resolved.revision) == ("hub", COMMIT_MAIN)


def test_gated_repo_needs_hf_token_read_at_call_time(hub, monkeypatch):
    hub.add("acme/gated", {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")})
    hub.gated["acme/gated"] = "hf_secret"
    with pytest.raises(ResolutionError) as err:
        ropekit.resolve("acme/gated")
    assert "'acme/gated' is gated" in str(err.value) and "HF_TOKEN" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert ropekit.resolve("acme/gated").revision == COMMIT_MAIN


def test_a_gated_catalog_model_falls_back_to_the_catalog_with_a_note(hub):
    hub.add(LLAMA31_ID, {"config.json": b"{}"})
    hub.gated[LLAMA31_ID] = "hf_secret"
    resolved = ropekit.resolve(LLAMA31_ID)
    assert resolved.source == "catalog" and any("gated" in note for note in resolved.notes)


@pytest.mark.parametrize("repo, revision, expected", [
    ("acme/missing", None, "'acme/missing' does not exist or is private"),
    ("acme/live", "v9", "revision 'v9' does not exist in Hub repo 'acme/live'"),
    ("acme/no-config", None, "'acme/no-config' has no config.json"),
])
def test_online_errors_name_the_repo_and_the_fix(hub, repo, revision, expected):
    hub.add("acme/live", {"config.json": fixture_bytes("meta-llama__Meta-Llama-3-8B-Instruct")})
    hub.add("acme/no-config", {"README.md": card(None)})
    with pytest.raises(ResolutionError) as err:
        ropekit.resolve(repo, revision=revision)
    assert expected in str(err.value) and "; " in str(err.value)


def test_an_unreachable_hub_is_told_apart_from_offline_mode(tmp_path):
    """huggingface_hub retries an unreachable endpoint for ~23 s before giving up, so the
    message is checked on the cache inspection that words it."""
    cache = HFCache(tmp_path / "hub")
    cache.add("acme/model", {"config.json": b"{}"}, refs=("main",))
    unreachable = _cache_miss(cache.root, "acme/other", "config.json", None, offline=False)
    assert unreachable.startswith("'acme/other' is not in the Hugging Face cache at ")
    assert "could not be reached" in unreachable and "HF_HUB_OFFLINE" not in unreachable
    wrong_rev = _cache_miss(cache.root, "acme/model", "config.json", "v3", offline=True)
    assert wrong_rev.startswith("revision 'v3' of 'acme/model' is not in the Hugging Face cache")
    no_card = _cache_miss(cache.root, "acme/model", "README.md", None, offline=True)
    assert no_card.startswith("README.md of 'acme/model' is not in the Hugging Face cache")


def test_resolved_config_receipt_fields():
    catalog = ResolvedConfig({}, model_id="a/b", source="catalog", captured="2026-11-29", provenance="x @ y")
    assert catalog.receipt_model() == {"id": "a/b", "revision": None, "source": "catalog",
                                       "captured": "2026-11-29", "provenance": "x @ y"}


def test_an_unresolvable_hub_is_not_retried(tmp_path, monkeypatch):
    """No name resolution means no network: answer from cache or catalog at once, not after retries."""
    from ropekit.hub import resolve as hub

    set_offline(monkeypatch, False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(hub, "_RESOLVED", {})
    asked = []

    def getaddrinfo(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    resolved = resolve("Qwen/Qwen2.5-7B-Instruct")
    assert resolved.source == "catalog"
    assert asked == ["hub.invalid"]
    assert any("could not be reached" in note for note in resolved.notes)
