"""Predictions on ONNX Runtime: equal to the torch path for every exportable head, a graph that reads its weights
from model.safetensors (no second copy), written once, and a CLI path that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny

pytest.importorskip("onnxruntime")
HEADS = ("sentiment", "score", "recommended")  # category, number, binary: every head type the graph exports


@pytest.fixture(scope="module")
def run(tiny_bert, tmp_path_factory) -> Path:
    from tunefork import Model

    frame = tiny.sentiment_frame(96)
    frame["title"] = frame["genre"] + " night"
    encoder = {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert), "trainable": True}
    config = {
        "input_features": [{"name": "review", "type": "text", "encoder": encoder},
                           {"name": "title", "type": "text", "encoder": {**encoder, "reduce_output": "cls_pooled"}}],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"},
                            {"name": "recommended", "type": "binary"}],
        "trainer": {"epochs": 1, "batch_size": 32},
    }
    return Model(config, progress=False, quiet=True).train(frame, output_directory=tmp_path_factory.mktemp("onnx")).output_directory


@pytest.fixture(scope="module")
def engines(run):
    from tunefork import onnx_engine

    onnx, said = onnx_engine.load(run, "onnx")
    torch, _ = onnx_engine.load(run, "torch")
    return onnx, torch, said


def test_onnx_predictions_and_scores_equal_the_torch_path_for_every_head_type(engines):
    onnx, torch, said = engines
    assert said.startswith("engine: onnxruntime (") and said.endswith("model.onnx, written)")
    frame = tiny.sentiment_frame(40, seed=9)
    frame["title"] = frame["genre"] + " night"
    frame.loc[3, "review"] = "word " * 300  # longer than max_sequence_length: both truncate alike
    ours, theirs = onnx.predict(frame), torch.predict(frame)
    assert list(ours.columns) == list(theirs.columns) and {f"{h}_predictions" for h in HEADS} <= set(ours.columns)
    for column in theirs.columns:
        if theirs[column].dtype.kind == "f":
            np.testing.assert_allclose(ours[column], theirs[column], atol=1e-5, rtol=0, err_msg=column)
        else:
            assert ours[column].tolist() == theirs[column].tolist(), column
    (scores, _), (expected, _) = onnx.evaluate(frame), torch.evaluate(frame)
    for head in (*HEADS, "combined"):
        for key, value in expected[head].items():
            if isinstance(value, float):
                assert scores[head][key] == pytest.approx(value, abs=1e-5), (head, key)
            else:
                assert scores[head][key] == value, (head, key)


def test_the_graph_reads_its_weights_from_model_safetensors(run, engines):
    import onnx

    folder = run / "model"
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inside = sum(len(t.raw_data) for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL)
    # every weight lives in model.safetensors; inside: only small constants and buffers (position ids)
    assert len(external) >= 40 and inside < 4096
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.safetensors"}
    assert sorted(p.name for p in folder.iterdir()) == ["encoders", "model.onnx", "model.safetensors",
                                                        "model_hyperparameters.json", "tokenizers",
                                                        "training_set_metadata.json", "tunefork_onnx.json"]


def test_the_graph_is_written_once_and_again_when_the_weights_layout_changes(run, engines, monkeypatch):
    from tunefork import onnx_engine

    assert onnx_engine.load(run)[1].endswith("found)")
    sidecar = run / "model" / "tunefork_onnx.json"
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "weights_layout": "another layout"}))
    written = []
    monkeypatch.setattr(onnx_engine, "_write", lambda folder, layout: written.append(layout))
    assert onnx_engine.load(run)[1].endswith("written)") and written == [record["weights_layout"]]
    sidecar.write_text(json.dumps(record))
    from tunefork.models import folder

    folder._replaceable(run / "model")  # Model.save may replace a folder holding a graph: tunefork wrote it


def test_a_model_that_does_not_export_runs_on_torch_and_says_why(tiny_bert, tmp_path, capsys):
    from tunefork import Model, cli, onnx_engine

    config = {"input_features": [{"name": "review", "type": "text", "encoder": {
                  "type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}},
                                 {"name": "genre", "type": "category"}],
              "output_features": [{"name": "sentiment", "type": "category"}], "trainer": {"epochs": 1}}
    frame = tiny.sentiment_frame(40)
    run = Model(config, progress=False, quiet=True).train(frame, output_directory=tmp_path).output_directory
    assert onnx_engine.load(run)[1] == "engine: torch (input 'genre' is category, and the graph reads text only)"
    frame.to_csv(tmp_path / "rows.csv", index=False)
    assert cli.main(["predict", "-m", str(run), "--dataset", str(tmp_path / "rows.csv"), "--engine", "onnx",
                     "--output_directory", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error == "error: --engine onnx: input 'genre' is category, and the graph reads text only\n"


def test_cli_predict_on_onnx_never_imports_torch_or_transformers(run, engines, tmp_path):
    frame = tiny.sentiment_frame(10, seed=4)
    frame["title"] = "a title"
    frame.to_csv(tmp_path / "rows.csv", index=False)
    code = ("import sys; from tunefork.cli import main; code = main(sys.argv[1:]); "
            "print([m for m in ('torch', 'transformers') if m in sys.modules]); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "predict", "-m", str(run), "--dataset", str(tmp_path / "rows.csv"),
                           "--output_directory", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert "engine: onnxruntime" in done.stderr and "10 predictions written" in done.stdout
