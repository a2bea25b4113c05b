"""Train the reference model from scratch, seeded: ``python -m ropekit.eval.train_reference``.

The recipe (notes/papers-and-offline-eval.md, Part 2.3): a byte-level Llama with
hidden 192, 4 layers, 6 heads of 32, FFN 512, tied embeddings, RoPE base 10000,
trained window 256, on the 39 Shakespeare texts that are not held out; AdamW
(0.9, 0.95), weight decay 0.1 on matrices, lr 2e-3 with 30 warmup steps and a cosine
decay to 10%, gradient clip 1.0, batches of 32 x 256 bytes. The notes trained 300
steps; the committed model trains 800 (6.55M tokens, about 1.4 passes over the
training texts) so that it is close to converged and a later fine-tune measures the
scaling, not leftover pretraining. The same seed and thread count give the same
weights. The result is saved in fp16 to ``ropekit/eval/reference/`` with its
training metadata.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ropekit.eval import corpus
from ropekit.eval.perplexity import position_losses
from ropekit.eval.reference import (
    REFERENCE_DIR,
    ReferenceArchitecture,
    llama_config,
    save_reference,
)

#: held-out evaluation at the trained window: the full cell and the quick check the tests repeat
HELDOUT_TOKENS = 98304
CHECK_TOKENS = 8192


@dataclass(frozen=True)
class TrainSpec:
    """Everything that decides the trained weights."""

    arch: ReferenceArchitecture = field(default_factory=ReferenceArchitecture)
    steps: int = 800
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 50


def warmup_cosine(peak: float, step: int, steps: int, warmup: int, floor: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``floor * peak`` at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def learning_rate(spec: TrainSpec, step: int) -> float:
    """The reference model's schedule: :func:`warmup_cosine` with the spec's settings."""
    return warmup_cosine(spec.lr, step, spec.steps, spec.warmup_steps, spec.min_lr_ratio)


def heldout_loss(model: Any, window: int, n_tokens: int) -> float:
    """Mean loss (nats per byte) on the held-out plays in chunks of ``window`` bytes."""
    chunks = corpus.eval_chunks(corpus.documents("heldout"), window, n_tokens)
    return float(position_losses(model, chunks, batch_size=32).mean())


def train(spec: TrainSpec, log: Callable[[str], None] = print) -> tuple[Any, dict[str, Any]]:
    """Train a reference model from scratch; returns the model (fp32) and its training metadata."""
    import torch
    from transformers import LlamaForCausalLM

    config = spec.arch.config_dict()
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(llama_config(config))
    window = spec.arch.window
    stream = corpus.training_stream()
    generator = torch.Generator().manual_seed(spec.seed)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": spec.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
        lr=spec.lr, betas=spec.betas)
    curve: list[dict[str, float]] = []
    started = time.perf_counter()
    for step in range(spec.steps):
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(spec, step)
        batch = corpus.sample_batch(stream, spec.batch_size, window, generator)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        done, loss_value = step + 1, float(loss.detach())
        if done % spec.eval_every == 0 or done == spec.steps:
            held = heldout_loss(model, window, CHECK_TOKENS)
            curve.append({"step": done, "train_loss": round(loss_value, 4), "heldout_loss": round(held, 4)})
            log(f"step {done}/{spec.steps}  train {loss_value:.3f}  held-out {held:.3f}  "
                f"{time.perf_counter() - started:.0f}s")
    seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    metadata = {
        "tokenizer": "bytes",
        "parameters": n_params,
        "architecture": spec.arch.to_json(),
        "training": {**{k: v for k, v in asdict(spec).items() if k != "arch"},
                     "tokens": spec.steps * spec.batch_size * window, "seconds": round(seconds, 1),
                     "torch_threads": torch.get_num_threads(), "curve": curve},
        "corpus": {"package": corpus.CORPUS_PACKAGE, "files": "texts/*_gut.txt",
                   "license": "CC-BY 2.5 (Open Knowledge Foundation; texts from Project Gutenberg)",
                   "train_texts": len(corpus.text_files("train")), "train_bytes": len(stream),
                   "heldout_plays": list(corpus.HELDOUT_PLAYS)},
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "python": platform.python_version()},
    }
    return model, metadata


def evaluate_export(model: Any, metadata: dict[str, Any], window: int) -> dict[str, Any]:
    """Add the held-out losses of the fp32 weights and of their fp16 round trip to the metadata."""
    import copy

    rounded = copy.deepcopy(model)
    for p in rounded.parameters():
        p.data = p.data.half().float()
    fp32 = heldout_loss(model, window, HELDOUT_TOKENS)
    fp16 = heldout_loss(rounded, window, HELDOUT_TOKENS)
    check = heldout_loss(rounded, window, CHECK_TOKENS)
    metadata["heldout"] = {
        "window": window, "tokens": HELDOUT_TOKENS, "loss_fp32": round(fp32, 5),
        "loss_fp16": round(fp16, 5), "ppl_fp16": round(math.exp(fp16), 4),
        "check_tokens": CHECK_TOKENS, "check_loss_fp16": round(check, 5),
    }
    return metadata


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ropekit.eval.train_reference", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REFERENCE_DIR, help="folder to write (default: the package's)")
    parser.add_argument("--steps", type=int, default=TrainSpec.steps)
    parser.add_argument("--seed", type=int, default=TrainSpec.seed)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the weights depend on it)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    spec = TrainSpec(steps=args.steps, seed=args.seed)
    model, metadata = train(spec, log=lambda line: print(line, flush=True))
    metadata = evaluate_export(model, metadata, spec.arch.window)
    save_reference(model, spec.arch.config_dict(), metadata, args.out)
    held = metadata["heldout"]
    print(f"saved {args.out}: held-out loss {held['loss_fp16']:.4f} nats/byte (ppl {held['ppl_fp16']:.3f}), "
          f"{metadata['training']['seconds']:.0f}s")


if __name__ == "__main__":
    main()
