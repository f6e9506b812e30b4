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


# ------------------------------------------------ issue 18, points 7 and 8: one line for every failure (exit 1 when
# the machine refuses: disk full, permissions; exit 2 for the user's mistakes), damaged caches and checkpoints
# recovered, serve's 422 for unusable JSON, and check-config checking everything that needs no data.

def _cli(*argv):
    """`tunefork` in-process: (exit code, stderr lines, stderr)."""
    import contextlib
    import io

    from tunefork import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, err.getvalue().strip().splitlines(), err.getvalue()


def _one_line(out, code: int, starts: str) -> None:
    got, lines, text = out
    assert got == code, text[-2000:]
    assert len(lines) == 1 and lines[0].startswith(starts), text[-2000:]
    assert "Traceback" not in text


def _stray(folder) -> list:
    """Temporary files or folders left anywhere under `folder`."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name] if folder.exists() else []


def _yaml(tmp_path, raw: dict, name="config.yaml"):
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _ecd(tiny_bert, encoder=None, preprocessing=None, **sections) -> dict:
    return {"input_features": [{"name": "review", "type": "text", "preprocessing": preprocessing or {"max_sequence_length": 16},
                                "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert),
                                            **(encoder or {})}}],
            "output_features": [{"name": "sentiment", "type": "category"}],
            "trainer": {"epochs": 1, "batch_size": 8}, **sections}


def _llm(tiny_llama, **sections) -> dict:
    return {"model_type": "llm", "base_model": str(tiny_llama), "input_features": [{"name": "review", "type": "text"}],
            "output_features": [{"name": "sentiment", "type": "text"}], "prompt": {"template": "Review: {review}\nSentiment:"},
            "generation": {"max_new_tokens": 2}, **sections}


CHECK_CONFIG = [
    ("adaption_prompt on BERT", "ecd", {"encoder": {"adapter": {"type": "adaption_prompt"}}},
     "error: input_features[0].encoder.adapter.type: adaption_prompt works only on the architectures peft supports"),
    ("target_modules the model lacks", "ecd", {"encoder": {"adapter": {"type": "lora", "target_modules": ["q_proj"]}}},
     "error: input_features[0].encoder.adapter.target_modules: 'q_proj' matches no module of this bert model"),
    ("max_sequence_length past the positions", "ecd", {"preprocessing": {"max_sequence_length": 512}},
     "error: input_features[0].preprocessing.max_sequence_length: 512 is more than the 128 positions the model"),
    ("validation_metric typo", "ecd", {"trainer": {"validation_metric": "accuracyy", "validation_field": "sentiment"}},
     "error: trainer.validation_metric: 'accuracyy' is not reported for 'sentiment' (one of: loss, accuracy"),
    ("LLM target_modules of BERT", "llm", {"adapter": {"type": "lora", "target_modules": ["query"]}, "trainer": {"type": "finetune"}},
     "error: adapter.target_modules: 'query' matches no module of this llama model; its module names are: "),
    ("LLM context too short", "llm", {"preprocessing": {"global_max_sequence_length": 1000}},
     "error: preprocessing.global_max_sequence_length: 1000 is more than the 256 positions the model"),
    ("LLM prompt reads the answer", "llm", {"prompt": {"template": "{review} => {sentiment}"}},
     "error: prompt.template: {sentiment} is the output feature's column"),
    ("missing local model", "ecd", {"encoder": {"pretrained_model_name_or_path": "/nonexistent/model"}},
     "error: input_features[0].encoder.pretrained_model_name_or_path '/nonexistent/model': no such folder"),
]


@pytest.mark.parametrize("case, kind, change, message", CHECK_CONFIG, ids=[c[0] for c in CHECK_CONFIG])
def test_h18e_check_config_reads_the_model_config(case, kind, change, message, tmp_path, tiny_bert, tiny_llama):
    import time

    if kind == "ecd":
        raw = _ecd(tiny_bert, change.get("encoder"), change.get("preprocessing"), **{k: v for k, v in change.items()
                                                                                       if k not in ("encoder", "preprocessing")})
    else:
        raw = _llm(tiny_llama, **change)
    path = _yaml(tmp_path, raw)
    started = time.perf_counter()
    out = _cli("check-config", path)
    assert time.perf_counter() - started < 10  # no data, no weights: seconds at most, even on a busy machine
    _one_line(out, 2, message)
    # train runs the same checks first: the same line, before the (missing) dataset is even looked at
    out = _cli("--quiet", "train", "-c", path, "--dataset", tmp_path / "absent.csv", "--output_directory", tmp_path / "runs")
    _one_line(out, 2, message)
    assert not (tmp_path / "runs").exists()


def test_h18e_check_config_without_the_hub_skips_only_the_model_checks(tmp_path, capsys):
    from tunefork import cli

    path = _yaml(tmp_path, _ecd("some-org/some-model"))
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: valid (not checked against the model: ") and "some-org/some-model" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "-c", "c.yaml", "--dataset", "d.csv", "--random_seed", "-1"], "error: --random_seed: -1 is not a seed"),
    (["train", "-c", "c.yaml", "--dataset", "d.csv", "--random_seed", str(2**32)], "error: --random_seed: 4294967296 is not"),
    (["serve", "-m", "model", "-p", "99999"], "error: -p/--port: 99999 is not a TCP port (1 to 65535)"),
], ids=["seed -1", "seed 2**32", "port 99999"])
def test_h18e_out_of_range_numbers_are_one_line(argv, message, tmp_path):
    _one_line(_cli(*argv), 2, message)


def test_h18e_output_or_cache_path_that_is_a_file_is_one_line_exit_1(tmp_path, tiny_bert):
    data = tmp_path / "data.csv"
    _frame().to_csv(data, index=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = _yaml(tmp_path, _ecd(tiny_bert, backend={"type": "local", "cache_dir": str(blocker / "cache")}))
    _one_line(_cli("--quiet", "train", "-c", path, "--dataset", data, "--output_directory", tmp_path / "runs"), 1,
              f"error: {blocker / 'cache' / 'preprocessed'}")
    assert not (tmp_path / "runs").exists() and blocker.read_text() == "not a folder"
    out = _cli("--quiet", "train", "-c", _yaml(tmp_path, _ecd(tiny_bert), "ok.yaml"), "--dataset", data,
               "--output_directory", blocker / "runs")
    _one_line(out, 1, f"error: {blocker}")
    assert "a part of the path is a file, not a folder" in out[1][0]


def _tables():
    from tunefork.data.tensors import Table, TokenIds

    return {"training": Table({"x": np.arange(50.0), "t": TokenIds.from_rows([[1, 2, 3]] * 50)})}


def test_h18e_a_damaged_cache_entry_is_dropped_and_recomputed(tmp_path, caplog):
    from tunefork.data import cache

    entry = tmp_path / "preprocessed" / "key"
    cache.store(entry, {"m": 1}, _tables())
    assert cache.load(entry, ["training"])[0] == {"m": 1}
    npz = entry / "training.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])  # truncated, as by a crash or a full disk
    with caplog.at_level("WARNING", logger="tunefork"):
        assert cache.load(entry, ["training"]) is None
    assert "is damaged" in caplog.text and "recomputing" in caplog.text
    assert not entry.exists()  # dropped: the next run recomputes and stores it again
    cache.store(entry, {"m": 2}, _tables())
    assert cache.load(entry, ["training"])[0] == {"m": 2} and not _stray(tmp_path)


def test_h18e_a_damaged_embedding_file_is_dropped(tmp_path, caplog):
    from tunefork.data.tensors import TokenIds
    from tunefork.encoders import embeddings

    columns = {"training": TokenIds.from_rows([[1, 2], [3]])}
    path = tmp_path / "vectors.npz"
    embeddings._write_atomic(path, tmp_path / "v.tmp.npz", lambda tmp: np.savez(
        tmp, vectors=np.ones((2, 4), np.float32), **{"index::training": np.array([0, 1])}))
    assert embeddings._load_cached(path, columns)["training"].vectors.shape == (2, 4)
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="tunefork"):
        assert embeddings._load_cached(path, columns) is None
    assert "is damaged" in caplog.text and not path.exists() and not _stray(tmp_path)


_FULL_DISK_AFTER_FIRST_CHECKPOINT = """
import resource, signal, sys
from tunefork import cli
from tunefork.training import checkpoint

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as ENOSPC would
save = checkpoint.Checkpoints.save

def save_then_fill_the_disk(self, *args, **kwargs):
    target = save(self, *args, **kwargs)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the disk is full from now on
    return target

checkpoint.Checkpoints.save = save_then_fill_the_disk
sys.exit(cli.main(sys.argv[1:]))
"""


def test_h18e_full_disk_during_a_checkpoint_keeps_the_previous_one_and_resumes(tmp_path, tiny_bert):
    import json
    import os

    data = tmp_path / "data.csv"
    _frame(80).to_csv(data, index=False)
    path = _yaml(tmp_path, _ecd(tiny_bert, {"trainable": True}, trainer={"epochs": 3, "batch_size": 16}))
    script = tmp_path / "full_disk.py"
    script.write_text(_FULL_DISK_AFTER_FIRST_CHECKPOINT)
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, str(script), "--quiet", "train", "-c", str(path), "--dataset", str(data),
                           "--output_directory", str(runs)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    run = runs / "experiment_run"
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"error: {run / 'checkpoints' / 'step-8'}: cannot write checkpoint step-8 (file too large")
    assert lines[0].endswith(f"the previous checkpoint (step-4) is intact: free some space and continue with "
                             f"--model_resume_path {run}")
    pointer = json.loads((run / "checkpoints" / "pointer.json").read_text())
    assert pointer == {"last": "step-4", "best": "step-4"} and not _stray(run)
    code, lines, text = _cli("--quiet", "train", "--model_resume_path", run, "--dataset", data)
    assert code == 0, text[-2000:]
    assert (run / "model" / "model.safetensors").is_file()


def _checkpoints(folder):
    """A checkpoint folder holding a best (step-1) and a newer last (step-2) checkpoint of a one-layer model."""
    import torch

    from tunefork.training import checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    writer = checkpoint.Checkpoints(folder)
    for step, best in ((1, True), (2, False)):
        writer.save(dict(model.state_dict()), optimizer, scheduler, None, {"step": step}, {}, {}, is_best=best)
    return checkpoint


def test_h18e_resume_falls_back_to_the_other_kept_checkpoint(tmp_path, caplog):
    from tunefork.errors import TuneforkError

    checkpoint = _checkpoints(tmp_path)
    assert checkpoint.load(tmp_path)["progress"] == {"step": 2}
    tensors = tmp_path / "step-2" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:64])
    with caplog.at_level("WARNING", logger="tunefork"):
        assert checkpoint.load(tmp_path)["progress"] == {"step": 1}
    assert "step-2 is damaged" in caplog.text and "resuming from step-1" in caplog.text
    (tmp_path / "step-1" / "state.json").unlink()  # both gone: one sentence, no traceback
    with pytest.raises(TuneforkError, match=r"no checkpoint can be read \(step-2: .*; step-1: .*\); the run cannot be resumed"):
        checkpoint.load(tmp_path)


@pytest.fixture(scope="module")
def h18e_run(tiny_bert, tmp_path_factory):
    from tunefork import Model

    result = Model(_ecd(tiny_bert), quiet=True).train(_frame(), output_directory=tmp_path_factory.mktemp("h18e"))
    return result.output_directory


@pytest.mark.parametrize("body, where", [
    ('{"review": "\\ud800 great", "length": 3}', "review"),
    ('[{"review": "fine", "length": 3}, {"review": "\\udfff"}]', "1.review"),
    ("[" * 100_000 + "]" * 100_000, "body"),
    ('{"review": ' + "[" * 40 + "]" * 40 + "}", "body"),
], ids=["lone surrogate", "surrogate in a batch", "100,000 deep", "40 deep"])
def test_h18e_serve_refuses_unusable_json_with_422(body, where, h18e_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tunefork import serve

    client = TestClient(serve.app(h18e_run, max_body_bytes=1 << 20), raise_server_exceptions=False)
    route = "/batch_predict" if body.startswith("[") else "/predict"
    answer = client.post(route, content=body.encode(), headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text[:500]
    assert answer.json()["message"].startswith(f"{where}: ")


def test_h18e_visualize_an_llm_run_is_one_line_or_works(tmp_path, tiny_llama):
    from tunefork import Model

    cfg = _llm(tiny_llama, adapter={"type": "lora", "r": 2, "target_modules": ["q_proj"]},
               trainer={"type": "finetune", "epochs": 1, "batch_size": 8})
    run = Model(cfg, quiet=True).experiment(_frame(40), output_directory=tmp_path / "runs")[0].output_directory
    out_dir = tmp_path / "pictures"
    for kind in ("confusion_matrix", "roc_curves"):
        out = _cli("visualize", "-v", kind, "-r", run, "-od", out_dir, "-gt", tmp_path / "none.csv")
        expected = "error: no category or binary output" if kind == "confusion_matrix" else "error: "
        _one_line(out, 2, expected)
        assert "model_type llm" in out[1][0] or kind == "roc_curves"
    assert not out_dir.exists()
    code, _, text = _cli("visualize", "-v", "compare_performance", "-r", run, "-od", out_dir)
    assert code == 0, text
    assert [p.name for p in out_dir.iterdir()] == ["compare_performance_sentiment.png"]
