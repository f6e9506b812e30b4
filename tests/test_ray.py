"""The Ray backend on a local 2-CPU cluster started (and stopped) here: distributed runs retrace the local run's loss
curve, a worker killed mid-run resumes from Ray Train's checkpoint, and a folder of files is read by Ray Data.

Three Ray fits in all, two of them cut short by a kill (each 30–60 s on a shared 2-core machine; stack facts §5);
everything else is cheap.

Parity tolerance, 1e-4 absolute on losses around 1.5 and on every weight: the distributed run takes the same
optimizer steps over the same rows, so only the order of float32 additions differs (the gradient all-reduce sums
two half-batch means; the local run sums one batch). That gap measured 1e-6 on these runs. A real sharding mistake
moves the curve by 1e-2 or more from the first evaluation — a dropped or repeated row changes a 16-row batch mean by
~1/16 of a row's loss, and a doubled learning rate (linear scaling left on) changes the very first step.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tiny
from safetensors.torch import load_file

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tunefork[ray]')")

TOLERANCE = 1e-4
SPLITS = ("training", "validation", "test")


def _frame(n: int = 150):
    """The tiny sentiment task with a fixed split column, so a folder and a DataFrame give the same three splits."""
    frame = tiny.sentiment_frame(n, seed=7)
    frame["split"] = np.random.default_rng(0).choice(["train", "validation", "test"], size=n, p=[0.7, 0.15, 0.15])
    return frame


def _config(model, batch_size: int, accumulation: int = 1, backend: dict | None = None) -> dict:
    return {
        # dropout off: a worker draws masks for its own rows, so with dropout no two layouts see the same noise
        "input_features": [{"name": "review", "type": "text", "encoder": {
            "type": "auto_transformer", "trainable": True, "pretrained_model_name_or_path": str(model),
            "pretrained_kwargs": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}},
            {"name": "genre", "type": "category"}],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"}],
        "preprocessing": {"split": {"type": "fixed", "column": "split"}},
        # constant scaling: the local run has one worker, so `linear` would double only the distributed learning rate
        "trainer": {"epochs": 2, "batch_size": batch_size, "gradient_accumulation_steps": accumulation,
                    "learning_rate": 0.003, "learning_rate_scaling": "constant", "steps_per_checkpoint": 3,
                    "early_stop": -1},
        "backend": backend or {"type": "local"},
    }


def _train(config: dict, data, tmp_path, name: str):
    from tunefork import Model

    return Model(config, quiet=True).train(data, output_directory=tmp_path / "runs", model_name=name)


@pytest.fixture(scope="module")
def local_16(tiny_bert, tmp_path_factory):
    """The reference: one process, batch 16."""
    return _train(_config(tiny_bert, 16), _frame(), tmp_path_factory.mktemp("local"), "local")


def _assert_same_run(local, distributed) -> None:
    a, b = local.statistics, distributed.statistics
    assert [e["step"] for e in a["evaluations"]] == [e["step"] for e in b["evaluations"]]
    for split in SPLITS:
        for output in ("combined", "sentiment", "score"):
            np.testing.assert_allclose(b[split][output]["loss"], a[split][output]["loss"], rtol=0, atol=TOLERANCE,
                                       err_msg=f"{split} {output} loss")
    assert a["best"]["step"] == b["best"]["step"]
    wa = load_file(str(local.output_directory / "model" / "model.safetensors"))
    wb = load_file(str(distributed.output_directory / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wb[key].numpy(), wa[key].numpy(), rtol=0, atol=TOLERANCE, err_msg=key)


def test_ddp_on_a_folder_of_parquet_files_retraces_the_local_run(ray_cluster, tiny_bert, local_16, tmp_path):
    from tunefork import Model

    frame, local = _frame(), local_16
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, part in enumerate((frame.iloc[:50], frame.iloc[50:100], frame.iloc[100:])):
        part.to_parquet(folder / f"part-{i}.parquet")
    ddp = _train(_config(tiny_bert, 8, backend={"type": "ray", "trainer": {"strategy": "ddp", "num_workers": 2}}),
                 str(folder), tmp_path, "ddp")

    _assert_same_run(local, ddp)
    assert ddp.plan["num_workers"]["value"] == 2 and ddp.plan["strategy"]["value"] == "ddp"
    assert ddp.plan["effective_batch_size"]["value"] == local.plan["effective_batch_size"]["value"] == 16
    distributed = json.loads((ddp.output_directory / "efficiency.json").read_text())["distributed"]
    assert distributed["num_workers"] == 2 and distributed["restarts"] == 0 and len(distributed["workers"]) == 2
    # the run directory is a local one's: no Ray storage left behind, and the same model folder
    assert sorted(p.name for p in ddp.output_directory.iterdir()) == sorted(p.name for p in local.output_directory.iterdir())
    a = Model.load(local.output_directory / "model").predict(frame)
    b = Model.load(ddp.output_directory / "model").predict(frame)
    assert (a["sentiment_predictions"] == b["sentiment_predictions"]).all()
    np.testing.assert_allclose(b["score_predictions"], a["score_predictions"], atol=TOLERANCE)


def test_fsdp_with_accumulation_resumes_after_a_killed_worker(ray_cluster, tiny_bert, tmp_path, monkeypatch):
    frame = _frame()
    local = _train(_config(tiny_bert, 8, accumulation=2), frame, tmp_path, "local")
    # worker 1 SIGKILLs itself at optimizer step 8, once; the last checkpoint was taken at step 6
    marker = tmp_path / "killed"
    monkeypatch.setenv("TUNEFORK_RAY_FAULT", f"1:8:{marker}")
    fsdp = _train(_config(tiny_bert, 4, accumulation=2, backend={
        "type": "ray", "trainer": {"strategy": {"type": "fsdp"}, "num_workers": 2, "max_failures": 1}}),
        frame, tmp_path, "fsdp")

    assert marker.read_text().startswith("killed rank 1 at step 8")
    distributed = fsdp.efficiency["distributed"]
    assert distributed["restarts"] == 1 and distributed["strategy"] == "fsdp"
    total = fsdp.plan["total_steps"]["value"]
    assert total == local.plan["total_steps"]["value"] and fsdp.statistics["evaluations"][-1]["step"] == total
    _assert_same_run(local, fsdp)  # resumed from step 6 and still the local run, step for step


def test_a_stopped_ray_run_continues_with_model_resume_path(ray_cluster, tiny_bert, local_16, tmp_path, monkeypatch):
    from tunefork import Model
    from tunefork.errors import TuneforkError

    frame = _frame()
    config = _config(tiny_bert, 8, backend={"type": "ray", "trainer": {"num_workers": 2, "max_failures": 0}})
    monkeypatch.setenv("TUNEFORK_RAY_FAULT", f"0:8:{tmp_path / 'killed'}")  # no restart allowed: the run stops
    with pytest.raises(TuneforkError, match="continue it with --model_resume_path"):
        _train(config, frame, tmp_path, "stopped")
    run = tmp_path / "runs" / "experiment_stopped"
    assert not (run / "model").exists()  # nothing for Model.load to half-read

    resumed = Model(config, quiet=True).train(frame, model_resume_path=run)  # Ray Train restores step 6
    assert resumed.output_directory == run and resumed.efficiency["distributed"]["restarts"] == 1
    _assert_same_run(local_16, resumed)


def test_ray_data_preprocesses_a_folder_as_pandas_does_one_table(ray_cluster, tiny_bert, tmp_path):
    from tunefork import config as config_mod
    from tunefork.backends import ray_data
    from tunefork.data import split
    from tunefork.errors import DataError
    from tunefork.features import pipeline

    frame = _frame(200)
    frame.loc[3, "score"] = None  # dropped (drop_row), in the fitting pass and the transform pass alike
    for i, part in enumerate((frame.iloc[:70], frame.iloc[70:140], frame.iloc[140:])):
        part.to_csv(tmp_path / f"part-{i}.csv", index=False)
    config = config_mod.load(_config(tiny_bert, 8, backend={"type": "ray"}))
    toks = pipeline.tokenizers(config)
    files = ray_data.file_set(str(tmp_path / "part-*.csv"))
    assert len(files) == 3

    meta, tables = ray_data.preprocess(config, files, 42, toks)
    expected_meta, expected, _ = pipeline.preprocess(config, split.split(frame, config.preprocessing.split, 42), 42, None, toks)
    assert meta == expected_meta and tables.keys() == expected.keys()
    for name, table in expected.items():
        for column, values in table.columns.items():
            got = tables[name][column]
            if hasattr(values, "offsets"):  # token ids
                assert np.array_equal(got.flat, values.flat) and np.array_equal(got.offsets, values.offsets), column
            else:
                assert np.array_equal(got, values), column

    # a random split hashes each row: the same rows land in the same split whatever the number of read tasks
    randomly = config_mod.load({**_config(tiny_bert, 8, backend={"type": "ray"}), "preprocessing": {}})
    one = ray_data.preprocess(randomly, files, 42, toks, parallelism=1)[1]
    three = ray_data.preprocess(randomly, files, 42, toks, parallelism=3)[1]
    for name in one:
        assert np.array_equal(one[name]["score"], three[name]["score"])
    assert 0.6 < len(one["training"]) / 199 < 0.8

    # a bad cell outside the training split is found by a Ray Data task, and still reported in one sentence
    row = next(i for i in range(70, 140) if frame.loc[i, "split"] == "test")
    frame.loc[row, "score"] = float("inf")  # still a number column in every file, but not a finite one
    frame.iloc[70:140].to_csv(tmp_path / "part-1.csv", index=False)
    with pytest.raises(DataError, match="score"):
        ray_data.preprocess(config, files, 42, toks)


def test_user_mistakes_are_refused_before_any_worker_starts(ray_cluster, tiny_bert, tmp_path):
    from tunefork import Model
    from tunefork.errors import TuneforkError

    frame = _frame(60)
    with pytest.raises(TuneforkError, match="use_gpu is true, but the Ray cluster has no GPU"):
        _train(_config(tiny_bert, 8, backend={"type": "ray", "trainer": {"use_gpu": True}}), frame, tmp_path, "gpu")
    regularized = _config(tiny_bert, 8, backend={"type": "ray", "trainer": {"strategy": "fsdp"}})
    regularized["trainer"].update(regularization_type="l2", regularization_lambda=0.01)
    with pytest.raises(TuneforkError, match="fsdp"):
        _train(regularized, frame, tmp_path, "l2")
    frame.to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(TuneforkError, match="set backend.type: ray"):
        Model(_config(tiny_bert, 8), quiet=True).train(str(tmp_path / "*.csv"))
    assert not (tmp_path / "runs").exists()  # nothing half-written
    assert os.environ.get("TUNEFORK_RAY_FAULT") is None


# ------------------------------------------------------------------------------------------------ model_type: llm
def _llm_config(model, adapter: bool, backend: dict | None = None) -> dict:
    return {
        "model_type": "llm", "base_model": str(model), "input_features": [{"name": "review", "type": "text"}],
        "output_features": [{"name": "sentiment", "type": "text"}], "prompt": {"template": "Review: {review}\nSentiment:"},
        # dropout off, as above: a worker draws masks for its own rows
        **({"adapter": {"type": "lora", "r": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}} if adapter else {}),
        "preprocessing": {"split": {"type": "fixed", "column": "split"}},
        "trainer": {"type": "finetune", "epochs": 1, "batch_size": 8 if backend else 16, "learning_rate": 0.01,
                    "learning_rate_scaling": "constant", "steps_per_checkpoint": 3, "early_stop": -1},
        "backend": backend or {"type": "local"},
    }


@pytest.fixture(scope="module")
def llm_local(tiny_llama, tmp_path_factory):
    """The references: one process, batch 16, LoRA and full fine-tune."""
    folder = tmp_path_factory.mktemp("llm-local")
    return {adapter: _train(_llm_config(tiny_llama, adapter), _frame(), folder, f"local-{adapter}") for adapter in (True, False)}


@pytest.mark.parametrize("adapter, strategy", [(True, "ddp"), (True, "fsdp"), (False, "ddp"), (False, "fsdp")],
                         ids=["lora-ddp", "lora-fsdp", "full-ddp", "full-fsdp"])
def test_llm_on_two_workers_retraces_the_local_loss_curve(ray_cluster, tiny_llama, llm_local, adapter, strategy, tmp_path):
    """LoRA and full fine-tuning of a causal LM, 2 workers × batch 8 against one process × 16: the same losses and
    the same model folder (adapter only, or full weights)."""
    local = llm_local[adapter]
    backend = {"type": "ray", "trainer": {"strategy": strategy, "num_workers": 2}}
    distributed = _train(_llm_config(tiny_llama, adapter, backend), _frame(), tmp_path, strategy)
    a, b = local.statistics, distributed.statistics
    assert [e["step"] for e in a["evaluations"]] == [e["step"] for e in b["evaluations"]] and len(a["evaluations"]) >= 2
    for split in SPLITS:
        for metric in ("loss", "perplexity"):
            np.testing.assert_allclose(b[split]["sentiment"][metric], a[split]["sentiment"][metric], rtol=1e-5,
                                       atol=TOLERANCE, err_msg=f"{split} {metric}")
    assert distributed.efficiency["distributed"]["num_workers"] == 2
    assert distributed.efficiency["train_tokens"] == local.efficiency["train_tokens"]  # summed over the workers
    assert 0 <= distributed.efficiency["train_padding_share"] < 1  # and so are the positions they computed
    files = sorted(p.relative_to(local.output_directory / "model").as_posix()
                   for p in (local.output_directory / "model").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(distributed.output_directory / "model").as_posix()
                           for p in (distributed.output_directory / "model").rglob("*") if p.is_file())
    weights = [f for f in files if f.endswith(".safetensors")]
    assert weights == (["adapter/adapter_model.safetensors"] if adapter else ["weights/model.safetensors"])
    wa = load_file(str(local.output_directory / "model" / weights[0]))
    wb = load_file(str(distributed.output_directory / "model" / weights[0]))
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wb[key].numpy(), wa[key].numpy(), rtol=0, atol=TOLERANCE, err_msg=key)


def test_dpo_on_two_workers_retraces_the_local_run(ray_cluster, tiny_llama, tmp_path):
    """Preference tuning (DPO, LoRA, the reference being the base under the adapter) on 2 DDP workers × 4 pairs
    against one process × 8: the same losses and reward metrics, merged across workers, and the same adapter."""
    frame = _frame(40)
    frame["rejected"] = frame["sentiment"].map({"positive": "negative", "negative": "positive"})
    config = {**_llm_config(tiny_llama, adapter=True), "trainer": {
        "type": "dpo", "beta": 0.5, "epochs": 1, "batch_size": 8, "learning_rate": 0.01,
        "learning_rate_scaling": "constant", "steps_per_checkpoint": 2, "early_stop": -1}}
    local = _train(config, frame, tmp_path, "local")
    backend = {"type": "ray", "trainer": {"strategy": "ddp", "num_workers": 2}}
    distributed = _train({**config, "backend": backend, "trainer": {**config["trainer"], "batch_size": 4}}, frame,
                         tmp_path, "ray")
    a, b = local.statistics, distributed.statistics
    assert [e["step"] for e in a["evaluations"]] == [e["step"] for e in b["evaluations"]] and len(a["evaluations"]) >= 2
    for metric in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(b["validation"]["sentiment"][metric], a["validation"]["sentiment"][metric],
                                   rtol=1e-5, atol=TOLERANCE, err_msg=metric)
    wa, wb = (load_file(str(r.output_directory / "model" / "adapter" / "adapter_model.safetensors"))
              for r in (local, distributed))
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wb[key].numpy(), wa[key].numpy(), rtol=0, atol=TOLERANCE, err_msg=key)


def test_a_run_that_diverges_on_ray_ends_once_as_a_divergence(ray_cluster, tiny_bert, tmp_path):
    """Every worker sees the same all-reduced NaN loss and stops at the same step; the run ends with the driver's
    DivergedError (a worker failure would have been retried `max_failures` times and come back as another error)."""
    from tunefork.errors import DivergedError

    config = _config(tiny_bert, 8, backend={"type": "ray", "trainer": {"num_workers": 2, "max_failures": 2}})
    config["trainer"].update(learning_rate=1.0e9, gradient_clipping={"clipglobalnorm": None})
    with pytest.raises(DivergedError, match=r"^training diverged at step \d+: the loss is") as caught:
        _train(config, _frame(), tmp_path, "diverged")
    assert "\n" not in str(caught.value)
    run = tmp_path / "runs" / "experiment_diverged"
    assert not (run / "model").exists()
    if run.exists():  # a checkpoint was written before the loss broke: it is kept, and named in the message
        assert (run / "checkpoints" / "pointer.json").is_file() and str(run / "checkpoints") in str(caught.value)
