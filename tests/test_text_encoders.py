"""Ludwig's text encoders trained from scratch (embed, parallel_cnn, stacked_cnn, rnn, cnnrnn), their text
preprocessing, and set features (multi-label) as input and output.

The first table is Ludwig-format configs written from Ludwig's documentation pages (the getting-started rotten
tomatoes config, the text classification and multi-label examples, the encoder pages), one per capability: each
validates and trains one step on a small table. The rest pin behaviour: token ids, vocabularies, GloVe vectors,
padding invariance, the multi-label loss, metrics and prediction columns, saving, and the refusals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiny
import torch

from tunefork import Model
from tunefork import config as config_mod
from tunefork.errors import ConfigError, TuneforkError
from tunefork.features import set as set_feature
from tunefork.features import text

SMALL = {"embedding_size": 8, "output_size": 8}
TRAIN_ONE_STEP = {"train_steps": 1, "batch_size": 8}


def _frame(n: int = 48, seed: int = 0) -> pd.DataFrame:
    frame = tiny.sentiment_frame(n, seed)
    frame["tags"] = frame["genre"] + "," + frame["recommended"].map({"yes": "keeper", "no": "skip"})
    frame["review_content"] = frame["review"]
    return frame


@pytest.fixture(scope="module")
def glove(tmp_path_factory):
    """A GloVe-format file holding two of the task's words (3-d vectors) and one word it lacks."""
    path = tmp_path_factory.mktemp("glove") / "vectors.txt"
    path.write_text("great 1.0 2.0 3.0\nawful -1.0 -2.0 -3.0\nzebra 9.0 9.0 9.0\n")
    return path


# Ludwig's docs: getting started (rotten tomatoes), text classification, multi-label (tags as a set output), and the
# encoder pages' examples; `trainer` is cut to one step of 8 rows.
LUDWIG_CONFIGS = {
    "getting_started_rotten_tomatoes": """
input_features:
  - name: genres
    type: set
    preprocessing: {tokenizer: comma}
  - name: genre
    type: category
  - name: length
    type: number
  - name: review_content
    type: text
    encoder:
      type: embed
output_features:
  - name: recommended
    type: binary
""",
    "text_classification_default_encoder": """
input_features:
  - name: review
    type: text
output_features:
  - name: sentiment
    type: category
""",
    "parallel_cnn_with_layers": """
input_features:
  - name: review
    type: text
    encoder:
      type: parallel_cnn
      embedding_size: 16
      conv_layers: [{filter_size: 2, num_filters: 8}, {filter_size: 3, num_filters: 8}]
      num_fc_layers: 1
      output_size: 8
    preprocessing: {tokenizer: space, most_common: 50, lowercase: true}
output_features:
  - name: sentiment
    type: category
""",
    "stacked_cnn": """
input_features:
  - name: review
    type: text
    encoder: {type: stacked_cnn, embedding_size: 8, num_filters: 8, num_fc_layers: 1, output_size: 8}
output_features:
  - name: sentiment
    type: category
""",
    "bidirectional_lstm": """
input_features:
  - name: review
    type: text
    encoder:
      type: rnn
      cell_type: lstm
      bidirectional: true
      num_layers: 2
      state_size: 8
      embedding_size: 8
      recurrent_dropout: 0.1
output_features:
  - name: sentiment
    type: category
""",
    "cnnrnn_gru": """
input_features:
  - name: review
    type: text
    encoder: {type: cnnrnn, cell_type: gru, embedding_size: 8, num_filters: 8, state_size: 8}
output_features:
  - name: sentiment
    type: category
""",
    "characters_with_vocab_symbols": """
input_features:
  - name: review
    type: text
    encoder: {type: embed, embedding_size: 8, reduce_output: mean}
    preprocessing: {tokenizer: characters, padding_symbol: <pad>, unknown_symbol: <unk>, max_sequence_length: 40}
output_features:
  - name: sentiment
    type: category
""",
    "multi_label_set_output": """
input_features:
  - name: review
    type: text
    encoder: {type: embed, embedding_size: 8}
output_features:
  - name: tags
    type: set
    preprocessing: {tokenizer: comma}
    threshold: 0.4
    loss: {type: sigmoid_cross_entropy, class_weights: {keeper: 2.0}}
trainer:
  validation_field: tags
  validation_metric: jaccard
""",
}


@pytest.mark.parametrize("name", sorted(LUDWIG_CONFIGS))
def test_ludwig_docs_config_validates_and_trains_one_step(name, tmp_path):
    import yaml

    raw = yaml.safe_load(LUDWIG_CONFIGS[name])
    raw["trainer"] = {**raw.get("trainer", {}), **TRAIN_ONE_STEP}
    frame = _frame().rename(columns={"tags": "genres"}) if name.startswith("getting") else _frame()
    model = Model(raw, progress=False, quiet=True)
    result = model.train(frame, output_directory=tmp_path)
    assert result.statistics["evaluations"][-1]["step"] == 1
    predictions = Model.load(result.output_directory / "model").predict(frame.head(5))
    assert len(predictions) == 5
    if name == "text_classification_default_encoder":
        assert model.config.input_features[0].encoder.type == "parallel_cnn"  # Ludwig's default for text


# ------------------------------------------------------------------------------------------- text preprocessing


def _text_feature(preprocessing: dict, encoder: dict | None = None):
    raw = {"input_features": [{"name": "t", "type": "text", "preprocessing": preprocessing,
                               "encoder": encoder or {"type": "embed"}}],
           "output_features": [{"name": "y", "type": "binary"}]}
    return config_mod.load(raw).input_features[0]


def _ids(feature, texts: list[str], fit_on: list[str] | None = None) -> tuple[dict, list[list[int]]]:
    tokenizer = text.load_tokenizer(feature)
    meta = text.fit(pd.Series(fit_on or texts), feature, tokenizer)
    column = text.transform(pd.Series(texts), feature, meta, tokenizer)
    return meta, [column.row(i).tolist() for i in range(len(column))]


def test_rule_tokenizers_and_vocabulary():
    texts = ["Great film, great cast!", "dull film"]
    meta, ids = _ids(_text_feature({}), texts)  # Ludwig's defaults: space_punct, lowercase
    assert meta["vocab"] == ["<PAD>", "<UNK>", "film", "great", "!", ",", "cast", "dull"]  # by count, then token
    assert ids == [[3, 2, 5, 3, 6, 4], [7, 2]]
    meta, ids = _ids(_text_feature({"tokenizer": "space", "lowercase": False, "most_common": 2}), texts)
    assert meta["vocab"] == ["<PAD>", "<UNK>", "Great", "cast!"] and ids == [[2, 1, 1, 3], [1, 1]]
    meta, ids = _ids(_text_feature({"tokenizer": "characters", "max_sequence_length": 3}), ["abca", ""])
    assert meta["vocab"][:2] == ["<PAD>", "<UNK>"] and ids == [[2, 3, 4], [1]]  # an empty text is one <UNK>


def test_vocab_file_and_symbols(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("film\n\ngreat\nfilm\n")
    meta, ids = _ids(_text_feature({"vocab_file": str(path), "padding_symbol": "[P]", "unknown_symbol": "[U]"}),
                     ["great film rocks"])
    assert meta["vocab"] == ["[P]", "[U]", "film", "great"] and ids == [[3, 2, 1]]


def test_hugging_face_tokenizer_by_folder(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    for preprocessing in ({"tokenizer": str(tiny_bert)},
                          {"tokenizer": "hf_tokenizer", "pretrained_model_name_or_path": str(tiny_bert)}):
        meta, ids = _ids(_text_feature(preprocessing), ["a great film"])
        expected = AutoTokenizer.from_pretrained(tiny_bert)("a great film")["input_ids"]
        assert ids == [expected] and meta["vocab_size"] == len(AutoTokenizer.from_pretrained(tiny_bert))
    raw = {"input_features": [{"name": "review", "type": "text", "encoder": ENCODERS["rnn"],
                               "preprocessing": {"tokenizer": str(tiny_bert)}}],
           "output_features": [{"name": "sentiment", "type": "category"}], "trainer": TRAIN_ONE_STEP}
    model = Model(raw, progress=False, quiet=True)
    result = model.train(_frame(), output_directory=tmp_path)
    assert (result.output_directory / "model" / "tokenizers" / "review" / "tokenizer.json").is_file()
    pd.testing.assert_frame_equal(Model.load(result.output_directory / "model").predict(_frame()), model.predict(_frame()))


# ------------------------------------------------------------------------------------------------ the encoders

ENCODERS = {
    "embed": {"type": "embed", "embedding_size": 6},
    "parallel_cnn": {"type": "parallel_cnn", "embedding_size": 6, "num_filters": 4, "num_fc_layers": 1,
                     "output_size": 5},
    "stacked_cnn": {"type": "stacked_cnn", "embedding_size": 6, "num_filters": 4, "num_fc_layers": 0},
    "rnn": {"type": "rnn", "cell_type": "gru", "bidirectional": True, "state_size": 4, "embedding_size": 6},
    "rnn_mean": {"type": "rnn", "cell_type": "lstm", "state_size": 4, "embedding_size": 6, "reduce_output": "mean"},
    "cnnrnn": {"type": "cnnrnn", "embedding_size": 6, "num_filters": 4, "state_size": 4},
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_a_row_encodes_the_same_alone_and_beside_a_longer_row(name):
    from tunefork.encoders import scratch

    feature = _text_feature({}, ENCODERS[name])
    torch.manual_seed(0)
    encoder = scratch.build(feature, {"vocab_size": 30, "pad_token_id": 0, "vocab": [str(i) for i in range(30)]},
                            True, "x").eval()
    short = torch.tensor([[5, 6, 7, 8, 9]])
    batch = torch.tensor([[5, 6, 7, 8, 9] + [0] * 9, list(range(10, 24))])
    alone = encoder(short, torch.ones_like(short))
    together = encoder(batch, (batch > 0).long())
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


def test_recurrent_cells_and_directions():
    from tunefork.encoders import scratch

    meta = {"vocab_size": 10, "pad_token_id": 0}
    lstm = scratch.build(_text_feature({}, {"type": "rnn", "cell_type": "lstm", "state_size": 3,
                                            "bidirectional": True}), meta, True, "x")
    assert isinstance(lstm.recurrence.rnn, torch.nn.LSTM) and lstm.output_size == 6
    assert torch.equal(lstm.recurrence.rnn.bias_ih_l0[3:6], torch.ones(3))  # unit_forget_bias
    gru = scratch.build(_text_feature({}, {"type": "rnn", "cell_type": "gru", "state_size": 3}), meta, True, "x")
    assert isinstance(gru.recurrence.rnn, torch.nn.GRU) and gru.output_size == 3


def test_pretrained_glove_vectors_start_the_embedding_and_stay_fixed(glove, tmp_path):
    raw = {"input_features": [{"name": "review", "type": "text", "encoder": {
               "type": "embed", "pretrained_embeddings": str(glove), "embeddings_trainable": False}}],
           "output_features": [{"name": "sentiment", "type": "category"}],
           "trainer": {"epochs": 1, "batch_size": 8, "learning_rate": 0.05}}
    model = Model(raw, progress=False, quiet=True)
    result = model.train(_frame(), output_directory=tmp_path)
    vocab = model._ready().meta["inputs"]["review"]["vocab"]
    weight = model.model.encoders["review"].embed.embedding.weight
    assert weight.shape[1] == 3 and not weight.requires_grad  # the file's size, as in Ludwig
    torch.testing.assert_close(weight[vocab.index("great")], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(weight[vocab.index("awful")], torch.tensor([-1.0, -2.0, -3.0]))
    assert torch.equal(weight[0], torch.zeros(3))  # padding
    loaded = Model.load(result.output_directory / "model")  # the vectors come back from the weights, not the file
    glove.rename(glove.with_suffix(".moved"))
    try:
        torch.testing.assert_close(loaded.model.encoders["review"].embed.embedding.weight, weight)
    finally:
        glove.with_suffix(".moved").rename(glove)


# ---------------------------------------------------------------------------------------------------- set features


def test_set_loss_metrics_and_prediction_columns():
    feature = config_mod.load({"input_features": [{"name": "x", "type": "number"}], "output_features": [
        {"name": "tags", "type": "set", "threshold": 0.6, "preprocessing": {"tokenizer": "comma"},
         "loss": {"class_weights": {"b": 3.0}}}]}).output_features[0]
    meta = set_feature.fit(pd.Series(["a,b", "b", "c,b", "a"]), feature, output=True)
    assert meta["vocab"] == ["b", "a", "c"]
    target = set_feature.transform(pd.Series(["a,b", "", "zz"]), feature, meta, output=True)
    assert target.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]  # a label outside the vocabulary is left out
    assert set_feature.unseen(pd.Series(["a,b", "", "zz,a"]), feature, meta) == (1, ["zz"])
    meta["class_weights"] = set_feature.class_weights(feature, meta)
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.0, -2.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0, 1.0, 1.0]))(logits, y)
    torch.testing.assert_close(set_feature.loss(feature, meta, logits, y), expected)
    out = set_feature.predict(feature, meta, logits)
    assert out["predictions"].tolist() == [[True, False, True], [False, False, False]]  # sigmoid ≥ 0.6
    columns = set_feature.columns(feature, meta, out)
    assert columns["tags_predictions"].tolist() == [["b", "c"], []]
    assert len(columns["tags_probabilities"][0]) == 3 and len(columns["tags_probability"][0]) == 2
    np.testing.assert_allclose(columns["tags_probabilities_c"], torch.sigmoid(logits[:, 2]).numpy())
    scores = set_feature.metrics(feature, meta, y.numpy().astype(np.uint8), out)
    # row 1: {b,c} vs {b,c} → 1; row 2: {a} vs {} → 0
    assert scores["jaccard"] == 0.5
    assert scores["micro_precision"] == 1.0 and scores["micro_recall"] == pytest.approx(2 / 3)
    assert scores["micro_f1"] == pytest.approx(0.8) and scores["macro_recall"] == pytest.approx(2 / 3)


def test_set_input_and_output_train_save_and_predict_alike(tmp_path):
    raw = {"input_features": [{"name": "genre", "type": "set", "encoder": {"embedding_size": 4}},
                              {"name": "review", "type": "text", "encoder": ENCODERS["parallel_cnn"]}],
           "output_features": [{"name": "tags", "type": "set", "preprocessing": {"tokenizer": "comma"}}],
           "trainer": {"epochs": 2, "batch_size": 8, "learning_rate": 0.01}}
    frame = _frame()
    model = Model(raw, progress=False, quiet=True)
    result = model.train(frame, output_directory=tmp_path)
    statistics = model.evaluate(frame)
    assert set(statistics["tags"]) >= {"loss", "jaccard", "micro_f1", "macro_f1", "micro_precision", "macro_recall"}
    bag = model.model.encoders["genre"].bag
    assert isinstance(bag, torch.nn.EmbeddingBag) and torch.equal(bag.weight[0], torch.zeros(4))
    first = model.predict(frame)
    again = Model.load(result.output_directory / "model").predict(frame)
    pd.testing.assert_frame_equal(first, again)
    assert all(isinstance(labels, list) for labels in first["tags_predictions"])
    assert {"tags_probabilities", "tags_probability", "tags_probabilities_keeper"} <= set(first.columns)
    from tunefork.ludwig_results import ludwig_columns

    pd.testing.assert_frame_equal(ludwig_columns(first, model), first)  # LudwigModel's columns: already Ludwig's
    from fastapi.testclient import TestClient

    from tunefork import serve

    client = TestClient(serve.app(result.output_directory))
    row = frame.iloc[0]
    answer = client.post("/predict", json={"genre": row["genre"], "review": row["review"]}).json()
    assert answer["tags_predictions"] == first["tags_predictions"].iloc[0]
    np.testing.assert_allclose(answer["tags_probabilities"], first["tags_probabilities"].iloc[0], rtol=1e-6)
    labels = client.get("/metadata").json()["output_features"][0]["labels"]
    assert labels == model._ready().meta["outputs"]["tags"]["vocab"]


# ------------------------------------------------------------------------------------------------------ refusals

REFUSALS = [
    ({"type": "rnn", "weights_initializer": "zeros"}, {}, r"encoder\.weights_initializer: 'zeros' is not supported"),
    ({"type": "rnn", "cell_type": "lstm_block"}, {}, r"cell_type"),
    ({"type": "parallel_cnn"}, {"cache_encoder_embeddings": True}, r"cache_encoder_embeddings applies to a frozen"),
    ({"type": "embed"}, {"tokenizer": "hf_tokenizer"}, r"hf_tokenizer needs pretrained_model_name_or_path"),
    ({"type": "embed", "pretrained_embeddings": "g.txt"}, {"tokenizer": "bert-base-uncased"}, r"are not words here"),
    ({"type": "auto_transformer", "pretrained_model_name_or_path": "x"}, {"vocab_file": "v.txt"},
     r"preprocessing\.vocab_file applies to the encoders trained from scratch"),
]


@pytest.mark.parametrize(("encoder", "preprocessing", "message"), REFUSALS)
def test_refused_with_what_to_write(encoder, preprocessing, message):
    with pytest.raises(ConfigError, match=message):
        _text_feature(preprocessing, encoder)


def test_export_refuses_an_encoder_trained_from_scratch_in_one_line(tmp_path):
    from tunefork.export import export

    raw = {"input_features": [{"name": "review", "type": "text", "encoder": ENCODERS["embed"]}],
           "output_features": [{"name": "sentiment", "type": "category"}], "trainer": TRAIN_ONE_STEP}
    result = Model(raw, progress=False, quiet=True).train(_frame(), output_directory=tmp_path / "runs")
    with pytest.raises(TuneforkError, match=r"uses the embed encoder trained from scratch: serve the model folder"):
        export(result.output_directory / "model", "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ludwig_conventions_are_read():
    """Ludwig 0.4's `level: char`, and a saved Ludwig config's initializer keys at their defaults."""
    raw = {"input_features": [{"name": "t", "type": "text", "level": "char", "encoder": {
               "type": "parallel_cnn", "weights_initializer": "xavier_uniform", "embeddings_on_cpu": False,
               "should_embed": True, "vocab": ["a"], "max_sequence_length": 12}}],
           "output_features": [{"name": "y", "type": "binary"}]}
    feature = config_mod.load(raw).input_features[0]
    assert feature.preprocessing.tokenizer == "characters" and feature.preprocessing.max_sequence_length == 12
    assert "weights_initializer" not in feature.encoder.model_dump()


def test_ray_data_blocks_carry_text_ids_and_set_rows_as_one_table_does():
    """The Arrow form a Ray Data task hands back (token ids as lists, a set output's multi-hot rows as fixed-size
    lists) turns back into the same columns (the whole Ray run: DDP on a folder retraces the local run)."""
    from tunefork.backends import ray_data
    from tunefork.features import pipeline

    config = config_mod.load({"input_features": [{"name": "review", "type": "text", "encoder": ENCODERS["embed"]},
                                                 {"name": "genre", "type": "set"}],
                              "output_features": [{"name": "tags", "type": "set", "preprocessing": {"tokenizer": "comma"}}]})
    frame, toks = _frame(), pipeline.tokenizers(config)
    meta = pipeline.fit(config, frame, toks)
    expected = pipeline.transform(config, frame, meta, toks)
    block = ray_data._transformed(frame, config, meta, toks, 0)
    table = ray_data._tables(type("Blocks", (), {"iter_batches": lambda self, **_: iter([block])})(), config)["training"]
    rows = np.flatnonzero(ray_data.assign_split(frame, config.preprocessing.split, 0) == 0)
    np.testing.assert_array_equal(table["tags"], expected["tags"][rows])
    assert table["tags"].shape == (len(rows), len(meta["outputs"]["tags"]["vocab"]))
    for name in ("review", "genre"):
        np.testing.assert_array_equal(table[name].flat, expected[name].take(rows).flat)
