"""Every decoder and vision-language model_type of the installed transformers: yarn x4 on its
class-default config lands (the rotary buffers transformers builds match the closed form) or
is refused with a reason; a model without RoPE is never patched; nothing is silently wrong and
nothing is an internal error. The committed coverage table (docs/families.md) and its counts
(README.md) must say what the code does on this transformers version.
"""

from __future__ import annotations

import functools
import re

import pytest

from conftest import ROOT

pytest.importorskip("transformers")

from ropekit.landing.coverage import check_model_type, decoder_model_types, markdown, summary  # noqa: E402

MODEL_TYPES = decoder_model_types()
#: known gaps, each with what the check measured; strict, so a fix shows up as a failure to update
KNOWN_WRONG = {
    ("4", "phimoe"): "transformers 4.57's Phi-3.5-MoE rotary module keeps no inv_freq buffer, so nothing can be "
                     "checked",
}


@functools.lru_cache(maxsize=None)
def outcome(model_type: str):
    import logging

    logging.disable(logging.WARNING)
    try:
        return check_model_type(model_type)
    finally:
        logging.disable(logging.NOTSET)


def version() -> str:
    import transformers

    return ".".join(transformers.__version__.split(".")[:2])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_yarn_x4_lands_or_is_refused(model_type):
    gap = KNOWN_WRONG.get((version().split(".")[0], model_type))
    if gap:
        pytest.xfail(f"known gap: {gap}") if outcome(model_type).outcome == "wrong" else \
            pytest.fail(f"{model_type} no longer fails ({gap}); remove it from KNOWN_WRONG")
    result = outcome(model_type)
    assert result.outcome != "wrong", f"{model_type}: {result.detail}"
    if result.uses_rope is False:  # no rotary module in the language tower: never patched
        assert result.outcome in ("refused", "invalid"), result
    if result.outcome == "refused":
        reason, _, instead = result.detail.rpartition("; ")
        assert reason and instead and "\n" not in result.detail
    if result.outcome == "landed":
        assert result.uses_rope is True


def _block(path, name: str) -> str | None:
    text = (ROOT / path).read_text()
    match = re.search(rf"<!-- {re.escape(name)} -->\n(.*?)\n<!-- /{re.escape(name)} -->", text, re.S)
    return match.group(1) if match else None


def test_committed_coverage_table_and_counts_match_the_code():
    results = [outcome(t) for t in MODEL_TYPES]
    table, counts = _block("docs/families.md", f"coverage {version()}"), _block("README.md", f"coverage {version()}")
    if table is None and counts is None:
        pytest.skip(f"no committed coverage table for transformers {version()}")
    assert table == markdown(results, version()), "run scripts/coverage_table.py and commit docs/families.md"
    assert counts == summary(results, version()), "run scripts/coverage_table.py and commit README.md"
