"""Numbers from a config file, a plugin or a request are held to sane bounds before any work.

A ``head_dim`` of 1e308 once made ``plan`` loop while its memory grew past 3 GB; a
factor of 1e308 or a 400-digit target raised raw OverflowErrors (exit 1, "a ropekit bug").
Every hostile case runs in a child process under a timeout, so a regression fails the
test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, load_fixture

from ropekit import LongContextConfig, apply_rope_scaling
from ropekit.errors import InvalidConfigError, InvalidRequestError
from ropekit.scaling import bounds
from ropekit.scaling.engine import plan_config

ROOT = Path(__file__).resolve().parents[1]
LLAMA3 = "meta-llama__Meta-Llama-3-8B-Instruct"
CHILD_TIMEOUT = 120  # catches a hang only; a healthy child takes about a second


def child(args: list[str], cwd: Path, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m ropekit ARGS`` (or ``python -c CODE``) in a child that is killed if it hangs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "ropekit", *args]
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args) or 'child'} still ran after {CHILD_TIMEOUT} s: unbounded work")


def llama_folder(tmp_path: Path, **edits: object) -> Path:
    config = load_fixture(LLAMA3)
    config.update(edits)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# config value -> words the one-line error must hold
CONFIG_CASES = {
    "head_dim-1e308": ({"head_dim": 1e308}, ("head_dim", "65536")),
    "head_dim-5e7": ({"head_dim": 50_000_000}, ("head_dim is 50000000", "65536")),
    "hidden_size-1e308": ({"hidden_size": 1e308}, ("hidden_size", "65536")),
    "partial_rotary_factor-1e308": ({"partial_rotary_factor": 1e308}, ("partial_rotary_factor", "65536")),
    "max_position_embeddings-1e308": ({"max_position_embeddings": 1e308},
                                      ("max_position_embeddings is 1e+308", "2**31")),
    "linear-factor-1e-310": ({"rope_scaling": {"rope_type": "linear", "factor": 1e-310}},
                             ("max_position_embeddings / rope_scaling.factor is Infinity",)),
    "dynamic-factor-1e308": ({"rope_scaling": {"rope_type": "dynamic", "factor": 1e308}},
                             ("rope_scaling.factor x max_position_embeddings", "Infinity")),
}


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_huge_config_values_are_refused_naming_the_field_and_the_bound(tmp_path, name):
    edits, words = CONFIG_CASES[name]
    proc = child(["plan", str(llama_folder(tmp_path, **edits)), "--factor", "4"], tmp_path)
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), proc.stderr


# command-line request -> words the one-line error must hold (exit 2: a bad argument)
REQUEST_CASES = {
    "factor-1e308": (["--factor", "1e308", "--allow-unstable"], ("--factor", "2147483648")),
    "factor-past-the-window-limit": (["--factor", "1e6", "--allow-unstable"], ("--factor", "8.192e+09", "2**31")),
    "beta-fast-1e308": (["--factor", "4", "--beta-fast", "1e308"], ("--beta-fast", "2**20")),
    "target-400-digits": (["--target-context", "9" * 400], ("--target-context", "400 characters", "2**31")),
    "target-2**53+1": (["--target-context", str(2**53 + 1), "--allow-unstable"], ("--target-context", "2**31")),
}


@pytest.mark.parametrize("name", sorted(REQUEST_CASES))
def test_overflowing_requests_are_usage_errors_not_ropekit_bugs(tmp_path, name):
    args, words = REQUEST_CASES[name]
    proc = child(["plan", str(llama_folder(tmp_path)), *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), proc.stderr
    assert "ropekit bug" not in proc.stderr


def test_patch_refuses_what_plan_refuses_with_the_same_reason(tmp_path):
    target = ["--target-context", str(2**53 + 1), "--allow-unstable"]
    planned = child(["plan", str(llama_folder(tmp_path)), *target], tmp_path)
    patched = child(["patch", str(tmp_path / "model"), *target, "--out", str(tmp_path / "out")], tmp_path)
    assert planned.returncode == patched.returncode == 2
    assert planned.stderr.splitlines()[0] == patched.stderr.splitlines()[0]
    assert not (tmp_path / "out").exists()


PLUGIN_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from conftest import load_fixture, registry_with
from ropekit import LongContextConfig, hookimpl
from ropekit.errors import RopekitError
from ropekit.registry.family import Family
from ropekit.scaling.engine import plan_config

class Wide(Family):
    name = "wide"
    model_types = ("wide_llama",)
    def rotary_dim(self, view, site):
        return 10**9

class Plugin:
    @hookimpl
    def register_families(self, register):
        register(Wide())

reg = registry_with(("wide-plugin", Plugin()))
config = {{**load_fixture("meta-llama__Meta-Llama-3-8B-Instruct"), "model_type": "wide_llama"}}
try:
    plan_config(config, LongContextConfig(method="yarn", factor=4), registry=reg).attention_scaling
except RopekitError as exc:
    print(json.dumps([type(exc).__name__, exc.exit_code, str(exc)]))
"""


def test_a_plugin_rotary_dim_of_a_billion_is_refused_naming_the_plugin(tmp_path):
    proc = child([], tmp_path, code=PLUGIN_CHILD.format(tests=str(ROOT / "tests")))
    assert proc.returncode == 0, proc.stderr
    kind, code, message = json.loads(proc.stdout)
    assert (kind, code) == ("InvalidConfigError", 4)
    assert "'wide'" in message and "wide-plugin" in message and "1000000000" in message and "65536" in message


def test_the_bounds_admit_every_bundled_fixture():
    """The limits are far above real models: every fixture's windows and dimensions pass."""
    for path in sorted(FIXTURES.glob("*/config.json")):
        config = json.loads(path.read_text())
        for node in (config, config.get("text_config") or {}):
            for key in ("max_position_embeddings", "original_max_position_embeddings"):
                if isinstance(node.get(key), int):
                    assert bounds.window(node[key], key) == node[key]
            if isinstance(node.get("head_dim"), int):
                assert bounds.head_dim(node["head_dim"], "head_dim") == node["head_dim"]


def test_the_limits_are_exact():
    assert bounds.window(bounds.MAX_WINDOW, "w") == 2**31
    with pytest.raises(InvalidConfigError, match="over ropekit's limit"):
        bounds.window(bounds.MAX_WINDOW + 1, "w")
    assert bounds.rotary_dim(65536, "f") == 65536
    with pytest.raises(InvalidConfigError, match="65537"):
        bounds.rotary_dim(65537, "f")
    with pytest.raises(InvalidConfigError, match="over 4300 digits"):
        bounds.rotary_dim(10**5000, "f")
    assert bounds.reached_window(2.0, 2**30) == 2**31
    with pytest.raises(InvalidRequestError, match="factor=1e\\+300"):
        bounds.reached_window(1e300, 8192)


def test_the_python_api_raises_ropekit_errors_for_overflow():
    config = load_fixture(LLAMA3)
    with pytest.raises(InvalidRequestError, match="target_context"):
        LongContextConfig(target_context=10**400)
    with pytest.raises(InvalidRequestError, match="factor"):
        plan_config(config, LongContextConfig(factor=2**31, allow_unstable=True))
    with pytest.raises(InvalidConfigError, match="max_position_embeddings"):
        plan_config({**config, "max_position_embeddings": 1e308}, LongContextConfig(factor=4))
    hostile = {**config, "max_position_embeddings": 1e308}
    with pytest.raises(InvalidConfigError, match="max_position_embeddings is 1e\\+308"):
        apply_rope_scaling(hostile, LongContextConfig(factor=4))
    assert hostile == {**load_fixture(LLAMA3), "max_position_embeddings": 1e308}  # left as it was


@pytest.mark.parametrize("key", ["rope_theta", "max_position_embeddings", "head_dim", "model_type"])
def test_a_300000_element_value_gives_a_short_message_that_keeps_its_fix(key):
    from ropekit.errors import MAX_MESSAGE_CHARS, RopekitError

    config = {**load_fixture(LLAMA3), key: list(range(300_000))}
    with pytest.raises(RopekitError) as caught:
        plan_config(config, LongContextConfig(factor=4))
    message = str(caught.value)
    assert len(message) <= MAX_MESSAGE_CHARS + 40 and "characters elided" in message
    assert message.startswith(("rope_theta is [0, 1", "max_position_embeddings is [0, 1", "head_dim is [0, 1",
                               "config has no model_type"))
    assert message.endswith(("fix the config.json", "NAME"))
    assert len(caught.value.render(str)) == len(message)
