"""Per-position next-token loss over evaluation chunks, and perplexity by position bucket.

The loss is computed from the final hidden states in slices over the sequence: the
output layer and the cross-entropy run on ``slice_tokens`` positions at a time, so a
16384-token chunk of a 49152-token vocabulary never holds the 3.2 GB fp32 logits tensor
of a plain ``model(...).logits`` call. What stays is what the forward pass itself needs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

#: bytes of fp32 logits one slice may hold (per batch); the slice length follows from the vocabulary
LOGITS_SLICE_BYTES = 128 * 2**20


class SlicedHead:
    """A causal LM split into its trunk (to the final hidden states) and its output layer.

    Works for models whose logits are ``lm_head(hidden)``, optionally soft-capped
    (``final_logit_softcapping``) or scaled (``logit_scale``); :meth:`matches_model`
    checks that against the model's own forward on a short input, and callers fall back
    to full logits when it does not hold.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.trunk = getattr(model, model.base_model_prefix)
        self.head = model.get_output_embeddings()
        config = model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scale = getattr(config, "logit_scale", None)

    def hidden(self, input_ids: "torch.Tensor") -> "torch.Tensor":
        return self.trunk(input_ids=input_ids).last_hidden_state

    def logits(self, hidden: "torch.Tensor") -> "torch.Tensor":
        import torch

        logits = self.head(hidden).float()
        if self.scale:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def matches_model(self, input_ids: "torch.Tensor") -> bool:
        """Whether the head over the trunk gives the model's own logits on ``input_ids``."""
        import torch

        with torch.inference_mode():
            ours = self.logits(self.hidden(input_ids))
            theirs = self.model(input_ids=input_ids).logits.float()
        return bool(torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4))


def slice_length(vocab_size: int, batch: int, budget_bytes: int = LOGITS_SLICE_BYTES) -> int:
    """Positions per slice so that ``batch x slice x vocab`` fp32 logits fit in ``budget_bytes``."""
    return max(1, budget_bytes // (4 * vocab_size * max(1, batch)))


def sliced_loss(head: SlicedHead, input_ids: "torch.Tensor", *, slice_tokens: int | None = None,
                on_slice: Callable[[], None] | None = None) -> "torch.Tensor":
    """Next-token loss ``[batch, length - 1]`` (nats), the output layer run slice by slice.

    Entry ``[b, j - 1]`` is the loss of predicting token ``j`` of row ``b`` from its tokens
    ``0 .. j-1``; it equals the cross-entropy of ``model(input_ids).logits`` up to float
    rounding. ``on_slice()`` is called after each slice.
    """
    import torch
    import torch.nn.functional as F

    batch, length = input_ids.shape
    hidden = head.hidden(input_ids)
    targets = input_ids[:, 1:]
    step = slice_tokens or slice_length(head.head.weight.shape[0], batch)
    out = torch.empty(batch, length - 1, dtype=torch.float32, device=hidden.device)
    for start in range(0, length - 1, step):
        stop = min(start + step, length - 1)
        logits = head.logits(hidden[:, start:stop])
        out[:, start:stop] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             targets[:, start:stop].reshape(-1),
                                             reduction="none").view(batch, stop - start)
        del logits
        if on_slice is not None:
            on_slice()
    return out


def full_loss(model: Any, input_ids: "torch.Tensor") -> "torch.Tensor":
    """The same loss from the model's full logits (what :func:`sliced_loss` avoids holding)."""
    import torch.nn.functional as F

    logits = model(input_ids=input_ids).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                           reduction="none").view(input_ids.shape[0], -1)


def layer_stack(model: Any) -> Any:
    """The model's list of decoder layers (the ``ModuleList`` as long as ``num_hidden_layers``)."""
    import torch

    n_layers = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    return None


def steps_per_batch(model: Any, length: int, batch: int) -> int:
    """Progress steps one batch advances: one per decoder layer, one per loss slice."""
    layers = layer_stack(model)
    n_layers = len(layers) if layers is not None else 0
    slices = math.ceil((length - 1) / slice_length(model.get_output_embeddings().weight.shape[0], batch))
    return n_layers + slices


def position_losses(model: Any, chunks: "torch.Tensor", *, batch_size: int = 8, device: Any = "cpu",
                    on_step: Callable[[int], None] | None = None) -> "torch.Tensor":
    """Mean next-token loss (nats) at each target position ``1 .. length-1`` over all chunks.

    Entry ``j - 1`` is the loss of predicting token ``j`` from tokens ``0 .. j-1``.
    ``on_step(1)`` is called after each decoder layer and each loss slice of each batch
    (:func:`steps_per_batch` steps per batch), so progress moves inside a long forward.
    """
    import torch

    n, length = chunks.shape
    total = torch.zeros(length - 1, dtype=torch.float64)
    model.eval()
    head = SlicedHead(model)
    sliced = head.matches_model(chunks[:1, :min(length, 16)].to(device))
    layers = layer_stack(model)
    hooks = []
    if on_step is not None and layers is not None:
        hooks = [layer.register_forward_hook(lambda *_: on_step(1)) for layer in layers]
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                x = chunks[start:start + batch_size].to(device)
                if sliced:
                    loss = sliced_loss(head, x, on_slice=(lambda: on_step(1)) if on_step else None)
                else:
                    loss = full_loss(model, x)
                total += loss.sum(0).double().cpu()
    finally:
        for hook in hooks:
            hook.remove()
    return total / n


def bucket_edges(window: int, length: int, width: int | None = None) -> list[int]:
    """Token-position bucket edges up to ``length``.

    Default ``0, L, 2L, 4L, ...`` (L = the trained window); with ``width``, every ``width`` tokens.
    """
    if width:
        return list(range(0, length, width)) + [length]
    edges, edge = [0], window
    while edge < length:
        edges.append(edge)
        edge *= 2
    return edges + [length]


def summarize(losses: "torch.Tensor", window: int, width: int | None = None) -> dict[str, Any]:
    """Perplexity over all positions and per bucket ``"a-b"`` (target token positions ``[a, b)``)."""
    length = len(losses) + 1
    edges = bucket_edges(window, length, width)
    buckets = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        part = losses[max(lo, 1) - 1:hi - 1]  # target positions start at 1
        buckets[f"{lo}-{hi}"] = math.exp(float(part.mean()))
    return {"ppl": math.exp(float(losses.mean())), "loss": float(losses.mean()), "buckets": buckets}
