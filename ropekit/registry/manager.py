"""The plugin manager factory and the registry built from it.

``make_plugin_manager()`` returns a fresh :class:`pluggy.PluginManager` with the
built-in plugins registered exactly like third-party ones, entry points of the
``ropekit`` group loaded, and ``ROPEKIT_DISABLE_PLUGINS`` honoured. A
:class:`Registry` calls the registration hooks once, one plugin at a time, so a
plugin that raises is reported by name while the others keep working.

A plugin is held to its word at every call, not only at registration:

* registering something that is not a named :class:`Family` (or
  :class:`ScalingMethod`), or a family whose ``model_types`` are not non-empty
  strings, is recorded in :attr:`Registry.faults`; the plugin's other
  registrations stand;
* every third-party family and method ropekit calls is guarded (built-ins are not:
  their crash is a ropekit bug and must show as one): an exception other than a
  :class:`RopekitError`, or a return value of the wrong kind, becomes a
  :class:`PluginError` naming the plugin, the family and the method, whichever
  command called it (plan, patch, inspect, audit, landing);
* a ``claim_config`` answer that raises or is not a family name or None is a
  :class:`PluginError` naming the plugin; the config it sees is a copy.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

import ropekit.constants as constants
import ropekit.registry.hookspecs as hookspecs
from ropekit.errors import (
    InvalidRequestError,
    Param,
    PluginError,
    RopekitError,
    UnknownFamilyError,
)
from ropekit.registry.family import Family, ShippedScaling
from ropekit.scaling.config_view import ConfigView, RopeSite
from ropekit.scaling.methods import ScalingMethod

DEFAULT_PLUGINS: tuple[str, ...] = (
    "ropekit.plugins.methods",
    "ropekit.plugins.llama",
    "ropekit.plugins.qwen",
    "ropekit.plugins.qwen_vl",
    "ropekit.plugins.moe",
    "ropekit.plugins.gemma",
    "ropekit.plugins.phi",
    "ropekit.plugins.vlm",
    "ropekit.plugins.mla",
    "ropekit.plugins.kimi",
    "ropekit.plugins.deepseek_v4",
    "ropekit.plugins.minimax",
    "ropekit.plugins.mimo",
    "ropekit.plugins.step",
    "ropekit.plugins.refusals",
    "ropekit.plugins.generic",
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
    return constants.dist_version("ropekit") or "0+unknown"


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
    #: the family that answers for model_types no other family claims (see Family.fallback)
    fallback: "Family | None" = None

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

            def register(obj: Any, plugin: str = plugin_name, version: str = version) -> None:
                try:
                    add(obj, plugin, version)
                except PluginError:
                    raise
                except Exception as exc:  # garbage is reported; the plugin's other registrations stand
                    self._fault(plugin, hook_name, exc)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:  # reported by name; other plugins keep working
                self._fault(plugin_name, hook_name, exc)

    def _fault(self, plugin: str, hook: str, exc: Exception) -> None:
        self.faults.append(PluginFault(plugin, hook, f"{type(exc).__name__}: {_cut(str(exc))}"))

    def _add_family(self, family: Any, plugin: str, version: str) -> None:
        if not isinstance(family, Family) or not isinstance(getattr(family, "name", None), str) or not family.name:
            raise TypeError(f"register() expects a named Family instance, got {_repr(family)}")
        model_types = getattr(family, "model_types", None)
        if not isinstance(model_types, (tuple, list, frozenset, set)) or \
                not all(isinstance(t, str) and t for t in model_types):
            raise TypeError(f"family {family.name!r} declares model_types {_repr(model_types)}; expected a "
                            "tuple of non-empty model_type strings")
        is_fallback = not model_types and getattr(family, "fallback", False) is True
        if not model_types and not is_fallback:
            raise TypeError(f"family {family.name!r} declares no model_types; list the model_type values it handles")
        if is_fallback and self.fallback is not None:
            raise PluginError(
                f"families '{self.fallback.name}' ({self.fallback.plugin}) and '{family.name}' ({plugin}) both "
                "answer for unclaimed model_types; block one with ROPEKIT_DISABLE_PLUGINS"
            )
        methods = getattr(family, "methods", None)
        if methods is not None and (isinstance(methods, str) or not all(isinstance(m, str) for m in methods)):
            raise TypeError(f"family {family.name!r} declares methods {_repr(methods)}; expected None or a "
                            "tuple of method names")
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
        family.plugin, family.version = plugin, version
        if plugin not in DEFAULT_PLUGINS:  # a built-in's crash is a ropekit bug and must show as one
            _guard(family, "family", _FAMILY_CALLS)
        self.families_by_name[family.name] = family
        if is_fallback:
            self.fallback = family
        for model_type in family.model_types:
            self.by_model_type[model_type] = family

    def _add_method(self, method: Any, plugin: str, version: str) -> None:
        if not isinstance(method, ScalingMethod) or not isinstance(getattr(method, "name", None), str) \
                or not method.name:
            raise TypeError(f"register() expects a named ScalingMethod instance, got {_repr(method)}")
        band = getattr(method, "stable_max_factor", None)
        if isinstance(band, bool) or not isinstance(band, numbers.Real) or not band > 1:
            raise TypeError(f"scaling method {method.name!r} declares stable_max_factor {_repr(band)}; "
                            "expected a number above 1")
        if method.name in self.methods or method.name == "auto":
            raise PluginError(f"scaling method '{method.name}' is registered twice (again by '{plugin}')")
        method.plugin = plugin
        if plugin not in DEFAULT_PLUGINS:
            _guard(method, "scaling method", _METHOD_CALLS)
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
                "or pass ", Param("family", placeholder="NAME"), " to use an existing one"
            ) from None

    def family(self, name: str) -> "Family":
        """The family registered under ``name``."""
        try:
            return self.families_by_name[name]
        except KeyError:
            known = ", ".join(sorted(self.families_by_name))
            raise UnknownFamilyError(f"no family named {name!r} (known: {known})") from None

    def family_for(self, view: "ConfigView") -> "Family":
        """The family that owns a config: model_type table, the claim_config hook, then the fallback."""
        model_type = view.model_type()
        family = self.by_model_type.get(model_type)
        if family is None:
            claimed, plugin = self._claim(view)
            if claimed is None:
                family = self.fallback or self.lookup(model_type)
            elif claimed not in self.families_by_name:
                known = ", ".join(sorted(self.families_by_name))
                raise UnknownFamilyError(f"no family named {claimed!r} (known: {known}), the answer of plugin "
                                         f"'{plugin}' to claim_config for model_type {model_type!r}; fix or block "
                                         "that plugin (ROPEKIT_DISABLE_PLUGINS), or pass ",
                                         Param("family", placeholder="NAME"))
            else:
                family = self.families_by_name[claimed]
        return family.resolve(view, self)

    def _claim(self, view: "ConfigView") -> tuple[str | None, str | None]:
        """The first ``claim_config`` answer and the plugin that gave it, called one plugin at a time.

        Wrappers (``hookwrapper``/``wrapper`` implementations) are not called.
        """
        config = copy.deepcopy(view.json_dict())  # plugins get a copy: theirs to mutate
        for impl in reversed(self.pm.hook.claim_config.get_hookimpls()):  # pluggy's call order
            if impl.hookwrapper or getattr(impl, "wrapper", False):
                continue
            plugin = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            try:
                answer = impl.function(*[{"config": config}[name] for name in impl.argnames])
            except RopekitError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin '{plugin}' raised {type(exc).__name__} in claim_config "
                                  f"({_cut(str(exc))}); fix it or block it with ROPEKIT_DISABLE_PLUGINS") from exc
            if answer is None:
                continue
            if not isinstance(answer, str) or not answer:
                raise PluginError(f"plugin '{plugin}' answered claim_config with {_repr(answer)}; expected a "
                                  "registered family name or None; fix it or block it with ROPEKIT_DISABLE_PLUGINS")
            return answer, plugin
        return None, None

    def method(self, name: str) -> "ScalingMethod":
        """The scaling method registered under ``name``."""
        try:
            return self.methods[name]
        except KeyError:
            known = ", ".join(sorted(self.methods)) + ", auto"
            raise InvalidRequestError(f"unknown scaling method {name!r}; choose one of {known}") from None


def _repr(value: Any) -> str:
    """A short repr that survives a plugin object whose own ``__repr__`` raises."""
    try:
        return _cut(repr(value))
    except Exception:
        return f"<{type(value).__name__} object>"


def _cut(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


# --- guarding the calls ropekit makes into plugins -----------------------------------------

def _is_family(value: Any) -> bool:
    return isinstance(value, Family)


def _is_sites(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(site, RopeSite) for site in value)


def _is_shipped(value: Any) -> bool:
    return value is None or isinstance(value, ShippedScaling)


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _anything(value: Any) -> bool:
    return True


#: the Family methods ropekit calls, with what each must return
_FAMILY_CALLS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "resolve": (_is_family, "a Family"),
    "rope_sites": (_is_sites, "a non-empty list of RopeSite"),
    "rope": (_is_dict, "a dict"),
    "setting": (_anything, ""),
    "max_position_embeddings": (_is_count, "a positive integer"),
    "native_window": (_is_count, "a positive integer"),
    "unscaled_window": (_is_count, "a positive integer"),
    "scaled_original": (lambda v: v is None or _is_count(v), "a positive integer or None"),
    "shipped_scaling": (_is_shipped, "a ShippedScaling or None"),
    "head_dim": (_is_count, "a positive integer"),
    "rotary_dim": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
    "check_method": (_anything, ""),
    "extra_changes": (_is_dict, "a dict"),
    "implied_settings": (_is_dict, "a dict"),
    "refresh_live_modules": (_anything, ""),
    "refusal": (lambda v: v is None or isinstance(v, str), "a string or None"),
    "note": (lambda v: v is None or isinstance(v, str), "a string or None"),
}
#: the ScalingMethod methods ropekit calls, with what each must return
_METHOD_CALLS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "rope_updates": (_is_dict, "a dict"),
    "config_max_position_embeddings": (_is_count, "a positive integer"),
}


_GUARDED_CLASSES: dict[type, type] = {}


def _guard(obj: Any, kind: str, calls: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """Give a registered object a guarded class: its listed methods go through :func:`_guarded`.

    The guarded class subclasses the plugin's own class (``isinstance`` still holds, and a
    ``copy.copy`` of the object, as the VLM wrapper makes, stays guarded); the plugin's
    methods are looked up at each call, so patching its class keeps working.
    """
    base = type(obj)
    if getattr(base, "_ropekit_guarded", False):
        return
    guarded = _GUARDED_CLASSES.get(base)
    if guarded is None:
        namespace = {"__slots__": (), "__module__": base.__module__, "__qualname__": base.__qualname__,
                     "__doc__": base.__doc__, "_ropekit_guarded": True}
        guarded = type(base)(base.__name__, (base,), namespace)
        for name, (check, expected) in calls.items():
            if callable(getattr(base, name, None)):
                setattr(guarded, name, _guarded(guarded, name, kind, check, expected))
        _GUARDED_CLASSES[base] = guarded
    obj.__class__ = guarded


def _guarded(cls: type, name: str, kind: str, check: Callable[[Any], bool], expected: str) -> Callable[..., Any]:
    """The plugin's ``name`` method, with its faults turned into a :class:`PluginError` naming the plugin."""
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(super(cls, self), name)(*args, **kwargs)
        except RopekitError:
            raise
        except Exception as exc:
            raise PluginError(f"{_who(self, kind)} raised {type(exc).__name__} in {name}() ({_cut(str(exc))}); "
                              "this is a bug in that plugin: report it to its authors, pass ",
                              Param("family", placeholder="NAME"), " to use another family, or block the plugin "
                              "with ROPEKIT_DISABLE_PLUGINS") from exc
        if not check(result):
            raise PluginError(f"{_who(self, kind)} returned {_repr(result)} from {name}(), expected "
                              f"{expected}; this is a bug in that plugin: report it to its authors, or block the "
                              "plugin with ROPEKIT_DISABLE_PLUGINS")
        return result

    call.__name__ = name
    call.__qualname__ = f"{cls.__qualname__}.{name}"
    call.__doc__ = getattr(getattr(cls, name, None), "__doc__", None)
    return call


def _who(obj: Any, kind: str) -> str:
    return f"{kind} {getattr(obj, 'name', '?')!r} of plugin '{getattr(obj, 'plugin', '') or '?'}'"


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
