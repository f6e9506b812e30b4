"""`model_type: llm` on tiny causal LMs: the prompt is masked, the output is learnt, generations are the model's own,
what is saved reloads to the same generations, and each user mistake is one sentence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tunefork import Model, config, hf
from tunefork.config import ConfigError
from tunefork.data import prompts
from tunefork.errors import DataError, TuneforkError
from tunefork.features import generation_metrics as gm

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_demo"
TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


def llm_config(base: Path, **sections) -> dict:
    return {"model_type": "llm", "base_model": str(base),
            "input_features": [{"name": "instruction", "type": "text"}],
            "output_features": [{"name": "output", "type": "text"}],
            "prompt": {"template": TEMPLATE}, "generation": {"max_new_tokens": 6},
            "preprocessing": {"global_max_sequence_length": 96}, **sections}


def finetune(**trainer) -> dict:
    return {"type": "finetune", "epochs": 2, "batch_size": 4, "learning_rate": 0.01, "early_stop": -1, **trainer}


@pytest.fixture(scope="module")
def alpaca() -> pd.DataFrame:
    if not (ALPACA / "train.jsonl").is_file():
        pytest.skip(f"alpaca_demo not found at {ALPACA}: the shared datasets are not next to this checkout")
    return pd.read_json(ALPACA / "train.jsonl", lines=True, dtype=False).head(40)


@pytest.fixture(scope="module")
def lora_run(tiny_llama, alpaca, tmp_path_factory):
    """LoRA instruction fine-tuning of the tiny Llama, trained once for the module."""
    # every linear layer: on a random 2-layer model, attention alone barely moves the output distribution
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = llm_config(tiny_llama, adapter={"type": "lora", "r": 8, "target_modules": targets}, trainer=finetune(epochs=3))
    cfg["preprocessing"]["split"] = {"probabilities": [0.8, 0.2, 0.0]}
    model = Model(cfg, progress=False, quiet=True)
    return model, model.train(alpaca, output_directory=tmp_path_factory.mktemp("runs"))


# ------------------------------------------------------------------------------------------------ the data


def test_loss_is_on_output_tokens_only(tiny_llama):
    cfg = config.load(llm_config(tiny_llama))
    tokenizer = hf.load_tokenizer(cfg.base_model, cfg.pretrained_kwargs, cfg.trust_remote_code, where="base_model")
    frame = pd.DataFrame({"instruction": ["what is the movie", "a plot"], "input": ["", "x"],
                          "output": ["a great film", "dull and boring story"]})
    encoded = prompts.encode(tokenizer, prompts.render(cfg, frame), prompts.targets(cfg, frame), prompts.Limits(None, None, 96))
    batch = prompts.batch(encoded, np.array([0, 1]), tokenizer.pad_token_id)
    for row in range(2):
        prompt_ids = tokenizer(prompts.render(cfg, frame.iloc[[row]])[0])["input_ids"]
        output_ids = tokenizer(frame.output[row], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n, p = len(prompt_ids) + len(output_ids), len(prompt_ids)
        ids, labels, mask = (batch[k][row].tolist() for k in ("input_ids", "labels", "attention_mask"))
        assert ids[:n] == prompt_ids + output_ids  # the prompt, then the output and eos
        assert labels[:p] == [-100] * p  # no loss on the prompt ...
        assert labels[p:n] == output_ids  # ... exactly the output tokens carry it ...
        assert labels[n:] == [-100] * (len(ids) - n) and mask[n:] == [0] * (len(ids) - n)  # ... and never padding
    assert encoded.prompt_lengths.tolist() == [len(tokenizer(t)["input_ids"]) for t in prompts.render(cfg, frame)]


def test_summed_token_loss_is_the_models_own_loss(tiny_llama):
    from transformers import AutoModelForCausalLM

    from tunefork.models.llm import token_loss_sum

    cfg = config.load(llm_config(tiny_llama))
    tokenizer = hf.load_tokenizer(cfg.base_model, cfg.pretrained_kwargs, cfg.trust_remote_code, where="base_model")
    frame = pd.DataFrame({"instruction": ["a plot", "the cast was really quite very charming"], "input": ["", ""],
                          "output": ["great", "a fresh and funny story"]})
    encoded = prompts.encode(tokenizer, prompts.render(cfg, frame), prompts.targets(cfg, frame), prompts.Limits(None, None, 96))
    batch = prompts.batch(encoded, np.array([0, 1]), tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    total, n = token_loss_sum(out.logits, batch["labels"])
    assert n == int(encoded.target_lengths.sum())
    torch.testing.assert_close(total / n, out.loss)  # transformers' mean over the same (output) tokens


def test_length_limits_keep_the_prompt_end_and_the_output_start(tiny_llama):
    tokenizer = hf.load_tokenizer(tiny_llama, where="base_model")
    prompt, output = "this movie was really quite dull ###", "a great film with a charming cast"
    p_ids, o_ids = tokenizer(prompt)["input_ids"], tokenizer(output, add_special_tokens=False)["input_ids"]
    encoded = prompts.encode(tokenizer, [prompt], [output], prompts.Limits(prompt=4, output=3, total=6))
    row = encoded.ids.row(0).tolist()
    assert row == p_ids[-4:] + o_ids[:2]  # the prompt's last 4 tokens, then as much output as 6 allows
    alone = prompts.encode(tokenizer, [prompt], [output], prompts.Limits(None, None, total=3)).ids.row(0).tolist()
    assert alone == p_ids[-2:] + o_ids[:1]  # a prompt longer than the limit still leaves one output token


def test_template_reads_any_column_and_a_missing_one_is_named(tiny_llama):
    cfg = config.load(llm_config(tiny_llama, prompt={"template": "Q: {__sample__} ctx: {context} {__task__}",
                                                     "task": "answer"}))
    frame = pd.DataFrame({"instruction": ["why"], "context": [None], "output": ["x"]})
    assert prompts.render(cfg, frame) == ["Q: why ctx:  answer"]
    assert cfg.columns() == ["instruction", "context"]
    with pytest.raises(DataError, match=r"column 'context' \(a prompt.template placeholder\) not found"):
        prompts.check_columns(cfg, frame.drop(columns="context"), with_output=False)


# ------------------------------------------------------------------------------------------------ metrics


def test_rouge_l_and_bleu_match_hand_computed_values():
    # LCS of "the cat sat on the mat" / "the cat on the mat" is 5: P = 5/5, R = 5/6, F = 2PR/(P+R) = 10/11
    assert gm.rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert gm.rouge_l("Paris.", "paris .") == 1.0 and gm.rouge_l("x", "y") == 0.0
    # rouge-score scores a pair with an empty side 0, even two empty texts (the hand-written version said 1)
    assert gm.rouge_l("", "") == 0.0
    # pred "the cat sat on the mat" (6), ref "the cat sat on a mat" (6): matches 1-4 grams = 5, 3, 2, 1 of 6, 5, 4, 3
    expected = math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert gm.corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected)
    # brevity: 4 predicted tokens against 6 → BP = exp(1 − 6/4); all n-grams match
    assert gm.corpus_bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(math.exp(1 - 6 / 4))
    # clipping: "the the the" can match "the" only as often as the reference has it
    assert gm.corpus_bleu(["the the the the"], ["the cat the dog"], max_n=1) == pytest.approx(2 / 4)
    # corpus-level: n-gram counts add up over rows before dividing (not a mean of row scores)
    assert gm.corpus_bleu(["a b", "c d e f"], ["a b", "c d e g"], max_n=2) == pytest.approx(math.sqrt(5 / 6 * 3 / 4))
    # no 3- or 4-gram matches: unsmoothed BLEU (the hand-written version) is 0; sacrebleu's default `exp` smoothing
    # puts 1 / (2^k · total) in place of the k-th zero count: 3-grams 1/(2·3), 4-grams 1/(4·2)
    expected = math.exp((math.log(4 / 5) + math.log(2 / 4) + math.log(1 / 6) + math.log(1 / 8)) / 4)
    assert gm.corpus_bleu(["a b c d e"], ["a b x d e"]) == pytest.approx(expected)
    # sacrebleu is case-sensitive (the hand-written version lower-cased): "The" does not match "the"
    assert gm.corpus_bleu(["The cat"], ["the cat"], max_n=1) == pytest.approx(1 / 2)
    assert gm.exact_match([" Paris ", "paris"], ["Paris", "Paris"]) == 0.5


def test_category_is_read_from_the_generated_text(tiny_llama):
    from tunefork.features import llm_output

    cfg = config.load(llm_config(tiny_llama, output_features=[{
        "name": "output", "type": "category", "preprocessing": {"fallback_label": "neutral"},
        "decoder": {"match": {"positive": {"value": "good"}, "negative": {"type": "regex", "value": r"\bbad\b"},
                              "neutral": {"value": "neutral"}}}}]))
    meta = llm_output.fit(cfg, None)
    assert meta == {"labels": ["positive", "negative", "neutral"], "fallback_label": "neutral"}
    texts = ["It was GOOD, not bad", "bad, but good", "badly made", "no idea"]
    assert llm_output.extract(texts, cfg, meta) == ["positive", "negative", "neutral", "neutral"]
    scores = llm_output.metrics(cfg, meta, texts, ["positive", "negative", "negative", "neutral"])
    assert scores["accuracy"] == 0.75 and scores["fallback_rate"] == 0.5


# ------------------------------------------------------------------------------------------------ zero-shot


@pytest.mark.parametrize("model_fixture", ["tiny_llama", "tiny_gpt2"])  # rotary / learned absolute positions
def test_zero_shot_predict_without_train_is_the_models_greedy_generation(model_fixture, request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_llama = request.getfixturevalue(model_fixture)
    model = Model(llm_config(tiny_llama), progress=False, quiet=True)  # trainer.type none: Ludwig's default
    rows = pd.DataFrame({"instruction": ["what is the plot", "a long and very dull movie with a bland cast"],
                         "input": ["", "the film"]})
    predicted = model.predict(rows)
    assert list(predicted.columns) == ["output_response"]
    base, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    for i, prompt in enumerate(prompts.render(model.config, rows)):  # one row at a time: no padding at all
        ids = tokenizer(prompt, return_tensors="pt")
        out = base.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        new = new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        assert predicted["output_response"][i] == tokenizer.decode(new, skip_special_tokens=True).strip()


def test_zero_shot_train_scores_without_changing_a_weight(tiny_llama, alpaca, tmp_path):
    model = Model(llm_config(tiny_llama), progress=False, quiet=True)
    result = model.train(alpaca.head(12), output_directory=tmp_path)
    assert result.statistics["evaluations"] == [{"epoch": 0, "step": 0, "learning_rate": None}]
    assert np.isfinite(result.statistics["training"]["output"]["perplexity"][0])
    files = {p.name for p in (result.output_directory / "model").iterdir()}
    assert files == {"model_hyperparameters.json", "training_set_metadata.json", "tokenizer"}  # the base is the model


# ------------------------------------------------------------------------------------------------ fine-tuning


def test_lora_fine_tune_lowers_the_loss_and_saves_the_adapter_only(lora_run):
    model, result = lora_run
    # a random model starts near the uniform ln(400) = 5.99; 24 small steps take it down a little, steadily
    training, validation = (result.statistics[split]["output"]["loss"] for split in ("training", "validation"))
    assert len(training) == 3 and training[0] > training[1] > training[2] and training[2] < training[0] - 0.03, training
    assert validation[-1] < validation[0] - 0.01, validation
    run = result.output_directory
    assert {p.name for p in run.iterdir()} >= {"model", "training_statistics.json", "efficiency.json",
                                                "resolved_config.yaml", "description.json"}
    saved = {p.name for p in (run / "model" / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= saved
    assert not (run / "model" / "weights").exists()
    assert (run / "model" / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000  # not the base
    efficiency = json.loads((run / "efficiency.json").read_text())
    assert efficiency["train_tokens_per_second"] > 0 and efficiency["train_tokens"] > 0
    plan = yaml.safe_load((run / "resolved_config.yaml").read_text())["plan"]
    assert plan["max_sequence_length"]["value"] == 96


def test_save_load_gives_identical_greedy_generations(lora_run, alpaca, tmp_path):
    model, result = lora_run
    rows = alpaca.iloc[30:34]
    expected = model.predict(rows)
    assert model.last_generation["generated_tokens"] > 0
    for folder in (result.output_directory, model.save(tmp_path / "saved")):
        pd.testing.assert_frame_equal(Model.load(folder).predict(rows), expected)


def test_evaluate_reports_loss_perplexity_and_text_scores(lora_run, alpaca):
    model, _ = lora_run
    scores = model.evaluate(alpaca.iloc[32:36])["output"]
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))
    assert {"exact_match", "rouge_l", "bleu"} <= set(scores) and 0 <= scores["rouge_l"] <= 1


def test_adaption_prompt_fine_tune_lowers_the_loss(tiny_llama, alpaca, tmp_path):
    cfg = llm_config(tiny_llama, adapter={"type": "adaption_prompt", "adapter_len": 4, "adapter_layers": 2},
                     trainer=finetune(epochs=3, learning_rate=0.05))
    cfg["preprocessing"]["split"] = {"probabilities": [0.8, 0.2, 0.0]}
    model = Model(cfg, progress=False, quiet=True)
    statistics = model.train(alpaca, output_directory=tmp_path).statistics
    training, validation = (statistics[split]["output"]["loss"] for split in ("training", "validation"))
    # the gates start at zero (the base model exactly), so the prompts only start to matter after a few steps
    assert training[0] > training[1] > training[2] and training[2] < training[0] - 0.02, training
    assert validation[-1] < validation[0] - 0.02, validation
    trainable = [n for n, p in model.model.named_parameters() if p.requires_grad]
    assert trainable and all("adaption_" in n for n in trainable)


@pytest.mark.parametrize("adapter", [{"type": "adalora", "init_r": 6, "target_r": 2}, {"type": "ia3"},
                                     {"type": "loha", "r": 4}, {"type": "prompt_tuning", "num_virtual_tokens": 4}],
                         ids=lambda a: a["type"])
def test_every_adapter_trains_saves_and_reloads_to_the_same_generations(adapter, tiny_llama, alpaca, tmp_path):
    model = Model(llm_config(tiny_llama, adapter=adapter, trainer=finetune(epochs=1)), progress=False, quiet=True)
    result = model.train(alpaca.head(16), output_directory=tmp_path)
    assert np.isfinite(result.statistics["training"]["output"]["loss"]).all()
    assert (result.output_directory / "model" / "adapter" / "adapter_model.safetensors").is_file()
    rows = alpaca.iloc[20:22]
    pd.testing.assert_frame_equal(Model.load(result.output_directory).predict(rows), model.predict(rows))


def test_merge_writes_full_weights_that_generate_the_same(tiny_llama, alpaca, tmp_path):
    adapter = {"type": "lora", "r": 4, "postprocessor": {"merge_adapter_into_base_model": True}}
    model = Model(llm_config(tiny_llama, adapter=adapter, trainer=finetune(epochs=1)), progress=False, quiet=True)
    result = model.train(alpaca.head(12), output_directory=tmp_path)
    assert (result.output_directory / "model" / "weights" / "model.safetensors").is_file()
    assert not (result.output_directory / "model" / "adapter").exists()
    rows = alpaca.iloc[20:22]
    pd.testing.assert_frame_equal(Model.load(result.output_directory).predict(rows), model.predict(rows))


def test_category_output_fine_tunes_on_the_label_text(tiny_llama, tmp_path):
    from tiny import sentiment_frame

    frame = sentiment_frame(60, seed=3).rename(columns={"review": "instruction"}).assign(input="")
    cfg = llm_config(tiny_llama, output_features=[{"name": "sentiment", "type": "category"}],
                     adapter={"type": "lora", "r": 4}, trainer=finetune(epochs=1))
    model = Model(cfg, progress=False, quiet=True)
    model.train(frame, output_directory=tmp_path)
    predicted = model.predict(frame.head(5))
    assert list(predicted.columns) == ["sentiment_predictions", "sentiment_response"]
    assert set(predicted["sentiment_predictions"]) <= {"positive", "negative"}
    assert {"accuracy", "macro_f1", "loss"} <= set(model.evaluate(frame.head(8))["sentiment"])


# ------------------------------------------------------------------------------------------------ options


def test_pretrained_kwargs_and_gradient_checkpointing_reach_the_model(tiny_llama, alpaca, tmp_path):
    cfg = llm_config(tiny_llama, pretrained_kwargs={"attn_implementation": "eager"}, adapter="lora",
                     trainer=finetune(epochs=1, train_steps=1))
    plain = Model(cfg, progress=False, quiet=True)
    first = plain.train(alpaca.head(8), output_directory=tmp_path).statistics["training"]["output"]["loss"]
    assert plain.model.get_base_model().config._attn_implementation == "eager"
    cfg["trainer"]["enable_gradient_checkpointing"] = True
    checkpointed = Model(cfg, progress=False, quiet=True)
    again = checkpointed.train(alpaca.head(8), output_directory=tmp_path).statistics["training"]["output"]["loss"]
    assert checkpointed.model.get_base_model().is_gradient_checkpointing
    assert again == pytest.approx(first, rel=1e-5)  # recomputing activations changes memory, not the numbers


def test_generation_settings_are_used(tiny_llama):
    cfg = llm_config(tiny_llama, generation={"max_new_tokens": 3, "min_new_tokens": 3})
    model = Model(cfg, progress=False, quiet=True)
    model.predict(pd.DataFrame({"instruction": ["a plot", "the cast"], "input": ["", ""]}))
    assert model.last_generation["generated_tokens"] == 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_quantization_without_cuda_is_a_clear_error(tiny_llama, alpaca, tmp_path):
    model = Model(llm_config(tiny_llama, quantization={"bits": 4}, adapter="lora", trainer=finetune()), quiet=True)
    with pytest.raises(ConfigError, match=r"^quantization: 4-bit loading uses bitsandbytes, which needs a CUDA GPU"):
        model.train(alpaca.head(8), output_directory=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


BAD = [
    ({"input_features": [{"name": "a", "type": "text"}, {"name": "b", "type": "text"}]},
     "input_features: model_type llm takes one input feature, got 2; put several columns into the prompt with prompt.template"),
    ({"prompt": {"template": "{instruction"}}, "prompt: template cannot be parsed"),
    ({"prompt": {"template": "no placeholder"}}, "prompt: template has no {column} placeholder"),
    ({"quantization": {"bits": 4}, "trainer": {"type": "finetune"}}, "quantization with trainer.type finetune needs an adapter"),
    ({"adapter": "lora"}, "adapter lora with trainer.type none would stay at its initial weights"),
    ({"trainer": {"type": "finetun"}}, "trainer.type: 'finetun' is not one of 'finetune', 'none', 'dpo', 'orpo', 'kto' (did you mean 'finetune'?)"),
    ({"generation": {"max_new_token": 4}}, "generation.max_new_token: unknown key (did you mean 'max_new_tokens'?)"),
    ({"model_type": "llms"}, "model_type: 'llms' is not one of 'ecd', 'llm' (did you mean 'llm'?)"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_config_mistakes_are_one_sentence(change, message):
    with pytest.raises(ConfigError) as error:
        config.load(llm_config(Path("m"), **change))
    assert message in str(error.value)


def test_base_model_in_an_ecd_config_says_to_set_model_type():
    with pytest.raises(ConfigError, match="base_model: only used by model_type: llm"):
        config.load({"base_model": "m", "input_features": [{"name": "a", "type": "text"}],
                     "output_features": [{"name": "b", "type": "text"}]})


def test_a_base_model_that_is_not_there_is_one_sentence(tmp_path):
    model = Model(llm_config(tmp_path / "nowhere"), quiet=True)
    with pytest.raises(TuneforkError, match=rf"^base_model '{tmp_path / 'nowhere'}': cannot read its config"):
        model.predict(pd.DataFrame({"instruction": ["x"], "input": [""]}))


def test_untrained_finetune_config_refuses_to_predict(tiny_llama):
    model = Model(llm_config(tiny_llama, adapter="lora", trainer=finetune()), quiet=True)
    with pytest.raises(TuneforkError, match="this model is not trained"):
        model.predict(pd.DataFrame({"instruction": ["x"], "input": [""]}))


def test_example_config_validates():
    loaded = config.load(ROOT / "examples" / "alpaca_lora_smollm2.yaml")
    assert (loaded.model_type, loaded.adapter.type, loaded.trainer.type) == ("llm", "lora", "finetune")


def test_command_line_experiment_predict_evaluate(tiny_llama, alpaca, tmp_path, capsys):
    from tunefork import cli

    data = tmp_path / "alpaca.jsonl"
    alpaca.head(20).to_json(data, orient="records", lines=True)
    cfg = tmp_path / "llm.yaml"
    cfg.write_text(yaml.safe_dump(llm_config(tiny_llama, adapter="lora", trainer=finetune(epochs=1))))
    out = tmp_path / "out"
    assert cli.main(["--quiet", "experiment", "-c", str(cfg), "--dataset", str(data), "--output_directory", str(out)]) == 0
    run = out / "experiment_run"
    test_scores = json.loads((run / "test_statistics.json").read_text())["output"]
    assert {"loss", "perplexity", "exact_match", "rouge_l", "bleu"} <= set(test_scores)
    assert list(pd.read_csv(run / "test_predictions.csv").columns) == ["output_response"]
    assert cli.main(["predict", "-m", str(run), "--dataset", str(data), "--output_directory", str(out / "p")]) == 0
    assert len(pd.read_csv(out / "p" / "predictions.csv")) == 20
    assert cli.main(["--quiet", "evaluate", "-m", str(run), "--dataset", str(data), "--output_directory", str(out / "e")]) == 0
    assert "rouge_l" in json.loads((out / "e" / "test_statistics.json").read_text())["output"]
    capsys.readouterr()
    assert cli.main(["convert-gguf", str(tmp_path / "missing.gguf")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.gguf'}: GGUF file not found"


def test_serve_answers_with_the_generated_text(lora_run, alpaca, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tunefork import serve

    model, result = lora_run
    client = TestClient(serve.app(result.output_directory))
    meta = client.get("/metadata").json()
    assert meta["model_type"] == "llm" and meta["input_columns"] == ["instruction", "input"]
    assert meta["prediction_columns"] == ["output_response"] and meta["generation"]["max_new_tokens"] == 6
    rows = alpaca.iloc[30:33][["instruction", "input"]]
    expected = Model.load(result.output_directory).predict(rows)["output_response"].tolist()
    assert client.post("/predict", json=rows.iloc[0].to_dict()).json() == {"output_response": expected[0]}
    batch = client.post("/batch_predict", json=rows.to_dict(orient="records")).json()
    assert batch["columns"] == ["output_response"] and [r[0] for r in batch["data"]] == expected
    missing = client.post("/predict", json={"instruction": "say hi"})  # `input` is a template column
    assert missing.status_code == 422 and missing.json()["message"].startswith("input: ")
    # the fingerprint follows the adapter: another adapter, another fingerprint
    other = model.save(tmp_path / "saved")
    assert serve.fingerprint(serve.Service(other).folder) == meta["fingerprint"]
    adapter = next((other / "adapter").glob("*.safetensors"))
    adapter.write_bytes(adapter.read_bytes()[:-4] + b"\0\0\0\0")
    assert serve.fingerprint(other) != meta["fingerprint"]


def test_serve_runs_concurrent_generations_as_one_batch_and_streams_tokens(lora_run, alpaca):
    pytest.importorskip("fastapi")
    import asyncio

    import httpx
    from fastapi.testclient import TestClient

    from tunefork import serve

    _, result = lora_run
    assert serve.app(result.output_directory).state.batcher.wait == 0.05  # an LLM's default: 50 ms, not 5
    application = serve.app(result.output_directory, batch_wait_ms=200)
    assert not application.state.batcher.eager  # waits for company even alone: a generate takes seconds
    rows = alpaca.iloc[30:34][["instruction", "input"]]
    expected = Model.load(result.output_directory).predict(rows)["output_response"].tolist()

    async def concurrently():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            return await asyncio.gather(*(client.post("/predict", json=r) for r in rows.to_dict(orient="records")))

    answers = asyncio.run(concurrently())
    assert [a.json()["output_response"] for a in answers] == expected  # each caller its own text
    metrics = TestClient(application).get("/metrics").text
    assert "tunefork_batch_rows_count 1.0" in metrics and "tunefork_batch_rows_sum 4.0" in metrics  # one generate

    with TestClient(application).stream("POST", "/generate_stream", json=rows.iloc[0].to_dict()) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream"), (stream.read(), stream.status_code)
        events = [line.removeprefix("data: ") for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    pieces = [json.loads(e)["token"] for e in events[:-2]]
    assert len(pieces) >= 2 and "".join(pieces).strip() == expected[0]
    assert json.loads(events[-2]) == {"output_response": expected[0]}
    bad = TestClient(application).post("/generate_stream", json={"instruction": "hi"})
    assert bad.status_code == 422 and bad.json()["message"].startswith("input: ")


def test_hf_export_is_a_causal_lm_folder_that_generates_the_same(lora_run, alpaca, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunefork import cli, export

    _, result = lora_run
    run = result.output_directory
    assert cli.main(["export", "--model_path", str(run), "--format", "hf", "--output", str(tmp_path / "no")]) == 2
    assert "--merge-adapter" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert cli.main(["export", "--model_path", str(run), "--format", "onnx", "--output", str(tmp_path / "onnx")]) == 2
    assert "exports as --format hf only" in capsys.readouterr().err
    folder = export.export(run, "hf", tmp_path / "hf", merge_adapter=True)
    assert not list(folder.glob("*.bin")) and (folder / "generation_config.json").is_file()
    # plain transformers, no tunefork: the same greedy continuation as tunefork's predict
    rows = alpaca.iloc[30:32]
    expected = Model.load(run).predict(rows)["output_response"].tolist()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    assert model.generation_config.max_new_tokens == 6 and model.generation_config.do_sample is False
    for (_, row), want in zip(rows.iterrows(), expected, strict=True):
        ids = tokenizer(TEMPLATE.format(**row), return_tensors="pt")
        out = model.generate(**ids)[0, ids["input_ids"].shape[1]:]
        assert tokenizer.decode(out, skip_special_tokens=True).strip() == want
