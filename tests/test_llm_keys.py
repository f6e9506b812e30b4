"""Ludwig's LLM keys on tiny causal LMs: every generation key reaches `generate` (or is refused saying what to write),
temperature 0 is greedy, templates take Python format specs, few-shot retrieval inserts the nearest (or random)
training rows, and constrained decoding only ever writes a valid label or schema-valid JSON — in predict, evaluate,
after a load and when served. The last table holds Ludwig-format configs from Ludwig's pages, one per capability."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tiny
from transformers import GenerationConfig

from tunefork import Model, config
from tunefork.config import ConfigError
from tunefork.config.generation import RETIRED, Generation
from tunefork.data import prompts, retrieval
from tunefork.errors import DataError, TuneforkError

# Every key of Ludwig's LLMGenerationConfig (ludwig/schema/llms/generation.py, latest release).
LUDWIG_GENERATION_KEYS = [
    "max_new_tokens", "min_new_tokens", "max_length", "min_length", "early_stopping", "max_time", "do_sample",
    "num_beams", "num_beam_groups", "penalty_alpha", "use_cache", "prompt_lookup_num_tokens", "temperature", "top_k",
    "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "diversity_penalty", "repetition_penalty",
    "encoder_repetition_penalty", "length_penalty", "no_repeat_ngram_size", "bad_words_ids", "force_words_ids",
    "renormalize_logits", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids",
    "sequence_bias", "guidance_scale", "pad_token_id", "bos_token_id", "eos_token_id",
]
SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["positive", "negative"]},
                                           "sure": {"type": "boolean"}},
          "required": ["label", "sure"], "additionalProperties": False}
HOT = {"do_sample": True, "temperature": 3.0, "top_k": 0}  # a random model sampled hot: it writes anything


def llm(base, output: dict | None = None, **sections) -> dict:
    return {"model_type": "llm", "base_model": str(base), "input_features": [{"name": "review", "type": "text"}],
            "output_features": [output or {"name": "sentiment", "type": "category"}],
            "preprocessing": {"split": {"type": "fixed"}}, **sections}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    out = tiny.sentiment_frame(24, seed=3)
    out["split"] = [0] * 16 + [1] * 4 + [2] * 4
    return out


# ------------------------------------------------------------------------------------------------ generation


def test_every_ludwig_generation_key_is_a_transformers_key_or_refused_with_what_to_write():
    fields, retired = set(Generation.model_fields), set(RETIRED)
    assert set(LUDWIG_GENERATION_KEYS) == fields | retired and not fields & retired
    defaults = GenerationConfig()
    assert all(hasattr(defaults, key) for key in fields)  # each field is transformers' own
    every = Generation(max_new_tokens=5, min_new_tokens=2, early_stopping="never", max_time=9.0, num_beams=2,
                       use_cache=False, repetition_penalty=1.2, encoder_repetition_penalty=1.1, length_penalty=-1.0,
                       no_repeat_ngram_size=3, bad_words_ids=[[5, 6]], forced_eos_token_id=[3], suppress_tokens=[7],
                       remove_invalid_values=True, exponential_decay_length_penalty=[2, 1.5], begin_suppress_tokens=[8],
                       sequence_bias={"12, 7": -2.0}, guidance_scale=1.5, eos_token_id=[3, 4])
    kwargs = every.kwargs()
    assert kwargs["sequence_bias"] == [[[12, 7], -2.0]] and kwargs["exponential_decay_length_penalty"] == (2, 1.5)
    built = GenerationConfig(**kwargs)
    built.validate(strict=True)  # transformers accepts every value as we pass it
    for key in fields - {"do_sample", "temperature", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff"}:
        assert getattr(built, key) == kwargs[key], key
    sampled = Generation(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, typical_p=0.8, epsilon_cutoff=0.001,
                         eta_cutoff=0.002).kwargs()
    assert {k: sampled[k] for k in ("temperature", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff")} == \
        {"temperature": 0.7, "top_k": 5, "top_p": 0.9, "typical_p": 0.8, "epsilon_cutoff": 0.001, "eta_cutoff": 0.002}


@pytest.mark.parametrize("key", sorted(RETIRED))
def test_a_key_transformers_5_cannot_act_on_passes_at_ludwigs_default_and_is_refused_otherwise(key):
    inert, reason = RETIRED[key]
    assert Generation(**{key: inert[0]}) == Generation()  # a saved Ludwig config writes them all
    other = {bool: True, int: 5, float: 0.5}.get(type(inert[0]), [[5]])
    with pytest.raises(ConfigError) as error:
        config.load(llm("m", generation={key: other}))
    assert str(error.value).startswith(f"generation: {key}: ") and reason in str(error.value)
    assert any(word in reason for word in ("write", "use", "remove", "give"))


def test_temperature_zero_is_greedy_as_in_ludwig(tiny_llama, frame):
    rows = frame.head(4)
    greedy = Model(llm(tiny_llama, {"name": "sentiment", "type": "text"}, generation={"max_new_tokens": 5}),
                   quiet=True).predict(rows)
    zero = Model(llm(tiny_llama, {"name": "sentiment", "type": "text"},
                     generation={"max_new_tokens": 5, "do_sample": True, "temperature": 0}), quiet=True)
    assert zero.config.generation.kwargs()["do_sample"] is False
    assert zero.predict(rows).equals(greedy)
    hot = Model(llm(tiny_llama, {"name": "sentiment", "type": "text"}, generation={"max_new_tokens": 5, **HOT}),
                quiet=True)
    assert not hot.predict(rows).equals(greedy)  # sampling does sample: the greedy answer above was not luck


# ------------------------------------------------------------------------------------------------ templates


def test_format_specs_and_conversions_render_as_python_formats_them():
    cfg = config.load(llm("m", prompt={"template": "{review!r} costs {price:.2f} ({n:d} sold, {tag:>5}|)"}))
    rows = pd.DataFrame({"review": ["it's fine", "bad"], "price": ["3.14159", 2], "n": [4.0, "7"], "tag": ["a", "bc"],
                         "sentiment": ["positive", "negative"]})
    assert prompts.render(cfg, rows) == ["\"it's fine\" costs 3.14 (4 sold,     a|)", "'bad' costs 2.00 (7 sold,    bc|)"]
    with pytest.raises(DataError, match=r"column 'price' row 1: 'cheap' is not a number"):
        prompts.render(cfg, rows.assign(price=["1", "cheap"]))
    with pytest.raises(DataError, match=r"column 'n' row 0: 4.5 is not an integer"):
        prompts.render(cfg, rows.assign(n=[4.5, 1]))
    with pytest.raises(DataError, match=r"column 'price' \(a prompt.template placeholder\) not found"):
        prompts.check_columns(cfg, rows.drop(columns="price"), with_output=False)


@pytest.mark.parametrize(("template", "message"), [
    ("{review:.2q}", r"placeholder \{review:.2q\}: invalid format spec"),
    ("{review!x}", r"placeholder \{review!x\}: conversion !x is not one of !r, !s, !a"),
    ("{review.upper}", r"placeholder \{review.upper\} is not a column name"),
    ("{review:{width}}", r"invalid format spec \(nested fields are not supported\)"),
])
def test_a_malformed_placeholder_is_one_sentence(template, message):
    with pytest.raises(ConfigError, match=message):
        config.load(llm("m", prompt={"template": template}))


# ------------------------------------------------------------------------------------------------ retrieval


def test_random_retrieval_is_repeatable_and_never_shows_a_training_row_itself(frame):
    cfg = config.load(llm("m", prompt={"task": "Say the sentiment.", "retrieval": {"type": "random", "k": 3}}))
    training = frame[frame.split == 0]
    index = retrieval.build(cfg, training)
    picks = retrieval.nearest(cfg, index, training["review"].tolist(), exclude_self=True)
    assert picks.shape == (16, 3) and all(i not in row for i, row in enumerate(picks))
    assert all(len(set(row)) == 3 for row in picks)
    assert np.array_equal(picks, retrieval.nearest(cfg, index, training["review"].tolist(), exclude_self=True))
    context = retrieval.contexts(cfg, index, training.head(1), exclude_self=True)[0]
    records = [{"review": training.review.iloc[j], "sentiment": training.sentiment.iloc[j]} for j in picks[0]]
    assert context == str(records)  # Ludwig's rendering of the retrieved records


@pytest.fixture(scope="module")
def semantic_run(tiny_llama, minilm_dir, frame, tmp_path_factory):
    """A zero-shot few-shot classifier (Ludwig's llm_few_shot_learning example, today's layout), trained once."""
    cfg = llm(tiny_llama, {"name": "sentiment", "type": "category", "decoder": {"constrain_to_vocabulary": True}},
              prompt={"template": "{__context__}\nReview: {review}\nSentiment:",
                      "retrieval": {"type": "semantic", "k": 2, "model_name": str(minilm_dir)}},
              generation={"max_new_tokens": 8, **HOT}, trainer={"type": "none"})
    model = Model(cfg, progress=False, quiet=True)
    return model, model.train(frame, output_directory=tmp_path_factory.mktemp("runs"))


def test_semantic_retrieval_picks_the_nearest_training_rows_by_their_input(semantic_run, frame):
    model, _ = semantic_run
    index = model._fitted.index
    training = frame[frame.split == 0].reset_index(drop=True)
    queries = training.review.head(6).tolist()
    near = retrieval.nearest(model.config, index, queries, exclude_self=False)
    assert near[:, 0].tolist() == list(range(6))  # a training row's nearest is itself ...
    apart = retrieval.nearest(model.config, index, queries, exclude_self=True)
    assert all(i not in row for i, row in enumerate(apart))  # ... which the training split never retrieves
    vectors = retrieval.embed(index, queries)
    scores = vectors @ index.vectors.T
    np.fill_diagonal(scores[:, :6], -np.inf)
    assert apart.tolist() == np.argsort(-scores, axis=1, kind="stable")[:, :2].tolist()


def test_few_shot_model_predicts_the_same_after_load_and_when_served(semantic_run, frame, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tunefork import serve

    model, result = semantic_run
    rows = frame.tail(4)[["review"]]
    shown = model._fitted.prompts(rows)
    assert all(p.startswith("[{'review': ") and p.endswith("Sentiment:") for p in shown)
    saved = json.loads((result.output_directory / "model" / "training_set_metadata.json").read_text())
    assert len(saved["retrieval"]["rows"]) == 16  # the index's rows live in model/
    loaded = Model.load(result.output_directory)
    assert loaded._fitted.prompts(rows) == shown
    import torch

    torch.manual_seed(0)
    expected = model.predict(rows)
    torch.manual_seed(0)
    assert loaded.predict(rows).equals(expected)
    client = TestClient(serve.app(result.output_directory))
    answer = client.post("/predict", json={"review": rows.review.iloc[0]}).json()
    assert answer["sentiment_predictions"] in ("positive", "negative")


def test_the_index_is_embedded_once_and_cached_with_the_preprocessing(tiny_llama, tiny_bert, frame, tmp_path,
                                                                      monkeypatch):
    embedded = []
    real = retrieval.embed
    monkeypatch.setattr(retrieval, "embed", lambda index, texts: embedded.append(len(texts)) or real(index, texts))
    cfg = llm(tiny_llama, {"name": "sentiment", "type": "text"}, trainer={"type": "none"},
              prompt={"task": "Say it.", "retrieval": {"type": "semantic", "k": 2, "model_name": str(tiny_bert)}},
              backend={"type": "local", "cache_dir": str(tmp_path / "cache")})
    Model(cfg, quiet=True).train(frame, output_directory=tmp_path / "a")
    assert embedded == [16, 4, 4]  # the 16 training rows once (the index, and their own queries), then the others
    embedded.clear()
    again = Model(cfg, quiet=True)
    again.train(frame, output_directory=tmp_path / "b")
    assert embedded == [] and again._fitted.index.vectors.shape == (16, 32)  # both from the cache
    assert len(list((tmp_path / "cache" / "retrieval").iterdir())) == 1


def test_retrieval_without_training_rows_is_one_sentence(tiny_llama):
    cfg = llm(tiny_llama, {"name": "sentiment", "type": "text"},
              prompt={"task": "Say it.", "retrieval": {"type": "random", "k": 2}})
    with pytest.raises(TuneforkError, match="prompt.retrieval retrieves from the training rows"):
        Model(cfg, quiet=True).predict(pd.DataFrame({"review": ["a film"]}))


# ------------------------------------------------------------------------------------------------ structured output


def test_constrained_category_only_ever_writes_a_label(semantic_run, tiny_llama, frame):
    model, _ = semantic_run
    assert set(model.predict(frame)["sentiment_response"]) <= {"positive", "negative"}  # sampled hot, 24 rows
    assert model.evaluate(frame)["sentiment"]["fallback_rate"] == 0.0
    free = Model(llm(tiny_llama, {"name": "sentiment", "type": "text"}, generation={"max_new_tokens": 8, **HOT}),
                 quiet=True).predict(frame)["sentiment_response"]
    assert not set(free) & {"positive", "negative"}  # the same sampling unconstrained names no label


def test_json_schema_output_parses_and_validates(tiny_llama, frame, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    cfg = llm(tiny_llama, {"name": "answer", "type": "text", "decoder": {"type": "text_parser", "json_schema": SCHEMA}},
              generation={"max_new_tokens": 64, **HOT})  # room for the longest JSON, spelt a byte a token
    model = Model(cfg, quiet=True)
    responses = model.predict(frame.head(6))["answer_response"]
    for text in responses:
        jsonschema.validate(json.loads(text), SCHEMA)
    free = Model(llm(tiny_llama, {"name": "answer", "type": "text"}, generation={"max_new_tokens": 24, **HOT}),
                 quiet=True).predict(frame.head(6))["answer_response"]
    assert not any(text.startswith("{") for text in free)  # the random model never writes JSON by itself


def test_a_constraint_refuses_beam_search_and_too_few_new_tokens(tiny_llama, frame):
    beams = Model(llm(tiny_llama, {"name": "a", "type": "text", "decoder": {"json_schema": SCHEMA}},
                      generation={"num_beams": 2}), quiet=True)
    with pytest.raises(ConfigError, match=r"generation.num_beams 2: a constrained output .* set num_beams: 1"):
        beams.predict(frame.head(1))
    short = Model(llm(tiny_llama, {"name": "sentiment", "type": "category", "decoder": {
        "constrain_to_vocabulary": True, "match": {"positive": {"value": "pos"}, "negative": {"value": "neg"}}}},
        generation={"max_new_tokens": 4}), quiet=True)
    with pytest.raises(ConfigError, match=r"max_new_tokens 4 leaves no room to write the label 'positive'.* to 8"):
        short.predict(frame.head(1))


# ------------------------------------------------------------------------------------------------ Ludwig's pages

# Ludwig-format configs as Ludwig's pages write them (base models replaced by the tiny Llama, sentence encoders by
# the tiny BERT, sizes cut to fit a 256-token model), one per capability, with what each run must show.
PAGES = {
    # configuration/large_language_model.md, Generation (the few-shot example's generation block)
    "generation": ("""
model_type: llm
base_model: "@llama"
input_features: [{name: review, type: text}]
output_features: [{name: sentiment, type: text}]
prompt: {task: "Classify the sample input as either negative, neutral, or positive."}
generation: {temperature: 0.1, top_p: 0.75, top_k: 40, num_beams: 4, max_new_tokens: 6, repetition_penalty: 1.2,
             no_repeat_ngram_size: 2, length_penalty: 0.8, early_stopping: true, use_cache: true}
trainer: {type: none}
""", lambda model, out: model.last_generation["generated_tokens"] > 0),
    # user_guide/llms/structured_output.md, regex constraint: temperature 0.0 and do_sample false (greedy)
    "temperature 0": ("""
model_type: llm
base_model: "@llama"
prompt: {task: "Classify the sentiment of the following text. Respond with exactly one word: positive, negative, or neutral."}
input_features: [{name: review, type: text}]
output_features: [{name: sentiment, type: text, decoder: {type: text_parser, regex: "(positive|negative|neutral)"}}]
generation: {max_new_tokens: 10, temperature: 0.0, do_sample: false}
backend: {type: local}
""", lambda model, out: set(out["sentiment_response"]) <= {"positive", "negative", "neutral"}),
    # configuration/large_language_model.md, Prompt: a template over several columns, with format specs
    "format specs": ("""
model_type: llm
base_model: "@llama"
input_features: [{name: review, type: text}]
output_features: [{name: sentiment, type: text}]
prompt: {template: "Review {review!r} ({length:d} words, score {score:.1f}). Sentiment:"}
adapter: {type: lora, r: 4}
trainer: {type: finetune, epochs: 1, train_steps: 1, batch_size: 4}
""", lambda model, out: "words, score" in model._fitted.prompts(out.assign(review="x", length=3, score=1.25))[0]),
    # user_guide/llms/in_context_learning.md → examples/llm_few_shot_learning (semantic retrieval, today's layout)
    "semantic retrieval": ("""
model_type: llm
base_model: "@llama"
generation: {temperature: 0.1, top_p: 0.75, top_k: 40, max_new_tokens: 8}
input_features: [{name: review, type: text, preprocessing: {max_sequence_length: 200}}]
output_features:
  - name: sentiment
    type: category
    preprocessing: {fallback_label: neutral}
    decoder:
      type: category_parser
      match: {negative: {type: contains, value: negative}, neutral: {type: contains, value: neutral},
              positive: {type: contains, value: positive}}
prompt:
  task: "Classify the sample input as either negative, neutral, or positive."
  retrieval: {type: semantic, k: 3, model_name: "@bert"}
preprocessing: {split: {type: fixed}}
trainer: {type: none}
""", lambda model, out: "CONTEXT: [{'review': " in model._fitted.prompts(out.assign(review="x"))[0]),
    "random retrieval": ("""
model_type: llm
base_model: "@llama"
input_features: [{name: review, type: text}]
output_features: [{name: sentiment, type: category}]
prompt: {template: "{__context__}\\nReview: {__sample__}\\nSentiment:", retrieval: {type: random, k: 2}}
generation: {max_new_tokens: 8}
preprocessing: {split: {type: fixed}}
trainer: {type: finetune, epochs: 1, train_steps: 1, batch_size: 4}
""", lambda model, out: model._fitted.prompts(out.assign(review="x"))[0].count("'sentiment': ") == 2),
    # user_guide/llms/structured_output.md, JSON schema constraint
    "json_schema": ("""
model_type: llm
base_model: "@llama"
prompt: {task: "Return the sentiment as JSON."}
input_features: [{name: review, type: text}]
output_features:
  - name: sentiment
    type: text
    decoder:
      type: text_parser
      json_schema: {type: object, properties: {label: {type: string, enum: [positive, negative]}},
                    required: [label], additionalProperties: false}
generation: {max_new_tokens: 40, temperature: 0.1, do_sample: false}
""", lambda model, out: all(json.loads(t)["label"] in ("positive", "negative") for t in out["sentiment_response"])),
    # Ludwig's category_extractor decoder, constrain_to_vocabulary
    "constrain_to_vocabulary": ("""
model_type: llm
base_model: "@llama"
input_features: [{name: review, type: text}]
output_features: [{name: sentiment, type: category, decoder: {type: category_extractor, constrain_to_vocabulary: true}}]
generation: {max_new_tokens: 8}
adapter: lora
preprocessing: {split: {type: fixed}}
trainer: {type: finetune, epochs: 1, train_steps: 1, batch_size: 4}
""", lambda model, out: set(out["sentiment_predictions"]) <= {"positive", "negative"}
        and out["sentiment_predictions"].tolist() == out["sentiment_response"].tolist()),
}


@pytest.mark.parametrize("page", list(PAGES))
def test_a_ludwig_page_config_validates_and_runs(page, tiny_llama, tiny_bert, frame, tmp_path):
    import yaml

    text, shows = PAGES[page]
    raw = yaml.safe_load(text.replace("@llama", str(tiny_llama)).replace("@bert", str(tiny_bert)))
    model = Model(raw, progress=False, quiet=True)
    model.train(frame, output_directory=tmp_path)
    out = model.predict(frame.tail(2))
    assert shows(model, out), f"{page}: {out.to_dict(orient='records')}"
