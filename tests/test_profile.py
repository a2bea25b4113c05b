"""The perplexity profile on the committed reference model: a seconds-long version of the bench run.

Margins come from the measured profile (bench/profile_results.json, docs/profile.md): at 8x
no scaling is about 2.3x its in-window perplexity and YaRN about 1.3x; the assertions
below leave wide room for the noise of a few thousand tokens per cell.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("matplotlib")

from ropekit.cli import main  # noqa: E402
from ropekit.eval import corpus  # noqa: E402
from ropekit.eval.models import YarnBetas, build, load_model, scaled_config  # noqa: E402
from ropekit.eval.perplexity import bucket_edges, position_losses, summarize  # noqa: E402
from ropekit.eval.profile import ProfileRequest, find_cell, run_profile  # noqa: E402
from ropekit.eval.reference import REFERENCE_DIR, ReferenceArchitecture, read_metadata  # noqa: E402
from ropekit.eval.train_reference import TrainSpec, learning_rate, train  # noqa: E402

WINDOW = 256


@pytest.fixture(scope="module")
def reference():
    return load_model(None, device="cpu")


@pytest.fixture(scope="module")
def short_profile(reference):
    """none, linear and yarn at 8x, 8192 tokens per cell (four 2048-byte chunks).

    YaRN runs with beta_fast=8, the configuration docs/profile.md documents for a 256 window.
    """
    request = ProfileRequest(methods=("none", "linear", "yarn"), factors=(8.0,), tokens_per_cell=8192,
                             betas=YarnBetas(beta_fast=8.0))
    return run_profile(reference, request)


# --- corpus and arithmetic --------------------------------------------------------------------

def test_corpus_holds_out_three_plays():
    heldout = [f.name for f in corpus.text_files("heldout")]
    train_names = {f.name for f in corpus.text_files("train")}
    assert heldout == ["hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt"]
    assert len(train_names) == 39 and not train_names & set(heldout)
    assert corpus.read_texts("heldout")[0].startswith("HAMLET, PRINCE OF DENMARK")


def test_eval_chunks_are_whole_and_evenly_spread():
    docs = [torch.arange(10), torch.arange(100, 107)]
    # pool: 0-2, 3-5, 6-8 from the first document, 100-102, 103-105 from the second;
    # 9 tokens in chunks of 3 keep 3 chunks: pool indices 0, 5//3 = 1, 10//3 = 3
    chunks = corpus.eval_chunks(docs, 3, 9)
    assert chunks.tolist() == [[0, 1, 2], [3, 4, 5], [100, 101, 102]]


def test_buckets_by_hand():
    assert bucket_edges(4, 16) == [0, 4, 8, 16]
    assert bucket_edges(256, 2048) == [0, 256, 512, 1024, 2048]
    # targets 1-3 lose ln 2, 4-7 lose ln 3, 8-15 lose ln 5
    losses = torch.tensor([math.log(2)] * 3 + [math.log(3)] * 4 + [math.log(5)] * 8, dtype=torch.float64)
    out = summarize(losses, 4)
    assert out["buckets"] == pytest.approx({"0-4": 2.0, "4-8": 3.0, "8-16": 5.0})
    assert out["ppl"] == pytest.approx(math.exp((3 * math.log(2) + 4 * math.log(3) + 8 * math.log(5)) / 15))


# --- the committed reference model ------------------------------------------------------------

def test_committed_weights_give_the_recorded_heldout_loss():
    from transformers import AutoModelForCausalLM

    meta = read_metadata()
    assert meta["tokenizer"] == "bytes" and meta["architecture"]["window"] == WINDOW
    assert 1.7e6 < meta["parameters"] < 2.0e6
    held = meta["heldout"]
    model = AutoModelForCausalLM.from_pretrained(REFERENCE_DIR, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == meta["parameters"]
    chunks = corpus.eval_chunks(corpus.documents("heldout"), WINDOW, held["check_tokens"])
    with torch.inference_mode():  # transformers' own loss, batch by batch (equal-sized batches)
        losses = [float(model(input_ids=b, labels=b).loss) for b in chunks.split(16)]
    assert sum(losses) / len(losses) == pytest.approx(held["check_loss_fp16"], rel=0.01)
    # the profile's per-position loss averages to transformers' loss
    assert float(position_losses(model, chunks[:16]).mean()) == pytest.approx(losses[0], rel=1e-5)


# --- the short profile: orderings with safe margins -------------------------------------------

def test_no_scaling_blows_up_past_the_window(short_profile):
    inside = find_cell(short_profile, "none", 1.0)
    past = find_cell(short_profile, "none", 8.0)
    assert past["length"] == 8 * WINDOW
    assert past["ppl"] > 2.0 * inside["ppl"]  # measured 3.97
    assert past["buckets"]["1024-2048"] > 3.0 * inside["ppl"]  # measured 6.5


def test_yarn_stays_near_in_window_at_8x(short_profile):
    inside = find_cell(short_profile, "none", 1.0)["ppl"]
    yarn, none = find_cell(short_profile, "yarn", 8.0), find_cell(short_profile, "none", 8.0)
    assert (yarn["rope"]["rope_type"], yarn["rope"]["factor"], yarn["rope"]["beta_fast"]) == ("yarn", 8.0, 8.0)
    assert yarn["ppl"] < 0.6 * none["ppl"]  # measured 0.34
    assert yarn["ppl"] < 1.8 * inside  # measured 1.36
    assert yarn["buckets"]["1024-2048"] < 0.5 * none["buckets"]["1024-2048"]  # measured 0.22


def test_linear_interpolation_is_really_applied(short_profile):
    # PI at s=8 squeezes positions 0-255 into 0-32: the model, never fine-tuned, reads them badly
    inside = find_cell(short_profile, "none", 1.0)["ppl"]
    assert find_cell(short_profile, "linear", 8.0)["buckets"]["0-256"] > 3.0 * inside  # measured 9.4


def test_dynamic_equals_static_ntk_at_the_dynamic_scale(reference):
    """HF's dynamic NTK at length l with factor a is NTK-aware with s = a*l/L0 - (a - 1) (emozilla)."""
    length, alpha = 4 * WINDOW, 2.0
    s = alpha * length / WINDOW - (alpha - 1)  # = 7
    chunks = corpus.eval_chunks(corpus.documents("heldout"), length, 2 * length)
    dynamic = build(reference, scaled_config(reference, "dynamic", alpha))
    static = build(reference, scaled_config(reference, "ntk", s))
    assert static.config.max_position_embeddings == round(s * WINDOW)
    with torch.inference_mode():
        a, b = dynamic(input_ids=chunks).logits, static(input_ids=chunks).logits
    assert torch.allclose(a, b, atol=2e-4, rtol=1e-4)
    unscaled = build(reference, scaled_config(reference, "none", 1.0))
    with torch.inference_mode():
        assert not torch.allclose(unscaled(input_ids=chunks).logits, a, atol=1e-2)


# --- the training script ----------------------------------------------------------------------

def test_learning_rate_schedule_by_hand():
    spec = TrainSpec(steps=300)
    assert learning_rate(spec, 0) == pytest.approx(2e-3 / 30)
    assert learning_rate(spec, 29) == pytest.approx(2e-3)
    assert learning_rate(spec, 30) == pytest.approx(2e-3)
    assert learning_rate(spec, 165) == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5))  # half way: cos = 0
    assert learning_rate(spec, 300) == pytest.approx(2e-4)


def test_training_is_deterministic_for_a_few_steps():
    arch = ReferenceArchitecture(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, window=64)
    spec = TrainSpec(arch=arch, steps=3, batch_size=4, warmup_steps=1, eval_every=1000)

    def weights(spec):
        model, meta = train(spec, log=lambda line: None)
        return {k: v.clone() for k, v in model.state_dict().items()}, meta

    first, meta = weights(spec)
    second, _ = weights(spec)
    other, _ = weights(TrainSpec(arch=arch, steps=3, batch_size=4, warmup_steps=1, eval_every=1000, seed=1))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert meta["training"]["tokens"] == 3 * 4 * 64
    assert meta["training"]["curve"][-1]["step"] == 3


# --- the command ------------------------------------------------------------------------------

def test_profile_command_with_finetune_json_and_plot(tmp_path, capsys):
    plot = tmp_path / "profile.png"
    code = main(["profile", "--methods", "none,yarn", "--factors", "2", "--tokens-per-cell", "2048",
                 "--finetune-steps", "2", "--finetune-factor", "2", "--finetune-batch-tokens", "1024",
                 "--device", "cpu", "--plot", str(plot), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    zero, tuned = result["zero_shot"], result["finetuned"]
    assert [(c["method"], c["factor"], c["length"]) for c in zero["cells"]] == \
        [("none", 1.0, 256), ("none", 2.0, 512), ("yarn", 2.0, 512)]
    yarn = find_cell(zero, "yarn", 2.0)["rope"]
    assert (yarn["rope_type"], yarn["factor"], yarn["original_max_position_embeddings"]) == ("yarn", 2.0, 256)
    assert result["finetune"]["tokens"] == 2 * 2 * 512 and result["finetune"]["method"] == "yarn"
    # the fine-tune changed the weights the second profile reads
    assert find_cell(tuned, "none", 1.0)["ppl"] != find_cell(zero, "none", 1.0)["ppl"]
    assert result["reference"]["check_tokens"] > 0


def _char_level_llama(folder):
    """A random 1-layer Llama at window 64 with a character-level tokenizer, saved like any Hub model."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "\n": 1, **{chr(i): i - 30 for i in range(32, 127)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(folder)


def test_profile_command_on_any_local_model_folder(tmp_path, capsys):
    _char_level_llama(tmp_path)
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.window == 64 and loaded.encode("HA\n") == [ord("H") - 30, ord("A") - 30, 1]
    code = main(["profile", str(tmp_path), "--methods", "none,yarn", "--factors", "2", "--tokens-per-cell",
                 "1024", "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    cells = result["zero_shot"]["cells"]
    assert result["zero_shot"]["window"] == 64 and result["reference"] is None
    assert [(c["length"], c["chunks"], c["tokens"]) for c in cells] == [(64, 16, 16 * 63), (128, 8, 8 * 127),
                                                                         (128, 8, 8 * 127)]
    assert cells[2]["rope"]["original_max_position_embeddings"] == 64
    assert all(math.isfinite(c["ppl"]) and c["ppl"] > 1 for c in cells)


@pytest.mark.parametrize("args, code, words", [
    (["--methods", "none,bogus"], 2, "unknown method 'bogus'"),
    (["--factors", "1,2"], 2, "must be numbers above 1"),
    (["--factors", "two"], 2, "comma-separated list"),
    (["--beta-fast", "1", "--beta-slow", "2"], 2, "--beta-fast"),
    (["--finetune-steps", "5", "--finetune-method", "none"], 2, "scales nothing"),
    (["--tokens-per-cell", "0"], 2, "must be positive"),
    (["--device", "gpu"], 2, "not a torch device"),
    (["/nonexistent/model"], 4, "has no config.json"),
])
def test_profile_command_errors(args, code, words, capsys):
    assert main(["profile", *args]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err


def test_profile_command_needs_a_tokenizer_in_the_folder(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(ReferenceArchitecture().config_dict()))
    assert main(["profile", str(tmp_path)]) == 4
    assert "has no tokenizer files" in capsys.readouterr().err


def test_profile_command_refuses_a_plot_in_a_missing_folder(tmp_path, capsys):
    assert main(["profile", "--plot", str(tmp_path / "nope" / "p.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_importing_the_profile_command_stays_light():
    code = ("import sys, ropekit.cli.profile, ropekit.eval.profile, ropekit.eval.finetune; "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
