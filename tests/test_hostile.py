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


@pytest.mark.parametrize("defaults, said", [
    ({"\n": {}}, "defaults.'\\n': unknown feature type"),
    ({"category": {"\n": {}}}, "defaults.category.'\\n': unknown key"),
])
def test_a_defaults_key_that_is_not_printable_is_shown_on_one_line(defaults, said):
    raw = {"input_features": [{"name": "x", "type": "category"}], "output_features": [{"name": "y", "type": "category"}],
           "defaults": defaults}
    with pytest.raises(ConfigError) as caught:
        config.load(raw)
    assert str(caught.value).startswith(said) and "\n" not in str(caught.value)


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


def _c_cli(capsys, *argv):
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
    code, _, err = _c_cli(capsys, "predict", "-m", result.output_directory, "--dataset", data,
                        "--output_directory", tmp_path / "out")
    assert code == 0 and "Traceback" not in err
    assert _warnings(caplog, "rows dropped") == [
        f"{data}: 2 of 10 rows dropped for a missing value in 'length' (missing_value_strategy: drop_row); the "
        "predictions' `row` column is each kept row's 0-based position in the input"]
    written = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert written["row"].tolist() == [0, 1, 3, 4, 6, 7, 8, 9]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.csv"]
    code, _, err = _c_cli(capsys, "evaluate", "-m", result.output_directory, "--dataset", data,
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
    code, out, err = _c_cli(capsys, command, path)
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


# ------------------------------------------------------- issue 18: LLM prompts, LLM config names, serve bounds
# Scope: a prompt template must read the input and not the output; an LLM feature name is a folder name; an LLM
# fallback_label must be a label; max_new_tokens is capped by the sequence limit at plan time and a prompt keeps at
# least MIN_PROMPT_TOKENS (or is refused for its row); every prompt/output cut is counted; serve cuts characters
# before tokenizing, limits characters per field, admits a bounded number of requests, and gives memory back.

def _llm_cfg(base, **sections) -> dict:
    return {"model_type": "llm", "base_model": str(base), "input_features": [{"name": "instruction", "type": "text"}],
            "output_features": [{"name": "output", "type": "text"}], "generation": {"max_new_tokens": 4},
            "prompt": {"template": "Q: {instruction}\nA:"}, **sections}


def _llm_cli(args: list[str]):
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
]


@pytest.mark.parametrize("case, template, message", LLM_TEMPLATES, ids=[c[0] for c in LLM_TEMPLATES])
def test_llm_template_must_not_read_the_output(case, template, message, tmp_path):
    import yaml

    path = tmp_path / "llm.yaml"
    path.write_text(yaml.safe_dump(_llm_cfg("m", prompt={"template": template})))
    line = _one_line(_llm_cli(["check-config", str(path)]))
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
    line = _one_line(_llm_cli(["train", "-c", str(path), "--dataset", str(data), "--output_directory", str(tmp_path / "runs")]))
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

    from tunefork import config
    from tunefork.data import clipping
    from tunefork.features import text

    feature = config.load({"input_features": [{"name": "review", "type": "text", "encoder": {
        "type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}}],
        "output_features": [{"name": "y", "type": "binary"}]}).input_features[0]
    tokenizer = text.load_tokenizer(feature)
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


# ------------------------------------------------ issue 18, points 7 and 8: one line for every failure (exit 1 when
# the machine refuses: disk full, permissions; exit 2 for the user's mistakes), damaged caches and checkpoints
# recovered, serve's 422 for unusable JSON, and check-config checking everything that needs no data.

def _e_cli(*argv):
    """`tunefork` in-process: (exit code, stderr lines, stderr)."""
    import contextlib
    import io

    from tunefork import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, err.getvalue().strip().splitlines(), err.getvalue()


def _e_one_line(out, code: int, starts: str) -> None:
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
     "error: prompt.template: placeholder {sentiment} reads the output column"),
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
    out = _e_cli("check-config", path)
    assert time.perf_counter() - started < 10  # no data, no weights: seconds at most, even on a busy machine
    _e_one_line(out, 2, message)
    # train runs the same checks first: the same line, before the (missing) dataset is even looked at
    out = _e_cli("--quiet", "train", "-c", path, "--dataset", tmp_path / "absent.csv", "--output_directory", tmp_path / "runs")
    _e_one_line(out, 2, message)
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
    _e_one_line(_e_cli(*argv), 2, message)


def test_h18e_output_or_cache_path_that_is_a_file_is_one_line_exit_1(tmp_path, tiny_bert):
    data = tmp_path / "data.csv"
    _frame().to_csv(data, index=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = _yaml(tmp_path, _ecd(tiny_bert, backend={"type": "local", "cache_dir": str(blocker / "cache")}))
    _e_one_line(_e_cli("--quiet", "train", "-c", path, "--dataset", data, "--output_directory", tmp_path / "runs"), 1,
              f"error: {blocker / 'cache' / 'preprocessed'}")
    assert not (tmp_path / "runs").exists() and blocker.read_text() == "not a folder"
    out = _e_cli("--quiet", "train", "-c", _yaml(tmp_path, _ecd(tiny_bert), "ok.yaml"), "--dataset", data,
               "--output_directory", blocker / "runs")
    _e_one_line(out, 1, f"error: {blocker}")
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
    code, lines, text = _e_cli("--quiet", "train", "--model_resume_path", run, "--dataset", data)
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
        out = _e_cli("visualize", "-v", kind, "-r", run, "-od", out_dir, "-gt", tmp_path / "none.csv")
        expected = "error: no category or binary output" if kind == "confusion_matrix" else "error: "
        _e_one_line(out, 2, expected)
        assert "model_type llm" in out[1][0] or kind == "roc_curves"
    assert not out_dir.exists()
    code, _, text = _e_cli("visualize", "-v", "compare_performance", "-r", run, "-od", out_dir)
    assert code == 0, text
    assert [p.name for p in out_dir.iterdir()] == ["compare_performance_sentiment.png"]


# --------------------------------------------------------------- issue 18, points 3 and 4: divergence, resume config
# A diverged run fails in one line and writes no model; non-finite config numbers are config errors; predict and serve
# label no row from NaN scores; a resume refuses a config that changes the arithmetic of the resumed steps.

NUMBERS = {"input_features": [{"name": "length", "type": "number"}],
           "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number", "clip": [0, 5]},
                               {"name": "recommended", "type": "binary"}],
           "trainer": {"epochs": 2, "batch_size": 8, "steps_per_checkpoint": 2, "early_stop": -1}}


def _b_cli(*args):
    """The CLI in-process: (exit code, stderr)."""
    import contextlib
    import io

    from tunefork import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["--quiet", *args])
    return code, err.getvalue()


def _b_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr[-2000:]
    return lines[0]


def _b_yaml(path, cfg):
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_diverged_run_fails_keeping_its_checkpoints(tmp_path, tiny_bert):
    cfg = config.read_yaml(_config_file(tmp_path, tiny_bert))
    cfg["input_features"][0]["encoder"]["trainable"] = True
    cfg["trainer"].update(learning_rate=1.0e9, steps_per_checkpoint=1)  # a checkpoint after step 1, NaN at step 2
    data = tmp_path / "data.csv"
    _frame().to_csv(data, index=False)
    code, stderr = _b_cli("train", "-c", str(_b_yaml(tmp_path / "config.yaml", cfg)), "--dataset", str(data),
                        "--output_directory", str(tmp_path / "runs"))
    line = _b_one_error_line(stderr)
    assert code == 2
    assert "training diverged at step 2: the loss is nan (the last finite loss was " in line and "at step 1)" in line
    assert "lower trainer.learning_rate (now 1e+09)" in line and "trainer.gradient_clipping" in line
    run = tmp_path / "runs" / "experiment_run"
    # step 1's weights already score NaN, so no evaluation was an improvement: the checkpoint is called the last one
    assert line.endswith(f"; no model was saved; its last checkpoint (step-1; no evaluation had a finite score) is kept "
                         f"in {run / 'checkpoints'}") or "best checkpoint so far (step-1: " in line
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "description.json", "resolved_config.yaml"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["pointer.json", "step-1"]


def test_a_run_that_diverges_before_any_checkpoint_leaves_nothing(tmp_path):
    from tunefork import Model
    from tunefork.errors import DivergedError

    cfg = {**NUMBERS, "trainer": {**NUMBERS["trainer"], "learning_rate": 1.0e30, "steps_per_checkpoint": 0}}
    with pytest.raises(DivergedError, match=r"at step 2: the loss is inf .*; no checkpoint had been written, so nothing "
                                            r"was saved$"):
        Model(cfg, quiet=True).train(tiny.sentiment_frame(60, seed=5), output_directory=tmp_path / "runs")
    assert not any((tmp_path / "runs").iterdir())  # the run directory it had created is gone


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_config_numbers_are_config_errors(tmp_path, value):
    path = tmp_path / "config.yaml"
    path.write_text(f"input_features: [{{name: length, type: number}}]\noutput_features: [{{name: score, type: number}}]\n"
                    f"trainer: {{learning_rate: {value}}}\n")
    code, stderr = _b_cli("check-config", str(path))
    assert code == 2
    assert _b_one_error_line(stderr).startswith("error: trainer.learning_rate: should be a finite number or 'auto' (got ")


@pytest.fixture()
def overflowing_model(tmp_path):
    """A trained number → (category, number, binary) model whose heads are scaled by 1e30: a `length` of 1e10
    overflows float32 to an infinite logit (NaN probabilities), while ordinary lengths still score."""
    from safetensors.torch import load_file, save_file

    from tunefork import Model

    result = Model(NUMBERS, quiet=True).train(tiny.sentiment_frame(60, seed=5), output_directory=tmp_path / "runs")
    weights_file = result.output_directory / "model" / "model.safetensors"
    weights = load_file(str(weights_file))
    save_file({k: v * 1e30 if k.endswith(".weight") else v for k, v in weights.items()}, str(weights_file))
    return result.output_directory / "model"


def test_predict_labels_no_row_from_nan_scores(tmp_path, overflowing_model):
    import pandas as pd

    data = tmp_path / "new.csv"
    pd.DataFrame({"length": [5.0, 1e10, 9.0]}).to_csv(data, index=False)
    code, stderr = _b_cli("predict", "-m", str(overflowing_model), "--dataset", str(data), "--output_directory",
                        str(tmp_path / "out"))
    assert code == 0 and "Traceback" not in stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["predictions.csv"]
    predicted = pd.read_csv(tmp_path / "out" / "predictions.csv")
    for output in ("sentiment", "score", "recommended"):
        assert predicted[f"{output}_predictions"].isna().tolist() == [False, True, False], output
        assert predicted[f"{output}_error"].isna().tolist() == [True, False, True], output
        assert "scores for this row are not finite" in predicted.loc[1, f"{output}_error"]


def test_serve_labels_no_row_from_nan_scores(overflowing_model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tunefork import serve

    client = TestClient(serve.app(overflowing_model))
    answer = client.post("/predict", json={"length": 1e10})
    assert answer.status_code == 200
    body = answer.json()
    for output in ("sentiment", "score", "recommended"):
        assert body[f"{output}_predictions"] is None and "not finite" in body[f"{output}_error"]
    fine = client.post("/predict", json={"length": 7}).json()
    assert fine["sentiment_predictions"] in ("positive", "negative") and "sentiment_error" not in fine


@pytest.fixture()
def stopped_run(tmp_path, monkeypatch):
    """A run stopped after its checkpoints (as if killed before it finished): (run directory, data file)."""
    from tunefork import Model
    from tunefork.rundir import RunDirectory

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    data = tmp_path / "data.csv"
    tiny.sentiment_frame(60, seed=5).to_csv(data, index=False)
    with monkeypatch.context() as patch:
        patch.setattr(RunDirectory, "finish", stop)
        with pytest.raises(Stop):
            Model(NUMBERS, quiet=True).train(str(data), output_directory=tmp_path / "runs")
    run = tmp_path / "runs" / "experiment_run"
    assert (run / "checkpoints" / "pointer.json").is_file() and not (run / "model").exists()
    return run, data


def test_resume_refuses_a_different_learning_rate(tmp_path, stopped_run):
    import json

    run, data = stopped_run
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    changed = {**NUMBERS, "trainer": {**NUMBERS["trainer"], "learning_rate": 0.1, "epochs": 3}}
    code, stderr = _b_cli("train", "-c", str(_b_yaml(tmp_path / "other.yaml", changed)), "--dataset", str(data),
                        "--model_resume_path", str(run))
    line = _b_one_error_line(stderr)
    assert code == 2
    assert f"error: {run}: the config differs from the run being resumed in trainer.learning_rate (0.001 → 0.1); " in line
    assert "trainer.epochs" not in line.split("; only")[0]  # growing epochs alone would be accepted
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing written
    assert "resumed" not in json.loads((run / "description.json").read_text())


def test_resume_refuses_more_epochs_under_a_decaying_schedule(tmp_path, stopped_run):
    run, data = stopped_run
    # the run's own schedule is constant; a decay spread over the new total is itself a change, and named as one
    changed = {**NUMBERS, "trainer": {**NUMBERS["trainer"], "epochs": 3, "learning_rate_scheduler": {"decay": "cosine"}}}
    code, stderr = _b_cli("train", "-c", str(_b_yaml(tmp_path / "other.yaml", changed)), "--dataset", str(data),
                        "--model_resume_path", str(run))
    line = _b_one_error_line(stderr)
    assert code == 2
    assert ("trainer.epochs (2 → 3: trainer.learning_rate_scheduler.decay: cosine spans the total steps); "
            "trainer.learning_rate_scheduler.decay (null → \"cosine\")") in line


def test_resume_with_more_epochs_continues_and_records_it(tmp_path, stopped_run):
    import json

    import yaml

    run, data = stopped_run
    more = {**NUMBERS, "trainer": {**NUMBERS["trainer"], "epochs": 3, "early_stop": 10}}
    code, stderr = _b_cli("train", "-c", str(_b_yaml(tmp_path / "more.yaml", more)), "--dataset", str(data),
                        "--model_resume_path", str(run))
    assert code == 0, stderr[-2000:]
    assert (run / "model").is_dir() and not (run / "checkpoints").exists()
    statistics = json.loads((run / "training_statistics.json").read_text())
    assert statistics["evaluations"][-1]["epoch"] == 3
    description = json.loads((run / "description.json").read_text())
    assert description["config"]["trainer"]["epochs"] == 3
    assert description["resumed"] == [{"changed": {"trainer.early_stop": {"from": -1, "to": 10},
                                                   "trainer.epochs": {"from": 2, "to": 3}}}]
    assert yaml.safe_load((run / "resolved_config.yaml").read_text())["config"]["trainer"]["epochs"] == 3
    saved = json.loads((run / "model" / "model_hyperparameters.json").read_text())
    assert saved["trainer"]["epochs"] == 3


# ------------------------------------------------------------------- issue 18 (7): a damaged model folder is one line

DAMAGES = {
    "truncated weights": lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:200]),
    "empty weights": lambda m: (m / "model.safetensors").write_bytes(b""),
    "weights of another shape": "shape",
    "broken config JSON": lambda m: (m / "model_hyperparameters.json").write_text('{"input_features": [', encoding="utf-8"),
    "broken metadata JSON": lambda m: (m / "training_set_metadata.json").write_text("not json at all", encoding="utf-8"),
}


@pytest.fixture(scope="module")
def sound_model(tiny_bert, tmp_path_factory):
    from tunefork import Model

    folder = tmp_path_factory.mktemp("sound")
    cfg = config.read_yaml(_config_file(folder, tiny_bert))
    return Model(cfg, quiet=True).train(_frame(), output_directory=folder / "runs").output_directory / "model"


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_model_folder_is_one_line(damage, sound_model, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    from tunefork import cli

    model = tmp_path / "model"
    shutil.copytree(sound_model, model)
    if DAMAGES[damage] == "shape":
        tensors = load_file(str(model / "model.safetensors"))
        name = next(k for k in tensors if k.startswith("heads."))
        tensors[name] = tensors[name][..., :1].contiguous()
        save_file(tensors, str(model / "model.safetensors"))
    else:
        DAMAGES[damage](model)
    (tmp_path / "rows.csv").write_text("review,genre\na great film,drama\n")
    code = cli.main(["predict", "-m", str(model), "--dataset", str(tmp_path / "rows.csv"),
                     "--output_directory", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert "damaged" in err[0] or "does not fit" in err[0], err[0]
    assert not (tmp_path / "out").exists()


def test_a_template_may_write_the_prompt_from_other_columns(tmp_path):
    """Ludwig's own LLM examples name the input `prompt` and write it from `{instruction}` and `{input}`: the `prompt`
    column need not exist, and is not read."""
    import pandas as pd

    from tunefork import config as config_mod
    from tunefork.data import prompts

    cfg = config_mod.load({**_llm_cfg(tmp_path), "input_features": [{"name": "prompt", "type": "text"}],
                           "prompt": {"template": "### Instruction: {instruction}\n### Input: {input}\n### Response:"}})
    assert cfg.columns() == ["instruction", "input"]
    frame = pd.DataFrame({"instruction": ["Add"], "input": ["2 and 3"], "output": ["5"]})
    prompts.check_columns(cfg, frame, with_output=True)
    assert prompts.render(cfg, frame) == ["### Instruction: Add\n### Input: 2 and 3\n### Response:"]
