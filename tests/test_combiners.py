"""The comparator combiner and tied encoders (Ludwig's `comparator` and `tied`), for sentence-pair tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiny
import torch

from tunefork import Model, config
from tunefork.config import ConfigError
from tunefork.models.combiners import Comparator


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
