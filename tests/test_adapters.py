"""Adapters, peft-style: a table of adapters × tiny models, and the same checks on every case.

Each case trains once (through the public `Model.train`) and is shared by the checks: the loss goes down, only the
adapter and the heads change, the printed trainable count is peft's count plus the heads, save → load gives the same
logits, and merging gives the same logits (≤ 1e-5) — or is refused, for the prompt methods. Then the cases the table
cannot express: AdaLoRA's budget and penalty, continuing from saved adapter weights, and the mistakes people make.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny

pytest.importorskip("peft")
import torch  # noqa: E402

from tunefork.api import Model  # noqa: E402
from tunefork.config import ConfigError  # noqa: E402
from tunefork.errors import ModelFolderError, TuneforkError  # noqa: E402
from tunefork.models import folder  # noqa: E402
from tunefork.training import batches, loop  # noqa: E402

FRAME = tiny.sentiment_frame(120, seed=3)
TRAIN, VALIDATION = FRAME[:96], FRAME[96:]

# (adapter config, the models it runs on, a substring every one of its parameter names has)
ADAPTERS = {
    "lora": ({"type": "lora", "r": 4}, ("bert", "llama"), "lora_"),
    "lora_dora_rslora": ({"type": "lora", "r": 4, "use_dora": True, "use_rslora": True}, ("bert",), "lora_"),
    "adalora": ({"type": "adalora", "init_r": 6, "target_r": 2}, ("bert", "llama"), "lora_"),
    "ia3": ({"type": "ia3"}, ("bert", "llama"), "ia3_l"),
    "loha": ({"type": "loha", "r": 4}, ("bert", "llama"), "hada_"),
    "lokr": ({"type": "lokr", "r": 4}, ("bert", "llama"), "lokr_"),
    "vera": ({"type": "vera", "r": 16}, ("bert", "llama"), "vera_lambda"),
    "prompt_tuning": ({"type": "prompt_tuning", "num_virtual_tokens": 4}, ("bert", "llama"), "prompt_encoder"),
    "adaption_prompt": ({"type": "adaption_prompt"}, ("llama", "gpt2"), "adaption_"),
    # peft's newer methods (tunefork/adapters/methods.py); tiny sizes: the tiny models' layers are 64 wide
    "oft": ({"type": "oft", "oft_block_size": 16}, ("bert",), "oft_R"),
    "boft": ({"type": "boft", "boft_block_size": 4}, ("bert",), "boft_"),
    "hra": ({"type": "hra", "r": 4}, ("bert",), "hra_u"),
    "vblora": ({"type": "vblora", "num_vectors": 16, "vector_length": 16}, ("bert",), "vblora_"),
    "fourierft": ({"type": "fourierft", "n_frequency": 64, "scaling": 10.0}, ("bert",), "fourierft_spectrum"),
    "waveft": ({"type": "waveft", "n_frequency": 64}, ("bert",), "waveft_spectrum"),
    "tinylora": ({"type": "tinylora", "u": 16}, ("bert",), "tinylora_v"),
    "ln_tuning": ({"type": "ln_tuning", "target_modules": ["LayerNorm"]}, ("bert",), "ln_tuning_layers"),
}
CASES = [(name, model) for name, (_, models, _) in ADAPTERS.items() for model in models]
IDS = [f"{name}-{model}" for name, model in CASES]
UNMERGEABLE = {"prompt_tuning", "adaption_prompt"}


def make_config(model_dir: Path, adapter, **encoder) -> dict:
    return {
        "input_features": [{"name": "review", "type": "text", "encoder": {
            "type": "auto_transformer", "pretrained_model_name_or_path": str(model_dir), "adapter": adapter, **encoder}}],
        "output_features": [{"name": "sentiment", "type": "category"}],
        # lr 0.01: prompt vectors and VeRA's scaling vectors barely move at fine-tuning rates in 18 steps
        "trainer": {"epochs": 3, "batch_size": 16, "learning_rate": 0.01},
    }


def train(config: dict, output: Path):
    """Model.train with the model's state captured just before fit, and the console's notes kept."""
    model = Model(config, progress=False, quiet=False)
    model.console.out.file = io.StringIO()
    before: dict[str, torch.Tensor] = {}
    original = loop.fit

    def recording_fit(task, ecd, *args, **kwargs):
        before.update({k: v.detach().clone() for k, v in ecd.state_dict().items()})
        return original(task, ecd, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "fit", recording_fit)
        result = model.train(training_set=TRAIN, validation_set=VALIDATION, output_directory=output)
    return model, result, before, model.console.out.file.getvalue()


def logits(model: Model, frame=VALIDATION) -> torch.Tensor:
    table = model.fitted._table(frame, with_outputs=False)
    inputs, _ = batches.collate(table, np.arange(len(table)), model.config, model.meta, with_targets=False)
    model.model.eval()
    with torch.no_grad():
        return model.model(inputs)["sentiment"]


@pytest.fixture(scope="module")
def model_dirs(tiny_bert, tiny_llama, tiny_gpt2) -> dict[str, Path]:
    return {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.fixture(scope="module")
def trained(model_dirs, tmp_path_factory):
    """Each case trained once, on first use."""
    runs: dict = {}

    def get(name: str, model: str):
        if (name, model) not in runs:
            adapter = ADAPTERS[name][0]
            runs[name, model] = train(make_config(model_dirs[model], adapter), tmp_path_factory.mktemp(f"{name}-{model}"))
        return runs[name, model]

    return get


@pytest.mark.parametrize(("name", "model"), CASES, ids=IDS)
def test_loss_goes_down(trained, name, model):
    _, result, _, _ = trained(name, model)
    losses = result.statistics["training"]["combined"]["loss"]
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize(("name", "model"), CASES, ids=IDS)
def test_only_adapter_and_heads_change(trained, name, model):
    trained_model, _, before, _ = trained(name, model)
    marker = ADAPTERS[name][2]
    after = trained_model.model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    base_changed = sorted(k for k in changed if k.startswith("encoders.") and marker not in k)
    assert not base_changed, f"base weights changed: {base_changed[:3]}"
    assert any(marker in k for k in changed), "the adapter did not train"
    assert any(k.startswith("heads.") for k in changed), "the head did not train"


@pytest.mark.parametrize(("name", "model"), CASES, ids=IDS)
def test_trainable_count_is_peft_count_plus_heads(trained, name, model):
    trained_model, _, _, notes = trained(name, model)
    ecd = trained_model.model
    peft_trainable, peft_total = ecd.text_encoders()["review"].transformer.get_nb_trainable_parameters()
    outside = sum(p.numel() for n, p in ecd.named_parameters() if not n.startswith("encoders."))
    shown = re.search(r"trainable parameters: ([\d,]+) of ([\d,]+)", notes)
    assert shown, notes
    assert int(shown[1].replace(",", "")) == peft_trainable + outside
    assert int(shown[2].replace(",", "")) == peft_total + outside
    assert 0 < peft_trainable < peft_total / 2


@pytest.mark.parametrize(("name", "model"), CASES, ids=IDS)
def test_save_load_gives_identical_logits(trained, name, model):
    trained_model, result, _, _ = trained(name, model)
    folder = result.output_directory / "model"
    saved = set(json.loads((folder / "encoders" / "review" / "adapter_config.json").read_text()))
    assert {"peft_type", "base_model_name_or_path"} <= saved
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith(("heads.", "combiner.")) for k in f.keys()), "base weights were saved"
    loaded = Model.load(result.output_directory)
    torch.testing.assert_close(logits(loaded), logits(trained_model), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "model"), CASES, ids=IDS)
def test_merge_gives_identical_logits_or_is_refused(trained, name, model):
    _, result, _, _ = trained(name, model)
    loaded = Model.load(result.output_directory)
    expected = logits(loaded)
    if name in UNMERGEABLE:
        with pytest.raises(TuneforkError, match="cannot be merged into the base model"):
            loaded.model.merge_adapters(only_if_configured=False)
        return
    assert loaded.model.merge_adapters(only_if_configured=False) == ["review"]
    assert not loaded.model.text_encoders()["review"].adapted
    assert (logits(loaded) - expected).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------- beyond the table


def test_merged_folder_is_self_contained_and_predicts_the_same(trained, tmp_path):
    trained_model, result, _, _ = trained("lora", "bert")
    merged = tmp_path / "merged"
    assert folder.merge_adapters(result.output_directory, merged) == ["review"]
    assert not (merged / "encoders" / "review" / "adapter_config.json").exists()
    adapter_bytes = sum(p.stat().st_size for p in (result.output_directory / "model").rglob("*.safetensors"))
    assert adapter_bytes < 0.25 * (merged / "model.safetensors").stat().st_size
    assert (logits(Model.load(merged)) - logits(trained_model)).abs().max() <= 1e-5


def test_merge_adapter_into_base_model_writes_full_weights(model_dirs, tmp_path):
    adapter = {"type": "lora", "r": 4, "postprocessor": {"merge_adapter_into_base_model": True}}
    trained_model, result, _, notes = train(make_config(model_dirs["bert"], adapter), tmp_path)
    assert "adapter merged" in notes
    folder = result.output_directory / "model"
    assert not (folder / "encoders" / "review" / "adapter_config.json").exists()
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert any(".transformer." in k for k in f.keys())
    torch.testing.assert_close(logits(Model.load(folder)), logits(trained_model), rtol=0, atol=1e-6)


def test_adapter_trains_and_base_stays_frozen_even_with_trainable_true(model_dirs, tmp_path):
    config = make_config(model_dirs["bert"], {"type": "lora", "r": 4}, trainable=True)
    config["trainer"]["epochs"] = 1
    trained_model, _, before, _ = train(config, tmp_path)
    after = trained_model.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k.startswith("encoders.") and "lora_" not in k)
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if "lora_" in k)


def test_adalora_reallocates_its_rank_budget(model_dirs, tmp_path):
    adapter = {"type": "adalora", "init_r": 6, "target_r": 2, "tinit": 2, "orth_reg_weight": 0.1}
    config = make_config(model_dirs["bert"], adapter)
    config["trainer"].update(epochs=1, train_steps=12, steps_per_checkpoint=12)  # one evaluation: the last is best
    trained_model, result, _, _ = train(config, tmp_path)
    assert result.plan["adalora_total_step.review"]["value"] == 12
    peft = trained_model.model.text_encoders()["review"].transformer
    pattern = peft.peft_config["default"].rank_pattern
    assert pattern, "update_and_allocate never ran"
    kept = [sum(mask) for mask in pattern.values()]
    assert sum(kept) == 2 * len(pattern), kept  # target_r per matrix on average: the final budget
    assert len(set(kept)) > 1 or max(kept) < 6  # the budget shrank from init_r (and may differ per layer)
    for name, p in peft.base_model.model.named_parameters():  # pruned triplets are zero in Λ
        if "lora_E" in name:  # (saving strips the adapter name from the pattern's keys)
            assert int((p != 0).sum()) == sum(pattern.get(name, pattern.get(name.replace(".default", ""))))
    loaded = Model.load(result.output_directory)
    torch.testing.assert_close(logits(loaded), logits(trained_model), rtol=0, atol=1e-6)


def test_adalora_penalty_is_the_one_peft_adds_to_its_own_loss():
    from types import SimpleNamespace

    from peft import AdaLoraConfig, get_peft_model

    from tunefork.adapters.adalora import AdaLora

    class Toy(torch.nn.Module):  # returns a zero loss, so peft's forward returns exactly its penalty
        def __init__(self):
            super().__init__()
            self.query, self.value = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

        def forward(self, x):
            return SimpleNamespace(loss=torch.zeros(()), out=self.value(self.query(x)))

    torch.manual_seed(0)
    section = AdaLora(type="adalora", init_r=4, target_r=2, orth_reg_weight=0.3, target_modules=["query", "value"])
    peft_model = get_peft_model(Toy(), AdaLoraConfig(**{**section.to_peft(total_steps=10).to_dict(), "peft_type": "ADALORA"}))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_()
    peft_loss = peft_model.base_model(torch.randn(2, 8)).loss
    torch.testing.assert_close(section.penalty(peft_model), peft_loss)


def test_continue_from_pretrained_adapter_weights(trained, model_dirs, tmp_path):
    _, first, _, _ = trained("lora", "bert")
    again = make_config(model_dirs["bert"], {"type": "lora", "pretrained_adapter_weights": str(first.output_directory)})
    again["trainer"]["epochs"] = 1
    second, _, before, _ = train(again, tmp_path)
    from safetensors.torch import load_file

    saved = load_file(str(first.output_directory / "model" / "encoders" / "review" / "adapter_model.safetensors"))
    prefix = "encoders.review.transformer."
    started = {k[len(prefix):].replace(".default", ""): v for k, v in before.items() if k.startswith(prefix) and "lora_" in k}
    assert set(started) == set(saved)
    assert all(torch.equal(started[k], saved[k]) for k in saved), "training did not start from the saved adapter"
    assert second.model.text_encoders()["review"].transformer.get_nb_trainable_parameters()[0] > 0


def test_pretrained_adapter_of_another_type_is_refused(trained, model_dirs, tmp_path):
    _, first, _, _ = trained("lora", "bert")
    config = make_config(model_dirs["bert"], {"type": "ia3", "pretrained_adapter_weights": str(first.output_directory)})
    with pytest.raises(ConfigError, match=r"input_features\[0\]\.encoder\.adapter\.pretrained_adapter_weights: .* "
                                          r"holds a lora adapter, not ia3"):
        train(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_base_model_at_load_time_is_explained(model_dirs, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(model_dirs["bert"], base)
    config = make_config(base, {"type": "lora", "r": 4})
    config["trainer"]["epochs"] = 1
    _, result, _, _ = train(config, tmp_path / "out")
    shutil.rmtree(base)
    with pytest.raises(ModelFolderError, match="adapter weights only and its base model cannot be loaded here"):
        Model.load(result.output_directory)


def test_export_merge_adapter_writes_a_plain_transformers_classifier(model_dirs, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunefork.cli import main

    config = make_config(model_dirs["bert"], {"type": "lora", "r": 4}, reduce_output="cls_pooled")
    config["trainer"]["epochs"] = 1
    _, result, _, _ = train(config, tmp_path / "runs")
    run, out = str(result.output_directory), tmp_path / "hf"
    assert main(["export", "-m", run, "-f", "hf", "-o", str(out)]) != 0
    assert "export it with --merge-adapter" in capsys.readouterr().err
    assert main(["export", "-m", run, "-f", "hf", "-o", str(out), "--merge-adapter"]) == 0

    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()  # no peft, no tunefork
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = VALIDATION["review"].tolist()
    with torch.no_grad():
        theirs = hf(**tokenizer(texts, padding=True, return_tensors="pt")).logits.softmax(-1).numpy()
    expected = Model.load(run).predict(VALIDATION)
    ours = expected[[f"sentiment_probabilities_{hf.config.id2label[i]}" for i in range(theirs.shape[1])]].to_numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)


def test_export_merge_adapter_refuses_a_prompt_method(trained, tmp_path, capsys):
    from tunefork.cli import main

    _, result, _, _ = trained("prompt_tuning", "bert")
    assert main(["export", "-m", str(result.output_directory), "-f", "hf", "-o", str(tmp_path / "x"), "--merge-adapter"]) != 0
    assert "prompt_tuning adapters cannot be merged into the base model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------- mistakes


def test_adaption_prompt_on_an_unsupported_architecture_names_the_supported_ones(model_dirs, tmp_path):
    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

    supported = ", ".join(sorted(TRANSFORMERS_MODEL_CONFIG))
    with pytest.raises(ConfigError) as error:
        train(make_config(model_dirs["bert"], "adaption_prompt"), tmp_path / "out")
    assert str(error.value) == (f"input_features[0].encoder.adapter.type: adaption_prompt works only on the "
                                f"architectures peft supports for it ({supported}); this model is 'bert'")
    assert not (tmp_path / "out").exists()


def test_target_module_that_matches_nothing_lists_the_models_modules(model_dirs, tmp_path):
    with pytest.raises(ConfigError) as error:
        train(make_config(model_dirs["bert"], {"type": "lora", "target_modules": ["query", "valeu"]}), tmp_path)
    message = str(error.value)
    assert message.startswith("input_features[0].encoder.adapter.target_modules: 'valeu' matches no module of this "
                              "bert model (did you mean 'value'?); its module names are: ")
    assert {"query", "key", "value", "dense", "word_embeddings"} <= set(message.rsplit(": ", 1)[1].split(", "))


def test_method_that_cannot_adapt_the_layer_type_is_a_config_error(model_dirs, tmp_path):
    with pytest.raises(ConfigError, match=r"input_features\[0\]\.encoder\.adapter: loha cannot be applied to this "
                                          r"gpt2 model \(.*Conv1D"):
        train(make_config(model_dirs["gpt2"], "loha"), tmp_path)


def test_adalora_schedule_without_a_pruning_phase_fails_at_planning(model_dirs, tmp_path):
    config = make_config(model_dirs["bert"], {"type": "adalora", "tinit": 10, "tfinal": 10})  # 18 planned steps
    with pytest.raises(ConfigError, match=r"encoder\.adapter: tinit \(10\) \+ tfinal \(10\) leave no step"):
        train(config, tmp_path)


@pytest.mark.parametrize(("adapter", "message"), [
    ({"type": "prompt_tuning", "postprocessor": {"merge_adapter_into_base_model": True}},
     "prompt_tuning adapters cannot be merged into the base model"),
    ({"type": "adaption_prompt", "postprocessor": {"merge_adapter_into_base_model": True}},
     "adaption_prompt adapters cannot be merged into the base model"),
    ({"type": "lora", "rank": 4}, "input_features[0].encoder.adapter.rank: unknown key"),
    ({"type": "lorra"}, "'lorra' is not supported (one of: lora, adalora, adaption_prompt, ia3, loha, lokr, vera, "
                        "prompt_tuning, oft, boft, hra, vblora, fourierft, waveft, tinylora, ln_tuning) "
                        "(did you mean 'lora'?)"),
    ({"type": "ia3", "target_modules": ["key"], "feedforward_modules": ["output.dense"]},
     "feedforward_modules must be among target_modules; not there: output.dense"),
    ({"type": "adalora", "init_r": 4, "target_r": 8}, "target_r (8) must not exceed init_r (4)"),
])
def test_adapter_config_mistakes_are_one_sentence(adapter, message):
    from tunefork import config

    with pytest.raises(ConfigError) as error:
        config.load(make_config(Path("m"), adapter))
    assert message in str(error.value)


def test_adapter_shorthand_and_ludwig_defaults():
    from tunefork import config

    loaded = config.load(make_config(Path("m"), "lora"))
    lora = loaded.input_features[0].encoder.adapter
    assert (lora.type, lora.r, lora.alpha, lora.scale_numerator, lora.dropout, lora.target_modules) == ("lora", 8, None, 16, 0.05, None)
    assert not loaded.input_features[0].encoder.frozen  # an adapter trains: no embedding cache, batch size as fine-tuning
    assert config.load(config.to_dict(loaded)) == loaded
    assert config.load(make_config(Path("m"), None)).input_features[0].encoder.adapter is None
