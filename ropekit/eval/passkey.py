"""Passkey retrieval, the YaRN paper's test: find a 5-digit key hidden in filler text.

The prompt is the one from the landmark-attention and YaRN evaluations: an instruction,
the same filler sentences over and over, the key line at a chosen depth (a fraction of
the filler), and the question. The model reads the whole prompt once (prefill) and
greedily decodes a few tokens with its KV cache; the trial succeeds when the first
number it writes is the key. Prompts are exactly ``length`` tokens long.
"""

from __future__ import annotations

import inspect
import math
import random
import re
import time
from typing import Any

from ropekit.errors import InvalidRequestError
from ropekit.eval.models import NO_SCALING, LoadedModel, YarnBetas, build, scaled_config
from ropekit.eval.perplexity import layer_stack
from ropekit.eval.profile import ProgressHook, eval_length, no_progress, peak_memory_mib

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"
#: tokens decoded after the prompt
NEW_TOKENS = 8


def passkey_for(depth: float, seed: int = 0) -> int:
    """The 5-digit key hidden at ``depth`` (the same for every method and length, so cells compare)."""
    return random.Random(f"passkey:{seed}:{depth!r}").randint(10000, 99999)


def check_depths(depths: tuple[float, ...]) -> None:
    bad = [d for d in depths if not math.isfinite(d) or not 0 <= d <= 1]
    if bad or not depths:
        raise InvalidRequestError(f"passkey depths {list(depths)} must be fractions of the filler from 0 to 1 "
                                  "(0: right after the instruction, 1: right before the question); "
                                  "pass e.g. 0.1,0.5,0.9")


def prompt_ids(model: LoadedModel, length: int, depth: float, key: int) -> list[int]:
    """``length`` token ids: instruction, filler with the key line at ``depth``, question."""
    intro, question = model.encode(INTRO), model.encode(QUESTION)
    key_line, filler = model.encode(KEY_LINE.format(key=key)), model.encode(FILLER)
    room = length - len(intro) - len(question) - len(key_line)
    if room < 0:
        raise InvalidRequestError(f"a passkey prompt needs at least {length - room} tokens; "
                                  f"{length} is too short for this tokenizer")
    stream = (filler * (room // len(filler) + 1))[:room]
    at = round(depth * room / len(filler)) * len(filler)  # on a sentence-group boundary
    at = min(at, room)
    return intro + stream[:at] + key_line + stream[at:] + question


def first_number(text: str) -> str | None:
    """The first run of digits in ``text`` (spaces between digits allowed), if any."""
    match = re.search(r"\d(?:\s?\d)*", text)
    return re.sub(r"\s", "", match.group(0)) if match else None


def passkey_trial(model: LoadedModel, method: str, factor: float, depth: float, *,
                  betas: YarnBetas = YarnBetas(), seed: int = 0,
                  progress: ProgressHook = no_progress) -> dict[str, Any]:
    """One prompt of ``factor x`` the window with the key at ``depth``: prefill, then greedy decoding."""
    import torch

    started, cpu_started = time.perf_counter(), time.process_time()
    length = eval_length(model.window, factor)
    key = passkey_for(depth, seed)
    ids = torch.tensor([prompt_ids(model, length, depth, key)], device=model.device)
    config = scaled_config(model, method, factor, betas)
    built = build(model, config)
    layers = layer_stack(built)
    label = "none" if method == NO_SCALING else f"{method} x{factor:g}"
    advance = progress(f"passkey {label} at {length}, depth {depth:g}", NEW_TOKENS * (len(layers) if layers else 1))
    hooks = [layer.register_forward_hook(lambda *_: advance(1)) for layer in layers] if layers is not None else []
    generated: list[int] = []
    cache_name = "cache" if "cache" in inspect.signature(built.forward).parameters else "past_key_values"
    try:
        with torch.inference_mode():
            out = built(input_ids=ids, use_cache=True, logits_to_keep=1)
            for _ in range(NEW_TOKENS):
                token = int(out.logits[0, -1].argmax())
                generated.append(token)
                if len(generated) == NEW_TOKENS:
                    break
                out = built(input_ids=torch.tensor([[token]], device=model.device), use_cache=True,
                            **{cache_name: getattr(out, cache_name)})
    finally:
        for hook in hooks:
            hook.remove()
    del built
    text = model.decode(generated)
    answer = first_number(text)
    return {"method": method, "factor": float(factor), "length": length, "depth": depth, "key": key,
            "answer": answer, "found": answer == str(key), "output": text,
            "seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu_started, 1), "peak_rss_mib": peak_memory_mib(model.device)}


def passkey_trials(request: Any, depths: tuple[float, ...]) -> list[tuple[str, float, float]]:
    """``(method, factor, depth)``: the unscaled model at 1x first, then each factor, depth by depth."""
    trials = [(NO_SCALING, 1.0, d) for d in depths]
    for factor in sorted(set(request.factors)):
        trials += [(m, factor, d) for d in depths for m in request.methods]
    return trials


def run_passkey(model: LoadedModel, request: Any, depths: tuple[float, ...], progress: ProgressHook = no_progress,
                log: Any = None, phase: str = "zero_shot") -> dict[str, Any]:
    """Every trial of :func:`passkey_trials`, each written to ``log`` when done (and skipped if there)."""
    check_depths(depths)
    trials = []
    for method, factor, depth in passkey_trials(request, depths):
        done = log.get(record="passkey", phase=phase, method=method, factor=float(factor), depth=depth) if log else None
        if done is None:
            done = passkey_trial(model, method, factor, depth, betas=request.betas, progress=progress)
            if log is not None:
                done = log.add({"record": "passkey", "phase": phase, **done})
        trials.append({k: v for k, v in done.items() if k not in ("record", "phase")})
    in_window = [t["found"] for t in trials if t["factor"] == 1.0]
    return {"depths": list(depths), "new_tokens": NEW_TOKENS, "trials": trials,
            "in_window_found": sum(in_window), "in_window_trials": len(in_window),
            "verdict": verdict(sum(in_window), len(in_window), model.window)}


def verdict(found: int, trials: int, window: int) -> str:
    """One plain sentence on what the in-window trials say about the rest."""
    if found == 0:
        prompts = f"{trials} prompt{'s' if trials != 1 else ''}"
        return (f"the model did not retrieve the passkey in any of the {prompts} inside its own window "
                f"({window} tokens), so passkey results past the window say nothing about the scaling")
    return f"inside its window ({window} tokens) the model retrieved the passkey in {found} of {trials} prompts"
