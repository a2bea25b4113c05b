"""Regenerate the coverage table in docs/families.md and its summary in README.md.

Runs the exhaustive check (ropekit.landing.coverage) over every decoder and
vision-language model_type of the installed transformers and writes the result between
the markers of that transformers version; run it once per supported version:

    python scripts/coverage_table.py           # in an environment with transformers 5.x
    .venv-t457/bin/python scripts/coverage_table.py   # and in one with 4.57

tests/test_coverage.py checks that the committed text matches what the code says.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES_DOC = ROOT / "docs" / "families.md"
README = ROOT / "README.md"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block between ``<!-- name -->`` and ``<!-- /name -->`` set to ``body``."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start not in text:
        raise SystemExit(f"{name}: marker {start} missing; add the markers where the block belongs")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def main() -> int:
    import transformers

    from ropekit.landing.coverage import check_model_type, decoder_model_types, markdown, summary

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.disable(logging.WARNING)
    version = ".".join(transformers.__version__.split(".")[:2])
    results = [check_model_type(t) for t in decoder_model_types()]
    FAMILIES_DOC.write_text(replace_block(FAMILIES_DOC.read_text(), f"coverage {version}", markdown(results, version)))
    README.write_text(replace_block(README.read_text(), f"coverage {version}", summary(results, version)))
    print(summary(results, version), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
