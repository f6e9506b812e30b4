"""`tunefork export`: a transformers folder that plain `from_pretrained` loads with tunefork's probabilities, an ONNX
graph that onnxruntime runs with PyTorch's outputs, and clear refusals where a format cannot represent the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny

from tunefork.errors import TuneforkError

TEXTS = tiny.sentiment_frame(40, seed=11)["review"].tolist() + ["great", "a dull , dull film that was far too long"]
TARGET = {"category": "sentiment", "binary": "recommended", "number": "score"}


def _train(encoder: Path, pooling: str, output: str, folder: Path, **extra) -> Path:
    from tunefork import Model

    config = {
        "input_features": [{"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 48},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(encoder),
                                        "reduce_output": pooling, "trainable": True}}],
        "output_features": [{"name": TARGET[output], "type": output, **extra}],
        "trainer": {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3},
    }
    return Model(config, progress=False, quiet=True).train(tiny.sentiment_frame(96), output_directory=folder).output_directory


def _tunefork(run: Path) -> pd.DataFrame:
    from tunefork import Model

    return Model.load(run).predict(pd.DataFrame({"review": TEXTS}))


@pytest.mark.parametrize("model, pooling, output", [
    ("bert", "cls_pooled", "category"),
    ("bert", "cls_pooled", "binary"),
    ("bert", "cls_pooled", "number"),
    ("gpt2", "last", "binary"),  # GPT-2's score layer has no bias: the head bias is folded into ln_f
    ("gpt2", "last", "category"),
])
def test_hf_export_loads_in_plain_transformers_with_the_same_outputs(request, tmp_path, model, pooling, output):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunefork.cli import main

    encoder = request.getfixturevalue(f"tiny_{model}")
    run = _train(encoder, pooling, output, tmp_path / "runs")
    assert main(["export", "--model_path", str(run), "--format", "hf", "--output", str(tmp_path / "hf")]) == 0

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()  # no trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        logits = hf(**tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")).logits.double().numpy()
    expected = _tunefork(run)
    name = TARGET[output]
    meta = json.loads((run / "model" / "training_set_metadata.json").read_text())["outputs"][name]
    if output == "number":
        assert hf.config.problem_type == "regression"
        np.testing.assert_allclose(logits[:, 0], expected[f"{name}_predictions"], atol=1e-5, rtol=0)
    else:
        labels = meta.get("vocab") or meta["labels"]
        assert [hf.config.id2label[i] for i in range(len(labels))] == labels
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        theirs = expected[[f"{name}_probabilities_{label}" for label in labels]].to_numpy()
        np.testing.assert_allclose(probabilities, theirs, atol=1e-5, rtol=0)
        assert [hf.config.id2label[i] for i in probabilities.argmax(1)] == expected[f"{name}_predictions"].astype(str).tolist()


@pytest.mark.parametrize("output", ["category", "binary", "number"])
def test_mean_pooled_model_exports_a_sentence_transformers_folder(tiny_bert, tmp_path, output):
    """tunefork's default pooling has no stock transformers class: the export is a sentence-transformers folder
    (Transformer → Pooling(mean) → Dense) that loads without trust_remote_code and gives tunefork's outputs."""
    from sentence_transformers import SentenceTransformer

    from tunefork.cli import main

    run = _train(tiny_bert, "mean", output, tmp_path / "runs")
    assert main(["export", "--model_path", str(run), "--format", "hf", "--output", str(tmp_path / "st")]) == 0
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense"]
    assert not list((tmp_path / "st").rglob("*.py"))  # nothing for trust_remote_code to run

    reader = SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True)
    logits = reader.encode(TEXTS, batch_size=16, convert_to_numpy=True).astype(np.float64)
    expected, name = _tunefork(run), TARGET[output]
    if output == "number":
        np.testing.assert_allclose(logits[:, 0], expected[f"{name}_predictions"], atol=1e-5, rtol=0)
        return
    meta = json.loads((run / "model" / "training_set_metadata.json").read_text())["outputs"][name]
    labels = meta.get("vocab") or meta["labels"]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    theirs = expected[[f"{name}_probabilities_{label}" for label in labels]].to_numpy()
    np.testing.assert_allclose(probabilities, theirs, atol=1e-5, rtol=0)


def test_sentence_transformers_folder_is_checked_without_the_library_too(tiny_bert, tmp_path, monkeypatch):
    """Where sentence-transformers is not installed the export still writes the folder, checked by plain
    transformers + the same pooling + the Dense weights read back from their file."""
    import sys

    from tunefork import export

    run = _train(tiny_bert, "max", "category", tmp_path / "runs")
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails as if not installed
    out = export.export(run, "hf", tmp_path / "st")
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_max_tokens"] is True
    assert "largest difference" in (out / "README.md").read_text()


@pytest.mark.parametrize("case, message", [
    ("sum", "reduce_output: cls_pooled"),
    ("fc", "num_fc_layers"),
    ("llama", "cannot be represented"),
])
def test_hf_export_refuses_what_transformers_cannot_represent(request, tmp_path, capsys, case, message):
    from tunefork.cli import main

    if case == "sum":  # neither a stock classifier nor sentence-transformers pools by a sum
        run = _train(request.getfixturevalue("tiny_bert"), "sum", "category", tmp_path)
    elif case == "fc":
        run = _train(request.getfixturevalue("tiny_bert"), "cls_pooled", "category", tmp_path, decoder={"num_fc_layers": 1, "fc_output_size": 8})
    else:
        run = _train(request.getfixturevalue("tiny_llama_padded"), "last", "category", tmp_path)
    assert main(["export", "-m", str(run), "-f", "hf", "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1  # one sentence, no traceback
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()  # nothing half-written


@pytest.fixture(scope="module")
def two_text_run(tiny_bert, tmp_path_factory) -> Path:
    """Two text inputs and two outputs (the ONNX graph has four inputs and four outputs)."""
    from tunefork import Model

    frame = tiny.sentiment_frame(96)
    frame["title"] = frame["genre"] + " night"
    encoder = {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert), "trainable": True}
    config = {
        "input_features": [{"name": "review", "type": "text", "encoder": encoder},
                           {"name": "title", "type": "text", "encoder": encoder}],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"}],
        "combiner": {"num_fc_layers": 1, "output_size": 16},
        "trainer": {"epochs": 1, "batch_size": 32},
    }
    return Model(config, progress=False, quiet=True).train(frame, output_directory=tmp_path_factory.mktemp("onnx")).output_directory


def test_onnx_export_matches_pytorch_in_onnxruntime(two_text_run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from tunefork import Model, export

    out = export.export(two_text_run, "onnx", tmp_path / "onnx")
    sidecar = json.loads((out / "tunefork_onnx.json").read_text())
    assert sidecar["checked_difference"] <= 1e-5
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["review_input_ids", "review_attention_mask", "title_input_ids", "title_attention_mask"]

    # a batch size and sequence length unlike the export's probes: the axes are dynamic
    frame = pd.DataFrame({"review": TEXTS[:13], "title": [f"drama night {i}" for i in range(13)]})
    loaded = Model.load(two_text_run)
    feeds = {}
    for name, spec in sidecar["inputs"].items():
        tokenizer = loaded.tokenizers[name]
        encoded = tokenizer(frame[name].tolist(), padding=True, truncation=True, max_length=spec["max_sequence_length"], return_tensors="np")
        feeds[spec["input_ids"]], feeds[spec["attention_mask"]] = encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    expected = loaded.predict(frame)
    vocab = sidecar["outputs"]["sentiment"]["labels"]
    np.testing.assert_allclose(got["sentiment_probabilities"], expected[[f"sentiment_probabilities_{c}" for c in vocab]].to_numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["score_predictions"], expected["score_predictions"], atol=1e-5, rtol=0)


def test_export_refusals_for_bad_requests(two_text_run, tmp_path):
    from tunefork import export

    with pytest.raises(TuneforkError, match="exactly one input feature"):
        export.export(two_text_run, "hf", tmp_path / "hf")
    with pytest.raises(TuneforkError, match="unknown export format 'tflite'"):
        export.export(two_text_run, "tflite", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(TuneforkError, match="not empty"):
        export.export(two_text_run, "onnx", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
