"""Training around the patch: attention backend, memory plan, evaluation-pack check.

Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

from .attention import (
    AttentionChoice,
    DeviceInfo,
    choose_attention_backend,
    detect_device,
    require_attention_backend,
)
from .eval_pack import PackReport, check_pack
from .memory import GPUS, MemoryPlan, count_parameters, plan_memory

__all__ = ["GPUS", "AttentionChoice", "DeviceInfo", "MemoryPlan", "PackReport", "check_pack",
           "choose_attention_backend", "count_parameters", "detect_device", "plan_memory",
           "require_attention_backend"]
