"""How much GPU memory a model needs at a context length, and the longest context that fits.

Counts parameters from the config (dense, GQA, MoE with shared experts, DeepSeek
MLA, tied embeddings, the language tower of a VLM), the KV cache per token (GQA,
MLA's compressed latent, sliding-window layers capped at their window), the
weights, and activations: prefill working set for inference; checkpoints, one
layer's recompute, logits and AdamW states for full fine-tuning. Every
assumption is listed in :data:`ASSUMPTIONS` and printed with the plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ropekit.errors import InvalidRequestError

from .architecture import Architecture, read_architecture

GIB = 2**30
WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
KV_BYTES = {"bf16": 2.0, "fp8": 1.0}
#: bytes per parameter for full fine-tuning with mixed-precision AdamW
TRAIN_BYTES_PER_PARAM = {"weights (bf16)": 2, "gradients (bf16)": 2, "master weights (fp32)": 4,
                         "AdamW m (fp32)": 4, "AdamW v (fp32)": 4}
#: bytes per logit in training: bf16 logits, their fp32 upcast in the loss, fp32 log-softmax
LOGIT_BYTES_TRAIN = 10
#: tokens per prefill step (vLLM / SGLang chunked prefill)
PREFILL_CHUNK = 8192
#: share of GPU memory a run may plan on (vLLM's default --gpu-memory-utilization)
USABLE_FRACTION = 0.90
#: contexts beyond this are reported as "at least"
SEARCH_LIMIT = 2**24

ASSUMPTIONS = {
    "inference": [
        "weights at the chosen width; embeddings, LM head and norms stay bf16 when quantized "
        "(quantization scales, ~1-3%, not counted)",
        "KV cache at the chosen width; sliding-window layers hold at most their window; MLA caches its "
        "compressed latent (kv_lora_rank + qk_rope_head_dim) as vLLM and SGLang do",
        f"activations: one layer's working set for a {PREFILL_CHUNK}-token prefill chunk (chunked prefill, "
        "FlashAttention: no seq x seq score matrix)",
        f"{int(USABLE_FRACTION * 100)}% of GPU memory is usable (vLLM's default --gpu-memory-utilization); "
        "the rest covers the CUDA context, graphs and fragmentation",
    ],
    "train": [
        "full fine-tuning on one GPU with mixed-precision AdamW: bf16 weights and gradients, fp32 master "
        "weights, m and v (16 bytes per parameter); divide by the GPU count under ZeRO-3/FSDP",
        "gradient checkpointing per decoder layer: each layer's bf16 input is kept, one layer is recomputed "
        "at a time (its activations and their gradients)",
        "FlashAttention: no seq x seq score matrix, only a per-head fp32 log-sum-exp",
        f"logits: tokens x vocab x {LOGIT_BYTES_TRAIN} bytes (bf16 logits, fp32 upcast and log-softmax as "
        "transformers' loss does); a fused or chunked cross-entropy (e.g. Liger) removes most of this",
        f"{int(USABLE_FRACTION * 100)}% of GPU memory is usable; no KV cache in training",
    ],
}


@dataclass(frozen=True)
class GPU:
    name: str
    nominal_gb: int
    memory_gib: float  # what the driver reports (nvidia-smi memory.total, ECC on)
    aliases: tuple[str, ...]


GPUS: tuple[GPU, ...] = (
    GPU("RTX 3090", 24, 24.0, ("3090", "rtx3090")),
    GPU("RTX 4090", 24, 24.0, ("4090", "rtx4090")),
    GPU("L4", 24, 22.5, ("l4",)),
    GPU("A10G", 24, 22.5, ("a10g", "a10")),
    GPU("A100 40GB", 40, 40.0, ("a10040", "a10040gb", "a100sxm440gb")),
    GPU("L40S", 48, 45.0, ("l40s",)),
    GPU("RTX 6000 Ada", 48, 48.0, ("rtx6000ada", "6000ada")),
    GPU("A100 80GB", 80, 80.0, ("a100", "a10080", "a10080gb")),
    GPU("H100 80GB", 80, 79.6, ("h100", "h10080", "h10080gb", "h100sxm", "h100pcie")),
    GPU("H100 NVL", 94, 93.6, ("h100nvl",)),
    GPU("H200", 141, 140.4, ("h200", "h200141gb")),
    GPU("B200", 180, 179.1, ("b200",)),
)


def find_gpu(name: str) -> GPU:
    """A GPU of the table by name (case, spaces and dashes ignored)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for gpu in GPUS:
        if key == re.sub(r"[^a-z0-9]", "", gpu.name.lower()) or key in gpu.aliases:
            return gpu
    names = ", ".join(g.name for g in GPUS)
    raise InvalidRequestError(f"unknown GPU {name!r}; expected one of {names}, or give --gpu-memory-gib X")


# --- parameters -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ParameterCount:
    total: int
    active: int  # used per token (differs for MoE)
    embedding: int
    lm_head: int
    attention: int
    mlp: int
    norms: int

    @property
    def linear(self) -> int:
        """Parameters in the decoder layers' matrices (what quantization shrinks)."""
        return self.attention + self.mlp

    def to_json(self) -> dict[str, int]:
        return {"total": self.total, "active": self.active, "embedding": self.embedding,
                "lm_head": self.lm_head, "attention": self.attention, "mlp": self.mlp, "norms": self.norms}


def attention_parameters(arch: Architecture) -> int:
    """One decoder layer's attention parameters."""
    h = arch.hidden_size
    if arch.mla:
        m = arch.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * arch.num_heads * qk if m.q_lora_rank \
            else h * arch.num_heads * qk
        kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank \
            + m.kv_lora_rank * arch.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
        return q + kv + arch.num_heads * m.v_head_dim * h
    q_dim, kv_dim = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    weights = h * q_dim + 2 * h * kv_dim + q_dim * h
    bias = (q_dim + 2 * kv_dim if arch.qkv_bias else 0) + (h if arch.o_bias else 0)
    return weights + bias + (2 * arch.head_dim if arch.qk_norm else 0)


def _mlp(arch: Architecture, width: int) -> int:
    return (3 if arch.gated_mlp else 2) * arch.hidden_size * width


def mlp_parameters(arch: Architecture, layer: int) -> tuple[int, int]:
    """``(total, active per token)`` MLP parameters of one layer."""
    moe = arch.moe
    if moe is None or not moe.moe_layers[layer]:
        dense = _mlp(arch, arch.intermediate_size)
        return dense, dense
    h = arch.hidden_size
    expert = _mlp(arch, moe.expert_intermediate)
    router = h * moe.num_experts + (moe.num_experts if moe.router_bias else 0)
    shared = (_mlp(arch, moe.shared_intermediate) if moe.shared_intermediate else 0) + (h if moe.shared_gate else 0)
    return moe.num_experts * expert + router + shared, moe.experts_per_token * expert + router + shared


def count_parameters(arch: Architecture) -> ParameterCount:
    """The language model's parameters, as published counts define them."""
    h, layers = arch.hidden_size, arch.num_layers
    attention = layers * attention_parameters(arch)
    mlp_total = mlp_active = 0
    for layer in range(layers):
        total, active = mlp_parameters(arch, layer)
        mlp_total += total
        mlp_active += active
    norms = 2 * h * layers + h
    embedding = arch.vocab_size * h
    lm_head = 0 if arch.tied_embeddings else arch.vocab_size * h
    shared = attention + norms + embedding + lm_head
    return ParameterCount(shared + mlp_total, shared + mlp_active, embedding, lm_head, attention, mlp_total, norms)


# --- KV cache and activations -----------------------------------------------------------------

def kv_bytes_per_token_per_layer(arch: Architecture, kv: str = "bf16") -> float:
    """KV cache bytes one token adds in one attention layer."""
    width = KV_BYTES[kv]
    if arch.mla:
        return (arch.mla.kv_lora_rank + arch.mla.qk_rope_head_dim) * width
    return 2 * arch.num_kv_heads * arch.head_dim * width


def kv_cache_bytes(arch: Architecture, context: int, kv: str = "bf16") -> float:
    """KV cache bytes for one sequence of ``context`` tokens (sliding layers capped at their window)."""
    per_layer = kv_bytes_per_token_per_layer(arch, kv)
    windows = arch.layer_windows or (None,) * arch.num_layers
    return sum(per_layer * (context if w is None else min(context, w)) for w in windows)


def kv_bytes_per_token(arch: Architecture, kv: str = "bf16") -> tuple[float, float]:
    """``(full-attention layers, sliding layers)`` bytes per token; sliding ones stop at the window."""
    per_layer = kv_bytes_per_token_per_layer(arch, kv)
    sliding = arch.sliding_layers
    return per_layer * (arch.num_layers - sliding), per_layer * sliding


def layer_activation_bytes_per_token(arch: Architecture) -> float:
    """bf16 bytes one token occupies in one decoder layer's forward (FlashAttention)."""
    h = arch.hidden_size
    if arch.mla:
        m = arch.mla
        q = arch.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim)
        kv = q + arch.num_heads * m.v_head_dim + m.kv_lora_rank + m.qk_rope_head_dim + (m.q_lora_rank or 0)
        attn_out = arch.num_heads * m.v_head_dim
    else:
        q = arch.num_heads * arch.head_dim
        kv = 2 * arch.num_kv_heads * arch.head_dim
        attn_out = q
    moe = arch.moe
    width = arch.intermediate_size
    if moe and any(moe.moe_layers):
        width = max(width, moe.experts_per_token * moe.expert_intermediate + moe.shared_intermediate)
    elements = 5 * h + q + kv + attn_out + (3 if arch.gated_mlp else 2) * width
    return 2.0 * elements + 4.0 * arch.num_heads  # + FlashAttention's fp32 log-sum-exp per head


# --- the plan -------------------------------------------------------------------------------

@dataclass
class MemoryPlan:
    """Memory needed at a context length; ``breakdown`` is in bytes."""

    arch: Architecture
    params: ParameterCount
    mode: str
    context: int
    batch: int
    weights: str
    kv: str
    breakdown: dict[str, float]
    kv_per_token: tuple[float, float]
    gpu: GPU | None = None
    gpu_memory_gib: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> float:
        return sum(self.breakdown.values())

    @property
    def fixed_bytes(self) -> float:
        """What the plan needs whatever the context (weights; optimizer states in training)."""
        return self.bytes_at(1)

    @property
    def usable_bytes(self) -> float | None:
        return None if self.gpu_memory_gib is None else self.gpu_memory_gib * GIB * USABLE_FRACTION

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_memory_gib is None else self.fits_in(self.gpu_memory_gib)

    def fits_in(self, memory_gib: float) -> bool:
        """Whether the plan fits in a GPU of ``memory_gib`` (of which :data:`USABLE_FRACTION` is usable)."""
        return self.total_bytes <= memory_gib * GIB * USABLE_FRACTION

    def max_context(self, memory_gib: float | None = None) -> int:
        """The longest context whose plan fits in ``memory_gib`` (the plan's GPU by default)."""
        memory_gib = self.gpu_memory_gib if memory_gib is None else memory_gib
        if memory_gib is None:
            raise InvalidRequestError("no GPU memory given; pass --gpu NAME or --gpu-memory-gib X")
        usable = memory_gib * GIB * USABLE_FRACTION
        if self.bytes_at(1) > usable:
            return 0
        if self.bytes_at(SEARCH_LIMIT) <= usable:
            return SEARCH_LIMIT
        low, high = 1, SEARCH_LIMIT  # bytes_at grows with the context: bisect
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self.bytes_at(mid) <= usable else (low, mid)
        return low

    def bytes_at(self, context: int) -> float:
        """Total bytes of the same plan at another context length."""
        return sum(_breakdown(self.arch, self.params, self.mode, context, self.batch, self.weights,
                              self.kv).values())

    def to_json(self) -> dict[str, Any]:
        full, sliding = self.kv_per_token
        out: dict[str, Any] = {
            "model_type": self.arch.model_type, "mode": self.mode, "context": self.context,
            "batch": self.batch, "weights": self.weights, "kv_cache": self.kv,
            "parameters": self.params.to_json(),
            "kv_bytes_per_token": {"full_attention_layers": full, "sliding_window_layers": sliding,
                                   "sliding_layers": self.arch.sliding_layers,
                                   "sliding_window": next((w for w in self.arch.layer_windows if w), None),
                                   "mla": self.arch.mla is not None},
            "breakdown_bytes": dict(self.breakdown), "total_bytes": self.total_bytes,
            "total_gib": self.total_bytes / GIB,
            "assumptions": list(ASSUMPTIONS[self.mode]), "notes": list(self.notes),
        }
        if self.gpu_memory_gib is not None:
            out["gpu"] = {"name": self.gpu.name if self.gpu else None, "memory_gib": self.gpu_memory_gib,
                          "usable_gib": self.usable_bytes / GIB, "fits": self.fits,
                          "max_context": self.max_context()}
        return out


def plan_memory(config: dict[str, Any], context: int, *, mode: str = "inference", weights: str | None = None,
                kv: str = "bf16", batch: int = 1, gpu: str | None = None,
                gpu_memory_gib: float | None = None) -> MemoryPlan:
    """Memory needed to run (``inference``) or fully fine-tune (``train``) at ``context`` tokens.

    ``weights`` defaults to the config's quantization (fp8 for DeepSeek-V3's
    release) or bf16.
    """
    if mode not in ASSUMPTIONS:
        raise InvalidRequestError(f"mode {mode!r} is not known; expected inference or train")
    for label, value in (("context", context), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidRequestError(f"{label} {value!r} must be a positive integer")
    if kv not in KV_BYTES:
        raise InvalidRequestError(f"kv cache type {kv!r} is not known; expected one of {', '.join(KV_BYTES)}")
    if gpu is not None and gpu_memory_gib is not None:
        raise InvalidRequestError("give --gpu NAME or --gpu-memory-gib X, not both")
    if gpu_memory_gib is not None and not gpu_memory_gib > 0:
        raise InvalidRequestError(f"GPU memory {gpu_memory_gib!r} GiB must be positive")
    notes: list[str] = []
    if weights is None:
        weights, why = _config_weights(config)
        if why:
            notes.append(why)
    if weights not in WEIGHT_BYTES:
        raise InvalidRequestError(f"weight type {weights!r} is not known; expected one of {', '.join(WEIGHT_BYTES)}")
    if mode == "train" and weights != "bf16":
        raise InvalidRequestError(f"--weights {weights} with --mode train: full fine-tuning trains bf16 weights; "
                                  "drop --weights, or plan --mode inference")
    arch = read_architecture(config)
    params = count_parameters(arch)
    card = find_gpu(gpu) if gpu else None
    memory = card.memory_gib if card else gpu_memory_gib
    notes.extend(arch.notes)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(arch.filled.items()) if _worth_showing(arch, k, v))
    if shown:
        notes.append(f"not in config.json, from {arch.defaults_from}: {shown}")
    return MemoryPlan(arch, params, mode, context, batch, weights, kv,
                      _breakdown(arch, params, mode, context, batch, weights, kv),
                      kv_bytes_per_token(arch, kv), card, memory, notes)


def plan_model(ref: str, context: int, **options: Any) -> tuple[Any, MemoryPlan]:
    """Resolve ``ref`` with :func:`ropekit.resolve`, then :func:`plan_memory`."""
    from ropekit.api import resolve

    resolved = resolve(ref)
    return resolved, plan_memory(resolved.config, context, **options)


def _worth_showing(arch: Architecture, key: str, value: Any) -> bool:
    """Filled-in values that change the numbers (not derived ones such as head_dim = hidden / heads)."""
    if key == "layer_types" or (key in ("attention_bias", "use_sliding_window") and not value):
        return False
    if key == "head_dim":
        return arch.mla is None and value != arch.hidden_size // arch.num_heads
    if key == "num_key_value_heads":
        return value != arch.num_heads
    return True


def _config_weights(config: dict[str, Any]) -> tuple[str, str | None]:
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return "bf16", None
    method = str(quant.get("quant_method", "")).lower()
    bits = quant.get("bits") or quant.get("w_bit")
    if method == "fp8":
        return "fp8", "weights: fp8, from the config's quantization_config"
    if bits in (4, 8):
        kind = "int4" if bits == 4 else "int8"
        return kind, f"weights: {kind}, from the config's quantization_config ({method})"
    return "bf16", f"quantization_config {method or '(unnamed)'} not understood; planned with bf16 weights"


def _breakdown(arch: Architecture, params: ParameterCount, mode: str, context: int, batch: int,
               weights: str, kv: str) -> dict[str, float]:
    layer_act = layer_activation_bytes_per_token(arch)
    if mode == "train":
        tokens = batch * context
        out = {label: float(params.total * size) for label, size in TRAIN_BYTES_PER_PARAM.items()}
        out["checkpointed layer inputs"] = float(tokens * arch.num_layers * arch.hidden_size * 2)
        out["one layer recomputed (activations + gradients)"] = 2.0 * tokens * layer_act
        out["logits and loss"] = float(tokens * arch.vocab_size * LOGIT_BYTES_TRAIN)
        return out
    width = WEIGHT_BYTES[weights]
    kept_bf16 = params.total - params.linear  # embeddings, LM head, norms
    weight_bytes = params.linear * width + kept_bf16 * 2.0
    return {
        "weights": weight_bytes,
        "KV cache": batch * kv_cache_bytes(arch, context, kv),
        "activations (prefill chunk)": min(context * batch, PREFILL_CHUNK) * layer_act
        + batch * arch.vocab_size * 4.0,
    }
