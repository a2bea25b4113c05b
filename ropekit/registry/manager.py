"""The plugin manager factory and the registry built from it.

``make_plugin_manager()`` returns a fresh plugin manager with the built-in plugins
registered exactly like third-party ones, entry points of the ``ropekit`` group
loaded one at a time (see :mod:`ropekit.registry.isolation`: a plugin that fails
to import, hangs or names an unknown hook is a fault, set aside), and
``ROPEKIT_DISABLE_PLUGINS`` honoured. A :class:`Registry` calls the registration
hooks once, one plugin at a time, so a plugin that raises is reported by name
while the others keep working.

A plugin is held to its word at every call, not only at registration:

* registering something that is not a named :class:`Family` (or
  :class:`ScalingMethod`), or a family whose ``model_types`` are not non-empty
  strings, is recorded in :attr:`Registry.faults`; the plugin's other
  registrations stand;
* a family, model_type or method that another plugin already registered is a
  fault and set aside; a built-in one is taken over only when its name is listed
  in ``ROPEKIT_OVERRIDE_BUILTINS``; the method name ``auto`` is reserved;
* every third-party family and method ropekit calls is guarded (built-ins are not:
  their crash is a ropekit bug and must show as one): an exception other than a
  :class:`RopekitError` (``sys.exit`` included), or a return value of the wrong
  kind, becomes a :class:`PluginError` naming the plugin, the family and the
  method, whichever command called it (plan, patch, inspect, audit, landing);
  what it prints goes to stderr;
* a ``claim_config`` answer that raises or is not a family name or None is a
  :class:`PluginError` naming the plugin; the config it sees is a copy.
"""

from __future__ import annotations

import copy
import importlib
import math
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
from ropekit.registry.isolation import (
    OVERRIDE_ENV,
    PluginFault,
    PluginManager,
    PluginTimeout,
    cut,
    describe,
    load_entry_points,
    overridden_builtins,
    plugin_output,
    plugin_timeout,
    run_bounded,
)
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


def make_plugin_manager(*, entry_points: bool | None = None) -> PluginManager:
    """A new plugin manager with the built-ins and (by default) entry-point plugins.

    An entry-point plugin that cannot be loaded is recorded in ``pm.load_faults``
    (and so in :attr:`Registry.faults`) and left out; the others load.

    :param entry_points: load the ``ropekit`` entry-point group; ``None`` reads
        ``ROPEKIT_NO_ENTRY_POINTS`` at call time.
    """
    pm = PluginManager()
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
    pm.check_pending()  # the built-ins' hook names: a failure here is a ropekit bug
    if constants.load_entry_points() if entry_points is None else entry_points:
        load_entry_points(pm, constants.ENTRY_POINT_GROUP, DEFAULT_PLUGINS)
    return pm


def plugin_version(pm: pluggy.PluginManager, plugin: object) -> str:
    """The version of the distribution that ships a plugin (ropekit's for built-ins)."""
    version = getattr(pm, "versions", {}).get(pm.get_name(plugin))
    if version is not None:
        return str(version)
    for plugin_obj, dist in pm.list_plugin_distinfo():
        if plugin_obj is plugin:
            return str(dist.version)
    return constants.dist_version("ropekit") or "0+unknown"


def is_builtin(plugin: object, name: str | None) -> bool:
    """Whether a registered plugin is one of ropekit's own (a module of :data:`DEFAULT_PLUGINS`)."""
    return name in DEFAULT_PLUGINS and getattr(plugin, "__name__", None) == name


@dataclass
class _Registration:
    """What one plugin's registration hook handed to ``register()``."""

    plugin: str
    version: str
    builtin: bool
    objects: list[Any] = field(default_factory=list)


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
        """Call every plugin's registration hooks, then add what each registered.

        A third-party hook runs bounded by ``ROPEKIT_PLUGIN_TIMEOUT``; a plugin whose hook
        times out is set aside whole (unregistered, nothing of it added).
        """
        reg = cls(pm or make_plugin_manager())
        reg.faults.extend(getattr(reg.pm, "load_faults", ()))
        hooks = (("register_families", reg._add_family), ("register_scaling_methods", reg._add_method))
        called = [(hook_name, add, reg._call(hook_name)) for hook_name, add in hooks]
        for hook_name, add, registrations in called:
            for registration in registrations:
                if reg.pm.has_plugin(registration.plugin):  # not set aside meanwhile
                    reg._add_all(hook_name, add, registration)
        return reg

    def _call(self, hook_name: str) -> list[_Registration]:
        """Each plugin's ``hook_name`` hook called once, in registration order, with what it registered."""
        registrations: list[_Registration] = []
        timeout: float | None = None
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            name = self.pm.get_name(impl.plugin)
            if name is None or impl.hookwrapper or getattr(impl, "wrapper", False):
                continue
            registration = _Registration(name, plugin_version(self.pm, impl.plugin), is_builtin(impl.plugin, name))
            registrations.append(registration)

            def call(function: Callable[..., Any] = impl.function, objects: list[Any] = registration.objects) -> None:
                function(register=objects.append)

            try:
                if registration.builtin:
                    call()
                else:
                    timeout = plugin_timeout() if timeout is None else timeout
                    run_bounded(call, timeout)
            except PluginTimeout as exc:  # abandoned: whatever it registered, before or later, is dropped
                self.faults.append(PluginFault(name, hook_name, describe(exc)))
                self.pm.unregister(impl.plugin)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # reported by name; what it registered first stands
                self.faults.append(PluginFault(name, hook_name, describe(exc)))
        return registrations

    def _add_all(self, hook_name: str, add: Callable[[Any, _Registration], None],
                 registration: _Registration) -> None:
        for obj in registration.objects:
            try:
                add(obj, registration)
            except PluginError as exc:
                if registration.builtin:  # two built-ins disagree: a ropekit bug
                    raise
                self.faults.append(PluginFault(registration.plugin, hook_name, describe(exc)))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # garbage is reported; the plugin's other registrations stand
                self.faults.append(PluginFault(registration.plugin, hook_name, describe(exc)))

    def _is_builtin(self, obj: Any) -> bool:
        plugin = getattr(obj, "plugin", None)
        return plugin in DEFAULT_PLUGINS and is_builtin(self.pm.get_plugin(plugin), plugin)

    def _may_take(self, owner: Any, what: str, name: str, plugin: str, fix: str = "rename it") -> None:
        """Raise the :class:`PluginError` that sets aside ``plugin``'s claim on what ``owner`` holds,
        unless ``owner`` is a built-in and ``name`` is listed in ``ROPEKIT_OVERRIDE_BUILTINS``."""
        if not self._is_builtin(owner):
            raise PluginError(f"{what} is registered by both '{owner.plugin}' and '{plugin}'; the one of "
                              f"'{plugin}' is set aside: block one of the plugins with ROPEKIT_DISABLE_PLUGINS")
        if name not in overridden_builtins():
            raise PluginError(f"{what} of plugin '{plugin}' is built into ropekit ('{owner.plugin}'); the "
                              f"plugin's is set aside: {fix}, or set {OVERRIDE_ENV}={name} to let the "
                              "plugin replace the built-in")

    def _add_family(self, family: Any, registration: _Registration) -> None:
        plugin, version = registration.plugin, registration.version
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
        methods = getattr(family, "methods", None)
        if methods is not None and (isinstance(methods, str) or not all(isinstance(m, str) for m in methods)):
            raise TypeError(f"family {family.name!r} declares methods {_repr(methods)}; expected None or a "
                            "tuple of method names")
        replaced = self.families_by_name.get(family.name)
        if replaced is not None:
            self._may_take(replaced, f"family '{family.name}'", family.name, plugin)
        for model_type in family.model_types:
            owner = self.by_model_type.get(model_type)
            if owner is not None and owner is not replaced:
                self._may_take(owner, f"model_type '{model_type}'", model_type, plugin)
        if is_fallback and self.fallback is not None and self.fallback is not replaced:
            self._may_take(self.fallback, f"the family for unclaimed model_types ('{self.fallback.name}')",
                           self.fallback.name, plugin, f"give family '{family.name}' model_types")
        if replaced is not None:  # listed in ROPEKIT_OVERRIDE_BUILTINS: the built-in goes, with its model_types
            del self.families_by_name[family.name]
            self.by_model_type = {t: f for t, f in self.by_model_type.items() if f is not replaced}
            self.fallback = None if self.fallback is replaced else self.fallback
        family.plugin, family.version = plugin, version
        if not registration.builtin:  # a built-in's crash is a ropekit bug and must show as one
            _guard(family, "family", _FAMILY_CALLS)
        self.families_by_name[family.name] = family
        if is_fallback:
            self.fallback = family
        for model_type in family.model_types:
            self.by_model_type[model_type] = family

    def _add_method(self, method: Any, registration: _Registration) -> None:
        plugin = registration.plugin
        if not isinstance(method, ScalingMethod) or not isinstance(getattr(method, "name", None), str) \
                or not method.name:
            raise TypeError(f"register() expects a named ScalingMethod instance, got {_repr(method)}")
        band = getattr(method, "stable_max_factor", None)
        if isinstance(band, bool) or not isinstance(band, numbers.Real) or not band > 1:
            raise TypeError(f"scaling method {method.name!r} declares stable_max_factor {_repr(band)}; "
                            "expected a number above 1")
        if method.name == "auto":
            raise PluginError(f"scaling method 'auto' of plugin '{plugin}' takes the name that lets ropekit "
                              "choose the method; rename it")
        if method.name in self.methods:
            self._may_take(self.methods[method.name], f"scaling method '{method.name}'", method.name, plugin)
        method.plugin = plugin
        if not registration.builtin:
            _guard(method, "scaling method", _METHOD_CALLS)
        self.methods[method.name] = method

    def lookup(self, model_type: str) -> "Family":
        """The family that declares ``model_type``."""
        try:
            return self.by_model_type[model_type]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self.families_by_name)) or "none"
            raise UnknownFamilyError(
                f"no family handles model_type {model_type!r} (families: {known}{self._faulty()}; "
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
            raise UnknownFamilyError(f"no family named {name!r} (known: {known}{self._faulty()})") from None

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
        try:
            return family.resolve(view, self)
        except UnknownFamilyError as exc:  # the fallback knows no such model_type: a faulty plugin may have
            note = self._faulty(" (", ")")
            head = exc.parts[0] if exc.parts and isinstance(exc.parts[0], str) else ""
            if family is not self.fallback or not note or "; " not in head:
                raise
            problem, fix = head.split("; ", 1)
            raise UnknownFamilyError(f"{problem}{note}; {fix}", *exc.parts[1:]) from None

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
                with plugin_output():
                    answer = impl.function(*[{"config": config}[name] for name in impl.argnames])
            except (RopekitError, KeyboardInterrupt):
                raise
            except BaseException as exc:  # sys.exit() in a plugin is its fault too
                raise PluginError(f"plugin '{plugin}' raised {type(exc).__name__} in claim_config "
                                  f"({cut(str(exc))}); fix it or block it with ROPEKIT_DISABLE_PLUGINS") from exc
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
            raise InvalidRequestError(f"unknown scaling method {name!r}{self._faulty(' (', ')')}; choose one "
                                      f"of {known}") from None

    def _faulty(self, before: str = "; ", after: str = "") -> str:
        """Words naming the plugins with faults ('ropekit plugins' says what each did), or nothing."""
        names = sorted({fault.plugin for fault in self.faults})
        return f"{before}plugins with faults, see 'ropekit plugins': {', '.join(names)}{after}" if names else ""


def _repr(value: Any) -> str:
    """A short repr that survives a plugin object whose own ``__repr__`` raises."""
    try:
        return cut(repr(value))
    except Exception:
        return f"<{type(value).__name__} object>"


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


def _is_finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_json(value: Any) -> bool:
    """A value ropekit can write into config.json: JSON types, numbers finite."""
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, numbers.Real):
        return _is_finite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_json(item) for item in value)
    return isinstance(value, dict) and all(isinstance(k, str) and _is_json(v) for k, v in value.items())


def _is_json_dict(value: Any) -> bool:
    return isinstance(value, dict) and _is_json(value)


#: rope keys that hold a number (or null) wherever transformers reads them
_NUMERIC_ROPE_KEYS = frozenset({"factor", "original_max_position_embeddings", "rope_theta", "attention_factor",
                                "beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor", "mscale",
                                "mscale_all_dim"})


def _is_rope_updates(value: Any) -> bool:
    return _is_json_dict(value) and isinstance(value.get("rope_type", ""), str) and \
        all(value[k] is None or _is_finite(value[k]) for k in _NUMERIC_ROPE_KEYS & set(value))


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
    "extra_changes": (_is_json_dict, "a dict of JSON values (numbers finite)"),
    "implied_settings": (_is_json_dict, "a dict of JSON values (numbers finite)"),
    "softmax_scale_multiplier": (lambda v: _is_finite(v) and v > 0, "a positive finite number"),
    "legacy_mirror": (lambda v: v is None or _is_json_dict(v), "a dict of JSON values or None"),
    "refresh_live_modules": (_anything, ""),
    "refusal": (lambda v: v is None or isinstance(v, str), "a string or None"),
    "note": (lambda v: v is None or isinstance(v, str), "a string or None"),
}
#: the ScalingMethod methods ropekit calls, with what each must return
_METHOD_CALLS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "rope_updates": (_is_rope_updates, "a dict of rope keys with finite numbers"),
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
            with plugin_output():
                result = getattr(super(cls, self), name)(*args, **kwargs)
        except (RopekitError, KeyboardInterrupt):
            raise
        except BaseException as exc:  # sys.exit() in a plugin is its fault too
            raise PluginError(f"{_who(self, kind)} raised {type(exc).__name__} in {name}() ({cut(str(exc))}); "
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
