"""A generating LLM as a classifier or regressor: any causal model through `auto_transformer`, pooled on its last real
token whatever the padding, trained in full or through an adapter, under category, binary and number heads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tiny import sentiment_frame

from tunefork import Model, hf

# The last config of the user's source, verbatim; only the model id is pointed at a local model.
LUDWIG_LLAMA_CLASSIFIER = """
input_features:
 - name: review
   type: text
   encoder:
     type: auto_transformer
     pretrained_model_name_or_path: meta-llama/Llama-2-7b-hf
     trainable: true
     adapter: lora


output_features:
 - name: sentiment
   type: category
"""


def test_ludwig_llama_lora_classifier_runs_as_written(tiny_llama, tmp_path):
    cfg = yaml.safe_load(LUDWIG_LLAMA_CLASSIFIER.replace("meta-llama/Llama-2-7b-hf", str(tiny_llama)))
    model = Model(cfg, progress=False, quiet=True)
    result = model.train(sentiment_frame(400, seed=0), output_directory=tmp_path)  # Ludwig's defaults: early stop
    assert result.plan["pooling.review"]["value"] == "last"
    # chance is 0.5. (SST-2 rows stay at chance here: the tiny model's tokenizer never saw their words.)
    assert model.evaluate(sentiment_frame(200, seed=9))["sentiment"]["accuracy"] > 0.75
    saved = tmp_path / "experiment_run" / "model" / "encoders" / "review"
    assert (saved / "adapter_model.safetensors").is_file()  # the 7B base would not be copied either
    trainable = [n for n, p in model.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("heads.") for n in trainable)


# ------------------------------------------------------------------------------------------------ families


def _tiny_decoder(kind: str, folder):
    from transformers import (
        AutoModel,
        BloomConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    small = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}
    configs = {
        "llama": LlamaConfig(**small), "mistral": MistralConfig(**small), "qwen2": Qwen2Config(**small),
        "gpt_neox": GPTNeoXConfig(**{k: v for k, v in small.items() if k != "num_key_value_heads"}),
        "bloom": BloomConfig(vocab_size=300, hidden_size=32, n_layer=2, n_head=4),
        "gpt2": GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2),  # learned absolute positions
    }
    torch.manual_seed(0)
    AutoModel.from_config(configs[kind]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "bloom", "gpt2", "gpt_neox"])
def test_every_decoder_family_pools_the_same_vector_padded_left_or_right_or_alone(kind, tmp_path):
    from tunefork.config.features import TransformerEncoder as Section
    from tunefork.encoders.transformer import TransformerEncoder

    folder = _tiny_decoder(kind, tmp_path / kind)
    section = Section(pretrained_model_name_or_path=str(folder), trainable=True, adapter="lora")
    assert hf.is_decoder_only(hf.load_config(folder, where="encoder"))
    encoder = TransformerEncoder(section, "last").eval()
    assert encoder.adapted  # peft's default target modules exist for every family here
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
    with torch.no_grad():
        alone = torch.stack([encoder.encode(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0] for r in rows])
        for left in (False, True):
            ids, mask = torch.zeros(3, 7, dtype=torch.long), torch.zeros(3, 7, dtype=torch.long)
            for j, row in enumerate(rows):
                cols = slice(7 - len(row), 7) if left else slice(0, len(row))
                ids[j, cols], mask[j, cols] = torch.tensor(row), 1
            torch.testing.assert_close(encoder.encode(ids, mask), alone, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ heads


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_llama_padded"])
def test_decoder_trains_category_binary_and_number_heads(model_fixture, request, tmp_path):
    """GPT-2 (no pad token: padded with eos, on the right) and a Llama with its own pad token padded on the left."""
    folder = request.getfixturevalue(model_fixture)
    cfg = {"input_features": [{"name": "review", "type": "text", "encoder": {
               "type": "auto_transformer", "pretrained_model_name_or_path": str(folder), "trainable": True,
               "adapter": {"type": "lora", "r": 8}}}],
           "output_features": [{"name": "sentiment", "type": "category"}, {"name": "recommended", "type": "binary"},
                               {"name": "score", "type": "number"}],
           "trainer": {"epochs": 6, "batch_size": 16, "learning_rate": 0.01, "early_stop": -1}}
    model = Model(cfg, progress=False, quiet=True)
    result = model.train(sentiment_frame(240, seed=4), output_directory=tmp_path)
    for output in ("sentiment", "recommended", "score"):
        losses = result.statistics["training"][output]["loss"]
        assert losses[-1] < 0.8 * losses[0], (output, losses)
    scores = model.evaluate(sentiment_frame(120, seed=5))
    # chance is 0.5; a 2-layer, 32-wide model adapted through LoRA on its attention alone learns slowly
    assert scores["sentiment"]["accuracy"] > 0.6 and scores["recommended"]["accuracy"] > 0.6 and scores["score"]["r2"] > 0.1
    rows = sentiment_frame(6, seed=6)
    together = model.predict(rows)
    alone = pd.concat([model.predict(rows.iloc[[i]]) for i in range(len(rows))])
    for column in ("sentiment_probabilities_positive", "recommended_probabilities_True", "score_predictions"):
        if column in together:
            np.testing.assert_allclose(together[column].to_numpy(float), alone[column].to_numpy(float), rtol=1e-4, atol=1e-5)
