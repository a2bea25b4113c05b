"""Which attention kernel long-context training can use, decided before any weights load.

Policy (DESIGN.md): FlashAttention 3 on Hopper (sm90), FlashAttention 2 on Ampere
and newer (sm80+); without either, a target above :data:`SDPA_MAX_CONTEXT` tokens
is refused with a recommendation, and at or below it PyTorch SDPA is used with a note.

The decision reads only the device's compute capability and whether the packages
are installed (``importlib.util.find_spec`` and distribution metadata); it never
imports flash-attn or any other CUDA extension. Both inputs are injectable, so the
decision logic is tested against fake devices and package sets.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Protocol

from ropekit.errors import AttentionBackendError

#: the longest target that may train without FlashAttention
SDPA_MAX_CONTEXT = 16384
#: the oldest flash-attn 2 release transformers 5.x accepts (4.57 accepts 2.1.0)
FA2_MIN_VERSION = (2, 3, 3)

FA3 = "flash_attention_3"
FA2 = "flash_attention_2"
SDPA = "sdpa"
BACKEND_NAMES = {FA3: "FlashAttention 3", FA2: "FlashAttention 2", SDPA: "PyTorch SDPA"}

RECOMMENDED_MACHINE = ("an NVIDIA Ampere-or-newer GPU (A100, L40S, H100/H200) with flash-attn installed "
                       "(pip install flash-attn; on H100/H200 also flash-attn-3)")


@dataclass(frozen=True)
class DeviceInfo:
    """The accelerator training would run on."""

    kind: str  # cuda | rocm | mps | cpu
    name: str
    capability: tuple[int, int] | None = None  # CUDA compute capability (major, minor)
    total_memory_gib: float | None = None
    count: int = 1

    @classmethod
    def cuda(cls, capability: tuple[int, int], name: str = "CUDA device",
             total_memory_gib: float | None = None) -> "DeviceInfo":
        return cls("cuda", name, (int(capability[0]), int(capability[1])), total_memory_gib)

    @property
    def sm(self) -> int | None:
        """Compute capability as one number (9.0 -> 90), CUDA only."""
        if self.kind != "cuda" or self.capability is None:
            return None
        return self.capability[0] * 10 + self.capability[1]

    def describe(self) -> str:
        if self.kind == "cuda" and self.capability:
            memory = f", {self.total_memory_gib:.1f} GiB" if self.total_memory_gib else ""
            count = f" x{self.count}" if self.count > 1 else ""
            return f"{self.name}{count} (sm{self.sm}{memory})"
        if self.kind == "rocm":
            return f"{self.name} (ROCm)"
        return self.name

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name,
                "capability": list(self.capability) if self.capability else None,
                "sm": self.sm, "total_memory_gib": self.total_memory_gib, "count": self.count}


class PackageFinder(Protocol):
    """Answers whether a module is importable and which version a distribution has."""

    def has_module(self, module: str) -> bool: ...

    def version(self, distribution: str) -> str | None: ...


class InstalledPackages:
    """The real environment: ``find_spec`` and distribution metadata, no imports."""

    def has_module(self, module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    def version(self, distribution: str) -> str | None:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return None


@dataclass(frozen=True)
class FlashPackages:
    """Which FlashAttention builds are installed."""

    fa2_version: str | None  # flash-attn (2.x) version, None when absent or too old
    fa3_module: str | None  # flash_attn_interface or flash_attn_3, None when absent
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"flash_attn_2": self.fa2_version, "flash_attn_3": self.fa3_module, "notes": list(self.notes)}


def find_flash_packages(finder: PackageFinder | None = None) -> FlashPackages:
    """Look for flash-attn 2 and flash-attn 3 without importing them."""
    finder = finder or InstalledPackages()
    notes: list[str] = []
    fa2: str | None = None
    if finder.has_module("flash_attn"):
        installed = finder.version("flash-attn")
        if installed is None:
            notes.append("module flash_attn is present but not from the flash-attn (2.x) distribution "
                         "(FlashAttention 4 ships under the same module name)")
        elif _version_tuple(installed) < FA2_MIN_VERSION:
            notes.append(f"flash-attn {installed} is older than "
                         f"{'.'.join(map(str, FA2_MIN_VERSION))}, which transformers 5 requires; upgrade it")
        else:
            fa2 = installed
    # transformers 5 looks for flash_attn_interface (distribution flash-attn-3); 4.57 for flash_attn_3
    fa3 = next((m for m in ("flash_attn_interface", "flash_attn_3") if finder.has_module(m)), None)
    return FlashPackages(fa2, fa3, tuple(notes))


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def detect_device() -> DeviceInfo:
    """The first visible accelerator, read through torch (CPU when torch or a GPU is missing)."""
    if importlib.util.find_spec("torch") is None:
        return DeviceInfo("cpu", "CPU (torch is not installed)")
    import torch

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        kind = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        return DeviceInfo(kind, props.name, (props.major, props.minor), round(props.total_memory / 2**30, 1),
                          torch.cuda.device_count())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return DeviceInfo("mps", "Apple GPU (MPS)")
    return DeviceInfo("cpu", "CPU (no CUDA device visible)")


@dataclass(frozen=True)
class AttentionChoice:
    """The attention backend for a training run, and why."""

    backend: str  # FlashAttention 3 | FlashAttention 2 | PyTorch SDPA
    attn_implementation: str  # what transformers' from_pretrained(attn_implementation=...) takes
    device: DeviceInfo
    reason: str
    target_context: int | None = None
    allowed: bool = True
    packages: FlashPackages | None = None
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "attn_implementation": self.attn_implementation,
            "device": self.device.to_json(), "reason": self.reason, "target_context": self.target_context,
            "allowed": self.allowed, "sdpa_max_context": SDPA_MAX_CONTEXT,
            "packages": self.packages.to_json() if self.packages else None, "notes": list(self.notes),
        }


def choose_attention_backend(target_context: int | None = None,
                             device: DeviceInfo | tuple[int, int] | None = None, *,
                             finder: PackageFinder | None = None) -> AttentionChoice:
    """Decide the backend; ``allowed`` is False when the policy refuses the target.

    :param target_context: the training length in tokens (None: report the best backend only).
    :param device: a :class:`DeviceInfo`, a CUDA capability tuple such as ``(9, 0)``, or None to detect.
    :param finder: where to look for packages (the installed environment by default).
    """
    if target_context is not None and (isinstance(target_context, bool) or target_context <= 0):
        raise ValueError(f"target_context {target_context!r} must be a positive number of tokens")
    info = _as_device(device)
    packages = find_flash_packages(finder)
    notes = list(packages.notes)
    sm = info.sm

    if sm == 90 and packages.fa3_module:
        return AttentionChoice(BACKEND_NAMES[FA3], FA3, info,
                               f"Hopper GPU (sm90) with FlashAttention 3 installed ({packages.fa3_module})",
                               target_context, True, packages, tuple(notes))
    if sm is not None and sm >= 80 and packages.fa2_version:
        if sm == 90:
            notes.append("FlashAttention 3 is faster on Hopper: pip install flash-attn-3 (built from the "
                         "flash-attention repository's hopper/ folder)")
        return AttentionChoice(BACKEND_NAMES[FA2], FA2, info,
                               f"sm{sm} GPU with flash-attn {packages.fa2_version} installed",
                               target_context, True, packages, tuple(notes))
    if info.kind == "rocm" and packages.fa2_version:
        return AttentionChoice(BACKEND_NAMES[FA2], FA2, info,
                               f"ROCm GPU with flash-attn {packages.fa2_version} (ROCm build) installed",
                               target_context, True, packages, tuple(notes))

    missing = _why_no_flash(info, packages)
    allowed = target_context is None or target_context <= SDPA_MAX_CONTEXT
    if allowed:
        reason = (f"{missing}; SDPA is fine up to {SDPA_MAX_CONTEXT} tokens, but longer targets need "
                  f"FlashAttention: {RECOMMENDED_MACHINE}")
    else:
        reason = (f"target context {target_context} needs FlashAttention above {SDPA_MAX_CONTEXT} tokens, but "
                  f"{missing}; train on {RECOMMENDED_MACHINE}, or lower the target to {SDPA_MAX_CONTEXT}")
    return AttentionChoice(BACKEND_NAMES[SDPA], SDPA, info, reason, target_context, allowed, packages,
                           tuple(notes))


def require_attention_backend(target_context: int, device: DeviceInfo | tuple[int, int] | None = None, *,
                              finder: PackageFinder | None = None) -> AttentionChoice:
    """The backend to train at ``target_context`` tokens, or raise :class:`AttentionBackendError`.

    Call before loading weights; pass the result's ``attn_implementation`` to
    ``from_pretrained``.
    """
    choice = choose_attention_backend(target_context, device, finder=finder)
    if not choice.allowed:
        raise AttentionBackendError(choice.reason)
    return choice


def _as_device(device: DeviceInfo | tuple[int, int] | None) -> DeviceInfo:
    if device is None:
        return detect_device()
    if isinstance(device, DeviceInfo):
        return device
    if isinstance(device, tuple) and len(device) == 2 and all(isinstance(v, int) for v in device):
        return DeviceInfo.cuda(device)
    raise TypeError(f"device must be a DeviceInfo, a (major, minor) capability tuple or None, "
                    f"not {type(device).__name__}")


def _why_no_flash(info: DeviceInfo, packages: FlashPackages) -> str:
    sm = info.sm
    if info.kind == "cpu":
        return "this machine has no CUDA GPU and FlashAttention needs one"
    if info.kind == "mps":
        return "FlashAttention does not run on Apple GPUs (MPS)"
    if info.kind == "rocm":
        return f"{info.describe()} has no flash-attn (ROCm build) installed"
    if sm is not None and sm < 80:
        return f"{info.describe()} is older than Ampere (sm80) and FlashAttention 2/3 do not support it"
    if sm == 90:
        return f"{info.describe()} is a Hopper GPU but neither flash-attn-3 nor flash-attn 2 is installed"
    return f"{info.describe()} supports FlashAttention 2 but flash-attn is not installed"
