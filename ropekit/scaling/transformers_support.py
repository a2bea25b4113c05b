"""Which installed transformers can carry a rope dict exactly (data only: no transformers import)."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

from ropekit import constants
from ropekit.errors import TransformersVersionError


def transformers_version() -> str | None:
    return constants.dist_version("transformers")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hold back transformers' log lines and Python warnings while ropekit reads configs with it.

    ropekit builds config objects to compare or fill values; what transformers says about a
    config on the way (a YaRN factor it finds odd, an unknown key) is not the user's business
    there. Imports transformers: call only where it is needed anyway.
    """
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(previous)


def _version_tuple(version: str) -> tuple[int, int, int]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def check_transformers_support(rope: dict[str, Any], max_position_embeddings: int,
                               version: str | None = None) -> None:
    """Refuse a rope dict the given (default: installed) transformers would mishandle.

    4.46-4.50 ignore YaRN's original_max_position_embeddings and ramp from
    max_position_embeddings; 4.51-4.55 replace YaRN's factor with
    max_position_embeddings / original, which is exact only when the two agree.
    """
    version = version or transformers_version()
    if not version or rope.get("rope_type") != "yarn":
        return
    v = _version_tuple(version)
    original = rope.get("original_max_position_embeddings")
    if (4, 46, 0) <= v < (4, 51, 0) and original and original != max_position_embeddings:
        raise TransformersVersionError(
            f"transformers {version} ignores yarn's original_max_position_embeddings and would ramp from "
            f"{max_position_embeddings}; upgrade with pip install -U 'transformers>=4.57'"
        )
    if (4, 51, 0) <= v < (4, 56, 0) and original:
        implied = max_position_embeddings / original
        if not math.isclose(implied, float(rope["factor"]), rel_tol=1e-9):
            raise TransformersVersionError(
                f"transformers {version} replaces yarn's factor {rope['factor']:g} with "
                f"max_position_embeddings/original = {implied:g}; upgrade with pip install -U 'transformers>=4.57'"
            )
