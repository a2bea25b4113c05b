"""Serving a patched model: launch arguments for vLLM, SGLang, llama.cpp and TGI from a receipt."""

from __future__ import annotations

from ropekit.errors import EngineUnsupportedError

from .export import (
           ENGINES,
           LaunchArguments,
           ServeSpec,
           export_arguments,
           load_serve_spec,
)

__all__ = ["ENGINES", "EngineUnsupportedError", "LaunchArguments", "ServeSpec", "export_arguments",
           "load_serve_spec"]
