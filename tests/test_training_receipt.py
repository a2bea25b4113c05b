"""The receipt travels through training: tiny models, yarn x4, a few steps on CPU, then verify.

A tiny Llama (2 layers, width 64, window 64) is saved with random weights, loaded with
``ropekit.load_model`` under yarn x4 (window 256) and trained at the new length with
TRL's SFTTrainer and DPOTrainer and the transformers Trainer (a tiny Qwen2.5-VL); every
checkpoint and the final output must pass ``ropekit verify --landing``.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import FIXTURES
from tiny_models import build, shrink

from ropekit import LongContextConfig, load_model
from ropekit.cli import main
from ropekit.constants import RECEIPT_FILENAME
from ropekit.errors import LandingError
from ropekit.receipt import Receipt

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

WINDOW = 64
YARN4 = LongContextConfig(method="yarn", factor=4.0, original_max_position_embeddings=WINDOW)
NEW_WINDOW = 4 * WINDOW
VOCAB = 128


def tiny_base(tmp_path: Path, fixture: str, seed: int = 0) -> Path:
    config = shrink(json.loads((FIXTURES / fixture / "config.json").read_text()))
    text = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    text["max_position_embeddings"] = WINDOW
    folder = tmp_path / "base"
    build(config, seed=seed).save_pretrained(folder)
    return folder


def tokenizer():
    """A word-level tokenizer over ``t4`` .. ``t127`` and four special tokens, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {**{name: i for i, name in enumerate(specials)}, **{f"t{i}": i for i in range(4, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def words(n: int, start: int) -> str:
    return " ".join(f"t{4 + (start + i) % (VOCAB - 4)}" for i in range(n))


def cli_verify(folder: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()  # drop what training printed
    code = main(["verify", str(folder), "--landing"])
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory) -> Path:
    return tiny_base(tmp_path_factory.mktemp("llama"), "meta-llama__Llama-2-7b-hf")


def loaded(base: Path):
    model, receipt = load_model(base, YARN4, for_training=False, attn_implementation="eager")
    return model, receipt


def sft_args(out: Path, **overrides):
    from trl import SFTConfig

    values = {"output_dir": str(out), "max_length": NEW_WINDOW, "per_device_train_batch_size": 2, "max_steps": 4,
              "save_steps": 2, "learning_rate": 1e-3, "logging_steps": 100, "report_to": [], "use_cpu": True,
              "dataloader_num_workers": 0, "seed": 0, "disable_tqdm": True}
    values.update(overrides)
    return SFTConfig(**values)


def long_text_dataset(rows: int = 8, length: int = 200):
    return datasets.Dataset.from_dict({"text": [words(length, 7 * i) for i in range(rows)]})


def test_sft_at_the_new_length_then_verify_landing_passes_on_every_checkpoint(llama_base, tmp_path, capsys):
    from trl import SFTTrainer

    from ropekit.integrations.trainer import RopeReceiptCallback

    model, receipt = loaded(llama_base)
    out = tmp_path / "sft"
    trainer = SFTTrainer(model=model, args=sft_args(out), train_dataset=long_text_dataset(),
                         processing_class=tokenizer(), callbacks=[RopeReceiptCallback(receipt)])
    trainer.train()
    trainer.save_model()
    for folder in (out / "checkpoint-2", out / "checkpoint-4", out):
        assert (folder / RECEIPT_FILENAME).is_file(), folder
        assert cli_verify(folder, capsys) == (0, ""), folder
    final = Receipt.load(out / RECEIPT_FILENAME)
    training = final["training"]
    assert training["trainer"] == "trl.SFTTrainer" and training["steps"] == 4
    # each row is 200 words (+ eos): the longest sequence trained is past the original window
    assert training["longest_sequence"] == 201 > WINDOW and training["exceeds_original_window"]
    assert training["tokens"] == 4 * 2 * 201  # 4 steps of 2 rows, no padding
    assert training["versions"]["trl"] == trl.__version__
    assert Receipt.load(out / "checkpoint-2" / RECEIPT_FILENAME)["training"]["steps"] == 2
    assert final.tampered_field() is None
    assert final["long_context"] == receipt["long_context"] and final["changes"] == receipt["changes"]


def test_the_base_weights_are_named_in_the_receipt(llama_base):
    import hashlib

    _, receipt = loaded(llama_base)
    weights = receipt["model"]["weights"]
    assert weights["kind"] == "weights-file" and weights["file"] == "model.safetensors"
    assert weights["sha256"] == hashlib.sha256((llama_base / "model.safetensors").read_bytes()).hexdigest()


def test_a_rope_value_edited_in_the_saved_config_fails_naming_the_field(llama_base, tmp_path, capsys):
    model, receipt = loaded(llama_base)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    (out / RECEIPT_FILENAME).write_text(receipt.to_json())
    assert cli_verify(out, capsys) == (0, "")
    config = json.loads((out / "config.json").read_text())
    layout = "rope_parameters" if "rope_parameters" in config else "rope_scaling"
    for key, value in (("factor", 8.0), ("beta_fast", 16.0), ("original_max_position_embeddings", 128)):
        edited = json.loads(json.dumps(config))
        edited[layout][key] = value
        (out / "config.json").write_text(json.dumps(edited, indent=2))
        code, err = cli_verify(out, capsys)
        assert code == 3 and f"{layout}.{key}" in err and len(err.splitlines()) == 1, err
    # what save_pretrained rewrites (and nothing rope reads) is not an edit
    edited = json.loads(json.dumps(config))
    edited.update(_name_or_path="/elsewhere", transformers_version="0.0.1", dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(edited))
    assert cli_verify(out, capsys) == (0, "")


def test_a_model_patched_after_loading_is_refused_at_train_start(llama_base, tmp_path):
    """The naive way: load the base, then set rope scaling on its config. The rotary modules were
    built at load time, so nothing changed; the callback refuses to train."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from ropekit import apply_rope_scaling
    from ropekit.integrations.trainer import RopeReceiptCallback

    model = AutoModelForCausalLM.from_pretrained(llama_base, attn_implementation="eager")
    receipt = apply_rope_scaling(model.config, YARN4)  # the config only: the modules keep the old frequencies
    trainer = SFTTrainer(model=model, args=sft_args(tmp_path / "naive", max_steps=1),
                         train_dataset=long_text_dataset(2), processing_class=tokenizer(),
                         callbacks=[RopeReceiptCallback(receipt)])
    with pytest.raises(LandingError, match="scaling did not land"):
        trainer.train()
    assert not (tmp_path / "naive" / RECEIPT_FILENAME).exists()


def test_a_training_length_within_the_original_window_warns(llama_base, tmp_path):
    from trl import SFTTrainer

    from ropekit.integrations.trainer import RopeReceiptCallback, ShortTrainingWarning

    model, receipt = loaded(llama_base)
    trainer = SFTTrainer(model=model, args=sft_args(tmp_path / "short", max_length=WINDOW, max_steps=1),
                         train_dataset=long_text_dataset(2), processing_class=tokenizer(),
                         callbacks=[RopeReceiptCallback(receipt)])
    with pytest.warns(ShortTrainingWarning, match=f"max_length={WINDOW} never exceeds the original window"):
        trainer.train()
    assert Receipt.load(tmp_path / "short" / RECEIPT_FILENAME)["training"]["longest_sequence"] <= WINDOW


def test_resume_from_checkpoint_keeps_the_receipt(llama_base, tmp_path, capsys):
    from trl import SFTTrainer

    from ropekit.integrations.trainer import RopeReceiptCallback

    out = tmp_path / "resume"
    model, receipt = loaded(llama_base)
    first = SFTTrainer(model=model, args=sft_args(out, max_steps=2), train_dataset=long_text_dataset(),
                       processing_class=tokenizer(), callbacks=[RopeReceiptCallback(receipt)])
    first.train()
    at_two = Receipt.load(out / "checkpoint-2" / RECEIPT_FILENAME)
    model, receipt = loaded(llama_base)
    second = SFTTrainer(model=model, args=sft_args(out, max_steps=4), train_dataset=long_text_dataset(),
                        processing_class=tokenizer(), callbacks=[RopeReceiptCallback(receipt)])
    second.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert Receipt.load(out / "checkpoint-2" / RECEIPT_FILENAME) == at_two  # the resumed checkpoint's is kept
    at_four = Receipt.load(out / "checkpoint-4" / RECEIPT_FILENAME)["training"]
    assert at_four["steps"] == 4 and at_four["tokens"] == 2 * at_two["training"]["tokens"]
    for folder in (out / "checkpoint-2", out / "checkpoint-4"):
        assert cli_verify(folder, capsys) == (0, "")


def test_dpo_then_verify_landing_passes(llama_base, tmp_path, capsys):
    from trl import DPOConfig, DPOTrainer

    from ropekit.integrations.trainer import RopeReceiptCallback

    model, receipt = loaded(llama_base)
    rows = 4
    data = datasets.Dataset.from_dict({
        "prompt": [words(100, i) for i in range(rows)],
        "chosen": [words(60, 50 + i) for i in range(rows)],
        "rejected": [words(60, 90 + i) for i in range(rows)],
    })
    out = tmp_path / "dpo"
    args = DPOConfig(output_dir=str(out), max_length=NEW_WINDOW, per_device_train_batch_size=2, max_steps=2,
                     save_steps=2, learning_rate=1e-3, logging_steps=100, report_to=[], use_cpu=True, seed=0,
                     disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer(),
                         callbacks=[RopeReceiptCallback(receipt)])
    trainer.train()
    trainer.save_model()
    training = Receipt.load(out / RECEIPT_FILENAME)["training"]
    assert training["trainer"] == "trl.DPOTrainer" and training["steps"] == 2
    assert training["longest_sequence"] > WINDOW  # prompt and answer together exceed the original window
    for folder in (out / "checkpoint-2", out):
        assert cli_verify(folder, capsys) == (0, "")


def test_a_vlm_trains_its_text_tower_and_leaves_the_vision_tower_alone(tmp_path, capsys):
    """Tiny Qwen2.5-VL through the transformers Trainer: text_config is patched, the vision tower's
    weights and rotary frequencies are exactly the base's after training."""
    from safetensors.torch import load_file
    from transformers import Trainer, TrainingArguments

    from ropekit.integrations.trainer import RopeReceiptCallback

    base = tiny_base(tmp_path, "Qwen__Qwen2.5-VL-7B-Instruct")
    model, receipt = loaded(base)
    assert all(change["path"][0] == "text_config" for change in receipt["changes"])
    vision_freq = model.model.visual.rotary_pos_emb.inv_freq.clone()
    ids = [[4 + (7 * r + i) % 100 for i in range(200)] for r in range(4)]
    data = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    out = tmp_path / "vlm"
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, max_steps=2, save_steps=2,
                             learning_rate=1e-3, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[RopeReceiptCallback(receipt)])
    trainer.train()
    trainer.save_model()
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [k for k in before if ".visual." in f".{k}"]
    text = [k for k in before if k not in vision and ".layers." in k and k in after]
    assert vision and text
    assert all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in text)  # the text tower did train
    assert torch.equal(model.model.visual.rotary_pos_emb.inv_freq, vision_freq)
    training = Receipt.load(out / RECEIPT_FILENAME)["training"]
    assert training["trainer"] == "transformers.Trainer" and training["longest_sequence"] == 200
    for folder in (out / "checkpoint-2", out):
        assert cli_verify(folder, capsys) == (0, "")


def test_grpo_runs_with_the_callback(llama_base, tmp_path, capsys):
    from trl import GRPOConfig, GRPOTrainer

    from ropekit.integrations.trainer import RopeReceiptCallback

    model, receipt = loaded(llama_base)
    data = datasets.Dataset.from_dict({"prompt": [words(90, i) for i in range(4)]})

    def reward_len(completions, **kwargs):
        return [float(len(c.split())) for c in completions]

    out = tmp_path / "grpo"
    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=2, num_generations=2,
                      max_completion_length=8, max_steps=1, save_steps=1, learning_rate=1e-3, report_to=[],
                      use_cpu=True, seed=0, disable_tqdm=True, logging_steps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=reward_len, args=args, train_dataset=data,
                              processing_class=tokenizer(), callbacks=[RopeReceiptCallback(receipt)])
        trainer.train()
    trainer.save_model()
    training = Receipt.load(out / RECEIPT_FILENAME)["training"]
    assert training["trainer"] == "trl.GRPOTrainer" and training["steps"] == 1
    assert training["longest_sequence"] > WINDOW
    assert cli_verify(out, capsys) == (0, "")
    shutil.rmtree(out)
