"""Every error ropekit raises derives from :class:`RopekitError`.

Each subclass also inherits the built-in exception a caller would naturally catch
(``ValueError`` for bad values, ``KeyError`` for unknown names, ``FileNotFoundError``
for missing inputs), and carries the command-line ``exit_code`` it maps to:
2 usage, 3 refused by policy or failed verification, 4 bad input or resolution failure.
Messages are one sentence that names the value, what was expected and the fix.

A message that tells the caller to pass something names it as a :class:`Param`, so
each audience reads its own words: ``str(error)`` names the Python parameter
(``on_existing='compound'``), and the command line renders the same part as its flag
(``--on-existing compound``) through :meth:`RopekitError.render`.
"""

from __future__ import annotations

from typing import Any, Callable

_NO_VALUE: Any = object()


#: longest error message: a value quoted from a hostile file (a 300,000-element list) is
#: elided in the middle, so the message keeps its start (what is wrong) and its end (the fix)
MAX_MESSAGE_CHARS = 1200
_KEEP_HEAD, _KEEP_TAIL = 800, 300


def bounded(message: str) -> str:
    """``message`` cut to at most about :data:`MAX_MESSAGE_CHARS` characters, its middle elided."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    elided = len(message) - _KEEP_HEAD - _KEEP_TAIL
    return f"{message[:_KEEP_HEAD]} [...{elided} characters elided...] {message[-_KEEP_TAIL:]}"


class Param:
    """A parameter of the Python API named in an error message.

    ``Param("on_existing", "compound")`` reads ``on_existing='compound'``;
    ``Param("family", placeholder="NAME")`` reads ``family=NAME``;
    ``Param("original_max_position_embeddings")`` reads the bare name.
    """

    __slots__ = ("name", "value", "placeholder")

    def __init__(self, name: str, value: Any = _NO_VALUE, *, placeholder: str | None = None) -> None:
        self.name = name
        self.value = value
        self.placeholder = placeholder

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def __str__(self) -> str:
        if self.has_value:
            return f"{self.name}={self.value!r}"
        if self.placeholder:
            return f"{self.name}={self.placeholder}"
        return self.name

    def __repr__(self) -> str:
        return f"Param({str(self)!r})"


class RopekitError(Exception):
    """Root of all ropekit errors.

    The message is given in parts: strings and :class:`Param` references, joined
    into ``args[0]`` with each parameter in its Python spelling.
    """

    exit_code: int = 4

    def __init__(self, *parts: Any) -> None:
        self.parts: tuple[Any, ...] = parts
        super().__init__(*((bounded("".join(str(part) for part in parts)),) if parts else ()))

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__

    def render(self, name: Callable[[Param], str]) -> str:
        """The message with every :class:`Param` spelled by ``name`` (the command line's flags)."""
        if not any(isinstance(part, Param) for part in self.parts):
            return str(self)
        return bounded("".join(name(part) if isinstance(part, Param) else str(part) for part in self.parts))

    @property
    def params(self) -> tuple[Param, ...]:
        return tuple(part for part in self.parts if isinstance(part, Param))


class SettingError(RopekitError, ValueError):
    """An environment setting of ropekit's (``ROPEKIT_*_TIMEOUT``) holds a value it cannot use."""

    exit_code = 4


class InvalidRequestError(RopekitError, ValueError):
    """The requested scaling (factor, method, window, betas) is not valid."""

    exit_code = 2


class InvalidConfigError(RopekitError, ValueError):
    """A model config is malformed: wrong types, missing keys, impossible values."""

    exit_code = 4


class UnknownFamilyError(RopekitError, KeyError):
    """No registered family claims a model_type."""

    exit_code = 4


class PluginError(RopekitError):
    """A plugin misbehaved: a duplicate claim, a hook that raised, a bad registration."""

    exit_code = 4


class EvalPackError(RopekitError, ValueError):
    """An evaluation pack line cannot be read."""

    exit_code = 4


class ResolutionError(RopekitError, FileNotFoundError):
    """A model id, folder or file could not be resolved to a config."""

    exit_code = 4


class HubUnavailableError(ResolutionError):
    """No Hub or cache copy could be had, but nothing says the id or revision is wrong."""


class PolicyError(RopekitError):
    """The request is well formed but refused by policy."""

    exit_code = 3


class CompoundingError(PolicyError):
    """The model already ships scaling and the request would stack on it silently."""


class UnstableFactorError(PolicyError):
    """The factor lies outside the method's stable band."""


class WindowMismatchError(PolicyError):
    """The declared original window differs from the family's native window."""


class UnsupportedMethodError(PolicyError):
    """The family cannot carry the requested method."""


class ArchitectureError(PolicyError):
    """The architecture cannot carry RoPE scaling at all (no RoPE, RoPE only on local layers, ...).

    ``family`` names the family that gave the reason.
    """

    def __init__(self, message: str, family: str | None = None) -> None:
        super().__init__(message)
        self.family = family


class AttentionBackendError(PolicyError):
    """Long-context training was requested without a FlashAttention backend."""


class TransformersVersionError(PolicyError):
    """The installed transformers mishandles the requested method."""


class EngineUnsupportedError(PolicyError):
    """A serving engine cannot serve the receipt's scaling faithfully."""


class VerificationError(PolicyError):
    """A receipt does not match its config, or a patch did not land."""


class ReceiptMismatchError(VerificationError):
    """A config or receipt differs from what the receipt recorded."""


class LandingError(VerificationError):
    """The model that transformers builds does not carry the scaling the receipt promises."""


class TransformersCannotBuildError(RopekitError):
    """The installed transformers cannot build this model at all (its unpatched config fails too)."""

    exit_code = 4


class RemoteCodeError(RopekitError, ValueError):
    """A model folder's config, tokenizer or model loads only by running the Python code the folder ships."""

    exit_code = 4


class FileAccessError(RopekitError, OSError):
    """The file system refused a read or write: permissions, a read-only or full disk, a too-long name.

    An environment problem, not a ropekit bug; the message names the path and the operating
    system's reason.
    """

    exit_code = 4


class FolderInUseError(FileAccessError):
    """Another ropekit process holds the folder's lock beyond ``ROPEKIT_LOCK_TIMEOUT`` seconds."""


# --- signing receipts (ropekit.signing) -----------------------------------------------------

class SigningKeyError(RopekitError, ValueError):
    """A signing key cannot be read, or is too short to sign with."""

    exit_code = 4


class SignatureError(VerificationError):
    """A receipt's signature is missing, made with another key, or does not match its manifest."""
