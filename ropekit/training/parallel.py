"""Long-context training beyond one GPU: the sequence-parallel degree, and launch files for it.

When one sequence does not fit one GPU, its tokens are split across GPUs. Two engines
do this today, and both are launched through ``accelerate``:

* **context parallelism** (PyTorch's ring attention) under FSDP2: accelerate's
  ``ParallelismConfig(cp_size=...)``, the path TRL documents;
* **DeepSpeed Ulysses** sequence parallelism (Arctic Long Sequence Training, ALST)
  under ZeRO-3: ``ParallelismConfig(sp_size=..., sp_backend="deepspeed")``; the degree
  must divide the number of attention heads (each GPU attends with whole heads).

Per GPU, a degree ``d`` on ``N`` GPUs holds: the weights, gradients and AdamW states
sharded over all ``N`` GPUs (FSDP2 / ZeRO-3: 16 bytes per parameter / N); two layers'
gathered bf16 weights (the one computing and the one prefetched); and for
``context / d`` tokens the checkpointed layer inputs, one layer's recompute and the
logits, plus one layer's K and V for the whole sequence (ring attention's all-gather,
Ulysses' all-to-all). The smallest degree that fits is chosen; if none does with the
standard loss, the logits are planned with a chunked loss (Liger's fused linear
cross-entropy, ``use_liger_kernel=True`` in TRL), and for Ulysses then with ALST's
activation-checkpoint offload to CPU; the plan says which it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ropekit.errors import InvalidRequestError

from .architecture import Architecture
from .memory import (
    GIB,
    GPU,
    LOGIT_BYTES_TRAIN,
    TRAIN_BYTES_PER_PARAM,
    USABLE_FRACTION,
    ParameterCount,
    find_gpu,
    kv_bytes_per_token_per_layer,
    layer_activation_bytes_per_token,
)

#: tokens per chunk of a chunked (fused) cross-entropy
LOSS_CHUNK = 4096
ENGINES = ("context-parallel", "ulysses")
ACCELERATE_FILE = "accelerate_fsdp2_cp.yaml"
ULYSSES_ACCELERATE_FILE = "accelerate_deepspeed_ulysses.yaml"
DEEPSPEED_FILE = "deepspeed_ulysses.json"


@dataclass
class DegreePlan:
    """One engine's choice: the degree, whether the loss must be chunked, bytes per GPU."""

    engine: str
    degree: int | None
    chunked_loss: bool
    offload_checkpoints: bool
    breakdown: dict[str, float]
    fits: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "degree": self.degree, "chunked_loss": self.chunked_loss,
                "offload_checkpoints": self.offload_checkpoints, "fits": self.fits,
                "per_gpu_bytes": sum(self.breakdown.values()), "breakdown_bytes": dict(self.breakdown),
                "why": self.why}


@dataclass
class ParallelPlan:
    """How a full fine-tune at ``context`` tokens spreads over ``gpus`` GPUs of one type."""

    context: int
    gpus: int
    gpu: GPU
    batch: int
    single: dict[str, float]  # per GPU with no sequence split (degree 1)
    context_parallel: DegreePlan
    ulysses: DegreePlan
    notes: list[str] = field(default_factory=list)

    @property
    def usable_bytes(self) -> float:
        return self.gpu.memory_gib * GIB * USABLE_FRACTION

    @property
    def fits_without_split(self) -> bool:
        return sum(self.single.values()) <= self.usable_bytes

    def to_json(self) -> dict[str, Any]:
        return {"context": self.context, "gpus": self.gpus, "gpu": self.gpu.name, "batch": self.batch,
                "usable_gib_per_gpu": self.usable_bytes / GIB,
                "per_gpu_bytes_without_split": sum(self.single.values()),
                "fits_without_split": self.fits_without_split,
                "context_parallel": self.context_parallel.to_json(), "ulysses": self.ulysses.to_json(),
                "notes": list(self.notes)}


def per_gpu_bytes(arch: Architecture, params: ParameterCount, context: int, batch: int, gpus: int, degree: int,
                  chunked_loss: bool, offload_checkpoints: bool = False) -> dict[str, float]:
    """Bytes on one GPU for a sequence split ``degree`` ways, states sharded over ``gpus``
    (with ``offload_checkpoints`` the checkpointed layer inputs live in CPU memory)."""
    tokens = batch * context / degree
    layer_params = (params.total - params.embedding - params.lm_head) / arch.num_layers
    logit_tokens = min(tokens, LOSS_CHUNK) if chunked_loss else tokens
    return {
        f"weights, gradients, AdamW (sharded over {gpus})": params.total * sum(TRAIN_BYTES_PER_PARAM.values()) / gpus,
        "two layers' gathered bf16 weights": 2 * 2.0 * layer_params,
        "checkpointed layer inputs" + (" (offloaded to CPU)" if offload_checkpoints else ""):
            0.0 if offload_checkpoints else tokens * arch.num_layers * arch.hidden_size * 2.0,
        "one layer recomputed (activations + gradients)": 2.0 * tokens * layer_activation_bytes_per_token(arch),
        "one layer's K and V, whole sequence": batch * context * kv_bytes_per_token_per_layer(arch),
        "logits and loss" + (f" ({LOSS_CHUNK}-token chunks)" if chunked_loss else ""):
            logit_tokens * arch.vocab_size * LOGIT_BYTES_TRAIN,
    }


def _choose(engine: str, arch: Architecture, params: ParameterCount, context: int, batch: int, gpus: int,
            usable: float) -> DegreePlan:
    divisors = [d for d in range(1, gpus + 1) if gpus % d == 0]
    if engine == "ulysses":
        allowed = [d for d in divisors if arch.num_heads % d == 0]
        rule = f"divides {gpus} GPUs and {arch.num_heads} attention heads"
    else:
        allowed = [d for d in divisors if context % (2 * d) == 0]
        rule = f"divides {gpus} GPUs, context divisible by 2 x degree (load-balanced ring)"
    # tiers: the plain setup; a chunked loss; and for ALST, activation checkpoints offloaded to CPU
    tiers = [(False, False), (True, False)] + ([(True, True)] if engine == "ulysses" else [])
    for chunked, offload in tiers:
        for degree in allowed:
            breakdown = per_gpu_bytes(arch, params, context, batch, gpus, degree, chunked, offload)
            if sum(breakdown.values()) <= usable:
                needs = [text for flag, text in ((chunked, "a chunked loss (use_liger_kernel=True)"),
                                                 (offload, "activation checkpoints offloaded to CPU (ALST)"))
                         if flag]
                return DegreePlan(engine, degree, chunked, offload, breakdown, True,
                                  f"smallest degree that fits and {rule}"
                                  + (f"; needs {' and '.join(needs)}" if needs else ""))
    largest = allowed[-1] if allowed else None
    chunked, offload = tiers[-1]
    breakdown = per_gpu_bytes(arch, params, context, batch, gpus, largest or 1, chunked, offload)
    why = (f"no degree that {rule} fits; at degree {largest}, with every saving planned, one GPU needs "
           f"{sum(breakdown.values()) / GIB:,.1f} GiB of {usable / GIB:,.1f}: add GPUs or shorten the context"
           if largest else f"no degree {rule}")
    return DegreePlan(engine, largest, chunked, offload, breakdown, False, why)


def plan_parallel(arch: Architecture, params: ParameterCount, context: int, *, gpus: int, gpu: str,
                  batch: int = 1) -> ParallelPlan:
    """The context-parallel and Ulysses degrees for a full fine-tune at ``context`` tokens."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InvalidRequestError(f"--gpus {gpus!r} must be a positive integer")
    card = find_gpu(gpu)
    usable = card.memory_gib * GIB * USABLE_FRACTION
    single = per_gpu_bytes(arch, params, context, batch, gpus, 1, False)
    notes = [f"{card.name}: {card.memory_gib:g} GiB, {USABLE_FRACTION:.0%} usable ({usable / GIB:,.1f} GiB)"]
    notes.append("the transformers Trainer runs Ulysses from transformers 5 on; 4.57 runs context parallelism only")
    if arch.num_kv_heads < gpus:
        notes.append(f"{arch.num_kv_heads} KV heads: Ulysses replicates KV heads when the degree exceeds them")
    return ParallelPlan(context, gpus, card, batch, single,
                        _choose("context-parallel", arch, params, context, batch, gpus, usable),
                        _choose("ulysses", arch, params, context, batch, gpus, usable), notes)


# --- launch files ---------------------------------------------------------------------------

def accelerate_fsdp2_config(plan: ParallelPlan) -> dict[str, Any]:
    """An ``accelerate launch --config_file`` YAML (as a dict): FSDP2, context parallelism."""
    degree = plan.context_parallel.degree or 1
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP",
        "mixed_precision": "bf16",
        "num_machines": 1,
        "num_processes": plan.gpus,
        "machine_rank": 0,
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "fsdp_config": {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_reshard_after_forward": True,
            "fsdp_activation_checkpointing": True,
            "fsdp_cpu_ram_efficient_loading": True,
        },
        "parallelism_config": {
            "parallelism_config_dp_replicate_size": 1,
            "parallelism_config_dp_shard_size": plan.gpus // degree,
            "parallelism_config_tp_size": 1,
            "parallelism_config_cp_size": degree,
            "parallelism_config_cp_backend": "torch",
            "parallelism_config_cp_comm_strategy": "allgather",
        },
    }


def deepspeed_ulysses_configs(plan: ParallelPlan, deepspeed_file: str = DEEPSPEED_FILE
                              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(accelerate YAML, DeepSpeed JSON)`` as dicts: ZeRO-3 with Ulysses sequence parallelism."""
    degree = plan.ulysses.degree or 1
    accelerate = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "mixed_precision": "bf16",
        "num_machines": 1,
        "num_processes": plan.gpus,
        "machine_rank": 0,
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
        "deepspeed_config": {"deepspeed_config_file": deepspeed_file, "zero3_init_flag": True},
        "parallelism_config": {
            "parallelism_config_dp_replicate_size": 1,
            "parallelism_config_dp_shard_size": plan.gpus // degree,
            "parallelism_config_tp_size": 1,
            "parallelism_config_sp_size": degree,
            "parallelism_config_sp_backend": "deepspeed",
            "parallelism_config_sp_seq_length_is_variable": True,
            "parallelism_config_sp_attn_implementation": "flash_attention_2",
        },
    }
    deepspeed = {
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
                              "stage3_gather_16bit_weights_on_model_save": True},
        "gradient_accumulation_steps": 1,
        "train_micro_batch_size_per_gpu": plan.batch,
        "gradient_clipping": 1.0,
        "sequence_parallel_size": degree,
    }
    return accelerate, deepspeed


def write_launch_files(plan: ParallelPlan, folder: Path) -> list[Path]:
    """Write both engines' launch files into ``folder``; returns their paths."""
    import json

    import yaml

    from ropekit.files import atomic_write

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidRequestError(f"--launch-dir {folder} exists and is not a folder; choose a folder")
    folder.mkdir(parents=True, exist_ok=True)
    ds_path = folder / DEEPSPEED_FILE
    ulysses_yaml, ds_json = deepspeed_ulysses_configs(plan, str(ds_path.resolve()))
    written = {folder / ACCELERATE_FILE: yaml.safe_dump(accelerate_fsdp2_config(plan), sort_keys=False),
               folder / ULYSSES_ACCELERATE_FILE: yaml.safe_dump(ulysses_yaml, sort_keys=False),
               ds_path: json.dumps(ds_json, indent=2) + "\n"}
    for path, text in written.items():
        atomic_write(path, text.encode("utf-8"))
    return list(written)


def launch_command(config_file: Path, script: str = "train.py") -> str:
    """The command that starts training with a written accelerate config."""
    return f"accelerate launch --config_file {config_file} {script}"
