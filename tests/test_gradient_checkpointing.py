"""`trainer.enable_gradient_checkpointing` for text encoders: the same training, layers recomputed in backward, a
smaller activation estimate, and a refusal where no transformer trains."""

from __future__ import annotations

import pytest
import tiny
import torch

from tunefork import Model, config
from tunefork.config import ConfigError
from tunefork.encoders.transformer import TransformerEncoder
from tunefork.training import memory

REFUSAL = ("trainer.enable_gradient_checkpointing: no transformer trains in this config ({}), so there is nothing "
           "to recompute; remove it")


def text_config(model_dir, checkpointing: bool, **encoder) -> dict:
    encoder = {"type": "auto_transformer", "pretrained_model_name_or_path": str(model_dir), "trainable": True, **encoder}
    return {"input_features": [{"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 32},
                                "encoder": encoder}],
            "output_features": [{"name": "sentiment", "type": "category"}],
            "trainer": {"train_steps": 4, "batch_size": 8, "learning_rate": 0.003, "early_stop": -1,
                        "enable_gradient_checkpointing": checkpointing}}


class Recorder:
    """Watches a module inside the first transformer layer of every text encoder built (the layer's own hooks stay
    outside the checkpoint): how often it runs in training, and whether the Hugging Face model says it checkpoints."""

    def __init__(self, monkeypatch):
        self.calls, self.checkpointing = 0, set()
        recorder = self

        class Watched(TransformerEncoder):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                base = self.transformer.get_base_model() if self.adapted else self.transformer
                base.encoder.layer[0].intermediate.register_forward_hook(lambda module, *_: recorder.record(base, module))

        monkeypatch.setattr("tunefork.models.ecd.TransformerEncoder", Watched)

    def record(self, base, layer):
        if layer.training:
            self.calls += 1
            self.checkpointing.add(base.is_gradient_checkpointing)


def _run(model_dir, checkpointing, monkeypatch, tmp_path, **encoder):
    recorder = Recorder(monkeypatch)
    model = Model(text_config(model_dir, checkpointing, **encoder), progress=False, quiet=True)
    result = model.train(tiny.sentiment_frame(80, seed=3), output_directory=tmp_path / str(checkpointing), random_seed=7)
    return model, result, recorder


def test_checkpointing_trains_the_same_weights_recomputing_each_layer(tiny_bert, monkeypatch, tmp_path):
    """Dropout stays on (the tiny BERT's 0.1): the recomputation replays the RNG state of the forward pass, so the
    same seed gives the same masks, losses and weights."""
    plain, plain_result, plain_calls = _run(tiny_bert, False, monkeypatch, tmp_path)
    checked, checked_result, checked_calls = _run(tiny_bert, True, monkeypatch, tmp_path)
    assert plain_calls.checkpointing == {False} and checked_calls.checkpointing == {True}
    # 4 steps of one forward each; with checkpointing, each backward runs the layer's forward again
    assert (plain_calls.calls, checked_calls.calls) == (4, 8)
    for split in ("training", "validation"):
        losses = plain_result.statistics[split]["combined"]["loss"]
        assert checked_result.statistics[split]["combined"]["loss"] == pytest.approx(losses, rel=1e-5)
    expected = plain.model.state_dict()
    trained = checked.model.state_dict()
    assert trained.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)
    from transformers import AutoModel

    pretrained = AutoModel.from_pretrained(tiny_bert).state_dict()  # and the transformer did train
    assert not torch.equal(trained["encoders.review.transformer.encoder.layer.0.attention.self.query.weight"],
                           pretrained["encoder.layer.0.attention.self.query.weight"])


def test_an_adapter_checkpoints_its_base_model(tiny_bert, monkeypatch, tmp_path):
    _, _, recorder = _run(tiny_bert, True, monkeypatch, tmp_path, trainable=False, adapter={"type": "lora"})
    assert recorder.checkpointing == {True} and recorder.calls == 8


def test_estimate_counts_layer_inputs_plus_one_recomputed_layer(tiny_bert):
    estimates = {}
    for checkpointing in (False, True):
        cfg, meta, table, plan, model = tiny.ecd_parts(text_config(tiny_bert, checkpointing), tiny.sentiment_frame(64))
        estimates[checkpointing] = memory.estimate(model, cfg, plan, table)
        longest = int(table["review"].lengths.max())
    layers, hidden, heads, word = 2, 32, 2, 4  # tests/tiny.py: fp32 on the CPU
    one_layer = longest * hidden * (34 + 5 * heads * longest / hidden) * word / 2
    assert estimates[False].per_row_activations == pytest.approx(layers * one_layer)
    assert estimates[True].per_row_activations == pytest.approx(layers * longest * hidden * word + one_layer)
    assert estimates[True].activations < estimates[False].activations
    assert estimates[True].gradients == estimates[False].gradients  # the same weights train


@pytest.mark.parametrize("inputs, why", [
    ([{"name": "length", "type": "number"}], "no text input"),
    ([{"name": "review", "type": "text", "encoder": {"trainable": False}}],
     "text input review is frozen: trainable false and no adapter"),
    ([{"name": "review", "type": "text", "encoder": {}}, {"name": "title", "type": "text", "encoder": {}}],
     "text inputs review, title are frozen: trainable false and no adapter"),
])
def test_refused_where_no_transformer_trains(inputs, why, tiny_bert):
    for feature in inputs:
        if feature["type"] == "text":
            feature["encoder"].update(type="auto_transformer", pretrained_model_name_or_path=str(tiny_bert))
    cfg = {"input_features": inputs, "output_features": [{"name": "sentiment", "type": "category"}],
           "trainer": {"enable_gradient_checkpointing": True}}
    with pytest.raises(ConfigError) as info:
        config.load(cfg)
    assert str(info.value).endswith(REFUSAL.format(why))
    cfg["trainer"]["enable_gradient_checkpointing"] = False
    config.load(cfg)


@pytest.mark.parametrize("encoder", [{"trainable": True}, {"adapter": "lora"}, {"trainable": False, "adapter": "lora"}])
def test_accepted_where_a_transformer_trains(encoder, tiny_bert):
    cfg = text_config(tiny_bert, True, **encoder)
    cfg["input_features"].append({"name": "frozen", "type": "text", "encoder": {
        "type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}})
    assert config.load(cfg).trainer.enable_gradient_checkpointing


def test_llm_configs_keep_their_own_rule(tiny_llama):
    """A causal LM checkpoints itself (models/llm.py); the ECD check does not apply to it."""
    cfg = config.load({"model_type": "llm", "base_model": str(tiny_llama),
                       "input_features": [{"name": "prompt", "type": "text"}],
                       "output_features": [{"name": "answer", "type": "text"}],
                       "trainer": {"type": "finetune", "enable_gradient_checkpointing": True}})
    assert cfg.trainer.enable_gradient_checkpointing
