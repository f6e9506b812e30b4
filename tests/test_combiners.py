"""The comparator combiner and tied encoders (Ludwig's `comparator` and `tied`), for sentence-pair tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiny
import torch
from torch import nn

from tunefork import Model, config
from tunefork.config import ConfigError
from tunefork.models.combiners import Comparator, build


def pair_config(model_dir, **combiner):
    encoder = {"type": "auto_transformer", "pretrained_model_name_or_path": str(model_dir), "trainable": True}
    return {
        "input_features": [{"name": "left", "type": "text", "encoder": encoder},
                           {"name": "right", "type": "text", "tied": "left", "encoder": encoder}],
        "output_features": [{"name": "same", "type": "binary"}],
        "combiner": {"type": "comparator", "entity_1": ["left"], "entity_2": ["right"], **combiner},
        "trainer": {"epochs": 6, "batch_size": 16, "learning_rate": 0.005},
    }


def pairs(n=240, seed=0) -> pd.DataFrame:
    """Is the right text the left one? Half the rows repeat it, half pair it with another review: only a comparison
    of both texts can tell (either text alone says nothing)."""
    import numpy as np

    frame = tiny.sentiment_frame(2 * n, seed=seed)
    left, other = frame["review"].iloc[:n].to_numpy(), frame["review"].iloc[n:].to_numpy()
    same = np.random.default_rng(seed).random(n) < 0.5
    return pd.DataFrame({"left": left, "right": np.where(same, left, other), "same": np.where(same, "yes", "no")})


def test_comparator_features_are_symmetric_interactions():
    section = config.load({"input_features": [{"name": "a", "type": "number"}, {"name": "b", "type": "number"}],
                           "output_features": [{"name": "y", "type": "number"}],
                           "combiner": {"type": "comparator", "entity_1": ["a"], "entity_2": ["b"], "output_size": 3}}).combiner
    torch.manual_seed(0)
    comparator = Comparator(section, {"a": 1, "b": 1})
    assert comparator.project_1 is comparator.project_2  # same width: one projection, a symmetric comparison
    a, b = torch.randn(5, 1), torch.randn(5, 1)
    out = comparator({"a": a, "b": b})
    e1, e2 = comparator.project_1(a), comparator.project_1(b)
    assert out.shape == (5, 12)
    torch.testing.assert_close(out, torch.cat([e1, e2, e1 * e2, (e1 - e2).abs()], dim=-1))
    swapped = comparator({"a": b, "b": a})
    torch.testing.assert_close(swapped[:, 6:], out[:, 6:])  # e1·e2 and |e1 − e2| do not care about the order


def test_tied_inputs_share_one_encoder_and_a_pair_task_is_learned(tiny_bert, tmp_path):
    model = Model(pair_config(tiny_bert), quiet=True)
    result = model.train(pairs(400), output_directory=tmp_path)
    encoders = model.model.encoders
    assert encoders["left"] is encoders["right"]
    shared = sum(p.numel() for p in encoders["left"].parameters())
    assert sum(p.numel() for p in model.model.parameters()) < 2 * shared  # counted once
    holdout = pairs(200, seed=5)
    assert model.evaluate(holdout)["same"]["accuracy"] > 0.8  # chance is 0.5
    reloaded = Model.load(result.output_directory)
    assert reloaded.model.encoders["left"] is reloaded.model.encoders["right"]
    frame = pairs(20, seed=9)
    np.testing.assert_allclose(reloaded.predict(frame)["same_probability"], model.predict(frame)["same_probability"], atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["combiner"].update(entity_2=["left"]), "must split the input features"),
    (lambda c: c["combiner"].update(entity_2=["nope"]), "must split the input features"),
    (lambda c: c["input_features"][1].update(tied="right"), "tied must name another text input"),
    (lambda c: c["input_features"][1].update(tied="missing"), "tied must name another text input"),
])
def test_bad_pairings_are_config_errors(change, message, tiny_bert):
    cfg = pair_config(tiny_bert)
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        config.load(cfg)


def _combiner(**section):
    inputs = [{"name": "a", "type": "number"}, {"name": "b", "type": "number"}]
    cfg = config.load({"input_features": inputs, "output_features": [{"name": "y", "type": "number"}], "combiner": section})
    return build(cfg.combiner, {"a": 3, "b": 3})


def _kinds(module) -> list[tuple]:
    """Each layer's class with what configures it: Linear sizes, Dropout p."""
    return [(type(m).__name__, *((m.in_features, m.out_features) if isinstance(m, nn.Linear) else
                                 (m.p,) if isinstance(m, nn.Dropout) else ())) for m in module]


@pytest.mark.parametrize("kind", ["concat", "comparator"])
def test_fc_layers_use_their_own_dropout_and_activation_else_the_combiners(kind):
    layers = [{"output_size": 5, "dropout": 0.3, "activation": "gelu"}, {"output_size": 4}, {"output_size": 2, "dropout": 0.0}]
    section = {"type": kind, "fc_layers": layers, "dropout": 0.1, "activation": "tanh"}
    if kind == "comparator":
        section.update(entity_1=["a"], entity_2=["b"])
    combiner = _combiner(**section)
    stack = combiner.fc if kind == "concat" else combiner.project_1
    width = 6 if kind == "concat" else 3
    assert _kinds(stack) == [("Linear", width, 5), ("GELU",), ("Dropout", 0.3),  # the layer's own values
                             ("Linear", 5, 4), ("Tanh",), ("Dropout", 0.1),  # the combiner's
                             ("Linear", 4, 2), ("Tanh",)]  # its own dropout 0: none, not the combiner's 0.1


@pytest.mark.parametrize("kind", ["concat", "comparator"])
def test_fc_layers_without_their_own_values_build_what_num_fc_layers_builds(kind):
    """The stack as it was before per-layer values were read: same modules in the same order, so the same seed
    gives the same weights (a seeded run trains as before)."""
    section = {"type": kind, "dropout": 0.2, "activation": "silu", "norm": "layer", "output_size": 4}
    if kind == "comparator":
        section.update(entity_1=["a"], entity_2=["b"])
    torch.manual_seed(0)
    by_count = _combiner(**section, num_fc_layers=2)
    torch.manual_seed(0)
    by_list = _combiner(**section, fc_layers=[{"output_size": 4}, {"output_size": 4}])
    stack = by_count.fc if kind == "concat" else by_count.project_1
    width = 6 if kind == "concat" else 3
    assert _kinds(stack) == [("Linear", width, 4), ("LayerNorm",), ("SiLU",), ("Dropout", 0.2),
                             ("Linear", 4, 4), ("LayerNorm",), ("SiLU",), ("Dropout", 0.2)]
    assert repr(by_list) == repr(by_count)
    expected = by_count.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in by_list.state_dict().items()) and by_list.state_dict().keys() == expected.keys()


def test_default_combiner_and_decoder_build_the_modules_they_always_did():
    """No fc layers in the combiner; a decoder's num_fc_layers gives Linear → activation (no Dropout at 0)."""
    from tunefork.models.ecd import ECD

    cfg = config.load({"input_features": [{"name": "a", "type": "number"}],
                       "output_features": [{"name": "y", "type": "number", "decoder": {"num_fc_layers": 1, "fc_output_size": 7}}]})
    model = ECD(cfg, {"inputs": {"a": {}}, "outputs": {"y": {}}}, {})
    assert list(model.combiner.fc) == []
    fc, linear = model.heads["y"]
    assert _kinds(fc) == [("Linear", model.combiner.output_size, 7), ("ReLU",)] and linear.in_features == 7
