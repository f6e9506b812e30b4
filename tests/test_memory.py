"""Memory guard rails: the estimate tracks the measured peak, a plan that cannot fit is refused with what would,
and `batch_size: auto` measures micro-batches while keeping the effective batch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import tiny
import yaml

from tunefork import Model
from tunefork.errors import TuneforkError
from tunefork.training import memory

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import tiny
from tunefork import Model
cfg = json.loads({config!r})
result = Model(cfg, quiet=True).train(tiny.sentiment_frame(300, seed=2), skip_save_model=True)
eff = result.efficiency
print(json.dumps({{"estimate": result.plan["memory_estimate_mb"]["value"], "peak": eff["peak_rss_training_mb"] or eff["peak_rss_mb"]}}))
"""


def config(model_dir, batch_size=32, **trainer):
    return {"input_features": [{"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 64},
                                "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(model_dir), "trainable": True}}],
            "output_features": [{"name": "sentiment", "type": "category"}],
            "trainer": {"epochs": 1, "batch_size": batch_size, "learning_rate": 1e-4, **trainer}}


def _measured(cfg, tmp_path) -> dict:
    """A fresh process: ru_maxrss is a lifetime maximum, so earlier tests in this one would hide the run's own peak."""
    import os
    from pathlib import Path

    code = SCRIPT.format(tests=str(Path(tiny.__file__).parent), config=json.dumps(cfg))
    env = dict(os.environ, TUNEFORK_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["tiny_bert", "minilm_dir"])
def test_estimate_within_30_percent_of_measured_peak(model, request, tmp_path):
    folder = request.getfixturevalue(model)
    result = _measured(config(folder, batch_size=32), tmp_path)
    estimate, peak = result["estimate"]["peak_mb"], result["peak"]
    assert abs(estimate - peak) <= 0.3 * peak, result
    if model == "minilm_dir":  # the training part is most of it: gradients + Adam state of 22.7 M parameters
        assert result["estimate"]["gradients_mb"] == pytest.approx(87, abs=2)
        assert result["estimate"]["optimizer_mb"] == pytest.approx(173, abs=3)


def test_a_plan_that_cannot_fit_is_refused_with_what_would(tiny_bert, monkeypatch):
    model = Model(config(tiny_bert, batch_size=64), quiet=True)
    # pretend that little is free: the fixed part (gradients, optimizer) fits, 64 rows of activations do not
    real = memory.estimate

    def tight(*args, **kwargs):
        est = real(*args, **kwargs)
        monkeypatch.setattr(memory, "available", lambda device: int((est.gradients + est.optimizer + 10 * est.per_row_activations) / memory.HEADROOM))
        return est

    monkeypatch.setattr(memory, "estimate", tight)
    with pytest.raises(TuneforkError) as info:
        model.train(tiny.sentiment_frame(120), skip_save_model=True)
    message = str(info.value)
    rows, accumulation = map(int, re.search(r"batch_size: (\d+) with gradient_accumulation_steps: (\d+)", message).groups())
    assert rows in (9, 10) and accumulation == -(-64 // rows)  # 10 rows fit, less the rounding of a float budget
    assert "adapter" in message and "cache_encoder_embeddings" in message


def test_auto_batch_size_measures_and_keeps_the_effective_batch(tiny_bert, tmp_path, monkeypatch):
    rates = {4: 10.0, 8: 50.0, 16: 40.0, 32: 30.0}

    def measured(*args, **kwargs):
        return 8, rates

    monkeypatch.setattr(memory, "tune_batch_size", measured)
    result = Model(config(tiny_bert, batch_size="auto"), quiet=True).train(tiny.sentiment_frame(120), output_directory=tmp_path)
    plan = yaml.safe_load((result.output_directory / "resolved_config.yaml").read_text())["plan"]
    assert plan["batch_size"]["value"] == 8 and plan["gradient_accumulation_steps"]["value"] == 4
    assert plan["effective_batch_size"]["value"] == 32
    assert "fastest measured" in plan["batch_size"]["reason"]


def test_tune_batch_size_leaves_weights_and_rng_untouched(tiny_bert):
    import torch

    cfg, meta, table, plan, model = tiny.ecd_parts(config(tiny_bert, batch_size="auto"), tiny.sentiment_frame(120))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    best, rates = memory.tune_batch_size(model, cfg, meta, plan, table, memory.estimate(model, cfg, plan, table), "cpu")
    assert best in rates and set(rates) == {4, 8, 16, 32} and all(r > 0 for r in rates.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
