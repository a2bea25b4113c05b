"""A model folder's own Python code never runs, and ropekit never asks on stdin whether it may.

Each folder maps a transformers class to a ``.py`` file of its own (``auto_map``) whose
import would write a marker file. stdin holds ``y``, the answer that made transformers
run the code when ropekit left ``trust_remote_code`` unset: the answer must stay unread,
the marker unwritten, and the command must fail with one clear line (exit 4).
"""

from __future__ import annotations

import io
import json
import sys

import pytest

from ropekit.cli import main
from ropekit.errors import RemoteCodeError
from ropekit.training.eval_pack import token_counter


def ships_code(folder, marker, file_name: str, key: str, entry) -> None:
    """Make ``folder``'s ``file_name`` map ``key`` to a module whose import writes ``marker``."""
    module = (entry[1] if isinstance(entry, list) else entry).split(".")[0]
    (folder / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    data = json.loads((folder / file_name).read_text()) if (folder / file_name).exists() else {}
    data["auto_map"] = {key: entry}
    if file_name == "tokenizer_config.json":
        data["tokenizer_class"] = "AcmeTokenizer"  # a class transformers does not ship
    (folder / file_name).write_text(json.dumps(data))


def word_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "alpha": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    return folder


@pytest.fixture
def answer_yes(monkeypatch):
    """stdin answers 'y' to any prompt; the test checks it was never read."""
    stdin = io.StringIO("y\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    return stdin


def assert_refused(capsys, code: int, answer_yes, marker, folder) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 4, err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: the tokenizer in {folder} loads only by running "
                                                         "Python code the folder ships"), err
    assert "tokenizer_config.json maps AutoTokenizer to [None, 'tokenization_acme.AcmeTokenizer']" in err
    assert "ropekit never runs a folder's code" in err
    assert not marker.exists() and answer_yes.tell() == 0  # nothing ran, nothing was asked


def test_check_pack_tokenizer_folder_with_its_own_code(tmp_path, capsys, answer_yes):
    folder = word_tokenizer(tmp_path / "tok")
    marker = tmp_path / "MARKER"
    ships_code(folder, marker, "tokenizer_config.json", "AutoTokenizer", [None, "tokenization_acme.AcmeTokenizer"])
    pack = tmp_path / "p.jsonl"
    pack.write_text('{"text": "alpha alpha"}\n')
    code = main(["check-pack", str(pack), "--target-context", "4096", "--tokenizer", str(folder)])
    assert_refused(capsys, code, answer_yes, marker, folder)
    with pytest.raises(RemoteCodeError):
        token_counter(folder)


def test_profile_model_folder_whose_tokenizer_needs_its_own_code(tmp_path, capsys, answer_yes):
    from transformers import LlamaConfig

    folder = word_tokenizer(tmp_path / "model")
    LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=64).save_pretrained(folder)
    marker = tmp_path / "MARKER"
    ships_code(folder, marker, "tokenizer_config.json", "AutoTokenizer", [None, "tokenization_acme.AcmeTokenizer"])
    code = main(["profile", str(folder), "--methods", "none", "--factors", "2", "--device", "cpu"])
    assert_refused(capsys, code, answer_yes, marker, folder)


def test_a_known_architecture_with_an_auto_map_loads_without_its_code(tmp_path, answer_yes):
    """config.json's auto_map beside a model_type transformers ships: the shipped class is used."""
    from ropekit.eval.models import LoadedModel, fresh_config

    folder = tmp_path / "model"
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(folder)
    marker = tmp_path / "MARKER"
    ships_code(folder, marker, "config.json", "AutoConfig", "configuration_acme.AcmeConfig")
    model = LoadedModel(folder, "", 0, None, {}, None, None, {}, None, None, None)
    assert type(fresh_config(model)).__name__ == "LlamaConfig"
    assert not marker.exists() and answer_yes.tell() == 0


def test_a_config_only_its_own_code_can_build_is_a_clear_error(tmp_path, answer_yes):
    """An architecture transformers does not ship, defined by the folder's configuration_*.py."""
    from ropekit.eval.models import LoadedModel, fresh_config

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "acme_custom", "hidden_size": 16}))
    marker = tmp_path / "MARKER"
    ships_code(folder, marker, "config.json", "AutoConfig", "configuration_acme.AcmeConfig")
    model = LoadedModel(folder, "", 0, None, {}, None, None, {}, None, None, None)
    with pytest.raises(RemoteCodeError, match=r"the config in .* loads only by running Python code the folder ships "
                                              r"\(config.json maps AutoConfig to 'configuration_acme.AcmeConfig'\)"):
        fresh_config(model)
    assert not marker.exists() and answer_yes.tell() == 0
