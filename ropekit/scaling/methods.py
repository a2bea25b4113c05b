"""The scaling methods: the config keys each writes and the closed form each implies.

Everything here is plain Python arithmetic written from the papers (PI,
arXiv:2306.15595; NTK-aware, dynamic NTK and YaRN, arXiv:2309.00071), not from
transformers, so that tests can hold transformers' rotary modules against it.
Frequencies are per rotary pair ``i = 0 .. d/2 - 1`` with ``theta_i = base**(-2i/d)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ropekit.scaling import bounds

PI_PAPER = "arXiv:2306.15595"
YARN_PAPER = "arXiv:2309.00071"

# Keys that belong to one scaling type; dropped when that scaling is replaced.
SCALING_KEYS = frozenset({
    "factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow",
    "low_freq_factor", "high_freq_factor", "short_factor", "long_factor", "short_mscale",
    "long_mscale", "mscale", "mscale_all_dim", "truncate",
})


@dataclass(frozen=True)
class MethodRequest:
    """What the engine asks a method to write at one rope site."""

    factor: float  # total factor s
    original: int  # original window L0
    rotary_dim: int  # d
    rope_theta: float  # base b before the patch
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 1.0


class ScalingMethod:
    """A RoPE scaling method. Subclass it and register an instance from a plugin."""

    name: ClassVar[str]
    papers: ClassVar[tuple[str, ...]]
    stable_max_factor: ClassVar[float]
    #: the rope_type written, or None when the type is left as it is (NTK-aware)
    rope_type: ClassVar[str | None]
    #: the long_context parameters this method carries (others are null)
    uses_betas: ClassVar[bool] = False
    #: whether the method sets an attention temperature (YaRN); methods without one remove a
    #: family's temperature keys (MLA's mscale, mscale_all_dim) so that none is applied
    attention_temperature: ClassVar[bool] = False
    plugin: str = ""

    def rope_updates(self, req: MethodRequest, rope: dict[str, Any]) -> dict[str, Any]:
        """The keys to merge into the site's rope dict (which holds rope_theta)."""
        raise NotImplementedError

    def config_max_position_embeddings(self, req: MethodRequest) -> int:
        """The ``max_position_embeddings`` the config must carry after the patch."""
        return new_window(req.factor, req.original)

    def __repr__(self) -> str:
        return f"<ScalingMethod {self.name}>"


def new_window(factor: float, original: int) -> int:
    return int(round(factor * original))


def ntk_base(base: float, factor: float, rotary_dim: int) -> float:
    """NTK-aware base: ``b * s ** (d / (d - 2))`` (YaRN paper, Eq. 16)."""
    return base * factor ** (rotary_dim / (rotary_dim - 2))


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature ``0.1 * m * ln s + 1`` (1 for s <= 1; Eq. 22)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


class Linear(ScalingMethod):
    name = "linear"
    papers = (PI_PAPER,)
    stable_max_factor = 8.0
    rope_type = "linear"

    def rope_updates(self, req, rope):
        return {"rope_type": "linear", "factor": float(req.factor)}


class NTKAware(ScalingMethod):
    name = "ntk"
    papers = (YARN_PAPER,)
    stable_max_factor = 4.0
    rope_type = None

    def rope_updates(self, req, rope):
        return {"rope_theta": ntk_base(req.rope_theta, req.factor, req.rotary_dim)}


class DynamicNTK(ScalingMethod):
    name = "dynamic"
    papers = (YARN_PAPER,)
    stable_max_factor = 8.0
    rope_type = "dynamic"

    def rope_updates(self, req, rope):
        return {"rope_type": "dynamic", "factor": float(req.factor)}

    def config_max_position_embeddings(self, req):
        # transformers uses max_position_embeddings as the threshold past which it rescales
        return req.original


class YaRN(ScalingMethod):
    name = "yarn"
    papers = (YARN_PAPER, PI_PAPER)
    stable_max_factor = 32.0
    rope_type = "yarn"
    uses_betas = True
    attention_temperature = True

    def rope_updates(self, req, rope):
        out: dict[str, Any] = {
            "rope_type": "yarn",
            "factor": float(req.factor),
            "original_max_position_embeddings": int(req.original),
            "beta_fast": req.beta_fast,
            "beta_slow": req.beta_slow,
        }
        if req.attn_factor != 1.0:
            out["attention_factor"] = req.attn_factor * yarn_temperature(req.factor, rope)
        return out


BUILTIN_METHODS: tuple[ScalingMethod, ...] = (Linear(), NTKAware(), DynamicNTK(), YaRN())


# --- closed forms -------------------------------------------------------------------------

def default_inv_freq(base: float, rotary_dim: int) -> list[float]:
    return [base ** (-(2 * i) / rotary_dim) for i in range(rotary_dim // 2)]


def yarn_temperature(factor: float, rope: dict[str, Any]) -> float:
    """The attention factor transformers derives for yarn when none is given explicitly."""
    mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor)


def yarn_ramp_bounds(rotary_dim: int, base: float, original: int, beta_fast: float,
                     beta_slow: float, truncate: bool = True) -> tuple[float, float]:
    """The pair indices where YaRN's ramp starts and ends (the reference code's inverse-dim form)."""

    def correction_dim(turns: float) -> float:
        ratio = original / (turns * 2 * math.pi)  # transformers' form, kept for identical rounding
        if not 0 < ratio < math.inf:  # an extreme beta from a file: the same log, as a difference
            ratio_log = math.log(original) - math.log(turns) - math.log(2 * math.pi)
            return rotary_dim * ratio_log / (2 * math.log(base))
        return rotary_dim * math.log(ratio) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001
    return low, high


def closed_form(rope: dict[str, Any], rotary_dim: int, max_position_embeddings: int,
                seq_len: int | None = None) -> tuple[list[float], float]:
    """``(inv_freq, attention_scaling)`` implied by a rope dict, as the papers define them.

    ``rope`` is a normalized rope dict (``rope_type``, ``rope_theta`` and the type's
    keys). ``seq_len`` matters only for dynamic NTK, which rescales past
    ``max_position_embeddings``.
    """
    rope_type = rope.get("rope_type") or "default"
    base = float(rope["rope_theta"])
    d = bounds.rotary_dim(rotary_dim, "the closed form's caller")  # every loop below runs d / 2 times
    theta = default_inv_freq(base, d)
    if rope_type == "default":
        return theta, 1.0
    factor = float(rope["factor"])
    if rope_type == "linear":
        return [t / factor for t in theta], 1.0
    if rope_type == "dynamic":
        length = max(seq_len or 0, max_position_embeddings)
        scaled = base * (factor * length / max_position_embeddings - (factor - 1)) ** (d / (d - 2))
        return default_inv_freq(scaled, d), 1.0
    if rope_type == "yarn":
        original = int(rope.get("original_max_position_embeddings") or max_position_embeddings)
        low, high = yarn_ramp_bounds(d, base, original, float(rope.get("beta_fast") or 32),
                                     float(rope.get("beta_slow") or 1), bool(rope.get("truncate", True)))
        out = []
        for i, t in enumerate(theta):
            ramp = min(max((i - low) / (high - low), 0.0), 1.0)
            out.append(t / factor * ramp + t * (1 - ramp))
        attention = rope.get("attention_factor")
        return out, float(attention) if attention is not None else yarn_temperature(factor, rope)
    if rope_type == "llama3":
        original = int(rope["original_max_position_embeddings"])
        low_f, high_f = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        out = []
        for t in theta:
            wavelen = 2 * math.pi / t
            if wavelen < original / high_f:
                out.append(t)
            elif wavelen > original / low_f:
                out.append(t / factor)
            else:
                smooth = (original / wavelen - low_f) / (high_f - low_f)
                out.append((1 - smooth) * t / factor + smooth * t)
        return out, 1.0
    raise ValueError(f"no closed form for rope_type {rope_type!r}")


def yarn_untouched_and_interpolated(rotary_dim: int, base: float, original: int,
                                    beta_fast: float = 32, beta_slow: float = 1) -> tuple[range, range]:
    """Pairs YaRN leaves alone and pairs it fully interpolates (for people and tests)."""
    low, high = yarn_ramp_bounds(rotary_dim, base, original, beta_fast, beta_slow)
    return range(0, int(math.floor(low)) + 1), range(int(math.ceil(high)), rotary_dim // 2)
