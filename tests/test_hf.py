"""tunefork.hf: the config and tokenizer reads the text encoder and the causal LM share."""

from __future__ import annotations

import pytest

from tunefork import hf
from tunefork.errors import TuneforkError


def test_only_file_choosing_kwargs_reach_the_config_and_tokenizer():
    given = {"revision": "main", "subfolder": "x", "dtype": "bfloat16", "attn_implementation": "eager",
             "hidden_dropout_prob": 0.0}
    assert hf.file_kwargs(given) == {"revision": "main", "subfolder": "x"}
    assert hf.file_kwargs(None) == {}


def test_a_model_only_kwarg_is_not_stored_with_the_tokenizer(tiny_bert, tmp_path):
    tokenizer = hf.load_tokenizer(tiny_bert, {"hidden_dropout_prob": 0.0}, where="encoder.pretrained_model_name_or_path")
    tokenizer.save_pretrained(tmp_path)
    assert "hidden_dropout_prob" not in (tmp_path / "tokenizer_config.json").read_text()


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])  # no pad token of their own
def test_a_tokenizer_without_a_pad_token_pads_with_eos(fixture, request):
    tokenizer = hf.load_tokenizer(request.getfixturevalue(fixture), where="base_model")
    assert tokenizer.pad_token == tokenizer.eos_token is not None


def test_context_length_is_read_from_every_config_spelling():
    from transformers import BertConfig, GPT2Config, PretrainedConfig

    assert hf.context_length(BertConfig(max_position_embeddings=64)) == 64
    assert hf.context_length(GPT2Config(n_positions=96)) == 96
    assert hf.context_length(PretrainedConfig(seq_length=48)) == 48
    assert hf.context_length(PretrainedConfig(text_config=BertConfig(max_position_embeddings=32))) == 32
    assert hf.context_length(PretrainedConfig()) is None


def test_decoder_only_is_told_from_the_model_type(tiny_bert, tiny_llama):
    assert hf.is_decoder_only(hf.load_config(tiny_llama, where="base_model"))
    assert not hf.is_decoder_only(hf.load_config(tiny_bert, where="encoder"))


@pytest.mark.parametrize("load, what", [(hf.load_config, "cannot read its config"),
                                        (hf.load_tokenizer, "cannot load its tokenizer")])
def test_a_missing_source_is_one_sentence_naming_the_key_and_path(load, what, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(TuneforkError, match=rf"^base_model '{missing}': {what} \(") as caught:
        load(missing, {"revision": "main"}, where="base_model")
    assert "\n" not in str(caught.value)
