"""Windows, compounding and replacing, on real configs; expected values are hand-computed.

Llama 3.1 ships llama3 x8 from 8192 whose window spans 131072 (16 x 8192), Gemma 3 ships
linear x8 over 131072 positions (unscaled window 131072 / 8 = 16384), gpt-oss ships yarn x32
from 4096 (131072), DeepSeek-V3 yarn x40 from 4096 (163840).
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT, load_fixture

import ropekit
from ropekit import LongContextConfig, apply_rope_scaling, plan
from ropekit.cli import main
from ropekit.cli.failure import message as cli_message
from ropekit.errors import CompoundingError, InvalidRequestError, WindowMismatchError

LLAMA31 = "meta-llama__Llama-3.1-8B-Instruct"


def _plan(name: str, **request):
    return plan(load_fixture(name), LongContextConfig(**request))


# --- compounding in windows ------------------------------------------------------------------

def test_compound_x2_on_llama31_gives_no_longer_window_and_says_so():
    p = _plan(LLAMA31, method="yarn", factor=2, on_existing="compound")
    # the receipt keeps the factor arithmetic: 8 (shipped) x 2 (asked) = 16 from 8192
    assert (p.factor, p.original_window, p.new_window) == (16.0, 8192, 16 * 8192)
    assert p.windows.to_json() == {"native": 8192, "shipped": 131072, "new": 131072, "growth": 1.0}
    (warning,) = [w for w in p.warnings if "compounded window" in w]
    assert "131072" in warning and "not the x2 asked" in warning
    assert "--target-context 262144 --on-existing compound" in warning


def test_target_context_refusal_names_the_factor_it_really_takes():
    with pytest.raises(CompoundingError) as err:
        _plan(LLAMA31, target_context=262144)
    message = str(err.value)
    assert "yarn x32 from 8192" in message and "x256" not in message  # 262144 / 8192 = 32
    assert "target_context=262144 on_existing='compound'" in message  # the API names parameters,
    assert "--target-context 262144 --on-existing compound" in cli_message(err.value)  # the CLI flags
    # the quoted options do what they say
    p = _plan(LLAMA31, target_context=262144, on_existing="compound")
    assert (p.method.name, p.factor, p.original_window, p.new_window) == ("yarn", 32.0, 8192, 262144)


def test_cli_target_refusal_quotes_the_command_that_reaches_it(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    model = f"fixtures/{LLAMA31}"
    assert main(["plan", model, "--target-context", "262144"]) == 3
    err = capsys.readouterr().err
    command = f"ropekit plan {model} --target-context 262144 --on-existing compound"
    assert err.rstrip().endswith(command)
    assert main(command.split()[1:] + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["long_context"]["new_max_position_embeddings"] == 262144
    assert out["windows"] == {"native": 8192, "shipped": 131072, "new": 262144, "growth": 2.0}


def test_factor_refusal_suggests_the_target_the_factor_meant():
    with pytest.raises(CompoundingError) as err:
        _plan(LLAMA31, factor=2)
    message = str(err.value)
    # x2 on top: yarn x16 from 8192 = 131072, no longer than today; x2 today's window = 262144
    assert "yarn x16 from 8192 = 131072 tokens (x1 the window 131072" in message
    assert "target_context=262144 on_existing='compound'" in message
    assert "--target-context 262144 --on-existing compound" in cli_message(err.value)
    assert err.value.suggestion.on_existing == "compound" and err.value.suggestion.factor == 2


def test_a_target_inside_the_shipped_window_is_refused():
    with pytest.raises(InvalidRequestError, match="100000 is not beyond the model's window 131072"):
        _plan(LLAMA31, target_context=100000, on_existing="compound")


# --- replace that shrinks ----------------------------------------------------------------------

@pytest.mark.parametrize("name, shipped, new", [
    (LLAMA31, 131072, 4 * 8192),
    ("deepseek-ai__DeepSeek-V3", 163840, 4 * 4096),
])
def test_replace_states_the_window_before_and_after(name, shipped, new):
    p = _plan(name, method="yarn", factor=4, on_existing="replace")
    assert (p.windows.shipped, p.windows.new) == (shipped, new)
    assert any(f"shrinks the window {shipped} -> {new}" in w for w in p.warnings)


def test_refusal_never_recommends_a_shrinking_replace_silently():
    with pytest.raises(CompoundingError) as err:
        _plan(LLAMA31, method="yarn", factor=4)
    assert "yarn x4 from 8192 = 32768 tokens, which shrinks the window from 131072" in str(err.value)


# --- a compound never makes a pair turn faster than trained --------------------------------------

def _freqs(rope, d, max_pos):
    from ropekit.scaling.methods import closed_form

    return closed_form(rope, d, max_pos)[0]


@pytest.mark.parametrize("method", ["yarn", "ntk", "dynamic"])
def test_gemma3_linear_x8_cannot_be_compounded_but_by_linear(method):
    with pytest.raises(CompoundingError) as err:
        _plan("google__gemma-3-4b-it", method=method, factor=2, on_existing="compound", allow_unstable=True)
    message = str(err.value)
    assert "faster than the weights were trained with" in message
    assert "method='linear' on_existing='compound'" in message
    assert "--method linear --on-existing compound" in cli_message(err.value)
    # linear over linear is exact: every frequency divided by 8 x 2 (theta 1e6, d 256)
    cfg = load_fixture("google__gemma-3-4b-it")
    apply_rope_scaling(cfg, LongContextConfig(method="linear", factor=2, on_existing="compound",
                                              allow_unstable=True))
    assert cfg["text_config"]["rope_scaling"] == {"rope_type": "linear", "factor": 16.0}
    assert cfg["text_config"]["max_position_embeddings"] == 16 * 16384


def test_yarn_over_gemma3_linear_names_the_pairs_that_would_speed_up():
    with pytest.raises(CompoundingError) as err:
        _plan("google__gemma-3-4b-it", method="yarn", factor=4, on_existing="compound")
    # yarn x32 from 16384, theta 1e6, d 256 (YaRN reference code): ramp from pair 40 to 73; pair i
    # keeps theta_i / (r/32 + 1 - r), r = (i - 40) / 33, which is faster than the trained theta_i / 8
    # while r/32 + 1 - r > 1/8, i.e. for every pair below 40 + 33 * (7/8) / (31/32) = 69.8
    d, base, original = 256, 1e6, 16384
    low = math.floor(d * math.log(original / (2 * math.pi * 32)) / (2 * math.log(base)))
    high = math.ceil(d * math.log(original / (2 * math.pi)) / (2 * math.log(base)))
    last = math.ceil(low + (high - low) * (7 / 8) / (31 / 32)) - 1
    assert (low, high, last) == (40, 73, 69)
    assert f"{last + 1} pairs (0-{last}) would rotate up to 8x faster" in str(err.value)


def test_llama3_compounds_with_yarn_keeping_every_trained_frequency():
    p = _plan(LLAMA31, method="yarn", factor=2, on_existing="compound")
    trained = load_fixture(LLAMA31)["rope_scaling"] | {"rope_theta": 500000.0}
    before = _freqs(trained, 128, 131072)
    after = p.expected()[0]
    assert all(a <= b * (1 + 1e-12) for a, b in zip(after, before))
    assert after[-1] == pytest.approx(500000.0 ** (-126 / 128) / 16, rel=1e-9)


def test_llama32_head_dim_64_needs_a_wider_yarn_ramp():
    with pytest.raises(CompoundingError, match=r"pair 17 would rotate.*beta_fast=64$") as err:
        _plan("meta-llama__Llama-3.2-1B-Instruct", method="yarn", factor=4, on_existing="compound",
              allow_unstable=True)
    assert err.value.suggestion.beta_fast == 64.0 and cli_message(err.value).endswith("--beta-fast 64")
    p = _plan("meta-llama__Llama-3.2-1B-Instruct", method="yarn", factor=4, on_existing="compound",
              allow_unstable=True, beta_fast=64)
    trained = load_fixture("meta-llama__Llama-3.2-1B-Instruct")["rope_scaling"] | {"rope_theta": 500000.0}
    assert all(a <= b * (1 + 1e-12) for a, b in zip(p.expected()[0], _freqs(trained, 64, 131072)))


def test_ntk_over_llama3_is_refused_where_it_would_speed_pairs_up():
    with pytest.raises(CompoundingError, match="faster than the weights were trained with.*method='yarn'"):
        _plan(LLAMA31, method="ntk", factor=2, on_existing="compound", allow_unstable=True)


# --- inherited windows --------------------------------------------------------------------------

@pytest.fixture
def llama31_fine_tune(tmp_path, monkeypatch):
    """A local fine-tune whose config dropped rope_scaling; its card names Llama 3.1 (bundled catalog)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "llama31-chat"
    folder.mkdir()
    config = load_fixture(LLAMA31)
    config["rope_scaling"] = None
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "README.md").write_text("---\nbase_model: meta-llama/Llama-3.1-8B-Instruct\n---\nA fine-tune.\n")
    return folder


def test_inherited_scaling_sets_the_native_window(llama31_fine_tune, capsys):
    assert main(["inspect", str(llama31_fine_tune), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["native_window"] == 8192 and facts["max_position_embeddings"] == 131072
    assert facts["shipped_scaling"]["source"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_the_true_original_window_meets_the_compounding_refusal_naming_the_ancestor(llama31_fine_tune):
    with pytest.raises(CompoundingError, match="inherited from base model meta-llama/Llama-3.1-8B-Instruct"):
        ropekit.plan(str(llama31_fine_tune), LongContextConfig(factor=4, original_max_position_embeddings=8192))


def test_replace_never_silently_writes_a_wrong_window(llama31_fine_tune):
    with pytest.raises(WindowMismatchError, match="131072 differs from the native window 8192.*inherited from"):
        ropekit.plan(str(llama31_fine_tune), LongContextConfig(factor=4, original_max_position_embeddings=131072,
                                                               on_existing="replace"))
    p = ropekit.plan(str(llama31_fine_tune), LongContextConfig(method="yarn", factor=4, on_existing="replace"))
    assert (p.original_window, p.new_window) == (8192, 32768)
    assert any("shrinks the window 131072 -> 32768" in w for w in p.warnings)



# --- non-finite numbers outside the rope settings --------------------------------------------------

def test_nemotron_h_infinity_in_time_step_limit_loads(tmp_path, capsys):
    """Nemotron-H's Mamba field time_step_limit holds Infinity; transformers loads it, so does ropekit."""
    from ropekit.receipt import config_canonical_json, config_sha256

    source = ROOT / "tests" / "data" / "nvidia__NVIDIA-Nemotron-3-Nano-30B-A3B-BF16" / "config.json"
    text = source.read_text()
    assert '"time_step_limit"' not in text
    folder = tmp_path / "nemotron"
    folder.mkdir()
    (folder / "config.json").write_text(text.replace('{', '{\n  "time_step_limit": [0.0, Infinity],', 1))
    config = ropekit.resolve(folder).config
    assert config["time_step_limit"] == [0.0, math.inf]
    assert b'"time_step_limit":[0,Infinity]' in config_canonical_json(config)
    assert config_sha256(config) != config_sha256({**config, "time_step_limit": [0.0, 1e30]})
    code = main(["inspect", str(folder)])
    err = capsys.readouterr().err
    assert "Infinity" not in err and "NaN" not in err  # whatever is said, it is not about the number
    assert code in (0, 3, 4)
