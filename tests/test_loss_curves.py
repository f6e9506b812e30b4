"""Pinned loss curves: one tiny model per recipe, a fixed seed, the first five training losses asserted to 1e-6.

The values were recorded before the classifier and causal-LM loops became one loop and still hold after it. A change
that alters the arithmetic of a training step (the loss weighting, the order of accumulation, the optimizer, the
batch order) fails here, instead of showing up later as a drifted benchmark. If a change alters it on purpose,
re-record the values and say why in the commit.
"""

from __future__ import annotations

import pytest
import tiny

ECD = [1.9387950897216797, 3.658905029296875, 1.581354022026062, 1.838179349899292, 1.683389663696289]
LLM = [5.957085609436035, 5.950701713562012, 5.938568592071533, 5.920732498168945, 5.923768043518066]


class Losses:
    """A report target that keeps each optimizer step's logged loss."""

    progress = False

    def __init__(self):
        self.values: list[float] = []

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        self.values.append(loss)

    def evaluation(self, *args) -> None:
        pass


def _losses(config: dict, monkeypatch) -> list[float]:
    from tunefork import Model, tracking

    losses = Losses()
    real = tracking.start
    monkeypatch.setattr(tracking, "start", lambda *a, **k: [*real(*a, **k), losses])
    Model(config, progress=False, quiet=True).train(tiny.sentiment_frame(64, seed=3), skip_save_model=True)
    return losses.values


@pytest.fixture(scope="module")
def fixed_bert(tmp_path_factory):
    """The tiny BERT with a fixed vocabulary: the same model in every process (a trained WordPiece is not)."""
    return tiny.build_bert(tmp_path_factory.mktemp("fixed-bert"), fixed_vocabulary=True)


def test_ecd_full_fine_tune_loss_curve(fixed_bert, monkeypatch):
    tiny_bert = fixed_bert
    config = {
        "input_features": [{"name": "review", "type": "text", "encoder": {
            "type": "auto_transformer", "trainable": True, "pretrained_model_name_or_path": str(tiny_bert)}},
            {"name": "genre", "type": "category"}],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"}],
        "trainer": {"epochs": 1, "train_steps": 5, "batch_size": 8, "learning_rate": 0.003, "early_stop": -1},
    }
    assert _losses(config, monkeypatch) == pytest.approx(ECD, abs=1e-6)


def test_llm_lora_loss_curve(tiny_llama, monkeypatch):
    config = {
        "model_type": "llm", "base_model": str(tiny_llama), "input_features": [{"name": "review", "type": "text"}],
        "output_features": [{"name": "sentiment", "type": "text"}], "prompt": {"template": "Review: {review}\nSentiment:"},
        "adapter": {"type": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        "trainer": {"type": "finetune", "epochs": 1, "train_steps": 5, "batch_size": 4, "learning_rate": 0.01,
                    "early_stop": -1},
    }
    assert _losses(config, monkeypatch) == pytest.approx(LLM, abs=1e-6)
