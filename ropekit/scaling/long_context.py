"""``LongContextConfig``: what the user asks for, validated before anything is touched."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
    model_validator,
)

from ropekit.errors import InvalidRequestError, Param
from ropekit.jsonio import shown
from ropekit.scaling.bounds import MAX_BETA, MAX_WINDOW

OnExisting = Literal["refuse", "compound", "replace"]


class LongContextConfig(BaseModel):
    """A RoPE scaling request.

    Give ``factor`` (4.0 means four times the original window) or
    ``target_context`` (tokens). ``original_max_position_embeddings`` defaults to
    the family's native window. ``attn_factor`` multiplies YaRN's temperature
    ``0.1 ln s + 1`` as in the YaRN reference code. ``on_existing`` decides what
    happens when the model already ships scaling.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "auto"
    factor: float | None = None
    target_context: int | None = None
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float = 1.0
    on_existing: OnExisting = "refuse"
    allow_unstable: bool = False

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidRequestError(*_message(exc)) from None

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("expected a method name such as yarn, linear, ntk, dynamic or auto")
        return value.strip().lower()

    @field_validator("factor")
    @classmethod
    def _factor(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or value <= 1):
            raise ValueError("expected a finite number above 1 (4 means four times the original window)")
        if value is not None and value > MAX_WINDOW:
            raise ValueError(f"expected at most {MAX_WINDOW} (2**31), ropekit's limit on any window")
        return value

    @field_validator("target_context", "original_max_position_embeddings")
    @classmethod
    def _tokens(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("expected a positive number of tokens")
        if value is not None and value > MAX_WINDOW:
            raise ValueError(f"expected at most {MAX_WINDOW} (2**31) tokens, ropekit's limit on any window")
        return value

    @field_validator("beta_fast", "beta_slow", "attn_factor")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError("expected a positive finite number")
        if value > MAX_BETA:
            raise ValueError(f"expected at most {MAX_BETA} (2**20); YaRN uses beta_fast 32, beta_slow 1, "
                             "attn_factor 1")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "LongContextConfig":
        if (self.factor is None) == (self.target_context is None):
            raise _Invalid("give exactly one of ", Param("factor"), " or ", Param("target_context"))
        if self.beta_fast <= self.beta_slow:
            raise _Invalid(Param("beta_fast"), f" ({self.beta_fast:g}) must exceed ", Param("beta_slow"),
                           f" ({self.beta_slow:g}); YaRN's defaults are 32 and 1")
        return self


class _Invalid(ValueError):
    """A validation message that names parameters (kept whole through pydantic's error)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts
        super().__init__("".join(str(part) for part in parts))


def _message(exc: ValidationError) -> tuple[Any, ...]:
    """The first validation error as message parts, with the field named as a :class:`Param`."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err.get("loc", ())) or "request"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    cause = (err.get("ctx") or {}).get("error")
    if err.get("type") == "extra_forbidden":
        fields = ", ".join(LongContextConfig.model_fields)
        return (f"unknown option {loc!r}; LongContextConfig takes {fields}",)
    if loc == "request" or err.get("type") == "value_error" and not err.get("loc"):
        return ("invalid request: ", *(cause.parts if isinstance(cause, _Invalid) else (msg,)))
    name = Param(loc) if loc in LongContextConfig.model_fields else loc
    return ("invalid ", name, f" {shown(err.get('input'), 40)}: {msg}")


