"""Attention backend policy: FA3 on Hopper, FA2 on Ampere+, SDPA up to 16384 tokens, refusal beyond.

The device and the installed packages are faked; the decision logic is the real one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ropekit.cli import main
from ropekit.errors import AttentionBackendError, PolicyError
from ropekit.training import attention
from ropekit.training.attention import (
    DeviceInfo,
    InstalledPackages,
    choose_attention_backend,
    find_flash_packages,
    require_attention_backend,
)


class FakePackages:
    """A package environment: importable modules and distribution versions."""

    def __init__(self, modules=(), versions=None):
        self.modules = set(modules)
        self.versions = dict(versions or {})

    def has_module(self, module):
        return module in self.modules

    def version(self, distribution):
        return self.versions.get(distribution)


NONE = FakePackages()
FA2_ONLY = FakePackages({"flash_attn"}, {"flash-attn": "2.8.3"})
FA3_ONLY = FakePackages({"flash_attn_interface"}, {"flash-attn-3": "3.0.0b1"})
FA2_AND_FA3 = FakePackages({"flash_attn", "flash_attn_interface"}, {"flash-attn": "2.8.3", "flash-attn-3": "3.0.0"})

H100 = DeviceInfo.cuda((9, 0), "NVIDIA H100 80GB HBM3", 79.6)
A100 = DeviceInfo.cuda((8, 0), "NVIDIA A100-SXM4-80GB", 80.0)
RTX_4090 = DeviceInfo.cuda((8, 9), "NVIDIA GeForce RTX 4090", 24.0)
B200 = DeviceInfo.cuda((10, 0), "NVIDIA B200", 179.1)
T4 = DeviceInfo.cuda((7, 5), "Tesla T4", 15.0)
V100 = DeviceInfo.cuda((7, 0), "Tesla V100-SXM2-32GB", 32.0)
CPU = DeviceInfo("cpu", "CPU")
MI300X = DeviceInfo("rocm", "AMD Instinct MI300X", (9, 4), 192.0)


@pytest.mark.parametrize("device, packages, implementation", [
    (H100, FA2_AND_FA3, "flash_attention_3"),
    (H100, FA3_ONLY, "flash_attention_3"),
    (H100, FakePackages({"flash_attn_3"}), "flash_attention_3"),  # the module name transformers 4.57 checks
    (H100, FA2_ONLY, "flash_attention_2"),
    (A100, FA2_AND_FA3, "flash_attention_2"),  # FA3 is Hopper-only
    (RTX_4090, FA2_ONLY, "flash_attention_2"),
    (B200, FA2_AND_FA3, "flash_attention_2"),  # sm100 is not Hopper
    (MI300X, FA2_ONLY, "flash_attention_2"),  # ROCm build of flash-attn 2, never FA3
])
def test_flash_attention_choice_follows_capability_and_packages(device, packages, implementation):
    choice = require_attention_backend(131072, device, finder=packages)
    assert choice.attn_implementation == implementation
    assert choice.backend == {"flash_attention_3": "FlashAttention 3", "flash_attention_2": "FlashAttention 2"}[
        implementation]
    assert choice.allowed and choice.device == device and choice.reason


def test_hopper_with_only_fa2_suggests_fa3():
    choice = require_attention_backend(65536, H100, finder=FA2_ONLY)
    assert any("flash-attn-3" in note for note in choice.notes)


@pytest.mark.parametrize("device, packages, why", [
    (CPU, NONE, "no CUDA GPU"),
    (A100, NONE, "flash-attn is not installed"),
    (A100, FA3_ONLY, "flash-attn is not installed"),
    (H100, NONE, "neither flash-attn-3 nor flash-attn 2"),
    (T4, FA2_ONLY, "older than Ampere"),
    (V100, FA2_AND_FA3, "older than Ampere"),
    (B200, FA3_ONLY, "flash-attn is not installed"),
])
def test_without_flash_attention_long_targets_are_refused(device, packages, why):
    with pytest.raises(AttentionBackendError) as caught:
        require_attention_backend(16385, device, finder=packages)
    message = str(caught.value)
    assert caught.value.exit_code == 3 and isinstance(caught.value, PolicyError)
    assert "16385" in message and why in message
    assert "A100" in message and "H100" in message and "pip install flash-attn" in message  # the recommendation
    assert "\n" not in message


@pytest.mark.parametrize("target", [1, 4096, 16384])
def test_sdpa_up_to_16384_with_a_note(target):
    choice = require_attention_backend(target, CPU, finder=NONE)
    assert choice.attn_implementation == "sdpa" and choice.allowed
    assert "16384" in choice.reason and "flash-attn" in choice.reason


def test_capability_tuple_is_accepted_as_a_device():
    assert require_attention_backend(32768, (9, 0), finder=FA3_ONLY).attn_implementation == "flash_attention_3"
    assert require_attention_backend(32768, (8, 6), finder=FA2_ONLY).attn_implementation == "flash_attention_2"
    with pytest.raises(AttentionBackendError):
        require_attention_backend(32768, (7, 5), finder=FA2_ONLY)


def test_flash_attn_module_from_another_distribution_is_not_fa2():
    # FlashAttention 4 installs the flash_attn module under the flash-attn-4 distribution
    fa4 = FakePackages({"flash_attn"}, {"flash-attn-4": "4.0.0"})
    packages = find_flash_packages(fa4)
    assert packages.fa2_version is None and "FlashAttention 4" in packages.notes[0]
    with pytest.raises(AttentionBackendError):
        require_attention_backend(32768, A100, finder=fa4)


def test_flash_attn_older_than_transformers_minimum_is_not_used():
    old = FakePackages({"flash_attn"}, {"flash-attn": "2.1.0"})
    assert find_flash_packages(old).fa2_version is None
    choice = choose_attention_backend(32768, A100, finder=old)
    assert not choice.allowed and any("2.3.3" in note for note in choice.notes)


def test_without_a_target_the_best_backend_is_reported():
    choice = choose_attention_backend(None, CPU, finder=NONE)
    assert choice.allowed and choice.attn_implementation == "sdpa" and choice.target_context is None


def test_bad_target_and_device_are_rejected():
    with pytest.raises(ValueError):
        choose_attention_backend(0, A100, finder=FA2_ONLY)
    with pytest.raises(TypeError):
        choose_attention_backend(1024, "H100", finder=FA2_ONLY)


def test_installed_packages_use_find_spec_and_metadata():
    real = InstalledPackages()
    assert real.has_module("json") and not real.has_module("ropekit_no_such_module_xyz")
    assert real.version("click") is not None and real.version("ropekit-no-such-dist") is None


def test_importing_training_and_serving_loads_no_torch_or_transformers():
    code = ("import sys, ropekit.training, ropekit.serving, ropekit.cli.training; "
            "print(sorted(m for m in ('torch', 'transformers', 'flash_attn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _fake_machine(monkeypatch, device, packages):
    monkeypatch.setattr(attention, "detect_device", lambda: device)
    monkeypatch.setattr(attention, "InstalledPackages", lambda: packages)


def test_doctor_refuses_a_long_target_without_flash_attention(monkeypatch, capsys):
    _fake_machine(monkeypatch, T4, FA2_ONLY)
    assert main(["doctor", "--target-context", "131072"]) == 3
    out, err = capsys.readouterr()
    assert "Tesla T4" in out and "refused" in out
    assert err.startswith("error: target context 131072 needs FlashAttention") and err.count("\n") == 1


def test_doctor_json_reports_device_backend_and_verdict(monkeypatch, capsys):
    _fake_machine(monkeypatch, H100, FA2_AND_FA3)
    assert main(["doctor", "--target-context", "131072", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attn_implementation"] == "flash_attention_3" and report["allowed"] is True
    assert report["device"]["sm"] == 90 and report["device"]["name"] == "NVIDIA H100 80GB HBM3"


def test_doctor_json_on_refusal_still_prints_the_report(monkeypatch, capsys):
    _fake_machine(monkeypatch, CPU, NONE)
    assert main(["doctor", "--target-context", "20000", "--json"]) == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out)["allowed"] is False and captured.err.startswith("error: ")
