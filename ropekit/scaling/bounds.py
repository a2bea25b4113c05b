"""The sane bounds every number from a config file, a plugin or a request is held to.

Values are checked here before anything is allocated or looped over from them, so a
``head_dim`` of ``1e308`` or a plugin whose ``rotary_dim()`` answers ``10**9`` gives a
one-line error naming the field and the bound instead of a loop that never ends.
The limits are far above any real model:

- :data:`MAX_ROTARY_DIM` (65536): rotated dimensions per head, and ``head_dim`` itself
  (real models rotate 32 to 512);
- :data:`MAX_WINDOW` (``2**31`` tokens): every window: ``max_position_embeddings``, the
  original and native windows, ``target_context`` and the window a factor reaches
  (the longest real windows are about ``2**24``);
- factors, betas and the attention factor are finite, and a factor is checked through the
  window it reaches (:func:`reached_window`).
"""

from __future__ import annotations

import math
from typing import Any

from ropekit.errors import InvalidConfigError, InvalidRequestError, Param
from ropekit.jsonio import shown
from ropekit.scaling.config_view import positive_int, shown_number

#: most rotated dimensions per attention head (and largest head_dim) ropekit accepts
MAX_ROTARY_DIM = 65536
#: longest window, in tokens, ropekit accepts anywhere
MAX_WINDOW = 2**31
#: largest YaRN beta (rotations over the original window) a request may give; YaRN uses 32 and 1
MAX_BETA = 2**20


def window(value: Any, where: str) -> int:
    """A window read from a config: a positive integer of at most :data:`MAX_WINDOW` tokens."""
    return _at_most(value, where, MAX_WINDOW, f"{MAX_WINDOW} (2**31) tokens",
                    "real models declare at most a few million")


def head_dim(value: Any, where: str) -> int:
    """A head size read from a config: a positive integer of at most :data:`MAX_ROTARY_DIM`."""
    return _at_most(value, where, MAX_ROTARY_DIM, str(MAX_ROTARY_DIM), "real attention heads are 64 to 512 wide")


def _at_most(value: Any, where: str, limit: int, limit_text: str, real: str) -> int:
    number = positive_int(value, where)
    if number > limit:
        raise InvalidConfigError(f"{where} is {shown(value, 40, shown_number)}, over ropekit's limit of "
                                 f"{limit_text} ({real}); fix the config.json")
    return number


def rotary_product(head: int, partial: float) -> int:
    """``int(head * partial)`` as transformers computes it, refused above :data:`MAX_ROTARY_DIM` first."""
    product = head * partial
    if not math.isfinite(product) or product > MAX_ROTARY_DIM:
        raise InvalidConfigError(f"rotary dimension head_dim {head} x partial_rotary_factor {shown_number(partial)} "
                                 f"is over ropekit's limit of {MAX_ROTARY_DIM}; partial_rotary_factor is a fraction "
                                 "of at most 1: fix head_dim or partial_rotary_factor in the config.json")
    return int(product)


def rotary_dim(value: Any, who: str) -> int:
    """A rotary dimension a family answered: an integer of at most :data:`MAX_ROTARY_DIM`.

    ``who`` names the family (and plugin) that answered, since a plugin may compute it.
    """
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ROTARY_DIM:
        return value
    raise InvalidConfigError(f"{who} gives a rotary dimension of {shown(value, 40, shown_number)}; expected an "
                             f"integer from 1 to ropekit's limit of {MAX_ROTARY_DIM} (real models rotate 32 to 512 dimensions per head); "
                             "fix head_dim or partial_rotary_factor in the config.json, or report the family's plugin")


def reached_window(factor: float, original: int, name: str = "factor") -> int:
    """The window ``factor x original`` reaches, refused when it is not finite or over :data:`MAX_WINDOW`."""
    reached = factor * original
    if not math.isfinite(reached) or reached > MAX_WINDOW:
        raise InvalidRequestError(Param(name, factor), f" from the {original}-token window reaches "
                                  f"{reached:.4g} tokens, over ropekit's limit of {MAX_WINDOW} (2**31); "
                                  "ask for a smaller factor")
    return int(round(reached))
