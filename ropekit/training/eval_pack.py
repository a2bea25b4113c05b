"""Check an evaluation pack (JSONL) before a long-context release gate relies on it.

Each example is measured in tokens (a local tokenizer when given, else about
four characters per token, said so in the report) and bucketed by length. The
gate's long-context dimension needs examples beyond the model's original
window: with fewer than :data:`MIN_LONG_EXAMPLES` of them it is undefined, and
the check says to add 50-200.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ropekit.errors import EvalPackError, InvalidRequestError, RemoteCodeError, ResolutionError
from ropekit.remote_code import no_remote_code

MIN_LONG_EXAMPLES = 50
RECOMMENDED_LONG_EXAMPLES = (50, 200)
CHARS_PER_TOKEN = 4
FIRST_BUCKET = 1024



@dataclass(frozen=True)
class Bucket:
    low: int  # tokens, inclusive
    high: int | None  # tokens, inclusive; None: open-ended
    count: int

    @property
    def label(self) -> str:
        return f"> {self.low - 1}" if self.high is None else f"{self.low}-{self.high}"

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "count": self.count}


@dataclass
class PackReport:
    """What :func:`check_pack` found."""

    path: str
    examples: int
    token_counts: list[int]
    counting: str  # "tokenizer" or "estimate"
    counting_note: str
    target_context: int
    original_max: int | None
    buckets: list[Bucket]
    warnings: list[str] = field(default_factory=list)

    @property
    def long_examples(self) -> int | None:
        """Examples longer than the original window that still fit the target (truncated ones do not count)."""
        if self.original_max is None:
            return None
        return sum(1 for n in self.token_counts if self.original_max < n <= self.target_context)

    @property
    def beyond_target(self) -> int:
        return sum(1 for n in self.token_counts if n > self.target_context)

    @property
    def long_dimension_defined(self) -> bool | None:
        long = self.long_examples
        return None if long is None else long >= MIN_LONG_EXAMPLES

    def to_json(self) -> dict[str, Any]:
        counts = self.token_counts
        return {
            "file": self.path, "examples": self.examples, "counting": self.counting,
            "counting_note": self.counting_note, "target_context": self.target_context,
            "original_max": self.original_max,
            "tokens": {"min": min(counts, default=0), "max": max(counts, default=0),
                       "mean": sum(counts) / len(counts) if counts else 0},
            "buckets": [b.to_json() for b in self.buckets],
            "long_examples": self.long_examples, "beyond_target": self.beyond_target,
            "min_long_examples": MIN_LONG_EXAMPLES, "long_dimension_defined": self.long_dimension_defined,
            "warnings": list(self.warnings),
        }


def example_text(record: Any) -> str:
    """The text of one JSONL record: ``text``; ``prompt`` + ``completion``/``response``;
    ``messages``/``conversations`` (``content`` or ``value``); ``instruction``/``input``/``output``.

    Raises ``ValueError`` naming the shapes accepted.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, found a JSON {type(record).__name__}")
    if isinstance(record.get("text"), str):
        return record["text"]
    for key in ("messages", "conversations"):
        if key in record:
            return _conversation(record[key], key)
    if isinstance(record.get("prompt"), str):
        answer = next((record[k] for k in ("completion", "response", "chosen") if isinstance(record.get(k), str)), "")
        return record["prompt"] + answer
    parts = [record[k] for k in ("instruction", "input", "output") if isinstance(record.get(k), str)]
    if parts:
        return "\n".join(parts)
    keys = ", ".join(sorted(record)) or "none"
    raise ValueError(f"no text field (keys: {keys}); expected text, prompt/completion, messages[].content, "
                     "conversations[].value or instruction/input/output")


def _conversation(turns: Any, key: str) -> str:
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{key} must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        content = turn.get("content", turn.get("value")) if isinstance(turn, dict) else None
        if isinstance(content, list):  # OpenAI-style parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError(f"{key}[{i}] has no string content (or value)")
        out.append(content)
    return "\n".join(out)


def read_pack(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` per example; blank lines are skipped."""
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        raise ResolutionError(f"no evaluation pack at {path}; check the path") from None
    except IsADirectoryError:
        raise ResolutionError(f"{path} is a folder; pass a .jsonl file") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalPackError(f"line {number} of {path} is not valid JSON ({exc.msg} at column "
                                        f"{exc.colno}); fix or remove that line") from None
                try:
                    yield number, example_text(record)
                except ValueError as exc:
                    raise EvalPackError(f"line {number} of {path}: {exc}; fix or remove that line") from None
        except UnicodeDecodeError as exc:
            raise EvalPackError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSONL") from None


def token_counter(tokenizer: str | Path | None) -> tuple[Callable[[str], int], str, str]:
    """A counting function, its kind and a sentence saying how counts were made."""
    if tokenizer is None:
        return (lambda text: math.ceil(len(text) / CHARS_PER_TOKEN), "estimate",
                f"token counts estimated at ~{CHARS_PER_TOKEN} characters per token (no --tokenizer given); "
                "counts near a bucket edge are approximate")
    folder = Path(tokenizer)
    if not folder.exists():
        raise ResolutionError(f"no tokenizer at {folder}; pass a local folder holding tokenizer files "
                              "(Hub ids are not fetched here)")
    from transformers import AutoTokenizer

    try:
        with no_remote_code(folder, "tokenizer"):  # never run the folder's code, never prompt on stdin
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except RemoteCodeError:
        raise
    except (OSError, ValueError) as exc:
        raise ResolutionError(f"cannot load a tokenizer from {folder} ({type(exc).__name__}); pass a folder "
                              "with tokenizer.json or tokenizer_config.json") from None

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count, "tokenizer", f"token counts from the tokenizer in {folder}"


#: how often check_pack reports progress, in examples
PROGRESS_EVERY = 200


def bucket_edges(target_context: int) -> list[int]:
    """Powers of two from 1024 up to the target, then the target itself."""
    edges, edge = [], FIRST_BUCKET
    while edge < target_context:
        edges.append(edge)
        edge *= 2
    return [*edges, target_context]


def check_pack(path: str | Path, target_context: int, *, original_max: int | None = None,
               tokenizer: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> PackReport:
    """Bucket a JSONL pack by length and warn when the long-context dimension is undefined.

    ``progress(message)``, when given, hears about the tokenizer load and every
    :data:`PROGRESS_EVERY` examples counted.
    """
    for label, value in (("target_context", target_context), ("original_max", original_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise InvalidRequestError(f"{label} {value!r} must be a positive number of tokens")
    if original_max is not None and original_max >= target_context:
        raise InvalidRequestError(f"original window {original_max} is not below the target {target_context}; "
                                  "pass the model's trained window as --original-max")
    path = Path(path)
    if progress and tokenizer is not None:
        progress(f"loading the tokenizer from {tokenizer}")
    count, counting, note = token_counter(tokenizer)
    counts = []
    for _, text in read_pack(path):
        counts.append(count(text))
        if progress and len(counts) % PROGRESS_EVERY == 0:
            progress(f"{len(counts)} examples counted")
    if not counts:
        raise EvalPackError(f"{path} holds no examples; add JSONL lines with text, prompt/completion or messages")

    edges = bucket_edges(target_context)
    buckets, low = [], 0
    for edge in edges:
        buckets.append(Bucket(low, edge, sum(1 for n in counts if low <= n <= edge)))
        low = edge + 1
    buckets.append(Bucket(low, None, sum(1 for n in counts if n >= low)))

    report = PackReport(str(path), len(counts), counts, counting, note, target_context, original_max, buckets)
    if original_max is None:
        report.warnings.append("no --original-max given: cannot tell whether the pack exercises the extended "
                               "context; pass the model's trained window")
    elif report.long_examples < MIN_LONG_EXAMPLES:
        low_n, high_n = RECOMMENDED_LONG_EXAMPLES
        report.warnings.append(
            f"only {report.long_examples} example(s) lie between the original window of {original_max} tokens "
            f"and the target (at least {MIN_LONG_EXAMPLES} needed): the long-context dimension of the release gate would be "
            f"undefined; add {low_n}-{high_n} examples between {original_max + 1} and {target_context} tokens")
    if report.beyond_target:
        report.warnings.append(f"{report.beyond_target} example(s) exceed the target context of {target_context} "
                               "tokens and would be truncated")
    return report
