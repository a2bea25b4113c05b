"""The hooks a ropekit plugin can implement.

Built-in families and scaling methods register through these same hooks
(see :data:`ropekit.registry.manager.DEFAULT_PLUGINS`); a third-party package
exposes a module under the ``ropekit`` entry-point group and decorates its
functions with :data:`ropekit.hookimpl`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from ropekit.registry.family import Family
    from ropekit.scaling.methods import ScalingMethod

hookspec = pluggy.HookspecMarker("ropekit")
hookimpl = pluggy.HookimplMarker("ropekit")


@hookspec
def register_families(register: Callable[["Family"], None]) -> None:
    """Register architecture families by calling ``register(family)`` once per family.

    :param register: takes a :class:`~ropekit.registry.family.Family` instance. A
        family name or model_type another plugin already registered is a fault naming
        both plugins, and set aside (a built-in one unless listed in
        ``ROPEKIT_OVERRIDE_BUILTINS``). The hook may take at most
        ``ROPEKIT_PLUGIN_TIMEOUT`` seconds.
    """


@hookspec
def register_scaling_methods(register: Callable[["ScalingMethod"], None]) -> None:
    """Register RoPE scaling methods by calling ``register(method)`` once per method.

    :param register: takes a :class:`~ropekit.scaling.methods.ScalingMethod`
        instance; its ``name`` becomes a valid ``LongContextConfig.method``. A name
        already registered (or ``auto``) is a fault, set aside.
    """


@hookspec(firstresult=True)
def claim_config(config: dict[str, Any]) -> "str | None":
    """Name the family that owns a config whose ``model_type`` no family declares.

    Called only when the model_type table has no answer. Return a registered
    family name to claim the config, or ``None`` to pass. The first non-None
    answer wins.

    :param config: the config as a plain JSON dict (read-only).
    """
