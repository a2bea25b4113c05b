"""MLA attention temperature, verify --landing with a recorded family, and landing error classes.

DeepSeek-V3 (real fixture) ships yarn x40 from 4096 with mscale = mscale_all_dim = 1;
qk_head_dim = qk_nope_head_dim 128 + qk_rope_head_dim 64 = 192. transformers multiplies
the attention softmax scale 192 ** -0.5 by (0.1 * mscale_all_dim * ln s + 1) ** 2 when the
rope type is not default (yarn's temperature).
"""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
from conftest import FIXTURES, ROOT, load_fixture
from tiny_models import build, shrink

from ropekit import LongContextConfig, apply_rope_scaling, files, resolve
from ropekit.cli import main
from ropekit.errors import CompoundingError, TransformersCannotBuildError
from ropekit.landing.check import build_skeleton, check_model, verify_landing
from ropekit.scaling.engine import apply_config

DEEPSEEK = "deepseek-ai__DeepSeek-V3"
QK_HEAD_DIM = 128 + 64


def _patch(tmp_path, name, **request):
    out = tmp_path / "patched"
    files.patch_folder(resolve(FIXTURES / name), LongContextConfig(**request), out=out)
    return out


@pytest.mark.parametrize("method", ["linear", "dynamic", "ntk"])
def test_methods_without_a_temperature_drop_mla_mscale(tmp_path, method):
    out = _patch(tmp_path, DEEPSEEK, method=method, factor=4, on_existing="replace")
    config = json.loads((out / "config.json").read_text())
    rope = config["rope_scaling"]
    if method == "ntk":
        assert rope is None  # nothing left but default: null, never a dict without factor
        assert config["rope_theta"] == pytest.approx(10000 * 4 ** (64 / 62), rel=1e-12)
    else:
        assert rope == {"rope_type": method, "factor": 4.0}
    report = verify_landing(out)
    assert report.landed, report.first_problem()
    (softmax,) = report.softmax
    assert softmax.found == pytest.approx(QK_HEAD_DIM ** -0.5, rel=1e-9)  # no temperature at any length


def test_yarn_compound_folds_the_new_temperature_into_the_softmax_scale(tmp_path):
    out = _patch(tmp_path, DEEPSEEK, method="yarn", factor=2, on_existing="compound", allow_unstable=True)
    report = verify_landing(out)
    assert report.landed, report.first_problem()
    (softmax,) = report.softmax
    assert softmax.found == pytest.approx(QK_HEAD_DIM ** -0.5 * (0.1 * math.log(80) + 1) ** 2, rel=1e-9)


@pytest.mark.parametrize("method", ["linear", "ntk", "dynamic"])
def test_compound_without_temperature_over_a_trained_temperature_is_refused(method):
    with pytest.raises(CompoundingError, match=r"softmax temperature x1\.874.*method='yarn' on_existing='compound'"):
        apply_rope_scaling(load_fixture(DEEPSEEK), LongContextConfig(method=method, factor=2, on_existing="compound"))
    assert (0.1 * math.log(40) + 1) ** 2 == pytest.approx(1.874, abs=5e-4)


def test_landing_check_catches_a_stale_softmax_scale():
    model = build(shrink(load_fixture(DEEPSEEK)))
    apply_rope_scaling(model, LongContextConfig(method="yarn", factor=2, on_existing="compound",
                                                allow_unstable=True))
    report = check_model(model)
    assert report.landed and report.softmax
    attention = next(m for m in model.modules() if hasattr(m, "qk_head_dim") and hasattr(m, "scaling"))
    attention.scaling = attention.qk_head_dim ** -0.5  # what a rotary-only rebuild would leave
    report = check_model(model)
    assert not report.landed and "softmax scale" in report.first_problem()


# --- verify --landing reads the recorded family ------------------------------------------------

def test_verify_landing_uses_the_family_the_receipt_recorded(tmp_path, capsys, monkeypatch):
    """A helium model (known to transformers 4.57 and 5.x, llama-shaped rope) patched with --family llama."""
    source = tmp_path / "helium"
    source.mkdir()
    config = load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    config.update(model_type="helium", architectures=["HeliumForCausalLM"])
    (source / "config.json").write_text(json.dumps(config, indent=2))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    assert main(["patch", str(source), "--factor", "4", "--method", "yarn", "--family", "llama",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--landing", "--json"]) == 0, capsys.readouterr().err
    landing = json.loads(capsys.readouterr().out)["landing"]
    assert landing["landed"] and landing["family"] == "llama"
    assert main(["verify", str(out), "--landing", "--family", "llama"]) == 0


# --- error classes during landing checks --------------------------------------------------------

def test_a_model_this_transformers_cannot_build_is_exit_4(tmp_path, monkeypatch, capsys):
    config = load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    config["hidden_act"] = "swiglu-v9"  # an activation this transformers does not have: no build, patched or not
    with pytest.raises(Exception):
        build_skeleton(copy.deepcopy(config))
    _, receipt = apply_config(config, LongContextConfig(method="yarn", factor=2))
    with pytest.raises(TransformersCannotBuildError, match="cannot build model_type 'llama', not even its unpatched"):
        build_skeleton(config, receipt)


def test_a_patch_that_breaks_a_buildable_model_is_a_ropekit_bug():
    config = load_fixture("meta-llama__Meta-Llama-3-8B-Instruct")
    _, receipt = apply_config(config, LongContextConfig(method="yarn", factor=2))
    config["rope_scaling"]["factor"] = "four"  # what a broken patch could write
    with pytest.raises(RuntimeError, match="builds the unpatched 'llama' config but not the patched one.*ropekit bug"):
        build_skeleton(config, receipt)


def test_cli_verify_landing_exit_4_for_an_unbuildable_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    shutil.copytree(FIXTURES / "meta-llama__Meta-Llama-3-8B-Instruct", tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    config = json.loads(path.read_text())
    config["hidden_act"] = "swiglu-v9"
    path.write_text(json.dumps(config, indent=2))
    assert main(["patch", str(tmp_path / "m"), "--factor", "2", "--method", "yarn", "--in-place"]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "m"), "--landing"]) == 4
    err = capsys.readouterr().err
    assert "cannot build model_type 'llama'" in err and "ropekit bug" not in err

