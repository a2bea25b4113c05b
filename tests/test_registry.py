"""The plugin registry: duplicate claims, blocking, faulty plugins, claim_config, and the hook docs."""

from __future__ import annotations

import ast
import re

import pluggy
import pytest
from conftest import ROOT, load_fixture, registry_with

from ropekit import LongContextConfig, hookimpl
from ropekit.errors import PluginError, UnknownFamilyError
from ropekit.registry import get_registry, hookspecs, lookup, reset_registry
from ropekit.registry.family import Family
from ropekit.registry.manager import DEFAULT_PLUGINS, PluginFault
from ropekit.scaling.config_view import ConfigView
from ropekit.scaling.engine import plan_config
from ropekit.scaling.methods import Linear

YARN4 = LongContextConfig(method="yarn", factor=4)


class Claims:
    """A plugin that registers a family claiming the given model_types."""

    def __init__(self, family_name: str, *model_types: str):
        self.family = type("Claimed", (Family,), {"name": family_name, "model_types": model_types})()

    @hookimpl
    def register_families(self, register):
        register(self.family)


class Raises:
    @hookimpl
    def register_families(self, register):
        raise RuntimeError("boom in register_families")

    @hookimpl
    def register_scaling_methods(self, register):
        raise ValueError("boom in register_scaling_methods")


class Answers:
    """A claim_config plugin that records that it was asked."""

    def __init__(self, answer):
        self.answer, self.asked = answer, 0

    @hookimpl
    def claim_config(self, config):
        self.asked += 1
        return self.answer


# --- register_families --------------------------------------------------------------------

def test_register_families_claiming_a_built_in_model_type_is_a_fault_naming_both_plugins():
    reg = registry_with(("acme-llama", Claims("acme_llama", "olmo2", "llama")))
    [fault] = reg.faults
    assert (fault.plugin, fault.hook) == ("acme-llama", "register_families")
    assert "'llama'" in fault.error and "'ropekit.plugins.llama'" in fault.error and "'acme-llama'" in fault.error
    assert "ROPEKIT_OVERRIDE_BUILTINS=llama" in fault.error
    assert reg.lookup("llama").plugin == "ropekit.plugins.llama" and "acme_llama" not in reg.families_by_name


def test_register_families_duplicate_family_name_is_a_fault_naming_both_plugins():
    reg = registry_with(("acme-qwen", Claims("qwen", "qwen9")))
    assert [f.plugin for f in reg.faults] == ["acme-qwen"]
    assert re.search("'qwen'.*'acme-qwen'.*'ropekit.plugins.qwen'", reg.faults[0].error)
    assert reg.family("qwen").plugin == "ropekit.plugins.qwen"
    with pytest.raises(UnknownFamilyError, match="plugins with faults, see 'ropekit plugins': acme-qwen"):
        reg.lookup("qwen9")


def test_two_third_party_plugins_claiming_one_model_type_the_second_is_set_aside():
    reg = registry_with(("acme-a", Claims("acme_a", "acme_llama")), ("acme-b", Claims("acme_b", "acme_llama", "b2")))
    assert reg.lookup("acme_llama").plugin == "acme-a" and "acme_b" not in reg.families_by_name
    assert [f.plugin for f in reg.faults] == ["acme-b"]
    assert "'acme-a' and 'acme-b'" in reg.faults[0].error and "ROPEKIT_DISABLE_PLUGINS" in reg.faults[0].error


def test_register_families_hook_that_raises_is_reported_and_others_keep_working():
    reg = registry_with(("broken", Raises()))
    assert PluginFault("broken", "register_families", "RuntimeError: boom in register_families") in reg.faults
    assert PluginFault("broken", "register_scaling_methods",
                       "ValueError: boom in register_scaling_methods") in reg.faults
    assert reg.lookup("qwen3").name == "qwen" and reg.lookup("gemma3").name == "gemma3"
    assert set(reg.methods) == {"linear", "ntk", "dynamic", "yarn"}
    assert plan_config(load_fixture("Qwen__Qwen3-8B"), YARN4, registry=reg).new_window == 131072


def test_register_families_with_something_that_is_not_a_family_is_a_fault():
    class Garbage:
        @hookimpl
        def register_families(self, register):
            register("mixtral")

    reg = registry_with(("garbage", Garbage()))
    assert [f.plugin for f in reg.faults] == ["garbage"] and "Family" in reg.faults[0].error
    assert reg.lookup("mixtral").name == "mixtral"


def test_disable_plugins_blocks_builtins_by_name(monkeypatch):
    monkeypatch.setenv("ROPEKIT_DISABLE_PLUGINS", "ropekit.plugins.qwen, ropekit.plugins.phi")
    reset_registry()
    for model_type in ("qwen2", "qwen3", "phi3"):
        with pytest.raises(UnknownFamilyError):
            lookup(model_type)
    assert lookup("qwen3_moe").name == "qwen_moe"  # another plugin, not blocked
    names = {f.plugin for f in get_registry().families_by_name.values()}
    assert names == set(DEFAULT_PLUGINS) - {"ropekit.plugins.qwen", "ropekit.plugins.phi", "ropekit.plugins.methods"}


def test_a_blocked_plugin_frees_its_model_types_for_another(monkeypatch):
    monkeypatch.setenv("ROPEKIT_DISABLE_PLUGINS", "ropekit.plugins.phi")
    reg = registry_with(("acme-phi", Claims("acme_phi", "phi3")))
    assert (reg.lookup("phi3").name, reg.lookup("phi3").plugin) == ("acme_phi", "acme-phi")


def test_a_misspelled_hook_is_caught_when_loading():
    class Misspelled:
        @hookimpl
        def register_familes(self, register):
            pass

    with pytest.raises((pluggy.PluginValidationError, PluginError), match="register_familes"):
        registry_with(("typo", Misspelled()))


# --- register_scaling_methods -------------------------------------------------------------

def test_register_scaling_methods_refuses_a_second_method_of_the_same_name():
    class Twice:
        @hookimpl
        def register_scaling_methods(self, register):
            register(Linear())

    reg = registry_with(("twice", Twice()))
    assert [(f.plugin, f.hook) for f in reg.faults] == [("twice", "register_scaling_methods")]
    assert "'linear' of plugin 'twice' is built into ropekit" in reg.faults[0].error
    assert reg.method("linear").plugin == "ropekit.plugins.methods"


def test_register_scaling_methods_reserves_auto():
    class Auto(Linear):
        name = "auto"

    class Registers:
        @hookimpl
        def register_scaling_methods(self, register):
            register(Auto())

    reg = registry_with(("auto", Registers()))
    assert [f.plugin for f in reg.faults] == ["auto"] and "'auto'" in reg.faults[0].error
    assert "auto" not in reg.methods


# --- claim_config -------------------------------------------------------------------------

def renamed_llama():
    return {**load_fixture("meta-llama__Llama-2-7b-hf"), "model_type": "llama_sft"}


def test_claim_config_is_first_result():
    first, second = Answers("qwen"), Answers("llama")
    reg = registry_with(("first", first), ("second", second))  # pluggy asks the last registered first
    assert reg.family_for(ConfigView(renamed_llama())).name == "llama"
    assert (second.asked, first.asked) == (1, 0)


def test_claim_config_passing_falls_through_to_the_next_plugin():
    first, second = Answers("llama"), Answers(None)
    reg = registry_with(("first", first), ("second", second))
    assert reg.family_for(ConfigView(renamed_llama())).name == "llama"
    assert (second.asked, first.asked) == (1, 1)


def test_claim_config_is_not_asked_when_the_model_type_is_known():
    asked = Answers("qwen")
    reg = registry_with(("asked", asked))
    assert reg.family_for(ConfigView(load_fixture("Qwen__Qwen3-8B"))).name == "qwen"
    assert asked.asked == 0


def test_claim_config_with_no_answer_or_a_bad_answer_is_an_unknown_family():
    with pytest.raises(UnknownFamilyError, match="'llama_sft'.*family=NAME"):
        registry_with(("silent", Answers(None))).family_for(ConfigView(renamed_llama()))
    with pytest.raises(UnknownFamilyError, match="no family named 'nope'"):
        registry_with(("wrong", Answers("nope"))).family_for(ConfigView(renamed_llama()))


# --- every hook has a test and a documented section ---------------------------------------

def hook_names() -> list[str]:
    return sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, "ropekit_spec"))


def test_meta_every_hook_has_a_test_and_a_doc_section():
    hooks = hook_names()
    assert hooks == ["claim_config", "register_families", "register_scaling_methods"]
    headings = [line for line in (ROOT / "README.md").read_text().splitlines()
                if line.startswith("#")]
    test_names = [node.name for path in (ROOT / "tests").glob("test_*.py")
                  for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    for hook in hooks:
        assert any(re.search(rf"`{hook}`", h) for h in headings), f"no docs section for hook {hook}"
        tests = [t for t in test_names if hook in t]
        assert len(tests) >= 2, f"hook {hook} needs tests named after it, found {tests}"
