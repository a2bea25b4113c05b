"""Plugin faults: a plugin that raises or hands back garbage is named, and the other families keep working.

Registration-time faults land in ``Registry.faults`` (and ``ropekit plugins``); a family
or scaling method that raises or returns the wrong kind of value when ropekit calls it
becomes a PluginError naming the plugin, the family and the method (exit 4, never the
exit 1 of a ropekit bug), and the config is left as it was.
"""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
from conftest import FIXTURES, load_fixture, registry_with

from ropekit import LongContextConfig, apply_rope_scaling, files, hookimpl, plan
from ropekit.cli import main
from ropekit.errors import PluginError, UnknownFamilyError
from ropekit.registry import manager
from ropekit.registry.family import Family
from ropekit.registry.manager import Registry
from ropekit.scaling.config_view import ConfigView
from ropekit.scaling.methods import Linear, YaRN

YARN4 = LongContextConfig(method="yarn", factor=4)
QWEN3 = "Qwen__Qwen3-8B"
LLAMA3 = "meta-llama__Meta-Llama-3-8B-Instruct"


@pytest.fixture
def install(monkeypatch):
    """Make a registry with extra plugins the process-wide one (what ropekit.plan and the CLI use)."""
    def run(*plugins: tuple[str, object]) -> Registry:
        reg = registry_with(*plugins)
        monkeypatch.setattr(manager, "_default", reg)
        return reg
    return run


def assert_builtins_work(reg: Registry) -> None:
    """The built-in families and methods are all there and plan as they should."""
    assert reg.lookup("qwen3").name == "qwen" and reg.lookup("llama").name == "llama"
    assert {"linear", "ntk", "dynamic", "yarn"} <= set(reg.methods)
    from ropekit.scaling.engine import plan_config

    assert plan_config(load_fixture(QWEN3), YARN4, registry=reg).new_window == 4 * 32768  # Qwen3: 32768 native
    assert plan_config(load_fixture(LLAMA3), YARN4, registry=reg).new_window == 4 * 8192


def acme_config() -> dict:
    """Llama 3's config under a model_type only the acme plugin declares."""
    return {**load_fixture(LLAMA3), "model_type": "acme_llama"}


class AcmeFamily(Family):
    name = "acme"
    model_types = ("acme_llama",)


class Registers:
    """A plugin registering the given objects from register_families and register_scaling_methods."""

    def __init__(self, families=(), methods=()):
        self.families, self.methods = families, methods

    @hookimpl
    def register_families(self, register):
        for family in self.families:
            register(family)

    @hookimpl
    def register_scaling_methods(self, register):
        for method in self.methods:
            register(method)


# --- registration time --------------------------------------------------------------------

class Raises:
    @hookimpl
    def register_families(self, register):
        register(AcmeFamily())
        raise RuntimeError("table missing")


def test_register_families_hook_that_raises_is_a_fault_named_by_plugin(install, capsys):
    reg = install(("acme-plugin", Raises()))
    assert [(f.plugin, f.hook, f.error) for f in reg.faults] == [
        ("acme-plugin", "register_families", "RuntimeError: table missing")]
    assert reg.lookup("acme_llama").plugin == "acme-plugin"  # what it registered before raising stands
    assert_builtins_work(reg)
    assert main(["plugins", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["faults"] == [
        {"plugin": "acme-plugin", "hook": "register_families", "error": "RuntimeError: table missing"}]


def family_class(**attrs):
    return type("Garbage", (Family,), attrs)


GARBAGE_FAMILIES = {
    "a-string": ("mixtral", "Family instance"),
    "a-class-not-an-instance": (AcmeFamily, "Family instance"),
    "no-name": (family_class(model_types=("nameless",))(), "named Family"),
    "empty-name": (family_class(name="", model_types=("nameless",))(), "named Family"),
    "non-string-name": (family_class(name=7, model_types=("nameless",))(), "named Family"),
    "empty-model-types": (family_class(name="empty", model_types=())(), "declares no model_types"),
    "model-types-a-string": (family_class(name="stringy", model_types="llama2x")(), "'llama2x'"),
    "non-string-model-type": (family_class(name="numeric", model_types=(5,))(), "(5,)"),
    "empty-model-type": (family_class(name="blank", model_types=("",))(), "('',)"),
    "no-model-types": (family_class(name="untyped")(), "None"),
    "methods-a-string": (family_class(name="onemethod", model_types=("onemethod",), methods="yarn")(), "'yarn'"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE_FAMILIES))
def test_register_families_with_garbage_is_a_fault_and_the_rest_registers(install, capsys, case):
    garbage, words = GARBAGE_FAMILIES[case]
    reg = install(("acme-plugin", Registers(families=[garbage, AcmeFamily()])))
    assert len(reg.faults) == 1, reg.faults
    fault = reg.faults[0]
    assert (fault.plugin, fault.hook) == ("acme-plugin", "register_families")
    assert fault.error.startswith("TypeError: ") and words in fault.error, fault.error
    assert reg.lookup("acme_llama").name == "acme"  # the plugin's valid family still registers
    for bogus in ("nameless", "l", "5", "", "onemethod"):
        with pytest.raises(UnknownFamilyError):
            reg.lookup(bogus)
    assert_builtins_work(reg)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "faults" in out and "acme-plugin" in out and "register_families" in out


class Doubling(Linear):
    name = "doubling"


@pytest.mark.parametrize("garbage, words", [
    ("ntk2", "ScalingMethod instance"),
    (type("Nameless", (Linear,), {"name": ""})(), "named ScalingMethod"),
    (type("Banded", (Linear,), {"name": "banded", "stable_max_factor": "big"})(), "stable_max_factor"),
    (type("Shrinks", (Linear,), {"name": "shrinks", "stable_max_factor": 0.5})(), "above 1"),
], ids=["a-string", "no-name", "band-not-a-number", "band-below-one"])
def test_register_scaling_methods_with_garbage_is_a_fault_and_the_rest_registers(install, garbage, words):
    reg = install(("acme-plugin", Registers(methods=[garbage, Doubling()])))
    assert [(f.plugin, f.hook) for f in reg.faults] == [("acme-plugin", "register_scaling_methods")]
    assert words in reg.faults[0].error
    assert reg.method("doubling").plugin == "acme-plugin"
    assert_builtins_work(reg)


# --- plan time: family methods that raise or return garbage --------------------------------

def faulty_family(method: str, behaviour):
    return type("Faulty", (AcmeFamily,), {method: behaviour})()


def raising(exc: Exception):
    def method(self, *args, **kwargs):
        raise exc
    return method


def returning(value):
    def method(self, *args, **kwargs):
        return value
    return method


FAMILY_FAULTS = {
    "native_window-ZeroDivisionError": ("native_window", raising(ZeroDivisionError("division by zero")),
                                        "raised ZeroDivisionError in native_window()"),
    "rope_sites-KeyError": ("rope_sites", raising(KeyError("rope_parameters")), "raised KeyError in rope_sites()"),
    "rope-TypeError": ("rope", raising(TypeError("bad operand")), "raised TypeError in rope()"),
    "rotary_dim-AttributeError": ("rotary_dim", raising(AttributeError("head_dim")),
                                  "raised AttributeError in rotary_dim()"),
    "shipped_scaling-ValueError": ("shipped_scaling", raising(ValueError("no")),
                                   "raised ValueError in shipped_scaling()"),
    "extra_changes-IndexError": ("extra_changes", raising(IndexError("out of range")),
                                 "raised IndexError in extra_changes()"),
    "resolve-RuntimeError": ("resolve", raising(RuntimeError("lost")), "raised RuntimeError in resolve()"),
    "check_method-RecursionError": ("check_method", raising(RecursionError("deep")),
                                    "raised RecursionError in check_method()"),
    "rope_sites-returns-None": ("rope_sites", returning(None), "returned None from rope_sites()"),
    "rope_sites-returns-empty": ("rope_sites", returning([]), "returned [] from rope_sites()"),
    "native_window-returns-a-string": ("native_window", returning("32k"), "returned '32k' from native_window()"),
    "native_window-returns-negative": ("native_window", returning(-1), "returned -1 from native_window()"),
    "rotary_dim-returns-a-float": ("rotary_dim", returning(64.0), "returned 64.0 from rotary_dim()"),
    "rope-returns-a-list": ("rope", returning([]), "returned [] from rope()"),
    "resolve-returns-a-name": ("resolve", returning("llama"), "returned 'llama' from resolve()"),
    "native_window-sys.exit": ("native_window", raising(SystemExit(3)), "raised SystemExit in native_window()"),
    "rope_sites-sys.exit": ("rope_sites", raising(SystemExit("bye")), "raised SystemExit in rope_sites()"),
    "rotary_dim-returns-a-string": ("rotary_dim", returning("64"), "returned '64' from rotary_dim()"),
    "extra_changes-returns-nan": ("extra_changes", returning({"head_dim": math.nan}),
                                  "returned {'head_dim': nan} from extra_changes()"),
    "extra_changes-returns-an-object": ("extra_changes", returning({"head_dim": object()}),
                                        "returned {'head_dim': <object object"),
}


@pytest.mark.parametrize("case", sorted(FAMILY_FAULTS))
def test_family_fault_at_plan_time_is_a_plugin_error_naming_the_plugin(install, case):
    method, behaviour, words = FAMILY_FAULTS[case]
    reg = install(("acme-plugin", Registers(families=[faulty_family(method, behaviour)])))
    config = acme_config()
    before = copy.deepcopy(config)
    for call in (lambda: plan(config, YARN4), lambda: apply_rope_scaling(config, YARN4)):
        with pytest.raises(PluginError) as caught:
            call()
        message = str(caught.value)
        assert "family 'acme' of plugin 'acme-plugin'" in message and words in message, message
        assert "\n" not in message and caught.value.exit_code == 4
    assert config == before  # nothing half-applied
    assert_builtins_work(reg)  # the other families are untouched


@pytest.mark.parametrize("case", ["native_window-ZeroDivisionError", "rope_sites-returns-None"])
def test_family_fault_through_the_cli_is_exit_4_naming_the_plugin(install, capsys, tmp_path, case):
    method, behaviour, words = FAMILY_FAULTS[case]
    install(("acme-plugin", Registers(families=[faulty_family(method, behaviour)])))
    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(acme_config(), indent=2) + "\n")
    original = (folder / "config.json").read_bytes()
    for argv in (["plan", str(folder), "--factor", "4"], ["inspect", str(folder)],
                 ["patch", str(folder), "--factor", "4", "--in-place"],
                 ["patch", str(folder), "--factor", "4", "--out", str(tmp_path / "out")]):
        assert main(argv) == 4, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and "'acme-plugin'" in err and words in err
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # nothing written
    assert (folder / "config.json").read_bytes() == original and not (tmp_path / "out").exists()

    llama = tmp_path / "llama"
    shutil.copytree(FIXTURES / LLAMA3, llama)
    assert main(["audit", "--json", str(folder), str(llama)]) == 0  # the audit goes on past the fault
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert "'acme-plugin'" in rows[0]["error"] and rows[1]["error"] is None
    assert rows[1]["long_context"]["new_max_position_embeddings"] == 32768


def test_scaling_method_fault_at_plan_time_is_a_plugin_error_naming_the_plugin(install):
    class Broken(YaRN):
        name = "broken"

        def rope_updates(self, req, rope):
            raise ArithmeticError("overflow in my formula")

    class Garbage(YaRN):
        name = "garbage"

        def rope_updates(self, req, rope):
            return [("factor", 4.0)]

    install(("acme-methods", Registers(methods=[Broken(), Garbage()])))
    config = load_fixture(LLAMA3)
    with pytest.raises(PluginError, match="scaling method 'broken' of plugin 'acme-methods' raised "
                                          "ArithmeticError in rope_updates"):
        plan(config, LongContextConfig(method="broken", factor=4))
    with pytest.raises(PluginError, match=r"scaling method 'garbage' of plugin 'acme-methods' returned \[\('factor'"):
        apply_rope_scaling(config, LongContextConfig(method="garbage", factor=4))
    assert config == load_fixture(LLAMA3)
    assert plan(config, YARN4).new_window == 32768  # the built-in yarn is untouched


@pytest.mark.parametrize("updates, words", [
    ({"rope_type": "yarn", "factor": math.nan}, "returned {'rope_type': 'yarn', 'factor': nan} from rope_updates()"),
    ({"rope_type": "yarn", "factor": "four"}, "returned {'rope_type': 'yarn', 'factor': 'four'} from rope_updates()"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": math.inf}, "'beta_fast': inf} from rope_updates()"),
    ({"rope_type": 4, "factor": 4.0}, "{'rope_type': 4, 'factor': 4.0} from rope_updates()"),
], ids=["nan-factor", "string-factor", "infinite-beta", "numeric-rope-type"])
def test_scaling_method_returning_non_numbers_is_the_plugins_fault(install, capsys, tmp_path, updates, words):
    """Not "lower the factor" (exit 2) and never written into config.json: the plugin is named, exit 4."""
    class Garbage(YaRN):
        name = "garbage"

        def rope_updates(self, req, rope):
            return dict(updates)

    install(("acme-methods", Registers(methods=[Garbage()])))
    config = load_fixture(LLAMA3)
    with pytest.raises(PluginError, match="scaling method 'garbage' of plugin 'acme-methods' returned") as caught:
        apply_rope_scaling(config, LongContextConfig(method="garbage", factor=4))
    assert words in str(caught.value) and config == load_fixture(LLAMA3)
    shutil.copytree(FIXTURES / LLAMA3, tmp_path / "llama")
    original = (tmp_path / "llama" / "config.json").read_bytes()
    assert main(["patch", str(tmp_path / "llama"), "--factor", "4", "--method", "garbage", "--in-place"]) == 4
    assert "'acme-methods'" in capsys.readouterr().err
    assert (tmp_path / "llama" / "config.json").read_bytes() == original


@pytest.mark.parametrize("method, value, args", [
    ("softmax_scale_multiplier", math.nan, ({"rope_type": "yarn", "factor": 4.0},)),
    ("softmax_scale_multiplier", "1.2", ({"rope_type": "yarn", "factor": 4.0},)),
    ("softmax_scale_multiplier", 0.0, ({"rope_type": "yarn", "factor": 4.0},)),
    ("legacy_mirror", 5, (None, (), {})),
    ("legacy_mirror", {"rope_scaling": {"factor": math.inf}}, (None, (), {})),
], ids=["multiplier-nan", "multiplier-string", "multiplier-zero", "mirror-int", "mirror-infinite"])
def test_family_numbers_ropekit_computes_with_are_checked(method, value, args):
    reg = registry_with(("acme-plugin", Registers(families=[faulty_family(method, returning(value))])))
    with pytest.raises(PluginError, match=rf"family 'acme' of plugin 'acme-plugin' returned .* from {method}\(\)"):
        getattr(reg.lookup("acme_llama"), method)(*args)


def test_guards_follow_the_family_class_and_copies():
    """Patching the plugin's class still takes effect; a copy (as the VLM wrapper makes) stays guarded."""
    reg = registry_with(("acme-plugin", Registers(families=[AcmeFamily()])))
    family = reg.lookup("acme_llama")
    assert isinstance(family, AcmeFamily) and type(family).__name__ == "AcmeFamily"
    view = ConfigView(acme_config())
    site = family.rope_sites(view)[-1]
    assert family.native_window(view, site) == 8192
    original = AcmeFamily.native_window
    try:
        AcmeFamily.native_window = raising(ZeroDivisionError("patched"))
        with pytest.raises(PluginError, match="ZeroDivisionError in native_window"):
            family.native_window(view, site)
        with pytest.raises(PluginError, match="ZeroDivisionError in native_window"):
            copy.copy(family).native_window(view, site)
    finally:
        AcmeFamily.native_window = original
    assert family.native_window(view, site) == 8192


# --- claim_config ---------------------------------------------------------------------------

class Claims:
    def __init__(self, behaviour):
        self.behaviour = behaviour

    @hookimpl
    def claim_config(self, config):
        return self.behaviour(config)


def renamed_llama() -> dict:
    return {**load_fixture(LLAMA3), "model_type": "llama_sft"}


def fail(config):
    raise LookupError("no table")


@pytest.mark.parametrize("behaviour, words", [
    (fail, "plugin 'acme-claims' raised LookupError in claim_config (no table)"),
    (lambda config: 42, "plugin 'acme-claims' answered claim_config with 42"),
    (lambda config: ["llama"], "plugin 'acme-claims' answered claim_config with ['llama']"),
    (lambda config: AcmeFamily(), "plugin 'acme-claims' answered claim_config with <Family acme"),
    (lambda config: "", "plugin 'acme-claims' answered claim_config with ''"),
], ids=["raises", "int", "list", "family-object", "empty-string"])
def test_claim_config_fault_is_a_plugin_error_naming_the_plugin(install, behaviour, words):
    reg = install(("acme-claims", Claims(behaviour)))
    config = renamed_llama()
    with pytest.raises(PluginError) as caught:
        plan(config, YARN4)
    assert words in str(caught.value) and caught.value.exit_code == 4
    assert config == renamed_llama()
    assert_builtins_work(reg)  # known model_types never ask claim_config


def test_claim_config_naming_an_unknown_family_names_the_plugin(install):
    install(("acme-claims", Claims(lambda config: "nope")))
    with pytest.raises(UnknownFamilyError, match="no family named 'nope'.*plugin 'acme-claims'.*'llama_sft'"):
        plan(renamed_llama(), YARN4)


def test_claim_config_gets_a_copy_it_cannot_corrupt(install):
    def vandal(config):
        config["rope_theta"] = 1.0
        config.clear()
        return "llama"

    install(("acme-claims", Claims(vandal)))
    config = renamed_llama()
    assert plan(config, YARN4).new_window == 32768
    assert config == renamed_llama()


def test_claim_config_falls_through_a_passing_plugin_to_one_that_answers(install):
    install(("first", Claims(lambda config: "llama")), ("second", Claims(lambda config: None)))
    assert plan(renamed_llama(), YARN4).family.name == "llama"


def test_cli_plan_with_a_raising_claim_config_is_exit_4(install, capsys, tmp_path):
    install(("acme-claims", Claims(fail)))
    (tmp_path / "config.json").write_text(json.dumps(renamed_llama()))
    assert main(["plan", str(tmp_path), "--factor", "4"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: plugin 'acme-claims' raised LookupError in claim_config")
    assert [p.name for p in tmp_path.iterdir()] == [files.CONFIG_FILENAME]
