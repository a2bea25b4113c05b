"""One bad installed plugin cannot break, hang, silence or corrupt ropekit: it is named and set aside.

Each plugin is installed for real: a ``*.dist-info`` folder (METADATA, entry_points.txt)
and its module on a temporary ``sys.path`` entry, which is what ``importlib.metadata``
reads for an installed package (as in test_third_party_plugin.py). Beside the bad
plugin a good one is always installed; it and every built-in family must keep working,
and ``ropekit plugins`` (also ``--json``) must list the fault under the plugin's name.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import textwrap
import threading
import types

import pytest
from conftest import FIXTURES, load_fixture

from ropekit.cli import main
from ropekit.registry import get_registry, reset_registry

LLAMA3 = "meta-llama__Meta-Llama-3-8B-Instruct"

GOOD = """
from ropekit import hookimpl
from ropekit.registry.family import Family


class Good(Family):
    name = "acme_good"
    model_types = ("acme_good",)


@hookimpl
def register_families(register):
    register(Good())
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(entry_point_name, source)``: a distribution whose ``ropekit`` entry point is that module."""
    site = tmp_path / "site"
    site.mkdir()
    modules: list[str] = []

    def run(name: str, source: str, *, module: str | None = None) -> None:
        module = module or "acme_" + name.replace("-", "_")
        if not module.startswith("acme_not_installed"):
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        dist = site / f"{name.replace('-', '_')}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[ropekit]\n{name} = {module}\n")
        modules.append(module)
        importlib.invalidate_caches()
        reset_registry()

    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("ROPEKIT_NO_ENTRY_POINTS", raising=False)
    monkeypatch.delenv("ROPEKIT_OVERRIDE_BUILTINS", raising=False)
    monkeypatch.delenv("ROPEKIT_PLUGIN_TIMEOUT", raising=False)
    run("acme-good", GOOD)
    yield run
    for module in modules:
        sys.modules.pop(module, None)
    reset_registry()


@pytest.fixture
def gate(monkeypatch):
    """A module plugins can wait on (``acme_gate.release``), released when the test ends."""
    module = types.ModuleType("acme_gate")
    module.release = threading.Event()
    monkeypatch.setitem(sys.modules, "acme_gate", module)
    yield module
    module.release.set()
    for thread in threading.enumerate():
        if thread.name == "ropekit-plugin":
            thread.join(10)


def folder_of(tmp_path, name: str, config: dict) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def listing(capsys) -> dict:
    """``ropekit plugins --json``, which must succeed with nothing but the document on stdout."""
    assert main(["plugins", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_others_work(capsys, tmp_path) -> None:
    """The good plugin's family and the built-ins plan through the command line."""
    families = {f["name"]: f["plugin"] for f in listing(capsys)["families"]}
    assert families["acme_good"] == "acme-good" and families["llama"] == "ropekit.plugins.llama"
    good = folder_of(tmp_path, "good", {**load_fixture(LLAMA3), "model_type": "acme_good"})
    llama = str(shutil.copytree(FIXTURES / LLAMA3, tmp_path / "llama"))
    for folder in (good, llama):
        assert main(["plan", folder, "--factor", "4", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["windows"]["new"] == 32768


def finished(call, within: float = 30.0):
    """``call()``'s result; fails (instead of hanging the suite) when it does not return in time."""
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(value=call()), daemon=True)
    worker.start()
    worker.join(within)
    assert not worker.is_alive(), f"still running after {within} s: a plugin hangs ropekit"
    return outcome["value"]


# --- plugins that cannot be loaded ------------------------------------------------------

HOOKIMPL = "from ropekit import hookimpl\n\n"
LOAD_FAULTS = {
    "import-error": ("import acme_nowhere_to_be_found\n", "load", "ModuleNotFoundError: No module named "
                                                                  "'acme_nowhere_to_be_found'"),
    "syntax-error": ("def broken(:\n    pass\n", "load", "SyntaxError"),
    "raises-at-import": ("raise RuntimeError('no licence key')\n", "load", "RuntimeError: no licence key"),
    "sys-exit-at-import": ("import sys\nsys.exit(3)\n", "load", "SystemExit: the plugin called sys.exit(3)"),
    "hook-name-typo": (HOOKIMPL + "@hookimpl\ndef register_familes(register):\n    pass\n", "register_familes",
                       "unknown hook 'register_familes' (ropekit's hooks: claim_config, register_families, "
                       "register_scaling_methods)"),
    "hook-argument-typo": (HOOKIMPL + "@hookimpl\ndef register_families(reg):\n    pass\n", "load",
                           "PluginValidationError"),
}


@pytest.mark.parametrize("case", [*sorted(LOAD_FAULTS), "module-not-installed"])
def test_a_plugin_that_cannot_load_is_named_and_set_aside(install, capsys, tmp_path, case):
    if case == "module-not-installed":  # the entry point names a module that is not there
        install("acme-bad", "", module="acme_not_installed")
        hook, words = "load", "ModuleNotFoundError: No module named 'acme_not_installed'"
    else:
        source, hook, words = LOAD_FAULTS[case]
        install("acme-bad", source)
    [fault] = listing(capsys)["faults"]
    assert (fault["plugin"], fault["hook"]) == ("acme-bad", hook) and words in fault["error"], fault
    assert_others_work(capsys, tmp_path)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "faults" in out and "acme-bad" in out
    # a model_type no family handles names the faulty plugin as a likely cause
    assert main(["plan", folder_of(tmp_path, "bad", {**load_fixture(LLAMA3), "model_type": "acme_bad"}),
                 "--factor", "4"]) == 4
    assert "plugins with faults, see 'ropekit plugins': acme-bad" in capsys.readouterr().err


# --- plugins that hang -----------------------------------------------------------------------

HANGS = {
    "import": "import acme_gate\nacme_gate.release.wait(60)\n" + GOOD.replace("acme_good", "acme_slow"),
    "register_families": GOOD.replace("acme_good", "acme_slow").replace(
        "    register(Good())", "    register(Good())\n    import acme_gate\n    acme_gate.release.wait(60)"),
}


@pytest.mark.parametrize("where", sorted(HANGS))
def test_a_plugin_that_hangs_is_timed_out_and_set_aside(install, gate, capsys, tmp_path, monkeypatch, where):
    monkeypatch.setenv("ROPEKIT_PLUGIN_TIMEOUT", "1.5")
    install("acme-slow", HANGS[where])
    doc = finished(lambda: listing(capsys))
    [fault] = doc["faults"]
    assert (fault["plugin"], fault["hook"]) == ("acme-slow", "load" if where == "import" else where)
    assert fault["error"].startswith("PluginTimeout: did not finish within 1.5 s") and \
        "ROPEKIT_PLUGIN_TIMEOUT" in fault["error"]
    assert "acme_slow" not in {f["name"] for f in doc["families"]}  # set aside whole, even what it registered
    assert get_registry().pm.get_plugin("acme-slow") is None
    finished(lambda: assert_others_work(capsys, tmp_path))


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan"])
def test_a_bad_plugin_timeout_setting_is_a_one_line_error(install, capsys, monkeypatch, value):
    monkeypatch.setenv("ROPEKIT_PLUGIN_TIMEOUT", value)
    assert main(["plugins"]) == 4
    err = capsys.readouterr().err.strip()
    assert err == f"error: ROPEKIT_PLUGIN_TIMEOUT={value!r} is not a number of seconds above 0 to 3600; set it to " \
                  "one (default 30) or unset it"


# --- sys.exit() and prints from plugin code ----------------------------------------------

EXITS = HOOKIMPL + textwrap.dedent("""
    import sys

    from ropekit.registry.family import Family


    class Exits(Family):
        name = "acme_exits"
        model_types = ("acme_exits",)

        def native_window(self, view, site):
            sys.exit(5)


    @hookimpl
    def register_families(register):
        register(Exits())


    @hookimpl
    def register_scaling_methods(register):
        sys.exit("no methods today")


    @hookimpl
    def claim_config(config):
        if config.get("model_type") == "acme_claimed":
            sys.exit(6)
""")


def test_sys_exit_in_plugin_code_is_a_fault_not_an_exit(install, capsys, tmp_path):
    install("acme-exits", EXITS)
    [fault] = listing(capsys)["faults"]
    assert fault == {"plugin": "acme-exits", "hook": "register_scaling_methods",
                     "error": "SystemExit: the plugin called sys.exit('no methods today')"}
    for model_type, words in (("acme_exits", "family 'acme_exits' of plugin 'acme-exits' raised SystemExit in "
                                             "native_window()"),
                              ("acme_claimed", "plugin 'acme-exits' raised SystemExit in claim_config")):
        folder = folder_of(tmp_path, model_type, {**load_fixture(LLAMA3), "model_type": model_type})
        assert main(["plan", folder, "--factor", "4"]) == 4
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert_others_work(capsys, tmp_path)


CHATTY = HOOKIMPL + textwrap.dedent("""
    from ropekit.registry.family import Family

    print("HELLO at import")


    class Chatty(Family):
        name = "acme_chatty"
        model_types = ("acme_chatty",)

        def native_window(self, view, site):
            print("HELLO from native_window")
            return super().native_window(view, site)


    @hookimpl
    def register_families(register):
        print("HELLO from register_families")
        register(Chatty())


    @hookimpl
    def claim_config(config):
        print("HELLO from claim_config")
""")


def test_nothing_a_plugin_prints_reaches_stdout(install, capsys, tmp_path):
    install("acme-chatty", CHATTY)
    assert main(["plugins", "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # the prints did not land in the document
    assert doc["faults"] == [] and "acme_chatty" in {f["name"] for f in doc["families"]}
    assert "HELLO at import" in captured.err and "HELLO from register_families" in captured.err
    for model_type, hook in (("acme_chatty", "native_window"), ("acme_unclaimed", "claim_config")):
        folder = folder_of(tmp_path, model_type, {**load_fixture(LLAMA3), "model_type": model_type})
        main(["plan", folder, "--factor", "4", "--json"])  # the unclaimed one fails: a JSON failure document
        captured = capsys.readouterr()
        assert "HELLO" not in captured.out and f"HELLO from {hook}" in captured.err
        json.loads(captured.out)


# --- built-in names -------------------------------------------------------------------------

SHADOWS = HOOKIMPL + textwrap.dedent("""
    from ropekit.registry.family import Family
    from ropekit.scaling.methods import YaRN


    class MyLlama(Family):
        name = "llama"
        model_types = ("acme_llama",)


    class TakesQwen3(Family):
        name = "acme_qwen3"
        model_types = ("qwen3",)


    class MyYarn(YaRN):
        name = "yarn"


    class Auto(YaRN):
        name = "auto"


    @hookimpl
    def register_families(register):
        register(MyLlama())
        register(TakesQwen3())


    @hookimpl
    def register_scaling_methods(register):
        register(MyYarn())
        register(Auto())
""")


def test_built_in_names_are_not_shadowed_without_an_override(install, capsys, tmp_path, monkeypatch):
    install("acme-shadow", SHADOWS)
    faults = listing(capsys)["faults"]
    assert [(f["plugin"], f["hook"]) for f in faults] == [("acme-shadow", "register_families")] * 2 + \
        [("acme-shadow", "register_scaling_methods")] * 2
    assert "family 'llama' of plugin 'acme-shadow' is built into ropekit ('ropekit.plugins.llama')" in \
        faults[0]["error"] and "ROPEKIT_OVERRIDE_BUILTINS=llama" in faults[0]["error"]
    assert "model_type 'qwen3'" in faults[1]["error"] and "ROPEKIT_OVERRIDE_BUILTINS=qwen3" in faults[1]["error"]
    assert "scaling method 'yarn'" in faults[2]["error"] and "'auto'" in faults[3]["error"]
    registry = get_registry()
    assert registry.family("llama").plugin == "ropekit.plugins.llama"
    assert registry.lookup("qwen3").plugin == "ropekit.plugins.qwen"
    assert registry.method("yarn").plugin == "ropekit.plugins.methods"
    assert_others_work(capsys, tmp_path)

    monkeypatch.setenv("ROPEKIT_OVERRIDE_BUILTINS", "llama, yarn,qwen3,auto")  # read when the registry is built
    reset_registry()
    doc = listing(capsys)
    assert [f["error"] for f in doc["faults"]] == [faults[3]["error"]]  # 'auto' is never a plugin's
    families = {f["name"]: f for f in doc["families"]}
    assert (families["llama"]["plugin"], families["llama"]["model_types"]) == ("acme-shadow", ["acme_llama"])
    assert families["acme_qwen3"]["model_types"] == ["qwen3"] and "qwen3" not in families["qwen"]["model_types"]
    assert {m["name"]: m["plugin"] for m in doc["methods"]}["yarn"] == "acme-shadow"
    assert get_registry().lookup("qwen2").plugin == "ropekit.plugins.qwen"  # only what is listed changes hands
