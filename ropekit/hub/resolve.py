"""Resolve a model reference to its config.json, read as data (never remote code).

Resolution order: a local folder or file; the Hugging Face cache and Hub through
huggingface_hub (only ``config.json`` and the model card ``README.md`` are
fetched); the bundled catalog of well-known configs. A config that declares
``auto_map`` is still only parsed as JSON: no repository code is imported.

The environment is read at call time, not when huggingface_hub was imported:
``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` (else ``HUGGINGFACE_HUB_CACHE``,
``HF_HOME``/hub, ``XDG_CACHE_HOME``/huggingface/hub) and ``HF_ENDPOINT`` are
passed to huggingface_hub explicitly; ``HF_TOKEN`` is read by huggingface_hub
itself on each call. huggingface_hub is imported only when a Hub id is resolved.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ropekit.constants as constants
import ropekit.hub.catalog as catalog
from ropekit.errors import HubUnavailableError, ResolutionError, RopekitError
from ropekit.hub.lineage import (
    Ancestor,
    card_base_models,
    follow,
    local_card_base_models,
)
from ropekit.jsonio import read_config_file, shown
from ropekit.registry.family import ShippedScaling

CONFIG = "config.json"
README = "README.md"
MAX_REPO_ID = 96
_REPO_PART = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_ID_FORM = "org/name (letters, digits, '-', '_', '.'; no '..' or '--'; at most 96 characters)"


@dataclass
class ResolvedConfig:
    """A config.json and where it came from."""

    config: dict[str, Any]
    model_id: str | None = None
    revision: str | None = None  # the resolved commit for Hub sources
    source: str = "local"  # local | hub | cache | catalog
    path: Path | None = None  # the config.json file (local folder or HF cache snapshot)
    captured: str | None = None  # catalog capture date
    inherited: ShippedScaling | None = None  # scaling shipped by a base model (lineage)
    notes: list[str] = field(default_factory=list)
    requested_revision: str | None = None  # the branch, tag or commit asked for
    provenance: str | None = None  # where a catalog copy was taken from
    lineage: list[str] = field(default_factory=list)  # base models read, nearest first

    def receipt_model(self) -> dict[str, Any]:
        """The receipt's ``model`` fields for this source."""
        out: dict[str, Any] = {"id": self.model_id, "revision": self.revision, "source": self.source}
        if self.requested_revision and self.requested_revision != self.revision:
            out["ref"] = self.requested_revision
        if self.captured:
            out["captured"] = self.captured
        if self.provenance:
            out["provenance"] = self.provenance
        if self.path is not None and self.source in ("local", "cache", "hub"):
            from ropekit.hub.weights import weights_identity

            weights = weights_identity(Path(self.path).parent)
            if weights is not None:
                out["weights"] = weights
        return out


# --- validation -------------------------------------------------------------------------
def is_repo_id(ref: str) -> bool:
    """True for a well-formed Hub model id (``org/name`` or a legacy bare ``name``)."""
    parts = ref.split("/")
    return (len(parts) <= 2 and len(ref) <= MAX_REPO_ID and ".." not in ref and "--" not in ref
            and all(_REPO_PART.fullmatch(part) for part in parts))


def validate_repo_id(ref: str) -> str:
    """``ref`` if it is a well-formed Hub model id, else a :class:`ResolutionError`.

    Ids that could escape the cache folder (``..``, absolute paths, NUL bytes) are refused here,
    before huggingface_hub or the file system sees them.
    """
    if not isinstance(ref, str) or not is_repo_id(ref):
        raise ResolutionError(f"{shown(ref)} is neither an existing folder or file nor a Hub id of the form "
                              f"{_ID_FORM}; check the path or the id")
    return ref


def validate_revision(revision: Any) -> str:
    """``revision`` if it is a well-formed branch, tag or commit, else a :class:`ResolutionError`."""
    if (not isinstance(revision, str) or not _REVISION.fullmatch(revision) or ".." in revision
            or "//" in revision or revision.endswith("/") or len(revision) > 255):
        raise ResolutionError(f"revision {shown(revision)} is not a branch, tag or commit sha (letters, digits, "
                              "'.', '_', '-', '/'; no '..'; at most 255 characters); pass e.g. main, v1.0 or "
                              "a 40-character commit")
    return revision


# --- environment, read at call time -----------------------------------------------------
def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, resolved the way huggingface_hub resolves it."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"),
                                              "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def hub_resolvable(endpoint: str | None) -> bool:
    """False when the Hub's host name does not resolve: then only the cache is asked.

    Without this, huggingface_hub retries a failed name lookup for about 25 seconds
    before giving up, on every request.
    """
    import socket
    from urllib.parse import urlsplit

    host = urlsplit(endpoint or "https://huggingface.co").hostname or "huggingface.co"
    if host in _RESOLVED:
        return _RESOLVED[host]
    try:
        socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
        ok = True
    except (OSError, UnicodeError):
        ok = False
    _RESOLVED[host] = ok
    return ok


_RESOLVED: dict[str, bool] = {}

#: seconds the Hub has to answer one request before ropekit treats it as unreachable and
#: answers from the cache or the bundled catalog (env ROPEKIT_HUB_TIMEOUT, read at each call)
DEFAULT_HUB_TIMEOUT = 5.0


def hub_timeout() -> float:
    """``ROPEKIT_HUB_TIMEOUT`` in seconds (default :data:`DEFAULT_HUB_TIMEOUT`), read at call time."""
    return constants.env_seconds("ROPEKIT_HUB_TIMEOUT", DEFAULT_HUB_TIMEOUT)


def hub_reachable(endpoint: str | None) -> bool:
    """False when the Hub's name does not resolve or it sends no answer within :func:`hub_timeout`.

    One HEAD request per endpoint and process (any HTTP status counts as an answer);
    without it, an endpoint that accepts connections and never answers holds
    huggingface_hub in retries for minutes, logging a line at each.
    """
    if not hub_resolvable(endpoint):
        return False
    url = endpoint or "https://huggingface.co"
    timeout = hub_timeout()  # a bad value is named even when the answer is known
    if url not in _ANSWERED:
        import http.client
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            _ANSWERED[url] = True
        except (urllib.error.HTTPError, http.client.HTTPException, ConnectionResetError):
            _ANSWERED[url] = True  # an answer, whatever its status, or a server that hung up on the probe
        except (OSError, ValueError):  # refused, timed out, a malformed endpoint
            _ANSWERED[url] = False
    return _ANSWERED[url]


_ANSWERED: dict[str, bool] = {}


# --- fetching through huggingface_hub ---------------------------------------------------
def fetch_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a Hub model repo, from the HF cache or the Hub, as a snapshot path.

    Raises :class:`HubUnavailableError` when no copy can be had (offline, unreachable,
    gated, missing or private) and :class:`ResolutionError` when the Hub says the
    revision or file does not exist.
    """
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    offline = constants.hf_hub_offline()
    cache = hub_cache_dir()
    at = f" at revision {revision!r}" if revision else ""
    check_cache_ref(cache, repo_id, revision)
    local_only = offline or not hub_reachable(_endpoint())
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache,
                                    local_files_only=local_only, endpoint=_endpoint()))
    except hf_errors.GatedRepoError:
        raise HubUnavailableError(
            f"Hub repo {repo_id!r} is gated; accept its terms at {_endpoint() or 'https://huggingface.co'}/"
            f"{repo_id} and set HF_TOKEN to a token of an account with access") from None
    except hf_errors.RepositoryNotFoundError:
        raise HubUnavailableError(
            f"Hub repo {repo_id!r} does not exist or is private; check the id{did_you_mean(repo_id)}, or set "
            "HF_TOKEN to a token with access") from None
    except hf_errors.RevisionNotFoundError:
        raise ResolutionError(
            f"revision {revision!r} does not exist in Hub repo {repo_id!r}; pass an existing branch, "
            "tag or commit sha, or drop the revision") from None
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        # huggingface_hub reads HF_HUB_OFFLINE once, at import: it may still be offline
        frozen = bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))
        raise HubUnavailableError(_cache_miss(cache, repo_id, filename, revision, offline or frozen)) from None
    except hf_errors.EntryNotFoundError:
        fix = ("it is not a transformers model repo; pass a model repo or a local folder"
               if filename == CONFIG else "nothing to read there")
        raise ResolutionError(f"Hub repo {repo_id!r} has no {filename}{at}; {fix}") from None
    except hf_errors.HFValidationError as exc:
        raise ResolutionError(f"huggingface_hub rejects repo {repo_id!r}{at} "
                              f"({str(exc).splitlines()[0]}); check the id and revision") from None
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise HubUnavailableError(f"the Hub answered HTTP {status} for {repo_id!r}{at}; retry later, or "
                                  "pass a local folder") from None
    except OSError as exc:  # the cache folder cannot be written, or a transport error escaped
        raise ResolutionError(f"fetching {filename} of {repo_id!r}{at} failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); check the network and "
                              f"the cache folder {cache} (HF_HUB_CACHE)") from None


def repo_folder(cache: Path, repo_id: str) -> Path:
    """Where the Hugging Face cache keeps a model repo (``models--ORG--NAME``)."""
    return cache / "--".join(["models", *repo_id.split("/")])


def check_cache_ref(cache: Path, repo_id: str, revision: str | None) -> None:
    """Refuse a cache ref file (``refs/main``) that does not hold a commit sha.

    huggingface_hub joins what the file holds onto ``snapshots/``: a ref of ``../../..``
    would point outside the cache (it raises a bare ValueError).
    """
    ref = revision or "main"
    if _COMMIT.match(ref):
        return
    path = repo_folder(cache, repo_id) / "refs" / ref
    try:
        with open(path, "rb") as handle:
            held = handle.read(256)
    except OSError:  # no such ref cached (or unreadable): huggingface_hub decides
        return
    text = held.decode("utf-8", "replace").strip()
    if not _COMMIT.match(text):
        raise ResolutionError(f"the Hugging Face cache's ref file {path} holds {shown(text, 60)}, not a 40-character "
                              f"commit sha (a damaged or tampered cache); delete that file, or the folder "
                              f"{path.parent.parent}, and download the model again")


def _cache_miss(cache: Path, repo_id: str, filename: str, revision: str | None, offline: bool) -> str:
    """One sentence: what the cache lacks, why it was not downloaded, and the fix."""
    folder = repo_folder(cache, repo_id)
    if not folder.is_dir():
        missing = f"{repo_id!r} is not in the Hugging Face cache at {cache}"
    elif revision and not ((folder / "refs" / revision).is_file() or (folder / "snapshots" / revision).is_dir()):
        missing = f"revision {revision!r} of {repo_id!r} is not in the Hugging Face cache at {cache}"
    else:
        at = f" at revision {revision!r}" if revision else ""
        missing = f"{filename} of {repo_id!r}{at} is not in the Hugging Face cache at {cache}"
    if offline:
        return (f"{missing} and HF_HUB_OFFLINE is set; download it once online (unset HF_HUB_OFFLINE) "
                "or pass a local folder")
    return f"{missing} and the Hub could not be reached; check the network or HF_ENDPOINT, or pass a local folder"


def did_you_mean(repo_id: str) -> str:
    """`` (did you mean 'ORG/NAME'?)`` for a near miss among the catalog's and the HF cache's ids, else ``""``."""
    import difflib

    known = {entry.model_id for entry in catalog.entries()}
    cache = hub_cache_dir()
    if cache.is_dir():
        known |= {"/".join(d.name.split("--")[1:3]) for d in cache.iterdir()
                  if d.name.startswith("models--") and d.name.count("--") == 2}
    by_lower = {k.lower(): k for k in known if k.lower() != repo_id.lower()}
    close = difflib.get_close_matches(repo_id.lower(), list(by_lower), n=1, cutoff=0.85)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _commit_of(snapshot_file: Path) -> str | None:
    """The commit sha in a cache path ``.../snapshots/<commit>/<file>``."""
    commit = snapshot_file.parent
    return commit.name if _COMMIT.match(commit.name) and commit.parent.name == "snapshots" else None


def _check_utf8_path(path: Path) -> None:
    """Refuse a path that is not UTF-8: the receipt records it as JSON text, which cannot hold it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = os.fsencode(str(path))
        bad = os.fsencode(str(path)[exc.start:exc.end])
        raise ResolutionError(f"the path {raw!r} is not UTF-8 text (byte {bad!r}), and a receipt records the "
                              "model's path as JSON text; rename the folder (or file) to a UTF-8 name") from None


# --- resolution ---------------------------------------------------------------------------
def resolve_hub_id(repo_id: str, revision: str | None = None) -> ResolvedConfig:
    """A Hub id's config from the HF cache or Hub, else from the bundled catalog (no lineage)."""
    try:
        file = fetch_file(repo_id, CONFIG, revision)
    except HubUnavailableError as exc:
        entry = catalog.lookup(repo_id)
        if entry is None:
            hint = did_you_mean(repo_id)
            if hint:
                raise HubUnavailableError(f"{exc}{hint}") from None
            raise
        if revision is not None:
            raise ResolutionError(f"{exc} (the bundled catalog holds {entry.model_id} unpinned: drop "
                                  "the revision to use it)") from None
        return _from_catalog(entry, f"no Hub or cache copy ({exc}); answered from the bundled catalog")
    source = "cache" if constants.hf_hub_offline() or not hub_reachable(_endpoint()) else "hub"
    return ResolvedConfig(read_config_file(file), model_id=repo_id, revision=_commit_of(file), source=source,
                          path=file, requested_revision=revision)


def _from_catalog(entry: catalog.CatalogEntry, why: str) -> ResolvedConfig:
    notes = [why, f"bundled catalog copy captured {entry.captured} from {entry.provenance_text}"]
    if entry.caveat:
        notes.append(f"catalog caveat: {entry.caveat}")
    return ResolvedConfig(entry.read_config(), model_id=entry.model_id, revision=entry.hub_revision,
                          source="catalog", captured=entry.captured, provenance=entry.provenance_text,
                          notes=notes)


def _resolve_local(path: Path) -> tuple[ResolvedConfig, Path]:
    _check_utf8_path(path)
    if path.is_dir():
        file = path / CONFIG
        if not file.is_file():
            raise ResolutionError(f"{path} has no config.json; point at a Hugging Face model folder")
        return ResolvedConfig(read_config_file(file), model_id=str(path), path=file), path
    return ResolvedConfig(read_config_file(path), model_id=str(path.parent), path=path), path.parent


def _card_bases(model_id: str, source: str, revision: str | None, notes: list[str]) -> list[str] | None:
    """``base_model`` of a Hub-resolved model's card at the resolved commit (None: unreadable)."""
    if source == "catalog":
        notes.append(f"{model_id}: the bundled catalog holds no model card; lineage not followed")
        return None
    try:
        return card_base_models(fetch_file(model_id, README, revision))
    except RopekitError as exc:
        notes.append(f"{model_id}: model card not read, lineage not followed ({exc})")
        return None


def _local_card_bases(folder: Path, notes: list[str]) -> list[str] | None:
    try:
        return local_card_base_models(folder)
    except RopekitError as exc:
        notes.append(f"model card not read, lineage not followed ({exc})")
        return None


def _read_ancestor(base: str) -> Ancestor:
    if not is_repo_id(base):
        raise ResolutionError(f"{base!r} is not a Hub id of the form {_ID_FORM}; only Hub ids are "
                              "followed, never local paths")
    resolved = resolve_hub_id(base)
    notes: list[str] = []
    if resolved.source == "catalog":
        notes.append(f"base model {resolved.model_id} read from the bundled catalog "
                     f"(captured {resolved.captured})")
    return Ancestor(str(resolved.model_id), resolved.config, resolved.source, resolved.revision, notes)


def _ancestor_bases(ancestor: Ancestor, notes: list[str]) -> list[str] | None:
    return _card_bases(ancestor.model_id, ancestor.source, ancestor.revision, notes)


def _note_remote_code(resolved: ResolvedConfig) -> None:
    auto_map = resolved.config.get("auto_map")
    if auto_map:
        names = ", ".join(sorted(auto_map)) if isinstance(auto_map, dict) else str(auto_map)
        resolved.notes.append(f"config declares auto_map ({names}); read as data, no repository code was run")


def resolve(ref: str | Path, revision: str | None = None, *, lineage: bool = True) -> ResolvedConfig:
    """Resolve a local folder, a config.json file, or a Hub id to its config.

    :param revision: a branch, tag or commit sha (Hub ids only); the resolved
        commit is recorded in ``ResolvedConfig.revision``.
    :param lineage: follow ``base_model`` in model cards (up to three hops) and set
        ``inherited`` when an ancestor ships scaling or was trained longer.
    """
    if not isinstance(ref, (str, Path)) or not str(ref).strip():
        raise ResolutionError(f"model reference {ref!r} is empty or not a string; pass a folder, a "
                              "config.json path or a Hub id such as Qwen/Qwen2.5-7B-Instruct")
    if revision is not None:
        validate_revision(revision)
    try:
        path = Path(ref).expanduser()
    except RuntimeError:  # "~nosuchuser/...": no such home folder, so take it literally
        path = Path(ref)
    try:
        exists = path.exists()
    except (OSError, ValueError):
        exists = False
    if exists:
        if revision is not None:
            raise ResolutionError(f"revision {revision!r} applies to Hub ids but {str(ref)!r} is a local path; "
                                  "drop the revision or pass a Hub id")
        resolved, folder = _resolve_local(path)
        own_bases = functools.partial(_local_card_bases, folder)
    elif isinstance(ref, Path):
        raise ResolutionError(f"no folder or file at {str(ref)!r}; check the path")
    else:
        resolved = resolve_hub_id(validate_repo_id(ref), revision)
        own_bases = functools.partial(_card_bases, str(resolved.model_id), resolved.source,
                                      resolved.revision or resolved.requested_revision)
    _note_remote_code(resolved)
    if lineage:
        own_id = resolved.model_id if resolved.source != "local" else None
        found = follow(resolved.config, own_bases, _read_ancestor, _ancestor_bases, model_id=own_id)
        resolved.inherited, resolved.lineage = found.inherited, found.chain
        resolved.notes.extend(found.notes)
    return resolved
