"""Per-position next-token loss over evaluation chunks, and perplexity by position bucket."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch


def position_losses(model: Any, chunks: "torch.Tensor", *, batch_size: int = 8, device: Any = "cpu",
                    on_batch: Callable[[int], None] | None = None) -> "torch.Tensor":
    """Mean next-token loss (nats) at each target position ``1 .. length-1`` over all chunks.

    Entry ``j - 1`` is the loss of predicting token ``j`` from tokens ``0 .. j-1``.
    ``on_batch(n)`` is called after each batch with the number of chunks done in it.
    """
    import torch
    import torch.nn.functional as F

    n, length = chunks.shape
    total = torch.zeros(length - 1, dtype=torch.float64)
    model.eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = chunks[start:start + batch_size].to(device)
            logits = model(input_ids=x).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                   reduction="none").view(x.shape[0], length - 1)
            total += loss.sum(0).double().cpu()
            if on_batch is not None:
                on_batch(x.shape[0])
    return total / n


def bucket_edges(window: int, length: int) -> list[int]:
    """Token-position bucket edges ``0, L, 2L, 4L, ...`` up to ``length`` (L = the trained window)."""
    edges, edge = [0], window
    while edge < length:
        edges.append(edge)
        edge *= 2
    return edges + [length]


def summarize(losses: "torch.Tensor", window: int) -> dict[str, Any]:
    """Perplexity over all positions and per bucket ``"a-b"`` (target token positions ``[a, b)``)."""
    length = len(losses) + 1
    edges = bucket_edges(window, length)
    buckets = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        part = losses[max(lo, 1) - 1:hi - 1]  # target positions start at 1
        buckets[f"{lo}-{hi}"] = math.exp(float(part.mean()))
    return {"ppl": math.exp(float(losses.mean())), "loss": float(losses.mean()), "buckets": buckets}
