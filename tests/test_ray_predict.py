"""Prediction and evaluation on Ray Data workers (`tunefork.backends.ray_predict`), on a local 2-CPU cluster: the
rows of one table split over three files give, row for row and in input order, what one process gives on the table,
and evaluate's statistics are the one-process statistics.

Tiny models trained here in one process (a BERT classifier with category, number and binary outputs; a LoRA Llama);
small `eval_batch_size` values make every Ray run cut the rows into several batches over the actors, so the sums
and row order across batches are what is tested. Tolerances: probabilities 1e-5 and losses 1e-5 relative — the
batches hold other rows than one process's, so the padding of a batch, and with it the order of float32 additions,
differs (measured ~1e-7); a dropped, repeated or reordered row moves a probability by far more. Generations: equal.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import tiny

from tunefork import Model, cli
from tunefork.errors import DataError

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tunefork[ray]')")


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return tiny.sentiment_frame(60, seed=3)


@pytest.fixture(scope="module")
def files(rows, tmp_path_factory):
    """The same 60 rows as 3 Parquet files in a folder and as 3 CSV files (a glob), 20 rows each, in name order."""
    folder = tmp_path_factory.mktemp("files")
    (folder / "parquet").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 3)):
        rows.iloc[part].to_parquet(folder / "parquet" / f"rows-{i}.parquet", index=False)
        rows.iloc[part].to_csv(folder / f"rows-{i}.csv", index=False)
    return {"parquet": folder / "parquet", "csv": str(folder / "rows-*.csv")}


def _on_ray(run_model, tmp_path):
    """A copy of a model folder whose config says backend.type: ray: two workers at most, a read block per file."""
    copy = tmp_path / "model-ray"
    shutil.copytree(run_model, copy)
    config = json.loads((copy / "model_hyperparameters.json").read_text())
    config["backend"] = {"type": "ray", "trainer": {"num_workers": 2}, "processor": {"parallelism": 3}}
    (copy / "model_hyperparameters.json").write_text(json.dumps(config))
    return copy


@pytest.fixture(scope="module")
def ecd(tiny_bert, tmp_path_factory):
    """A classifier with category, number and binary outputs; eval batches of 4 (Ray batches of 16 rows)."""
    config = {
        "input_features": [{"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 32},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert),
                                        "trainable": True}},
                           {"name": "genre", "type": "category"}, {"name": "length", "type": "number"}],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"},
                            {"name": "recommended", "type": "binary"}],
        "trainer": {"epochs": 1, "batch_size": 8, "eval_batch_size": 4, "learning_rate": 0.003, "early_stop": -1},
    }
    result = Model(config, progress=False, quiet=True).train(tiny.sentiment_frame(80, seed=0),
                                                             output_directory=tmp_path_factory.mktemp("ecd"))
    return result.output_directory / "model"


@pytest.fixture(scope="module")
def llm(tiny_llama, tmp_path_factory):
    """LoRA on the tiny Llama; eval batches of 2 (Ray batches of 8 rows), 4 new tokens."""
    config = {
        "model_type": "llm", "base_model": str(tiny_llama), "input_features": [{"name": "review", "type": "text"}],
        "output_features": [{"name": "sentiment", "type": "text"}], "prompt": {"template": "Review: {review}\nSentiment:"},
        "adapter": {"type": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]}, "generation": {"max_new_tokens": 4},
        "trainer": {"type": "finetune", "epochs": 1, "batch_size": 8, "eval_batch_size": 2, "learning_rate": 0.01,
                    "early_stop": -1},
    }
    result = Model(config, progress=False, quiet=True).train(tiny.sentiment_frame(40, seed=1),
                                                             output_directory=tmp_path_factory.mktemp("llm"))
    return result.output_directory / "model"


def _assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    expected = expected.reset_index(drop=True)
    assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
    for column in expected.columns:
        if pd.api.types.is_float_dtype(expected[column]):
            np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-5,
                                       atol=1e-5, err_msg=column)
        else:
            assert got[column].astype(str).tolist() == expected[column].astype(str).tolist(), column


def _assert_same_statistics(got, expected, where: str = "") -> None:
    if isinstance(expected, dict):
        assert sorted(got) == sorted(expected), where
        for key in expected:
            _assert_same_statistics(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, float):
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-5, abs=1e-7), where
    else:
        assert got == expected, where


# ------------------------------------------------------------------------------------------------ ECD
def test_ecd_predict_on_ray_is_the_one_process_prediction_in_input_order(ray_cluster, ecd, rows, files, tmp_path):
    expected = Model.load(ecd).predict(rows)
    got = Model.load(_on_ray(ecd, tmp_path)).predict(str(files["parquet"]))
    assert isinstance(got.index, pd.RangeIndex)
    _assert_same_rows(got, expected)


def test_cli_predict_writes_parquet_parts_or_one_csv_in_input_order(ray_cluster, ecd, rows, files, tmp_path, capsys):
    """A model trained with backend local, sent to Ray with --backend ray: parts for parquet, one file for csv."""
    expected = Model.load(ecd).predict(rows)
    base = ["predict", "-m", str(ecd.parent), "--backend", "ray", "--quiet"]
    assert cli.main([*base, "--dataset", str(files["parquet"]), "--output_directory", str(tmp_path / "p"),
                     "--output_format", "parquet"]) == 0
    parts = sorted((tmp_path / "p" / "predictions").iterdir())
    assert parts and [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    _assert_same_rows(pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True), expected)
    assert cli.main([*base, "--dataset", files["csv"], "--output_directory", str(tmp_path / "c")]) == 0
    _assert_same_rows(pd.read_csv(tmp_path / "c" / "predictions.csv"), expected)
    out = capsys.readouterr().out
    assert f"60 predictions written to {tmp_path / 'p' / 'predictions'}" in out
    assert f"60 predictions written to {tmp_path / 'c' / 'predictions.csv'}" in out
    assert not list(tmp_path.rglob("*.partial"))


def test_ecd_evaluate_on_ray_gives_the_one_process_statistics(ray_cluster, ecd, rows, files, tmp_path):
    expected = Model.load(ecd).evaluate(rows)
    assert cli.main(["evaluate", "-m", str(ecd), "--dataset", files["csv"], "--backend", "ray", "--quiet",
                     "--output_directory", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "test_statistics.json").read_text())
    assert {"sentiment", "score", "recommended", "combined"} <= set(got)
    assert "roc_auc" in got["recommended"] and "r2" in got["score"] and "confusion_matrix" in got["sentiment"]
    _assert_same_statistics(got, json.loads(json.dumps(expected)))


# ------------------------------------------------------------------------------------------------ LLM
def test_llm_predict_and_evaluate_on_ray_are_the_one_process_results(ray_cluster, llm, rows, files, tmp_path):
    """Greedy generations equal row for row; loss, perplexity and the generations' scores equal."""
    local = Model.load(llm)
    expected, statistics = local.predict(rows), local.evaluate(rows)
    on_ray = Model.load(_on_ray(llm, tmp_path))
    got = on_ray.predict(str(files["parquet"]))
    assert got["sentiment_response"].tolist() == expected["sentiment_response"].tolist()
    _assert_same_statistics(on_ray.evaluate(files["csv"]), statistics)


# ------------------------------------------------------------------------------------------------ mistakes
def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_user_mistakes_are_one_line(ray_cluster, ecd, rows, files, tmp_path, capsys):
    """A missing column (found in the schema before any worker starts), a folder without --backend ray, and a bad
    cell found by a worker: one sentence each, exit 2, nothing written."""
    folder = tmp_path / "no-genre"
    folder.mkdir()
    rows.drop(columns="genre").to_parquet(folder / "rows.parquet")
    out = tmp_path / "out"
    line = _one_line_error(capsys, ["predict", "-m", str(ecd), "--dataset", str(folder), "--backend", "ray",
                                    "--output_directory", str(out)])
    assert line.startswith(f"error: {folder}: column 'genre' (feature 'genre') not found; columns are: "), line
    line = _one_line_error(capsys, ["predict", "-m", str(ecd), "--dataset", str(files["parquet"]), "--output_directory",
                                    str(out)])
    assert "backend.type: ray" in line and "--backend ray" in line
    line = _one_line_error(capsys, ["evaluate", "-m", str(ecd), "--dataset", str(files["parquet"]), "--backend",
                                    "local", "--output_directory", str(out)])
    assert line == (f"error: {files['parquet']}: a folder or glob of files is predicted by Ray Data workers; pass "
                    f"--backend ray")
    assert not out.exists()

    bad = tmp_path / "bad"
    bad.mkdir()
    cells = rows.assign(length=rows["length"].astype(str))
    cells.loc[45, "length"] = "many"
    for i, part in enumerate(np.array_split(np.arange(len(cells)), 3)):
        cells.iloc[part].to_parquet(bad / f"rows-{i}.parquet", index=False)
    with pytest.raises(DataError, match=r"number column 'length': 'many' is not a number") as caught:
        Model.load(_on_ray(ecd, tmp_path)).predict(str(bad))
    assert str(caught.value).startswith(f"{bad}: ") and "\n" not in str(caught.value)


def test_worker_pool_follows_the_backend_section(ray_cluster):
    from tunefork.backends.ray_predict import pool
    from tunefork.config.backend import RayBackend
    from tunefork.errors import TuneforkError

    default = pool(RayBackend(type="ray", trainer={"use_gpu": False}))
    assert (default.size, default.resources) == (2, {"CPU": 1.0})  # one per CPU of the cluster
    chosen = pool(RayBackend(type="ray", trainer={"num_workers": 3, "resources_per_worker": {"CPU": 0.5, "memory": 2**20}}))
    assert chosen.size == 3 and chosen.remote_args() == {"num_cpus": 0.5, "num_gpus": 0, "memory": 2**20}
    with pytest.raises(TuneforkError, match="use_gpu is true, but the Ray cluster has no GPU"):
        pool(RayBackend(type="ray", trainer={"use_gpu": True}))
