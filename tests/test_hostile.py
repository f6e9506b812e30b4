"""Hostile configs and data: every mutated config is valid or a ConfigError; every bad table is a one-line error
naming the file and column (exit code 2, no traceback) or has documented handling."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest
import tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunefork import config
from tunefork.config import ConfigError

VALID = {
    "input_features": [
        {"name": "review", "type": "text", "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": "m", "trainable": True},
         "preprocessing": {"max_sequence_length": 32}},
        {"name": "genre", "type": "category", "encoder": {"type": "dense", "embedding_size": 8}},
        {"name": "length", "type": "number", "preprocessing": {"normalization": "minmax"}},
    ],
    "output_features": [{"name": "sentiment", "type": "category", "loss": {"class_weights": [1, 2]}},
                        {"name": "score", "type": "number", "clip": [0, 5]}],
    "combiner": {"type": "concat", "num_fc_layers": 1, "output_size": 16},
    "trainer": {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "optimizer": {"type": "adamw"},
                "learning_rate_scheduler": {"decay": "cosine", "warmup_fraction": 0.1}},
    "preprocessing": {"split": {"type": "random", "probabilities": [0.8, 0.1, 0.1]}},
    "defaults": {"category": {"preprocessing": {"most_common": 100}}},
}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


PATHS = list(_paths(VALID))[1:]


def _get(node, path):
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated(draw):
    cfg = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        try:
            parent = _get(cfg, path[:-1])
            parent[path[-1]]  # noqa: B018 — the path may be gone after an earlier mutation
        except (KeyError, IndexError, TypeError):
            continue
        action = draw(st.sampled_from(["replace", "delete", "unknown_key", "wrap", "nest"]))
        key = path[-1]
        if action == "replace":
            parent[key] = draw(junk)
        elif action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "unknown_key" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(junk)
        elif action == "wrap":
            parent[key] = [parent[key]]
        elif action == "nest":
            parent[key] = {"value": parent[key]}
    return cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_config_is_valid_or_a_config_error(raw):
    try:
        loaded = config.load(raw)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message.split(" (and ")[0]
        return
    assert isinstance(loaded, config.Config)
    assert config.load(config.to_dict(loaded)) == loaded  # a valid result renders and re-loads to itself


@settings(max_examples=100, deadline=None)
@given(st.recursive(junk, lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=12))
def test_any_yaml_value_is_valid_or_a_config_error(raw):
    try:
        config.load(raw if isinstance(raw, dict) else {"input_features": raw, "output_features": raw})
    except ConfigError:
        pass


# ------------------------------------------------------------------------------------------------------ data

def _config_file(tmp_path, tiny_bert, outputs=None):
    import yaml

    cfg = {
        "input_features": [{"name": "review", "type": "text", "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}},
                           {"name": "length", "type": "number"}],
        "output_features": outputs or [{"name": "sentiment", "type": "category"}],
        "trainer": {"epochs": 1, "batch_size": 8},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(tmp_path, config_path, data_path):
    """The CLI in-process (its error handling is what is under test; a subprocess would only add start-up time)."""
    import contextlib
    import io
    import types

    from tunefork import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["--quiet", "train", "-c", str(config_path), "--dataset", str(data_path),
                         "--output_directory", str(tmp_path / "runs")])
    return types.SimpleNamespace(returncode=code, stderr=err.getvalue())


def _frame(n=60):
    return tiny.sentiment_frame(n, seed=5)[["review", "length", "sentiment"]]


def _bad_encoding(path):
    path.write_bytes(b"review,length,sentiment\n" + "caf\xe9 great,3,positive\n".encode("latin-1") * 30)


def _ragged(path):
    path.write_text("review,length,sentiment\n" + "good film,3,positive\n" * 20 + "bad,2,negative,extra,fields\n")


def _write(frame):
    return lambda path: frame.to_csv(path, index=False)


def _with(column, value, n=60):
    frame = _frame(n).astype({column: object})
    frame.loc[3, column] = value
    return frame


BAD_DATA = [
    ("bad encoding", _bad_encoding, "not UTF-8"),
    ("ragged rows", _ragged, "cannot be parsed as CSV"),
    ("inf in a number column", _write(_with("length", math.inf)), "column 'length': contains NaN or infinity"),
    ("text in a number column", _write(_with("length", "seven")), "column 'length': 'seven' is not a number"),
    ("one class", _write(_frame().assign(sentiment="positive")), "'sentiment' has 1 class"),
    ("label column all empty", _write(_frame().assign(sentiment="")), "output column 'sentiment' is empty"),
    ("missing column", _write(_frame().drop(columns=["length"])), "column 'length' (feature 'length') not found"),
    ("empty file", lambda p: p.write_text(""), "the file is empty"),
    ("header only", lambda p: p.write_text("review,length,sentiment\n"), "no rows"),
]


@pytest.mark.parametrize("case, write, message", BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_one_line_naming_file_and_column(case, write, message, tmp_path, tiny_bert):
    data = tmp_path / "data.csv"
    write(data)
    out = _train(tmp_path, _config_file(tmp_path, tiny_bert), data)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr
    assert message in lines[0]
    assert str(data) in lines[0] or "column" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing half-written


HANDLED = [
    # (case, frame, what we check in the trained run)
    ("NaN in a number column is filled with fill_value", _with("length", np.nan), None),
    ("empty text is the empty string (special tokens only)", _with("review", ""), None),
    ("mixed types in a category column", _frame().assign(length=[1, "2", 3.0] * 20), None),
    ("a huge field is truncated at max_sequence_length", _with("review", "great " * 200_000), None),
]


@pytest.mark.parametrize("case, frame, _", HANDLED, ids=[c[0] for c in HANDLED])
def test_documented_handling(case, frame, _, tmp_path, tiny_bert):
    from tunefork import Model

    cfg = config.read_yaml(_config_file(tmp_path, tiny_bert))
    if "mixed types" in case:
        cfg["input_features"][1]["type"] = "category"
    result = Model(cfg, quiet=True).train(frame, skip_save_model=True)
    assert result.statistics["training"]["sentiment"]["loss"][0] > 0


def test_a_one_row_dataset_is_explained(tmp_path, tiny_bert):
    data = tmp_path / "one.csv"
    _frame(1).to_csv(data, index=False)
    out = _train(tmp_path, _config_file(tmp_path, tiny_bert), data)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path, tiny_bert):
    data = tmp_path / "data.csv"
    data.write_text("")
    out = subprocess.run([sys.executable, "-m", "tunefork", "--debug", "train", "-c", str(_config_file(tmp_path, tiny_bert)),
                          "--dataset", str(data)], capture_output=True, text=True)
    assert out.returncode != 0 and "Traceback" in out.stderr


# ------------------------------------------------------------------------------------------------- safe loading

def test_pickle_only_model_is_refused_unless_allowed(tmp_path, tiny_bert, monkeypatch):
    import shutil

    from transformers import BertModel

    from tunefork import Model, safety
    from tunefork.errors import TuneforkError

    pickled = tmp_path / "pickled-bert"
    shutil.copytree(tiny_bert, pickled)
    import torch

    torch.save(BertModel.from_pretrained(tiny_bert).state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    cfg = config.read_yaml(_config_file(tmp_path, pickled))
    monkeypatch.setattr(safety, "_allowed", False)
    with pytest.raises(TuneforkError, match="only pickle files, which can run code"):
        Model(cfg, quiet=True).train(_frame(), skip_save_model=True)
    result = Model(cfg, quiet=True, allow_pickle=True).train(_frame(), skip_save_model=True)
    assert result.statistics["training"]["sentiment"]["loss"]


def test_a_model_folder_with_pickle_weights_is_refused(tmp_path):
    from tunefork import Model
    from tunefork.errors import ModelFolderError

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelFolderError, match="pickle weights"):
        Model.load(folder)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x\\y"])
def test_feature_names_cannot_escape_the_model_folder(name):
    raw = copy.deepcopy(VALID)
    raw["input_features"][0]["name"] = name
    with pytest.raises(ConfigError, match="cannot be a folder name"):
        config.load(raw)


def test_trust_remote_code_is_off_and_recorded(tmp_path, tiny_bert):
    import json

    from tunefork import Model

    cfg = config.read_yaml(_config_file(tmp_path, tiny_bert))
    result = Model(cfg, quiet=True).train(_frame(), output_directory=tmp_path / "runs")
    description = json.loads((result.output_directory / "description.json").read_text())
    assert description["trust_remote_code"] == {"input_features.review.encoder": False}


# ------------------------------------------------------- issue 18: LLM prompts, LLM config names, serve bounds
# Scope: a prompt template must read the input and not the output; an LLM feature name is a folder name; an LLM
# fallback_label must be a label; max_new_tokens is capped by the sequence limit at plan time and a prompt keeps at
# least MIN_PROMPT_TOKENS (or is refused for its row); every prompt/output cut is counted; serve cuts characters
# before tokenizing, limits characters per field, admits a bounded number of requests, and gives memory back.

def _llm_cfg(base, **sections) -> dict:
    return {"model_type": "llm", "base_model": str(base), "input_features": [{"name": "instruction", "type": "text"}],
            "output_features": [{"name": "output", "type": "text"}], "generation": {"max_new_tokens": 4},
            "prompt": {"template": "Q: {instruction}\nA:"}, **sections}


def _cli(args: list[str]):
    import contextlib
    import io
    import types

    from tunefork import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["--quiet", *args])
    return types.SimpleNamespace(returncode=code, stderr=err.getvalue())


def _one_line(out, code: int = 2) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    return lines[0]


LLM_TEMPLATES = [
    ("reads only the output", "Answer: {output}", "placeholder {output} reads the output column"),
    ("reads the output beside the input", "{instruction} => {output}", "placeholder {output} reads the output column"),
    ("reads no input feature", "Context: {context}\nAnswer:", "prompt.template reads no input feature: add {instruction}"),
]


@pytest.mark.parametrize("case, template, message", LLM_TEMPLATES, ids=[c[0] for c in LLM_TEMPLATES])
def test_llm_template_must_read_the_input_and_not_the_output(case, template, message, tmp_path):
    import yaml

    path = tmp_path / "llm.yaml"
    path.write_text(yaml.safe_dump(_llm_cfg("m", prompt={"template": template})))
    line = _one_line(_cli(["check-config", str(path)]))
    assert message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm.yaml"]  # nothing written


@pytest.mark.parametrize("where", ["input_features", "output_features"])
@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x\\y"])
def test_llm_feature_names_cannot_escape_the_model_folder(where, name):
    raw = _llm_cfg("m")
    raw[where][0]["name"] = name
    with pytest.raises(ConfigError, match=r"cannot be a folder name") as error:
        config.load(raw)
    assert str(error.value).startswith(f"{where}[0].name: ")


def test_llm_fallback_label_that_is_not_a_label_is_one_line(tmp_path, tiny_llama):
    import pandas as pd
    import yaml

    path = tmp_path / "llm.yaml"
    path.write_text(yaml.safe_dump(_llm_cfg(tiny_llama, output_features=[
        {"name": "output", "type": "category", "preprocessing": {"fallback_label": "positve"}}])))
    data = tmp_path / "data.csv"
    pd.DataFrame({"instruction": ["good film", "bad film"] * 10, "output": ["positive", "negative"] * 10}).to_csv(data, index=False)
    line = _one_line(_cli(["train", "-c", str(path), "--dataset", str(data), "--output_directory", str(tmp_path / "runs")]))
    assert line == ("error: output_features[0].preprocessing.fallback_label: 'positve' is not a label of 'output' "
                    "(labels: negative, positive) (did you mean 'positive'?)")
    assert not (tmp_path / "runs").exists()
    # with decoder.match the labels are known from the config alone
    raw = _llm_cfg("m", output_features=[{"name": "output", "type": "category", "preprocessing": {"fallback_label": "c"},
                                          "decoder": {"match": {"a": {"value": "a"}, "b": {"value": "b"}}}}])
    with pytest.raises(ConfigError, match=r"fallback_label 'c' is not one of the decoder.match labels \(a, b\)"):
        config.load(raw)


def test_llm_max_new_tokens_is_capped_at_plan_time_and_the_prompt_keeps_its_minimum(tiny_llama, caplog):
    import logging

    import pandas as pd

    from tunefork import Model, hardware, plan
    from tunefork.config.llm import MIN_PROMPT_TOKENS

    cfg = _llm_cfg(tiny_llama, generation={"max_new_tokens": 10**6}, preprocessing={"global_max_sequence_length": 96})
    decided = plan.resolve_inference(config.load(cfg), hardware.detect(), context_length=256)
    assert decided["max_new_tokens"] == 96 - MIN_PROMPT_TOKENS == 64
    assert decided.decisions["max_new_tokens"].reason == (
        "generation.max_new_tokens 1000000 would leave the prompt 0 of the 96-token sequence limit: capped to 64, so "
        "that a prompt keeps at least 32 tokens")
    assert decided["prompt_tokens_at_generation"] == 32
    near = plan.resolve_inference(config.load({**cfg, "generation": {"max_new_tokens": 95}}), hardware.detect(), context_length=256)
    assert near["max_new_tokens"] == 64  # near the limit too: the prompt is not cut to its last token
    model = Model(cfg, quiet=True)
    frame = pd.DataFrame({"instruction": ["the plot of the film was " * 40, "a short one"]})
    with caplog.at_level(logging.WARNING, logger="tunefork"):
        out = model.predict(frame)  # finishes: at most 64 new tokens, never past the context
    assert len(out) == 2 and model.last_generation["prompts_truncated"] == 1
    assert model.last_generation["generated_tokens"] <= 2 * 64
    assert any("capped to 64" in r.getMessage() for r in caplog.records)
    assert any("truncated: 1 of 2 prompts lost their start to fit 32 tokens" in r.getMessage() for r in caplog.records)


def test_llm_prompt_that_cannot_keep_its_minimum_is_refused_naming_the_row(tiny_llama):
    import pandas as pd

    from tunefork import Model
    from tunefork.errors import DataError

    cfg = _llm_cfg(tiny_llama, generation={"max_new_tokens": 8}, preprocessing={"global_max_sequence_length": 20})
    model = Model(cfg, quiet=True)
    assert model.fitted.plan["max_new_tokens"] == 8  # a limit under 33 tokens cannot leave 32: nothing capped
    short = pd.DataFrame({"instruction": ["ok"]})
    assert len(model.predict(short)) == 1  # a prompt that fits whole in the 12 tokens left is answered
    frame = pd.DataFrame({"instruction": ["ok", "the plot of the film was " * 10]})
    with pytest.raises(DataError) as error:
        model.predict(frame)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("the dataset DataFrame: row 1: its prompt would keep only its last 12 tokens")
    assert "fewer than the 32 a prompt keeps" in message


def test_llm_truncation_in_training_is_counted_and_reported(tiny_llama, tmp_path, capsys):
    import json

    import pandas as pd

    from tunefork import Model

    frame = pd.DataFrame({"instruction": ["the plot of the film was " * 20, "short", "a film"] * 4,
                          "output": ["fine", "good " * 60, "ok"] * 4})
    cfg = _llm_cfg(tiny_llama, preprocessing={"global_max_sequence_length": 48, "split": {"probabilities": [1.0, 0.0, 0.0]}},
                   output_features=[{"name": "output", "type": "text", "preprocessing": {"max_sequence_length": 16}}])
    result = Model(cfg, progress=False).train(frame, output_directory=tmp_path / "runs")
    written = json.loads((result.output_directory / "efficiency.json").read_text())
    # 4 long prompts cut to 47 tokens leave their output one token; 4 long outputs lose their end to the output limit
    assert written["truncation"]["training"] == {"rows": 12, "prompts_cut": 4, "outputs_cut": 8}
    assert "truncated (training): 4 of 12 prompts lost their start and 8 outputs their end" in capsys.readouterr().err


# ---- serve

@pytest.fixture(scope="module")
def hostile_run(tiny_bert, tmp_path_factory):
    from tunefork import Model

    cfg = {"input_features": [{"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 32},
                               "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}}],
           "output_features": [{"name": "sentiment", "type": "category"}], "trainer": {"epochs": 1, "batch_size": 16}}
    return Model(cfg, progress=False, quiet=True).train(_frame(), output_directory=tmp_path_factory.mktemp("runs")).output_directory


def test_text_is_cut_in_characters_before_it_is_tokenized(tiny_bert):
    import pandas as pd

    from tunefork.data import clipping
    from tunefork.features import text

    tokenizer = text.load_tokenizer(type("Encoder", (), {"pretrained_model_name_or_path": str(tiny_bert),
                                                         "pretrained_kwargs": None, "trust_remote_code": False})())
    feature = type("Feature", (), {"source": "review", "preprocessing": type("P", (), {"lowercase": False})()})()
    meta = {"max_sequence_length": 32}
    seen = []

    def spy(texts, **kwargs):
        seen.extend(len(t) for t in texts)
        return tokenizer(texts, **kwargs)

    huge = "a great and moving film " * 300_000  # 7.2 MB
    ids = text.transform(pd.Series([huge, "short"]), feature, meta, spy)
    assert max(seen) <= clipping.bound(32) == 2048  # never the 7 MB
    whole = tokenizer([huge[:100_000], "short"], truncation=True, max_length=32)["input_ids"]
    assert [ids.row(i).tolist() for i in range(2)] == whole  # the same tokens as truncating the whole text


def _serve_client(run_dir, **limits):
    from fastapi.testclient import TestClient

    from tunefork import serve

    return TestClient(serve.app(run_dir, **limits))


def test_serve_refuses_a_field_over_max_field_chars_naming_it(hostile_run):
    client = _serve_client(hostile_run, max_field_chars=1000)
    assert client.post("/predict", json={"review": "a" * 1000}).status_code == 200
    response = client.post("/predict", json={"review": "a" * 1001})
    assert response.status_code == 422
    assert response.json()["message"] == "review: String should have at most 1000 characters"
    batch = client.post("/batch_predict", json=[{"review": "ok"}, {"review": "b" * 2000}])
    assert batch.status_code == 422 and batch.json()["message"].startswith("1.review: String should have at most 1000")


def test_serve_over_max_pending_requests_is_503_with_retry_after(hostile_run):
    import threading

    from fastapi.testclient import TestClient

    from tunefork import serve

    application = serve.app(hostile_run, max_pending=1)
    service, entered, release = application.state.service, threading.Event(), threading.Event()
    predict = service.predict

    def slow(rows):
        entered.set()
        release.wait(30)
        return predict(rows)

    service.predict = slow
    with TestClient(application) as client:
        first = {}
        worker = threading.Thread(target=lambda: first.update(r=client.post("/predict", json={"review": "good"})))
        worker.start()
        assert entered.wait(30)
        busy = client.post("/predict", json={"review": "good"})
        assert client.get("/health").status_code == 200  # never refused
        release.set()
        worker.join(30)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["message"].startswith("busy: 1 prediction requests are in progress")
    assert first["r"].status_code == 200
    assert client.post("/predict", json={"review": "good"}).status_code == 200  # the slot was given back


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        import os

        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_serve_memory_returns_to_baseline_after_large_requests(hostile_run):
    """Three rounds of three 7 MB texts (under a raised field limit, so they reach the model): the resident set after
    them is within 100 MB of the one after a first small request — the tolerance covers allocator noise and pages
    the 7 MB bodies leave behind, and is far below the 1.7 GB the unbounded tokenizer kept."""
    import time

    client = _serve_client(hostile_run, max_field_chars=8_000_000, max_body_bytes=16 * 2**20)
    huge = "a great and moving film " * 300_000
    assert client.post("/predict", json={"review": huge}).status_code == 200  # warm: first allocations happen here
    baseline = _rss_mb()
    for _ in range(3):
        for _ in range(3):
            began = time.perf_counter()
            assert client.post("/predict", json={"review": huge}).status_code == 200
            assert time.perf_counter() - began < 5  # not seconds of tokenizing under the lock
    assert _rss_mb() - baseline < 100, (baseline, _rss_mb())
