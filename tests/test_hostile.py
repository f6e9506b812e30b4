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


# --------------------------------------- issue 18 (1, 2): no code from a model folder, nothing overwritten, run names

EVIL_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("code shipped with the model folder ran")
from transformers import BertConfig, BertModel


class EvilConfig(BertConfig):
    pass


class EvilModel(BertModel):
    config_class = EvilConfig
"""


def _cli(*argv):
    """The CLI in-process: (exit code, stderr)."""
    import contextlib
    import io

    from tunefork import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["--quiet", *map(str, argv)])
    return code, err.getvalue()


def _csv(tmp_path, frame):
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    return path


def _one_error_line(code, err, *parts):
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-2000:]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained_folder(tiny_bert, tmp_path_factory):
    """A small classifier's run directory, trained once for this section."""
    from tunefork import Model

    cfg = {"input_features": [{"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 16},
                               "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}}],
           "output_features": [{"name": "sentiment", "type": "category"}], "trainer": {"epochs": 1, "batch_size": 16}}
    return Model(cfg, progress=False, quiet=True).train(_frame(40), output_directory=tmp_path_factory.mktemp("runs")).output_directory


def _hostile(trained_folder, tmp_path, saved_says_trust: bool, auto_map: bool = True, code: bool = True):
    """A copy of the model folder that ships code writing a marker file when imported (an auto_map in its encoder's
    config.json naming a .py file next to it), and whose own config may say trust_remote_code: true."""
    import json
    import shutil

    folder, marker = tmp_path / "shared-model", tmp_path / "marker"
    shutil.copytree(trained_folder / "model", folder)
    encoder = folder / "encoders" / "review"
    if code:
        (encoder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    if auto_map:
        hf_config = json.loads((encoder / "config.json").read_text())
        hf_config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
        (encoder / "config.json").write_text(json.dumps(hf_config))
    if saved_says_trust:
        saved = json.loads((folder / "model_hyperparameters.json").read_text())
        saved["input_features"][0]["encoder"]["trust_remote_code"] = True
        (folder / "model_hyperparameters.json").write_text(json.dumps(saved))
    return folder, marker


@pytest.mark.parametrize("saved_says_trust", [False, True], ids=["saved-false", "saved-true"])
def test_18_a_model_folder_shipping_code_is_refused_and_its_code_never_runs(saved_says_trust, trained_folder, tmp_path):
    from tunefork import Model
    from tunefork.errors import ModelFolderError

    folder, marker = _hostile(trained_folder, tmp_path, saved_says_trust)
    data, out = _csv(tmp_path, _frame(4)), tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv in (["predict", "-m", folder, "--dataset", data, "--output_directory", out],
                 ["evaluate", "-m", folder, "--dataset", data, "--output_directory", out],
                 ["serve", "-m", folder, "-p", "1"],  # refused before any socket is opened
                 ["export", "-m", folder, "-f", "hf", "-o", out]):
        line = _one_error_line(*_cli(*argv), "--trust-remote-code", "encoders/review/")
        assert "never obeyed" in line
    with pytest.raises(ModelFolderError, match=r"trust_remote_code=True"):
        Model.load(folder)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no stray files


@pytest.mark.parametrize("auto_map, code, why", [(True, False, "config.json (an auto_map)"),
                                                  (False, True, "evil.py (Python code)")], ids=["auto_map", "py-file"])
def test_18_an_auto_map_or_a_py_file_alone_is_refused(auto_map, code, why, trained_folder, tmp_path):
    from tunefork import Model
    from tunefork.errors import ModelFolderError

    folder, marker = _hostile(trained_folder, tmp_path, saved_says_trust=True, auto_map=auto_map, code=code)
    with pytest.raises(ModelFolderError, match=f"encoders/review/{why}".replace("(", r"\(").replace(")", r"\)")):
        Model.load(folder)
    assert not marker.exists()


def test_18_with_the_flag_the_folders_code_runs_and_the_model_loads(trained_folder, tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic

    from tunefork import Model

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))  # transformers copies code there
    folder, marker = _hostile(trained_folder, tmp_path, saved_says_trust=False)
    loaded = Model.load(folder, trust_remote_code=True)
    assert marker.exists()  # the folder really runs code: the refusals above are not vacuous
    assert type(loaded.model.text_encoders()["review"].transformer).__name__ == "EvilModel"
    assert loaded.config.input_features[0].encoder.trust_remote_code is True
    rows = _frame(4)
    assert loaded.predict(rows).equals(Model.load(trained_folder).predict(rows))
    code, err = _cli("predict", "-m", folder, "--dataset", _csv(tmp_path, rows), "--output_directory",
                     tmp_path / "out", "--trust-remote-code")
    assert code == 0, err[-2000:]
    assert (tmp_path / "out" / "predictions.csv").is_file()


def test_18_loading_sets_trust_remote_code_to_the_callers_choice(trained_folder, tmp_path):
    import json
    import shutil

    from tunefork import Model

    folder = tmp_path / "model"
    shutil.copytree(trained_folder / "model", folder)
    saved = json.loads((folder / "model_hyperparameters.json").read_text())
    saved["input_features"][0]["encoder"].update(trust_remote_code=True, pretrained_kwargs={"trust_remote_code": True})
    (folder / "model_hyperparameters.json").write_text(json.dumps(saved))
    encoder = Model.load(folder).config.input_features[0].encoder
    assert encoder.trust_remote_code is False and encoder.pretrained_kwargs == {}


def test_18_a_zero_shot_llm_folder_shipping_code_is_refused(tiny_gpt2, tmp_path):
    import json

    from tunefork import Model
    from tunefork.errors import ModelFolderError

    cfg = {"model_type": "llm", "base_model": str(tiny_gpt2), "input_features": [{"name": "q", "type": "text"}],
           "output_features": [{"name": "a", "type": "text"}], "prompt": {"template": "{q}"}}
    folder = Model(cfg, progress=False, quiet=True).save(tmp_path / "llm")
    marker = tmp_path / "marker"
    tokenizer_config = folder / "tokenizer" / "tokenizer_config.json"
    data = json.loads(tokenizer_config.read_text())
    data["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    tokenizer_config.write_text(json.dumps(data))
    (folder / "tokenizer" / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    saved = json.loads((folder / "model_hyperparameters.json").read_text())
    (folder / "model_hyperparameters.json").write_text(json.dumps({**saved, "trust_remote_code": True}))
    with pytest.raises(ModelFolderError, match="tokenizer/evil.py .*--trust-remote-code"):
        Model.load(folder)
    assert not marker.exists()


# saving
def test_18_save_refuses_a_folder_tunefork_did_not_write(trained_folder, tmp_path):
    from tunefork import Model
    from tunefork.errors import ModelFolderError

    model = Model.load(trained_folder)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ModelFolderError, match="not empty and not a tunefork model folder"):
        model.save(mine)
    model.save(tmp_path / "model")
    (tmp_path / "model" / "notes.txt").write_text("mine too")
    with pytest.raises(ModelFolderError, match="holds 'notes.txt', which tunefork did not write"):
        model.save(tmp_path / "model")
    assert (mine / "thesis.tex").read_text() == "years of work" and [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model"]  # no stray staging folders


def test_18_save_replaces_a_model_folder_whole_or_not_at_all(trained_folder, tmp_path, monkeypatch):
    from pathlib import Path

    import safetensors.torch

    from tunefork import Model

    model = Model.load(trained_folder)
    target = model.save(tmp_path / "model")
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_model", full_disk)
        patch.setattr(safetensors.torch, "save_file", full_disk)
        with pytest.raises(OSError):
            model.save(target)
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the half-written one is gone
    (target / "model.safetensors").write_bytes(b"old")
    model.save(target)  # a tunefork model folder is replaced
    assert (target / "model.safetensors").read_bytes() == before[Path("model.safetensors")]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


# predict / evaluate outputs
def test_18_predict_and_evaluate_never_overwrite_an_earlier_result(trained_folder, tmp_path):
    data, out = _csv(tmp_path, _frame(4)), tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("someone's earlier result")
    for _ in range(2):
        assert _cli("predict", "-m", trained_folder, "--dataset", data, "--output_directory", out)[0] == 0
        assert _cli("evaluate", "-m", trained_folder, "--dataset", data, "--output_directory", out)[0] == 0
    assert (out / "predictions.csv").read_text() == "someone's earlier result"
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "predictions_1.csv", "predictions_2.csv",
                                                     "test_statistics.json", "test_statistics_1.json"]
    assert _cli("predict", "-m", trained_folder, "--dataset", data, "--output_directory", out, "--overwrite")[0] == 0
    assert (out / "predictions.csv").read_text().startswith("sentiment_predictions")
    assert len(list(out.iterdir())) == 5


# run directories
def test_18_run_directory_names_are_reserved_atomically(tmp_path):
    import threading

    from tunefork import rundir

    barrier, taken, errors = threading.Barrier(4), [], []

    def race():
        barrier.wait()
        try:
            for _ in range(10):
                taken.append(rundir.new(tmp_path, "exp", "run"))
        except Exception as exc:  # noqa: BLE001 — reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(taken) == 40 and len(set(taken)) == 40  # every run its own directory
    assert {p.name for p in tmp_path.iterdir()} == {"exp_run", *(f"exp_run_{n}" for n in range(1, 40))}


def test_18_run_directory_names_are_reserved_across_processes(tmp_path):
    script = ("import sys; from tunefork import rundir\n"
              "print('\\n'.join(str(rundir.new(sys.argv[1], 'exp', 'run')) for _ in range(20)))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    taken = [line for proc in procs for line in proc.communicate()[0].split()]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(taken) == 40 and len(set(taken)) == 40


@pytest.mark.parametrize("flag, name", [("--experiment_name", "../../x"), ("--model_name", "a/b"),
                                        ("--experiment_name", ".."), ("--model_name", "x\\y")])
def test_18_run_names_cannot_leave_the_output_directory(flag, name, tmp_path, tiny_bert):
    data = _csv(tmp_path, _frame())
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    code, err = _cli("train", "-c", _config_file(tmp_path, tiny_bert), "--dataset", data,
                     "--output_directory", work / "runs", flag, name)
    _one_error_line(code, err, f"{flag[2:]} {name!r}: must be a plain folder name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "config.yaml", "rows.csv"]


# ------------------------------------------------------------ issue 18: data and labels (point 5), YAML limits (6)
# No silent reshaping: each case is an error naming the file / column / key, or a behaviour with one warning line
# and a field in the output. The models here read only a category and a number, so they train in a second.

def _tabular(**length_preprocessing) -> dict:
    return {"input_features": [{"name": "genre", "type": "category"},
                               {"name": "length", "type": "number", "preprocessing": length_preprocessing}],
            "output_features": [{"name": "sentiment", "type": "category"}],
            "trainer": {"epochs": 2, "batch_size": 8, "learning_rate": 0.05}}


def _tabular_frame(n=60):
    return tiny.sentiment_frame(n, seed=7)[["genre", "length", "sentiment"]]


def _warnings(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and needle in r.getMessage()]


def _cli(capsys, *argv):
    from tunefork import cli

    code = cli.main(["--quiet", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_h18c_unseen_labels_are_counted_and_left_out_of_every_metric(caplog):
    import pandas as pd

    from tunefork import Model
    from tunefork.data import read

    model = Model(_tabular(), quiet=True)
    model.train(_tabular_frame(), skip_save_model=True)
    known = _tabular_frame(40).reset_index(drop=True)
    odd = known.iloc[:3].assign(sentiment="neutral")
    caplog.clear()
    with_unseen, predictions = model._ready().evaluate(read.read(pd.concat([odd, known], ignore_index=True)))
    assert _warnings(caplog, "labels the model has no class for") == [
        "the dataset DataFrame: output 'sentiment': 3 of 43 rows have labels the model has no class for "
        "(e.g. 'neutral'); left out of every metric and the loss"]
    plain = model.evaluate(known)
    scores, reference = with_unseen["sentiment"], plain["sentiment"]
    assert scores.pop("unseen_labels") == 3 and scores.pop("unseen_label_examples") == ["neutral"]
    assert "unseen_labels" not in reference and "unseen_label_examples" not in reference
    assert scores["confusion_matrix"] == reference["confusion_matrix"]
    for metric in ("accuracy", "macro_f1", "loss"):
        assert scores[metric] == pytest.approx(reference[metric], rel=1e-5), metric
    # ROC-AUC over the known rows of this very evaluation (a tie between two scores may break either way when the
    # batches differ, so the other evaluation is no reference for it)
    from tunefork.features import metrics

    positive = model._ready().meta["outputs"]["sentiment"]["vocab"][1]
    kept = predictions.iloc[3:]
    assert scores["roc_auc"] == metrics.roc_auc(known["sentiment"].eq(positive).to_numpy(),
                                                kept[f"sentiment_probabilities_{positive}"].to_numpy())


def test_h18c_a_batch_of_only_unseen_labels_has_a_finite_zero_loss():
    import torch

    from tunefork.config.features import CategoryOutput
    from tunefork.features import category

    feature = CategoryOutput.model_validate({"name": "y", "type": "category"})
    logits = torch.randn(4, 2, requires_grad=True)
    loss = category.loss(feature, {"vocab": ["a", "b"]}, logits, torch.full((4,), -1))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_h18c_unseen_category_inputs_are_counted_in_one_warning(caplog):
    from tunefork import Model

    model = Model(_tabular(), quiet=True)
    model.train(_tabular_frame(), skip_save_model=True)
    rows = _tabular_frame(20).reset_index(drop=True)
    rows.loc[[1, 4, 9], "genre"] = "western"
    caplog.clear()
    predictions = model.predict(rows)
    assert len(predictions) == 20 and "row" not in predictions.columns
    assert _warnings(caplog, "not seen in training") == [
        "the dataset DataFrame: input 'genre': 3 of 20 rows have values not seen in training (e.g. 'western'); "
        "read as <UNK>"]


def test_h18c_drop_row_predictions_carry_the_input_row(tmp_path, capsys, caplog):
    import json

    import pandas as pd
    import yaml

    from tunefork import Model

    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(_tabular(missing_value_strategy="drop_row")))
    result = Model(str(config_path), quiet=True).train(_tabular_frame(), output_directory=tmp_path / "runs")
    data = tmp_path / "new.csv"
    rows = _tabular_frame(10).astype({"length": object})
    rows.loc[[2, 5], "length"] = ""
    rows.to_csv(data, index=False)
    caplog.clear()
    code, _, err = _cli(capsys, "predict", "-m", result.output_directory, "--dataset", data,
                        "--output_directory", tmp_path / "out")
    assert code == 0 and "Traceback" not in err
    assert _warnings(caplog, "rows dropped") == [
        f"{data}: 2 of 10 rows dropped for a missing value in 'length' (missing_value_strategy: drop_row); the "
        "predictions' `row` column is each kept row's 0-based position in the input"]
    written = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert written["row"].tolist() == [0, 1, 3, 4, 6, 7, 8, 9]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.csv"]
    code, _, err = _cli(capsys, "evaluate", "-m", result.output_directory, "--dataset", data,
                        "--output_directory", tmp_path / "eval")
    statistics = json.loads((tmp_path / "eval" / "test_statistics.json").read_text())
    assert code == 0 and statistics["combined"]["dropped_rows"] == 2


def test_h18c_numerically_equal_labels_are_one_class(tmp_path, caplog):
    import json

    from tunefork import Model

    frame = _tabular_frame()
    labels = [[0, 0.0, "0"][i % 3] if s == "negative" else [1, "1.0", 1.0][i % 3] for i, s in enumerate(frame["sentiment"])]
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps({"genre": g, "length": int(n), "sentiment": y}) + "\n"
                            for g, n, y in zip(frame["genre"], frame["length"], labels, strict=True)))
    caplog.clear()
    model = Model(_tabular(), quiet=True)
    model.train(str(data), skip_save_model=True)
    assert _warnings(caplog, "numerically equal") == [
        "output 'sentiment': numerically equal values read as one class (0, 0.0 → '0'; 1, 1.0 → '1')"]
    predictions = model.predict(str(data))
    assert set(predictions["sentiment_predictions"]) <= {"0", "1"}
    probabilities = {c for c in predictions.columns if c.startswith("sentiment_probabilities_")}
    assert probabilities == {"sentiment_probabilities_0", "sentiment_probabilities_1"}


def test_h18c_binary_labels_that_are_numerically_equal_are_one_value():
    import pandas as pd

    from tunefork.config.features import BinaryOutput
    from tunefork.features import binary

    feature = BinaryOutput.model_validate({"name": "y", "type": "binary"})
    meta = binary.fit(pd.Series([0, 0.0, "0", 1, "1.0"], dtype=object), feature, output=True)
    assert meta["str2bool"] == {"0": False, "1": True}
    assert binary.transform(pd.Series(["0.0", 1, 1.0], dtype=object), feature, meta).tolist() == [0.0, 1.0, 1.0]


def _one_line_error(tmp_path, tiny_bert, write, message):
    data = tmp_path / "data.csv"
    write(data)
    out = _train(tmp_path, _config_file(tmp_path, tiny_bert), data)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "runs").exists()
    return lines[0]


def test_h18c_numbers_whose_scaling_overflows_are_refused(tmp_path, tiny_bert):
    import warnings

    frame = _frame().assign(length=lambda f: f["length"] * 1e299)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warning is no longer how it ends
        line = _one_line_error(tmp_path, tiny_bert, _write(frame), "number column 'length': values as large as")
    assert "overflow float64 while computing its zscore statistics" in line and str(tmp_path / "data.csv") in line


def test_h18c_a_duplicated_csv_column_is_an_error(tmp_path, tiny_bert):
    def write(path):
        frame = _frame()
        frame.insert(1, "length ", frame["length"])  # pandas would keep both apart only by renaming one
        path.write_text(frame.to_csv(index=False).replace("length ", "length", 1))

    line = _one_line_error(tmp_path, tiny_bert, write, "column 'length' appears twice in the header (columns 2 and 3)")
    assert line.startswith(f"error: {tmp_path / 'data.csv'}: ")


YAML_ERRORS = [
    ("duplicate key", "trainer:\n  epochs: 1\ninput_features: []\ntrainer:\n  epochs: 2\n",
     "config.yaml: line 4, column 1: duplicate key 'trainer' (first at line 1)"),
    ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)),
     "config.yaml: expands to more than 100,000 values through its aliases"),
    ("recursive alias", "a: &a [*a]\n", "config.yaml: expands to more than 100,000 values"),
    ("too large", "# " + "x" * (1 << 20) + "\n", "config.yaml: 1.0 MiB is too large for a config file (at most 1 MiB)"),
    ("boolean batch size", None, "trainer.batch_size: expected a number, got a boolean"),
    ("boolean epochs", None, "trainer.epochs: expected a number, got a boolean"),
]


@pytest.mark.parametrize("case, text, message", YAML_ERRORS, ids=[c[0] for c in YAML_ERRORS])
@pytest.mark.parametrize("command", ["check-config", "render-config"])
def test_h18c_yaml_errors_are_one_line_in_milliseconds(case, text, message, command, tmp_path, capsys):
    import time

    import yaml

    path = tmp_path / "config.yaml"
    if text is None:
        raw = copy.deepcopy(VALID)
        raw["trainer"]["batch_size" if "batch" in case else "epochs"] = True
        text = yaml.safe_dump(raw)
    path.write_text(text)
    started = time.perf_counter()
    code, out, err = _cli(capsys, command, path)
    assert time.perf_counter() - started < 2.0
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize("key, value", [("batch_size", "auto"), ("batch_size", 4), ("eval_batch_size", None),
                                        ("learning_rate", 1), ("epochs", 3)])
def test_h18c_numbers_and_their_literals_still_validate(key, value):
    raw = copy.deepcopy(VALID)
    raw["trainer"][key] = value
    loaded = config.load(raw)
    assert getattr(loaded.trainer, key) == value and type(getattr(loaded.trainer, key)) is not bool


def test_h18c_yaml_merge_keys_may_override_and_booleans_stay_booleans(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("base: &base {epochs: 1, batch_size: 8}\ntrainer:\n  <<: *base\n  epochs: 2\n")
    assert config.read_yaml(path)["trainer"] == {"epochs": 2, "batch_size": 8}
    raw = copy.deepcopy(VALID)
    raw["input_features"][0]["encoder"]["trainable"] = False
    assert config.load(raw).input_features[0].encoder.trainable is False


def test_h18c_a_validation_split_with_unseen_values_trains_and_says_so(caplog):
    from tunefork import Model

    validation = _tabular_frame(20).reset_index(drop=True)
    validation.loc[[0, 1], "sentiment"] = "neutral"
    validation.loc[[2], "genre"] = "western"
    caplog.clear()
    result = Model(_tabular(), quiet=True).train(training_set=_tabular_frame(), validation_set=validation,
                                                 skip_save_model=True)
    assert len(_warnings(caplog, "labels the model has no class for")) == 1
    assert len(_warnings(caplog, "not seen in training")) == 1
    scores = result.statistics["validation"]["sentiment"]
    assert set(scores["unseen_labels"]) == {2} and all(math.isfinite(v) for v in scores["loss"])
    assert "unseen_labels" not in result.statistics["training"]["sentiment"]
