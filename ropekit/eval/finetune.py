"""The short fine-tune at the new length that makes a scaled model ready.

The config is patched with the method at factor F through ropekit, the model is
rebuilt from it with the loaded weights, and trained for N steps on windows of
F x the trained window drawn from the training texts. ``accelerate.Accelerator``
places the model (CPU, one GPU, or each process of ``accelerate launch``) and
handles mixed precision (bf16 where the GPU supports it), so the same code runs
on a laptop and a GPU node. Recipe as in the YaRN paper: AdamW (0.9, 0.95), no
weight decay, short warmup; then a cosine decay to 10% over the run.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ropekit.errors import InvalidRequestError
from ropekit.eval import corpus
from ropekit.eval.models import (
    LoadedModel,
    YarnBetas,
    build,
    check_methods,
    scaled_config,
)
from ropekit.eval.profile import ProgressHook, eval_length, no_progress

#: lr for the tiny reference model (what notes/papers-and-offline-eval.md measured)
REFERENCE_LR = 5e-4
#: lr the YaRN and PI papers fine-tuned 7B models with
PAPER_LR = 2e-5
DEFAULT_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class FinetuneRequest:
    """What to fine-tune: the method and factor the config is patched with, and the budget."""

    steps: int
    factor: float = 4.0
    method: str = "yarn"
    lr: float = REFERENCE_LR
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    betas: YarnBetas = field(default_factory=YarnBetas)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InvalidRequestError(f"fine-tune steps {self.steps} must be at least 1; "
                                      "200-2000 steps are typical for real models")
        if not math.isfinite(self.factor) or self.factor <= 1:
            raise InvalidRequestError(f"fine-tune factor {self.factor} must be above 1 (e.g. 4)")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise InvalidRequestError(f"fine-tune learning rate {self.lr} must be positive (e.g. {PAPER_LR:g})")
        if self.batch_tokens < 1:
            raise InvalidRequestError(f"fine-tune batch tokens {self.batch_tokens} must be positive "
                                      f"(default {DEFAULT_BATCH_TOKENS})")
        if self.method == "none":
            raise InvalidRequestError("fine-tune method 'none' scales nothing; pick e.g. yarn or linear")
        check_methods([self.method])

    def learning_rate(self, step: int) -> float:
        from ropekit.eval.train_reference import warmup_cosine

        warmup = min(self.warmup_steps, max(1, self.steps // 10))
        return warmup_cosine(self.lr, step, self.steps, warmup, 0.1)


def finetune(model: LoadedModel, request: FinetuneRequest,
             progress: ProgressHook = no_progress) -> tuple[LoadedModel, dict[str, Any]]:
    """Fine-tune at ``factor x`` the window; returns the model with the new weights and a record."""
    import torch
    from accelerate import Accelerator

    use_bf16 = model.device.type == "cuda" and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=model.device.type == "cpu")
    length = eval_length(model.window, request.factor)
    batch = max(1, request.batch_tokens // length)
    config = scaled_config(model, request.method, request.factor, request.betas)
    trainee = build(model, config, trainable=True).float().train()  # fp32 master weights; autocast does bf16
    optimizer = torch.optim.AdamW(trainee.parameters(), lr=request.lr, betas=(0.9, 0.95), weight_decay=0.0)
    trainee, optimizer = accelerator.prepare(trainee, optimizer)
    stream = corpus.training_stream(model.encode)
    generator = torch.Generator().manual_seed(request.seed + accelerator.process_index)
    advance = progress(f"fine-tune {request.method} x{request.factor:g} at {length}", request.steps)
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(request.steps):
        for group in optimizer.param_groups:
            group["lr"] = request.learning_rate(step)
        tokens = corpus.sample_batch(stream, batch, length, generator).to(accelerator.device)
        with accelerator.autocast():
            loss = trainee(input_ids=tokens, labels=tokens).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trainee.parameters(), request.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        advance(1)
    seconds = time.perf_counter() - started
    unwrapped = accelerator.unwrap_model(trainee)
    state = {k: v.detach().to(device=model.device, dtype=model.dtype if v.is_floating_point() else v.dtype)
             for k, v in unwrapped.state_dict().items()}
    record = {
        **{k: v for k, v in asdict(request).items() if k != "betas"},
        "yarn": asdict(request.betas) if request.method == "yarn" else None,
        "length": length, "batch": batch, "tokens": request.steps * batch * length,
        "seconds": round(seconds, 1), "mixed_precision": "bf16" if use_bf16 else "no",
        "loss_first": round(losses[0], 4), "loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 4),
    }
    tuned = model.with_state(state, f"{model.name}, fine-tuned {request.method} x{request.factor:g} "
                                    f"for {request.steps} steps")
    return tuned, record
