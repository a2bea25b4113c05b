"""The plugin manager factory and the registry built from it.

``make_plugin_manager()`` returns a fresh :class:`pluggy.PluginManager` with the
built-in plugins registered exactly like third-party ones, entry points of the
``ropekit`` group loaded, and ``ROPEKIT_DISABLE_PLUGINS`` honoured. A
:class:`Registry` calls the registration hooks once, one plugin at a time, so a
plugin that raises is reported by name while the others keep working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import pluggy

from . import constants, hookspecs
from .errors import InvalidRequestError, PluginError, UnknownFamilyError

if TYPE_CHECKING:
    from .config_view import ConfigView
    from .family import Family
    from .methods import ScalingMethod

DEFAULT_PLUGINS: tuple[str, ...] = (
    "ropekit.plugins.methods",
    "ropekit.plugins.llama",
    "ropekit.plugins.qwen",
    "ropekit.plugins.qwen_vl",
    "ropekit.plugins.moe",
    "ropekit.plugins.gemma",
    "ropekit.plugins.phi",
    "ropekit.plugins.vlm",
)


def make_plugin_manager(*, entry_points: bool | None = None) -> pluggy.PluginManager:
    """A new plugin manager with the built-ins and (by default) entry-point plugins.

    :param entry_points: load the ``ropekit`` entry-point group; ``None`` reads
        ``ROPEKIT_NO_ENTRY_POINTS`` at call time.
    """
    pm = pluggy.PluginManager("ropekit")
    pm.add_hookspecs(hookspecs)
    for name in constants.disabled_plugins():
        pm.set_blocked(name)
    for module_name in DEFAULT_PLUGINS:
        if pm.is_blocked(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # a built-in not shipped in this build
                continue
            raise
        pm.register(module, name=module_name)
    if constants.load_entry_points() if entry_points is None else entry_points:
        try:
            pm.load_setuptools_entrypoints(constants.ENTRY_POINT_GROUP)
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"plugin {exc.plugin!r} does not match ropekit's hooks ({exc}); fix its hook names "
                "or block it with ROPEKIT_DISABLE_PLUGINS"
            ) from exc
        except Exception as exc:  # a broken third-party package must not break ropekit
            raise PluginError(
                f"loading the '{constants.ENTRY_POINT_GROUP}' entry points failed ({exc}); "
                "uninstall the broken plugin or block it with ROPEKIT_DISABLE_PLUGINS"
            ) from exc
    pm.check_pending()
    return pm


def plugin_version(pm: pluggy.PluginManager, plugin: object) -> str:
    """The version of the distribution that ships a plugin (ropekit's for built-ins)."""
    for plugin_obj, dist in pm.list_plugin_distinfo():
        if plugin_obj is plugin:
            return str(dist.version)
    try:
        return importlib.metadata.version("ropekit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class PluginFault:
    """A plugin whose hook raised or registered garbage."""

    plugin: str
    hook: str
    error: str


@dataclass
class Registry:
    """Families and methods collected from one plugin manager."""

    pm: pluggy.PluginManager
    families_by_name: dict[str, "Family"] = field(default_factory=dict)
    by_model_type: dict[str, "Family"] = field(default_factory=dict)
    methods: dict[str, "ScalingMethod"] = field(default_factory=dict)
    faults: list[PluginFault] = field(default_factory=list)

    @classmethod
    def from_manager(cls, pm: pluggy.PluginManager | None = None) -> "Registry":
        reg = cls(pm or make_plugin_manager())
        reg._collect("register_families", reg._add_family)
        reg._collect("register_scaling_methods", reg._add_method)
        return reg

    def _collect(self, hook_name: str, add: Callable[[Any, str, str], None]) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            version = plugin_version(self.pm, impl.plugin)
            try:
                impl.function(register=lambda obj: add(obj, plugin_name, version))
            except PluginError:
                raise
            except Exception as exc:  # reported by name; other plugins keep working
                self.faults.append(PluginFault(plugin_name, hook_name, f"{type(exc).__name__}: {exc}"))

    def _add_family(self, family: Any, plugin: str, version: str) -> None:
        from .family import Family

        if not isinstance(family, Family) or not getattr(family, "name", None):
            raise TypeError(f"register() expects a named Family instance, got {family!r}")
        family.plugin, family.version = plugin, version
        if family.name in self.families_by_name:
            other = self.families_by_name[family.name].plugin
            raise PluginError(
                f"family '{family.name}' is registered by both '{other}' and '{plugin}'; "
                "block one with ROPEKIT_DISABLE_PLUGINS"
            )
        for model_type in family.model_types:
            if model_type in self.by_model_type:
                other = self.by_model_type[model_type].plugin
                raise PluginError(
                    f"model_type '{model_type}' is claimed by both '{other}' and '{plugin}'; "
                    "block one with ROPEKIT_DISABLE_PLUGINS"
                )
        self.families_by_name[family.name] = family
        for model_type in family.model_types:
            self.by_model_type[model_type] = family

    def _add_method(self, method: Any, plugin: str, version: str) -> None:
        from .methods import ScalingMethod

        if not isinstance(method, ScalingMethod) or not getattr(method, "name", None):
            raise TypeError(f"register() expects a named ScalingMethod instance, got {method!r}")
        if method.name in self.methods or method.name == "auto":
            raise PluginError(f"scaling method '{method.name}' is registered twice (again by '{plugin}')")
        method.plugin = plugin
        self.methods[method.name] = method

    def lookup(self, model_type: str) -> "Family":
        """The family that declares ``model_type``."""
        try:
            return self.by_model_type[model_type]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self.families_by_name)) or "none"
            raise UnknownFamilyError(
                f"no family handles model_type {model_type!r} (families: {known}; "
                "'ropekit plugins' lists their model_types); "
                "install or write a family plugin (see 'Writing a family plugin' in the README) "
                "or pass family=NAME to use an existing one"
            ) from None

    def family(self, name: str) -> "Family":
        """The family registered under ``name``."""
        try:
            return self.families_by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.families_by_name))
            raise UnknownFamilyError(f"no family named {name!r} (known: {known})") from None

    def family_for(self, view: "ConfigView") -> "Family":
        """The family that owns a config: model_type table, then the claim_config hook."""
        model_type = view.model_type()
        family = self.by_model_type.get(model_type)
        if family is None:
            claimed = self.pm.hook.claim_config(config=view.json_dict())
            family = self.family(claimed) if claimed else self.lookup(model_type)
        return family.resolve(view, self)

    def method(self, name: str) -> "ScalingMethod":
        """The scaling method registered under ``name``."""
        try:
            return self.methods[name]
        except KeyError:
            known = ", ".join(sorted(self.methods)) + ", auto"
            raise InvalidRequestError(f"unknown scaling method {name!r}; choose one of {known}") from None


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default
    if _default is None:
        _default = Registry.from_manager()
    return _default


def reset_registry() -> None:
    """Forget the process-wide registry (tests, or after installing a plugin)."""
    global _default
    _default = None
