"""Running third-party plugin code so that one bad plugin cannot break, hang or corrupt ropekit.

Every call into a third-party plugin while the registry is built (importing its entry
point, its ``register_families`` and ``register_scaling_methods`` hooks) runs in a
daemon worker thread, bounded by ``ROPEKIT_PLUGIN_TIMEOUT`` seconds (read at call time,
default :data:`DEFAULT_TIMEOUT_S`). Whatever the plugin prints goes to stderr, never
to stdout, where ``--json`` documents go. An exception, a ``sys.exit()`` (any
``BaseException`` other than ``KeyboardInterrupt``) or a timeout becomes a
:class:`PluginFault` naming the plugin; the plugin is set aside and the others load.

A timed-out call is abandoned, not stopped: Python cannot kill a thread, so the
plugin's code may still run on (it can no longer register anything), and what it
already did (threads it started, files it wrote) is not undone.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import pluggy

from ropekit.constants import env_seconds

T = TypeVar("T")

TIMEOUT_ENV = "ROPEKIT_PLUGIN_TIMEOUT"
OVERRIDE_ENV = "ROPEKIT_OVERRIDE_BUILTINS"
DEFAULT_TIMEOUT_S = 30.0


@dataclass
class PluginFault:
    """A plugin that failed to load, or whose hook raised or registered garbage."""

    plugin: str
    hook: str
    error: str


class PluginTimeout(Exception):
    """Plugin code did not finish within ``ROPEKIT_PLUGIN_TIMEOUT`` seconds."""


class PluginManager(pluggy.PluginManager):
    """ropekit's plugin manager: also keeps the faults met while loading, and each entry point's version."""

    def __init__(self) -> None:
        super().__init__("ropekit")
        #: plugins that could not be loaded at all (import failed, hook names unknown, ...)
        self.load_faults: list[PluginFault] = []
        #: plugin name -> version of the distribution that declares its entry point
        self.versions: dict[str, str] = {}


def plugin_timeout() -> float:
    """Seconds a plugin's import or registration hook may take (``ROPEKIT_PLUGIN_TIMEOUT``)."""
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def overridden_builtins() -> frozenset[str]:
    """Names of built-in families, model_types and methods a plugin may take over (``ROPEKIT_OVERRIDE_BUILTINS``)."""
    return frozenset(item.strip() for item in os.environ.get(OVERRIDE_ENV, "").split(",") if item.strip())


@contextlib.contextmanager
def plugin_output() -> Iterator[None]:
    """What plugin code prints goes to stderr: stdout carries ropekit's own output (``--json`` documents)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def run_bounded(call: Callable[[], T], timeout: float) -> T:
    """``call()`` in a daemon worker thread, its prints on stderr: its result or what it raised.

    Raises :class:`PluginTimeout` when it has not finished after ``timeout`` seconds; the
    thread is then abandoned. A ``SystemExit`` (or any ``BaseException``) is re-raised
    here, in the caller's thread, where :func:`describe` reports it.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="ropekit-plugin", daemon=True)
    with plugin_output():
        worker.start()
        worker.join(timeout)
    if worker.is_alive():
        raise PluginTimeout(f"did not finish within {timeout:g} s; fix or remove the plugin, or raise "
                            f"{TIMEOUT_ENV} if it is only slow")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def describe(exc: BaseException) -> str:
    """A fault's one-line text: the exception's class and message."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {cut(str(exc))}"


def cut(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def load_entry_points(pm: PluginManager, group: str, reserved: tuple[str, ...]) -> None:
    """Load and register the plugins of an entry-point group, one at a time, in name order.

    A plugin that cannot be imported (a syntax error, a missing module, ``sys.exit``, a
    timeout), that cannot be registered, that takes the name of a built-in plugin
    (``reserved``) or whose hook names ropekit does not know is recorded in
    ``pm.load_faults`` and left out; the others load.
    """
    timeout = plugin_timeout()
    for ep, dist in _entry_points(group):
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            continue
        if ep.name in reserved:
            pm.load_faults.append(PluginFault(ep.name, "load", f"PluginError: entry point {ep.name!r} of "
                                              f"{dist.metadata['Name']!r} takes the name of a built-in plugin; "
                                              "rename the entry point"))
            continue
        try:
            plugin = run_bounded(ep.load, timeout)
            with plugin_output():
                pm.register(plugin, name=ep.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the plugin's fault, reported by name
            pm.load_faults.append(PluginFault(ep.name, "load", describe(exc)))
            continue
        unknown = unknown_hooks(pm, plugin)
        if unknown:
            pm.unregister(plugin)
            known = ", ".join(sorted(n for n in vars(pm.hook) if getattr(pm.hook, n).has_spec()))
            pm.load_faults.append(PluginFault(ep.name, unknown[0], f"PluginValidationError: unknown hook "
                                              f"{', '.join(map(repr, unknown))} (ropekit's hooks: {known}); fix "
                                              "the hook name in the plugin"))
            continue
        pm.versions[ep.name] = str(dist.version)


def unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hook names a registered plugin implements that no ropekit hookspec declares (a typo)."""
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or []
                  if not caller.has_spec() and not all(impl.optionalhook for impl in caller.get_hookimpls()
                                                       if impl.plugin is plugin))


def _entry_points(group: str) -> list[tuple[importlib.metadata.EntryPoint, importlib.metadata.Distribution]]:
    """The group's entry points with their distributions, the first of each name, sorted by name."""
    found: dict[str, tuple[importlib.metadata.EntryPoint, importlib.metadata.Distribution]] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == group and ep.name not in found:
                found[ep.name] = (ep, dist)
    return [found[name] for name in sorted(found)]
