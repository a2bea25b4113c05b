"""Evaluation-pack check: JSONL shapes, length buckets, the 50-long-examples warning, bad lines."""

from __future__ import annotations

import json

import pytest

from ropekit.cli import main
from ropekit.errors import InvalidRequestError, ResolutionError
from ropekit.training.eval_pack import (
    EvalPackError,
    bucket_edges,
    check_pack,
    example_text,
)


def write_pack(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def chars(tokens):
    """Text of exactly ``tokens`` estimated tokens (4 characters each)."""
    return "abcd" * tokens


@pytest.mark.parametrize("record, text", [
    ({"text": "hello"}, "hello"),
    ({"prompt": "Q: ", "completion": "A"}, "Q: A"),
    ({"prompt": "Q: ", "response": "A"}, "Q: A"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "hi\nyo"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"},
                                                 {"type": "text", "text": "b"}]}]}, "ab"),
    ({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}, "x\ny"),
    ({"instruction": "do", "input": "this", "output": "done"}, "do\nthis\ndone"),
])
def test_common_jsonl_shapes(record, text):
    assert example_text(record) == text


def test_truncated_examples_do_not_count_as_long(tmp_path):
    records = [{"text": chars(10_000)}] * 49 + [{"text": chars(40_000)}] * 5
    report = check_pack(write_pack(tmp_path / "pack.jsonl", records), 32768, original_max=8192)
    assert report.long_examples == 49 and report.beyond_target == 5 and not report.long_dimension_defined


def test_long_examples_beyond_the_original_window_count_toward_the_gate(tmp_path):
    records = [{"text": chars(1000)}] * 30 + [{"text": chars(10_000)}] * 60
    report = check_pack(write_pack(tmp_path / "pack.jsonl", records), 32768, original_max=8192)
    assert report.examples == 90 and report.counting == "estimate"
    assert report.long_examples == 60 and report.long_dimension_defined
    assert report.warnings == []
    assert "4 characters per token" in report.counting_note


def test_fewer_than_50_long_examples_warns_with_the_fix(tmp_path):
    records = [{"text": chars(1000)}] * 100 + [{"text": chars(9000)}] * 12
    report = check_pack(write_pack(tmp_path / "pack.jsonl", records), 32768, original_max=8192)
    assert report.long_examples == 12 and report.long_dimension_defined is False
    [warning] = report.warnings
    assert "only 12 example(s)" in warning and "undefined" in warning and "add 50-200 examples" in warning
    assert "8193 and 32768" in warning


def test_buckets_are_powers_of_two_up_to_the_target(tmp_path):
    assert bucket_edges(32768) == [1024, 2048, 4096, 8192, 16384, 32768]
    assert bucket_edges(100_000) == [1024, 2048, 4096, 8192, 16384, 32768, 65536, 100_000]
    lengths = [10, 1024, 1025, 3000, 8192, 8193, 40_000]
    report = check_pack(write_pack(tmp_path / "p.jsonl", [{"text": chars(n)} for n in lengths]), 32768)
    counts = {(b.low, b.high): b.count for b in report.buckets}
    assert counts == {(0, 1024): 2, (1025, 2048): 1, (2049, 4096): 1, (4097, 8192): 1, (8193, 16384): 1,
                      (16385, 32768): 0, (32769, None): 1}
    assert report.beyond_target == 1 and any("truncated" in w for w in report.warnings)
    assert any("--original-max" in w for w in report.warnings)  # cannot judge the long dimension without it


def test_a_bad_line_is_one_error_naming_the_line(tmp_path):
    path = write_pack(tmp_path / "bad.jsonl", [{"text": "a"}, "", '{"text": "b",}', {"text": "c"}])
    with pytest.raises(EvalPackError) as caught:
        check_pack(path, 8192)
    assert "line 3 of" in str(caught.value) and caught.value.exit_code == 4
    path = write_pack(tmp_path / "shape.jsonl", [{"text": "a"}, {"question": "no known field"}])
    with pytest.raises(EvalPackError, match=r"line 2 of .*keys: question.*expected text, prompt/completion"):
        check_pack(path, 8192)
    path = write_pack(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(EvalPackError, match="line 1 of .*JSON list"):
        check_pack(path, 8192)


def test_empty_missing_and_bad_requests(tmp_path):
    with pytest.raises(EvalPackError, match="no examples"):
        check_pack(write_pack(tmp_path / "empty.jsonl", ["", "  "]), 8192)
    with pytest.raises(ResolutionError):
        check_pack(tmp_path / "nope.jsonl", 8192)
    with pytest.raises(InvalidRequestError):
        check_pack(write_pack(tmp_path / "x.jsonl", [{"text": "a"}]), 8192, original_max=8192)


def local_tokenizer(folder):
    """A word-level tokenizer saved like a Hub tokenizer (one token per whitespace-separated word)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "alpha": 1, "beta": 2}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    return folder


def test_counts_come_from_a_local_tokenizer_when_given(tmp_path):
    tokenizer = local_tokenizer(tmp_path / "tok")
    texts = [" ".join(["alpha"] * 3000), " ".join(["beta", "gamma"] * 60)]  # 3000 and 120 words
    report = check_pack(write_pack(tmp_path / "p.jsonl", [{"text": t} for t in texts]), 8192,
                        original_max=2048, tokenizer=tokenizer)
    assert report.counting == "tokenizer" and report.token_counts == [len(t.split()) for t in texts]
    assert report.long_examples == 1 and "tokenizer in" in report.counting_note


def test_a_tokenizer_must_be_a_local_path(tmp_path):
    with pytest.raises(ResolutionError, match="local folder"):
        check_pack(write_pack(tmp_path / "p.jsonl", [{"text": "a"}]), 8192, tokenizer="Qwen/Qwen2.5-7B")


def test_check_pack_command(tmp_path, capsys):
    path = write_pack(tmp_path / "pack.jsonl", [{"text": chars(500)}] * 5 + [{"text": chars(20_000)}] * 3)
    assert main(["check-pack", str(path), "--target-context", "32768", "--original-max", "8192", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examples"] == 8 and out["long_examples"] == 3 and out["long_dimension_defined"] is False
    assert main(["check-pack", str(path), "--target-context", "32768", "--original-max", "8192"]) == 0
    human = capsys.readouterr().out
    assert "warning: only 3 example(s)" in human and "4 characters per token" in human
    bad = write_pack(tmp_path / "bad.jsonl", [{"text": "a"}, "{"])
    assert main(["check-pack", str(bad), "--target-context", "8192"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("error: line 2 of") and err.count("\n") == 1
