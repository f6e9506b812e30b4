"""Preference tuning as a run: it learns the preference, reports TRL's metrics, resumes exactly, exports merged; and
bad configs and data get one line naming the key or column."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tunefork import Model
from tunefork import config as config_mod
from tunefork.errors import ConfigError, DataError, TuneforkError

GOOD = ["great", "wonderful", "superb", "moving", "brilliant", "charming", "fresh", "funny"]
BAD = ["awful", "boring", "dull", "clumsy", "tedious", "bland", "stale", "messy"]


def frame(n: int = 48) -> pd.DataFrame:
    """Pairs whose preference a model can learn: the chosen review says a positive word, the rejected a negative."""
    return pd.DataFrame({"review": [f"review {i}:" for i in range(n)],
                         "chosen": [f"a {GOOD[i % 8]} film" for i in range(n)],
                         "rejected": [f"a {BAD[(i * 3) % 8]} film" for i in range(n)],
                         "label": [i % 2 == 0 for i in range(n)],
                         "split": [0] * (n - 16) + [1] * 8 + [2] * 8})


def config(folder, **trainer) -> dict:
    return {"model_type": "llm", "base_model": str(folder),
            "input_features": [{"name": "review", "type": "text"}],
            "output_features": [{"name": "chosen", "type": "text"}],
            "adapter": {"type": "lora", "r": 4, "dropout": 0.0},
            "generation": {"max_new_tokens": 4},
            "preprocessing": {"split": {"type": "fixed"}},
            "trainer": {"type": "dpo", "epochs": 2, "batch_size": 8, "learning_rate": 0.02, "steps_per_checkpoint": 2,
                        "early_stop": -1, **trainer}}


@pytest.fixture(scope="module")
def whole(tiny_llama, tmp_path_factory):
    """One DPO run with LoRA: 8 steps, an evaluation and a checkpoint every 2."""
    out = tmp_path_factory.mktemp("whole")
    model = Model(config(tiny_llama), quiet=True)
    result = model.train(dataset=frame(), output_directory=out, model_name="whole")
    return model, result


def test_dpo_learns_the_preference_and_reports_trl_metrics(whole):
    model, result = whole
    validation = result.statistics["validation"]["chosen"]
    assert validation["rewards/accuracies"][-1] >= 0.75  # held-out pairs: the chosen reward above the rejected one
    assert validation["rewards/margins"][-1] > validation["rewards/margins"][0] > 0
    assert validation["loss"][-1] < validation["loss"][0] < 0.6932  # below log 2, where policy = reference
    run = result.output_directory
    saved = json.loads((run / "training_statistics.json").read_text())
    assert saved["validation"]["chosen"]["rewards/accuracies"] == validation["rewards/accuracies"]
    report = (run / "report.html").read_text()
    assert "validation rewards/accuracies" in report and "rewards/margins" in report  # a card and the table
    assert result.plan["reference_model"]["value"] == "the base model (adapter disabled)"
    assert (run / "model" / "adapter" / "adapter_model.safetensors").is_file()  # the adapter only, as finetune saves


def test_resume_after_a_crash_equals_the_uninterrupted_run(whole, tiny_llama, tmp_path, monkeypatch):
    from tunefork.training import loop

    _, result = whole
    step = loop._step

    def crash_after_six(run):
        if run.progress.step == 6:
            raise KeyboardInterrupt
        step(run)

    monkeypatch.setattr(loop, "_step", crash_after_six)
    with pytest.raises(KeyboardInterrupt):
        Model(config(tiny_llama), quiet=True).train(dataset=frame(), output_directory=tmp_path, model_name="cut")
    monkeypatch.setattr(loop, "_step", step)
    stopped = tmp_path / "experiment_cut"
    assert not (stopped / "model").exists() and (stopped / "checkpoints").is_dir()
    resumed = Model(config(tiny_llama), quiet=True).train(dataset=frame(), output_directory=tmp_path,
                                                           model_resume_path=stopped)
    weights = "model/adapter/adapter_model.safetensors"
    a, b = load_file(result.output_directory / weights), load_file(stopped / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.statistics["validation"] == result.statistics["validation"]


def test_export_merges_the_preference_tuned_adapter(whole, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunefork import export

    model, result = whole
    folder = export.export(result.output_directory, "hf", tmp_path / "merged", merge_adapter=True)
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([model.tokenizers("review 1: a great film")["input_ids"]])
    with torch.no_grad():
        expected = model.model.eval()(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)


def test_continued_adapter_saves_without_its_reference_copy(whole, tiny_llama, tmp_path):
    _, result = whole
    raw = config(tiny_llama, epochs=1, steps_per_checkpoint=0)
    raw["adapter"]["pretrained_adapter_weights"] = str(result.output_directory / "model" / "adapter")
    continued = Model(raw, quiet=True).train(dataset=frame(), output_directory=tmp_path)
    assert result.plan["reference_model"]["value"] != continued.plan["reference_model"]["value"]
    saved = sorted(p.name for p in (continued.output_directory / "model" / "adapter").iterdir())
    assert "adapter_model.safetensors" in saved and "reference" not in saved  # the trained adapter alone
    # it starts where the first run ended, compared with itself: rewards 0 at the first batch, so a margin grows
    assert continued.statistics["validation"]["chosen"]["rewards/margins"][-1] > 0


@pytest.mark.parametrize(("trainer", "message"), [
    ({"type": "dpo", "kto_beta": 0.2}, "kto_beta applies to trainer.type kto, not dpo"),
    ({"type": "finetune", "beta": 0.2}, "beta applies to trainer.type dpo or orpo or kto, not finetune"),
    ({"type": "kto", "rejected_column": "worse"}, "rejected_column applies to trainer.type dpo or orpo, not kto"),
    ({"type": "orpo", "beta": 0.2, "orpo_beta": 0.3}, "beta 0.2 and orpo_beta 0.3 disagree"),
    ({"type": "dpo", "dpo_loss_type": "ipo", "dpo_label_smoothing": 0.1}, "dpo_label_smoothing applies to "
     "dpo_loss_type sigmoid"),
    ({"type": "dpo", "dpo_label_smoothing": 0.5}, "dpo_label_smoothing"),
])
def test_config_refuses_keys_that_cannot_apply(tiny_llama, trainer, message):
    raw = config(tiny_llama)
    raw["trainer"] = trainer
    with pytest.raises(ConfigError, match=message):
        config_mod.load(raw)


def test_plain_beta_is_the_types_beta(tiny_llama):
    raw = config(tiny_llama, beta=0.4)
    assert config_mod.load(raw).trainer.strength == 0.4
    raw["trainer"].update(type="kto", beta=None, kto_beta=0.3)
    assert config_mod.load(raw).trainer.strength == 0.3


@pytest.mark.parametrize(("trainer", "data", "error", "message"), [
    ({}, lambda f: f.drop(columns="rejected"), DataError, r"column 'rejected' \(trainer.rejected_column\) not found"),
    ({"type": "kto"}, lambda f: f.assign(label=["maybe"] * len(f)), DataError,
     r"row 0: trainer.label_column 'label' holds 'maybe'; write true or false"),
    ({"rejected_column": "review"}, lambda f: f, DataError, "is also read as the prompt or the output"),
    ({"type": "kto", "batch_size": 1}, lambda f: f, ConfigError, "KTO estimates its KL term"),
    ({"validation_metric": "perplexity"}, lambda f: f, ConfigError, "perplexity"),
])
def test_bad_data_is_one_line_naming_the_column(tiny_llama, tmp_path, trainer, data, error, message):
    with pytest.raises(error, match=message) as caught:
        Model(config(tiny_llama, **trainer), quiet=True).train(dataset=data(frame()), output_directory=tmp_path)
    assert "\n" not in str(caught.value) and isinstance(caught.value, TuneforkError)
    assert not any(tmp_path.iterdir())  # nothing half-written
