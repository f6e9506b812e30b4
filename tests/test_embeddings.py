"""Frozen encoders: cached embeddings equal the live encoder's, train identically, and never go stale."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tiny
import torch
import yaml

from tunefork import Model, hardware
from tunefork.data.tensors import TokenIds
from tunefork.encoders import embeddings


def config(model_dir, *, cache=True, trainable=False, max_len=64, pooling="auto", mixed=False, epochs=1):
    return {
        "input_features": [{
            "name": "review", "type": "text",
            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(model_dir),
                        "trainable": trainable, "reduce_output": pooling},
            "preprocessing": {"max_sequence_length": max_len, "cache_encoder_embeddings": cache},
        }],
        "output_features": [{"name": "sentiment", "type": "category"}],
        "trainer": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.01, "use_mixed_precision": mixed},
    }


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("TUNEFORK_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def frame():
    return tiny.sentiment_frame(160, seed=3)


def train(cfg, frame, **kwargs):
    model = Model(cfg, quiet=True)
    return model, model.train(frame, skip_save_model=True, **kwargs)


def test_cached_training_matches_uncached(tiny_bert, frame, cache):
    _, live = train(config(tiny_bert, cache=False), frame)
    model, cached = train(config(tiny_bert, cache=True), frame)
    assert cached.efficiency["embedding_cache_hit"] == {"review": False}
    first_live = live.statistics["training"]["sentiment"]["loss"][0]
    first_cached = cached.statistics["training"]["sentiment"]["loss"][0]
    assert first_cached == pytest.approx(first_live, abs=1e-5)
    assert cached.statistics["validation"]["sentiment"]["loss"][0] == pytest.approx(
        live.statistics["validation"]["sentiment"]["loss"][0], abs=1e-5)


def test_cached_vectors_equal_the_live_encoder(tiny_bert, frame, cache):
    model, _ = train(config(tiny_bert), frame)
    stored = list((cache / "embeddings").glob("*.npz"))
    assert len(stored) == 1
    tokenizer = model.tokenizers["review"]
    encoder = model.model.text_encoders()["review"]
    texts = frame["review"].tolist()[:20]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        live = encoder.encode(batch["input_ids"], batch["attention_mask"]).numpy()
    rows = TokenIds.from_rows(tokenizer(texts, truncation=True, max_length=64)["input_ids"])
    recomputed = embeddings.encode(encoder, rows, tokenizer.pad_token_id, False, "cpu", torch.autocast("cpu", enabled=False))
    np.testing.assert_allclose(recomputed, live, atol=1e-5)


def test_each_distinct_text_is_encoded_once():
    rows = {"training": TokenIds.from_rows([[1, 2], [3], [1, 2]]), "test": TokenIds.from_rows([[3], [4, 5, 6]])}
    unique, index = embeddings.distinct_rows(rows)
    assert len(unique) == 3
    assert index["training"].tolist() == [0, 1, 0] and index["test"].tolist() == [1, 2]


@pytest.mark.parametrize("descending", [True, False])
def test_batches_cover_every_row_once_within_the_token_budget(descending):
    lengths = np.random.default_rng(0).integers(3, 65, size=2000)
    order = np.argsort(-lengths if descending else lengths, kind="stable")
    batches = list(embeddings._batches(lengths, order, 4096))
    assert np.array_equal(np.concatenate(batches), order)  # consecutive, in order, none left out
    assert all(len(b) * lengths[b].max() <= 4096 and len(b) <= embeddings.MAX_ROWS for b in batches)
    # and filled: the next row would have broken the budget (or the row cap)
    for b, following in zip(batches, batches[1:], strict=False):
        grown = np.append(b, following[0])
        assert len(grown) * lengths[grown].max() > 4096 or len(b) == embeddings.MAX_ROWS


def test_second_run_loads_vectors(tiny_bert, frame, cache):
    train(config(tiny_bert), frame)
    _, warm = train(config(tiny_bert), frame)
    assert warm.efficiency["embedding_cache_hit"] == {"review": True}
    assert warm.efficiency["preprocessing_cache_hit"] is True
    assert len(list((cache / "embeddings").glob("*.npz"))) == 1


def _changed_weights(source, target):
    from transformers import BertModel

    shutil.copytree(source, target)
    model = BertModel.from_pretrained(target)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(1.5)
    model.save_pretrained(target)
    return target


@pytest.mark.parametrize("change", ["weights", "tokenizer", "max_sequence_length", "pooling", "dataset"])
def test_any_change_computes_fresh_vectors(change, tiny_bert, frame, cache, tmp_path):
    train(config(tiny_bert), frame)
    cfg, data = config(tiny_bert), frame
    if change == "weights":
        cfg = config(_changed_weights(tiny_bert, tmp_path / "bert-changed"))
    elif change == "tokenizer":
        changed = shutil.copytree(tiny_bert, tmp_path / "bert-other-tokenizer")
        spec = json.loads((changed / "tokenizer.json").read_text())
        spec["normalizer"]["lowercase"] = False  # same weights and vocabulary, a different tokenizer
        (changed / "tokenizer.json").write_text(json.dumps(spec))
        cfg = config(changed)
    elif change == "max_sequence_length":
        cfg = config(tiny_bert, max_len=6)
    elif change == "pooling":
        cfg = config(tiny_bert, pooling="max")
    else:
        data = frame.assign(review=frame["review"] + " indeed")
    _, again = train(cfg, data)
    assert again.efficiency["embedding_cache_hit"] == {"review": False}
    assert len(list((cache / "embeddings").glob("*.npz"))) == 2


@pytest.mark.parametrize("trainable", [True, False])
def test_cache_refused_for_a_trainable_encoder_says_why(trainable, tiny_bert, frame, cache, tmp_path):
    model = Model(config(tiny_bert, trainable=trainable), quiet=True)
    result = model.train(frame, output_directory=tmp_path / "runs")
    decision = result.plan["cache_embeddings.review"]
    assert decision["value"] is (not trainable)
    resolved = yaml.safe_load((result.output_directory / "resolved_config.yaml").read_text())
    assert resolved["plan"]["cache_embeddings.review"] == decision
    if trainable:
        assert "trainable is true" in decision["reason"]
        assert not (cache / "embeddings").exists()


def test_cache_refused_for_an_encoder_with_an_adapter_says_why(tiny_bert, frame, cache, tmp_path, capsys):
    cfg = config(tiny_bert)
    cfg["input_features"][0]["encoder"]["adapter"] = {"type": "lora", "r": 4}
    result = Model(cfg, quiet=False, progress=False).train(frame, output_directory=tmp_path / "runs")
    decision = result.plan["cache_embeddings.review"]
    assert decision["value"] is False and "adapter" in decision["reason"]
    resolved = yaml.safe_load((result.output_directory / "resolved_config.yaml").read_text())
    assert resolved["plan"]["cache_embeddings.review"] == decision
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cache_embeddings.review:")]
    assert said == [f"cache_embeddings.review: False — {decision['reason']}"]  # one line, with the reason
    assert not (cache / "embeddings").exists() and result.statistics["training"]["sentiment"]["loss"]


@pytest.mark.parametrize("device, cuda_bf16, cpu_bf16, expected", [
    ("cuda", True, False, "bf16"), ("cuda", False, False, "fp16"), ("cpu", False, True, "bf16"),
    ("cpu", False, False, "fp32")])
def test_mixed_precision_picks_what_the_hardware_runs_natively(device, cuda_bf16, cpu_bf16, expected, tiny_bert):
    from tunefork import config as config_mod
    from tunefork import plan

    machine = hardware.Hardware(device=device, cpu_bf16=cpu_bf16, cuda_bf16=cuda_bf16, ram_bytes=0, cpus=2)
    cfg = config_mod.load(config(tiny_bert, mixed=True))
    decided = plan.resolve_inference(cfg, machine)
    assert decided["precision"] == expected
    if expected == "fp16":
        assert "gradient scaler" in decided.decisions["precision"].reason
    assert plan.resolve_inference(config_mod.load(config(tiny_bert)), machine)["precision"] == "fp32"  # not asked


def test_frozen_encoder_never_changes_or_enters_the_optimizer(tiny_bert, frame, cache):
    model = Model(config(tiny_bert, cache=False), quiet=True)
    model.train(frame, skip_save_model=True)
    from transformers import AutoModel

    original = AutoModel.from_pretrained(tiny_bert).state_dict()
    encoder = model.model.text_encoders()["review"]
    for name, tensor in encoder.transformer.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.transformer.training


def test_predict_on_raw_text_matches_cached_training(tiny_bert, frame, cache):
    """The saved model carries the encoder: predictions on new text run it and agree with the cached path."""
    model, result = train(config(tiny_bert), frame)
    stats = model.evaluate(frame)  # raw text → tokens → encoder → head
    assert stats["sentiment"]["loss"] == pytest.approx(result.statistics["training"]["sentiment"]["loss"][-1], rel=0.5)
    validation = result.statistics["validation"]["sentiment"]["loss"][-1]
    # the cached validation loss equals the live one on the same rows
    _, live = train(config(tiny_bert, cache=False), frame)
    assert validation == pytest.approx(live.statistics["validation"]["sentiment"]["loss"][-1], abs=1e-5)


def test_mixed_precision_plans_and_stays_close(tiny_bert, frame, cache, monkeypatch):
    _, fp32 = train(config(tiny_bert, cache=False, trainable=True), frame)
    fake = hardware.Hardware(device="cpu", cpu_bf16=True, cuda_bf16=False, ram_bytes=0, cpus=2)
    monkeypatch.setattr(hardware, "detect", lambda: fake)
    _, bf16 = train(config(tiny_bert, cache=False, trainable=True, mixed=True), frame)
    assert bf16.efficiency["precision"] == "bf16"
    assert bf16.statistics["training"]["sentiment"]["loss"][0] == pytest.approx(
        fp32.statistics["training"]["sentiment"]["loss"][0], abs=0.02)
    emulated = hardware.Hardware(device="cpu", cpu_bf16=False, cuda_bf16=False, ram_bytes=0, cpus=2)
    monkeypatch.setattr(hardware, "detect", lambda: emulated)
    _, kept = train(config(tiny_bert, cache=False, mixed=True), frame)
    assert kept.efficiency["precision"] == "fp32"
    assert "no native bf16" in kept.plan["precision"]["reason"]
