from __future__ import annotations

import copy
import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FIXTURE_NAMES = sorted(p.parent.name for p in FIXTURES.glob("*/config.json"))


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """A fresh plugin manager per test; third-party entry points stay out unless a test adds them."""
    from ropekit.registry import reset_registry

    monkeypatch.setenv("ROPEKIT_NO_ENTRY_POINTS", "1")
    monkeypatch.delenv("ROPEKIT_DISABLE_PLUGINS", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def fixture_config():
    return lambda name: copy.deepcopy(load_fixture(name))


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


@contextmanager
def no_transformers_warnings():
    """Fail if transformers logs a warning or Python emits one inside the block."""
    from transformers.utils import logging as hf_logging

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                records.append(record)

    handler = Collect()
    logger = hf_logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
    messages = [r.getMessage() for r in records] + [str(w.message) for w in caught
                                                    if not issubclass(w.category, DeprecationWarning)]
    assert not messages, f"transformers warned: {messages}"


def rotary_from_config(config):
    """The text rotary module the installed transformers builds for a config object."""
    import importlib

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    module = importlib.import_module(type(text).__module__.replace("configuration_", "modeling_"))
    classes = [getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding") and
               "Vision" not in n and "Text" in n] or \
              [getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding") and "Vision" not in n]
    return classes[0](config=text)


def registry_with(*plugins: tuple[str, object]):
    """A registry of the built-ins plus the given ``(name, plugin)`` pairs, no entry points."""
    from ropekit.registry.manager import Registry, make_plugin_manager

    pm = make_plugin_manager(entry_points=False)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    pm.check_pending()
    return Registry.from_manager(pm)
