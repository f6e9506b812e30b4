"""The Python API: `Model(config).train(...)`, `.predict(df)`, `.evaluate(df)`, `.experiment(...)`, `.save`, `.load`.

Each method is the data flow of DESIGN.md written out: read → split → preprocess → plan → fit → run directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tunefork import config as config_mod
from tunefork import hardware, rundir
from tunefork import plan as plan_mod
from tunefork.console import Console
from tunefork.data import read, split
from tunefork.errors import DataError, TuneforkError
from tunefork.features import OUTPUTS, pipeline
from tunefork.training.efficiency import Phases
from tunefork.training.efficiency import record as efficiency_record

log = logging.getLogger("tunefork")


@dataclass
class TrainResult:
    output_directory: Path | None
    statistics: dict
    efficiency: dict
    plan: dict


def cache_dir(config) -> Path:
    return Path(config.backend.cache_dir or os.environ.get("TUNEFORK_CACHE_DIR") or Path.home() / ".cache" / "tunefork")


def _splits(config, dataset, training_set, validation_set, test_set, seed: int) -> dict[str, pd.DataFrame]:
    if dataset is not None and training_set is not None:
        raise TuneforkError("give either dataset (split by preprocessing.split) or training_set, not both")
    if dataset is None and training_set is None:
        raise TuneforkError("no data: give dataset, or training_set (with optional validation_set and test_set)")
    sampling = config.preprocessing
    if dataset is not None:
        frame = read.read(dataset)
        frame = _sample(frame, sampling, seed)
        parts = split.split(frame, sampling.split, seed)
        # a split given probability 0 (or too small to get a row) is absent, not an empty table
        return {name: part for name, part in parts.items() if name == "training" or len(part)}
    frames = {"training": _sample(read.read(training_set, "training set"), sampling, seed)}
    for name, source in (("validation", validation_set), ("test", test_set)):
        if source is not None:
            frames[name] = read.read(source, f"{name} set")
    return frames


def _sample(frame: pd.DataFrame, sampling, seed: int) -> pd.DataFrame:
    n = len(frame)
    if sampling.sample_size is not None:
        n = min(n, sampling.sample_size)
    elif sampling.sample_ratio < 1.0:
        n = max(1, int(round(n * sampling.sample_ratio)))
    if n == len(frame):
        return frame
    out = frame.sample(n=n, random_state=seed)  # row labels kept: errors name rows of the user's table
    out.attrs = frame.attrs
    return out


def _text_facts(config) -> dict[str, dict]:
    from tunefork.encoders.transformer import hf_config, is_decoder_only

    return {f.name: {"decoder_only": is_decoder_only(hf_config(f.encoder))} for f in config.input_features if f.type == "text"}


def _embed(config, plan, model, tables: dict, meta: dict, tokenizers: dict):
    """Replace each cache-eligible text column by its frozen encoder's pooled vectors (computed once, or loaded)."""
    from tunefork.encoders import embeddings
    from tunefork.training.loop import autocast

    hits = []
    encoders = model.text_encoders()
    for feature in config.input_features:
        if feature.type != "text" or not plan[f"cache_embeddings.{feature.name}"]:
            continue
        encoder, fitted = encoders[feature.name].to(plan["device"]), meta["inputs"][feature.name]
        key_parts = {
            "model": feature.encoder.pretrained_model_name_or_path,
            "weights": embeddings.weights_fingerprint(encoder.transformer, feature.encoder.pretrained_model_name_or_path, cache_dir(config)),
            "tokenizer": pipeline.tokenizer_identity(tokenizers[feature.name]),
            "max_sequence_length": fitted["max_sequence_length"],
            "pooling": meta["pooling"][feature.name],
            "precision": plan["precision"],
        }
        columns = {split: table[feature.name] for split, table in tables.items()}
        vectors, hit = embeddings.embed(columns, encoder, key_parts, cache_dir(config), fitted["pad_token_id"],
                                        fitted["padding_side"] == "left", plan["device"], autocast(plan))
        tables = {split: table.replace(feature.name, vectors[split]) for split, table in tables.items()}
        if hit:
            hits.append(feature.name)
    return tables, hits


def _training_peak_mb() -> float | None:
    """Peak RSS since the estimate (the kernel's counter is reset there), i.e. what the estimate predicts."""
    from tunefork.training import memory

    peak = memory.peak_since_reset()
    return round(peak / 2**20, 1) if peak else None


def _fit_in_memory(config, plan, facts, model, meta: dict, train_table, console):
    """Estimate peak memory, pick the fastest micro-batch for `batch_size: auto`, refuse what cannot fit."""
    from tunefork.training import memory

    device = plan["device"]
    model.to(device)
    memory.reset_peak()  # what loading and preprocessing peaked at is past: measure training's own peak from here
    estimate = memory.estimate(model, config, plan, train_table)
    backprops = any(not e.frozen for e in model.text_encoders().values())
    if config.trainer.batch_size == "auto" and backprops:
        target = plan["batch_size"]
        best, rates = memory.tune_batch_size(model, config, meta, plan, train_table, estimate, device)
        if rates:
            measured = ", ".join(f"{b}: {r:.0f}" for b, r in rates.items())
            plan.decide("batch_size", best, f"auto: fastest measured micro-batch (examples/s {measured}) within memory")
            plan.decide("gradient_accumulation_steps", plan["gradient_accumulation_steps"] * target // best,
                        f"keeps the effective batch at {target * plan['gradient_accumulation_steps']}")
            plan_mod.schedule(plan, config, facts)
            estimate = memory.estimate(model, config, plan, train_table)
            console.note(f"batch_size: auto → {best} × {plan['gradient_accumulation_steps']} accumulation ({measured} examples/s)")
    memory.check(estimate, plan, device)
    plan.decide("memory_estimate_mb", estimate.to_dict(), "what the process holds + gradients + optimizer state + activations")
    return estimate


def _start_run_directory(output: Path, config, plan, fingerprints: dict, tables: dict, seed: int) -> Path:
    output.mkdir(parents=True)
    rundir.write_yaml(output / "resolved_config.yaml", {"config": config_mod.to_dict(config), "plan": plan.to_dict()})
    rundir.write_json(output / "description.json", {
        "versions": rundir.versions(),
        "config": config_mod.to_dict(config),
        "dataset_fingerprints": fingerprints,
        "rows": {k: len(v) for k, v in tables.items()},
        "random_seed": seed,
        "trust_remote_code": {f.name: f.encoder.trust_remote_code for f in config.input_features if f.type == "text"},
    })
    return output


def _resume_point(run: Path, seed: int, config):
    """The last checkpoint of `run` and the seed it was started with."""
    from tunefork import backends
    from tunefork.training import checkpoint

    description = run / "description.json"
    if not description.is_file():
        raise TuneforkError(f"{run}: not a tunefork run directory (no description.json) to resume")
    if (run / "model").is_dir():
        raise TuneforkError(f"{run}: this run already finished (model/ is there); nothing to resume")
    resume = checkpoint.load(run / "checkpoints") or backends.resume_point(config, run)
    if resume is None:
        raise TuneforkError(f"{run}: no checkpoint was written before the run stopped; start it again instead")
    original = json.loads(description.read_text())["random_seed"]
    if original != seed:
        log.info("resuming with the run's random_seed %s", original)
    return resume, original


def _check_same_data(run: Path, fingerprints: dict) -> None:
    recorded = json.loads((run / "description.json").read_text())["dataset_fingerprints"]
    if recorded != fingerprints:
        changed = sorted(k for k in set(recorded) | set(fingerprints) if recorded.get(k) != fingerprints.get(k))
        raise DataError(f"{run}: the {', '.join(changed)} data differ from the run being resumed; pass the same data")


def config_of_run(run) -> dict:
    """The config a run directory was trained with (for resuming without -c)."""
    description = Path(run) / "description.json"
    if not description.is_file():
        raise TuneforkError(f"{run}: not a tunefork run directory (no description.json)")
    return json.loads(description.read_text())["config"]


class Model:
    """A tunefork model: built from a config, trained on data, or loaded from a model folder."""

    def __init__(self, config, *, progress: bool = True, quiet: bool = False, allow_pickle: bool = False):
        if allow_pickle:  # for this process: see tunefork.safety
            from tunefork import safety

            safety.allow_pickle()
        self.config = config_mod.load(config)
        self.console = Console(progress=progress, quiet=quiet)
        self.model = self.meta = self.tokenizers = self.plan = None
        self._last_test = self._report = None

    @property
    def is_llm(self) -> bool:
        return self.config.model_type == "llm"

    # ------------------------------------------------------------------------------------------------ training
    def train(self, dataset=None, *, training_set=None, validation_set=None, test_set=None, output_directory="results",
              experiment_name: str = "experiment", model_name: str = "run", random_seed: int = 42,
              skip_save_model: bool = False, logger: str | list[str] | None = None,
              model_resume_path=None) -> TrainResult:
        """Train and write the run directory; `model_resume_path` continues a run that stopped from its last
        checkpoint, in the same directory, with the same seed and data (both checked)."""
        if self.is_llm:  # model_type: llm — the causal-LM recipe, same run directory
            from tunefork import api_llm

            return api_llm.train(self, dataset, training_set=training_set, validation_set=validation_set,
                                 test_set=test_set, output_directory=output_directory, experiment_name=experiment_name,
                                 model_name=model_name, random_seed=random_seed, skip_save_model=skip_save_model,
                                 logger=logger, model_resume_path=model_resume_path)
        from tunefork import backends

        with backends.session(self.config):  # backend ray: this run's cluster (joined, or started and stopped)
            return self._train_ecd(dataset, training_set, validation_set, test_set, output_directory, experiment_name,
                                   model_name, random_seed, skip_save_model, logger, model_resume_path)

    def _train_ecd(self, dataset, training_set, validation_set, test_set, output_directory, experiment_name, model_name,
                   random_seed, skip_save_model, logger, model_resume_path) -> TrainResult:
        import torch

        from tunefork import backends, tracking
        from tunefork import report as report_mod
        from tunefork.models import artifact
        from tunefork.models.ecd import ECD
        from tunefork.training import checkpoint
        from tunefork.training.loop import fit

        config, phases = self.config, Phases()
        resume_dir = Path(model_resume_path) if model_resume_path else None
        with phases("resume"):
            resume, random_seed = _resume_point(resume_dir, random_seed, config) if resume_dir else (None, random_seed)
        files = backends.file_set(config, dataset)  # a folder or glob: Ray Data reads it, never one pandas frame
        if files is None:
            with phases("read"):
                frames = _splits(config, dataset, training_set, validation_set, test_set, random_seed)
            if len(frames["training"]) == 0:
                raise DataError("the training split has no rows (check preprocessing.split)")
            with phases("preprocess"):
                tokenizers = pipeline.tokenizers(config)
                meta, tables, cache_hit = pipeline.preprocess(config, frames, random_seed, cache_dir(config), tokenizers)
            fingerprints = {k: read.fingerprint(v) for k, v in frames.items()}
        else:
            with phases("preprocess"):  # reading and preprocessing are one parallel Ray Data pass
                tokenizers = pipeline.tokenizers(config)
                meta, tables, fingerprints = backends.preprocess_files(config, files, random_seed, tokenizers)
            frames, cache_hit = {}, False
        if cache_hit:
            self.console.note("preprocessed data: loaded from the cache")
        workers = backends.workers(config)  # local: this process; ray: from the cluster's resources
        facts = plan_mod.DataFacts(training_rows=len(tables["training"]), text_inputs=_text_facts(config),
                                   num_workers=workers.count)
        plan = plan_mod.resolve(config, facts, backends.hardware(config, workers))
        backends.decide(plan, config, workers)
        meta["pooling"] = {f.name: plan[f"pooling.{f.name}"] for f in config.input_features if f.type == "text"}
        for key, decision in plan.decisions.items():
            if key in ("precision", "batch_size", "learning_rate") or key.startswith("cache_embeddings."):
                self.console.note(f"{key}: {decision.value} — {decision.reason}")

        torch.manual_seed(random_seed)  # the heads' initial weights
        model = ECD(config, meta, meta["pooling"], total_steps=plan["total_steps"])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self.console.note(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(1, total):.2f}%)")
        with phases("embed"):
            tables, embed_hits = _embed(config, plan, model, tables, meta, tokenizers)
        if embed_hits:
            self.console.note(f"encoder embeddings loaded from the cache: {', '.join(embed_hits)}")
        estimate = None  # the estimate is of this process; a Ray worker holds a shard (FSDP) on its own machine
        if config.backend.type == "local":
            with phases("plan_memory"):
                estimate = _fit_in_memory(config, plan, facts, model, meta, tables["training"], self.console)
        recorder = report_mod.Recorder()  # the Console, the report's recorder and any trackers all hear the loop
        board = tracking.Fanout(self.console, recorder, *tracking.start(logger, output_directory, f"{experiment_name}_{model_name}", config_mod.to_dict(config), self.console))
        output = None
        if not skip_save_model:  # everything is validated: from here on the run directory exists
            output = resume_dir or _start_run_directory(rundir.new(output_directory, experiment_name, model_name), config,
                                                        plan, fingerprints, tables, random_seed)
            if resume_dir is not None:
                _check_same_data(resume_dir, fingerprints)
        checkpoints = checkpoint.Checkpoints(output / "checkpoints") if output is not None else None
        with phases("fit"):
            try:
                distributed = None
                if config.backend.type == "ray":  # every worker runs `fit`; Ray Train persists the checkpoints
                    history, distributed = backends.fit(model, tables, config, meta, plan, random_seed, report=board,
                                                        run_dir=output, workers=workers)
                else:
                    history = fit(model, tables, config, meta, plan, random_seed, report=board, checkpoints=checkpoints, resume=resume)
            finally:
                board.close()
        for name in model.merge_adapters():  # adapter.postprocessor.merge_adapter_into_base_model
            self.console.note(f"{name}: adapter merged into the base weights (model/ holds full weights)")
        phases.seconds["train"] = history.train_seconds
        phases.seconds["evaluate"] = history.evaluate_seconds
        if checkpoints is not None:
            phases.seconds["checkpoint"] = checkpoints.seconds  # inside evaluate: each follows an evaluation
        self.model, self.meta, self.tokenizers, self.plan = model.eval(), meta, tokenizers, plan
        self._last_test = frames.get("test")

        statistics = history.to_json()
        efficiency = efficiency_record(
            plan, phases, history,
            preprocessing_cache_hit=cache_hit,
            embedding_cache_hit={name: name in embed_hits for name in meta["pooling"] if plan[f"cache_embeddings.{name}"]},
            estimated_peak_mb=estimate.to_dict()["peak_mb"] if estimate is not None else None,
            peak_rss_training_mb=_training_peak_mb() if estimate is not None else None,
            **({"distributed": distributed} if distributed else {}),
        )
        if output is not None:
            artifact.save(output / "model", model, config_mod.to_dict(config), meta, tokenizers)  # atomic: whole or absent
            rundir.write_json(output / "training_statistics.json", statistics)
            rundir.write_json(output / "efficiency.json", efficiency)
            self._report = report_mod.collect(output.name, model, tables, config, meta, plan, recorder, statistics, efficiency, config_mod.to_dict(config))
            self._report.write(output / "report.html")
            shutil.rmtree(output / "checkpoints", ignore_errors=True)  # the run finished: model/ holds its result
            self.console.note(f"saved: {output}")
        return TrainResult(output, statistics, efficiency, plan.to_dict())

    def experiment(self, dataset=None, *, training_set=None, validation_set=None, test_set=None, **kwargs):
        """Train, then evaluate on the test split; writes test_statistics.json and test predictions."""
        result = self.train(dataset, training_set=training_set, validation_set=validation_set, test_set=test_set, **kwargs)
        test = self._last_test
        if test is None or len(test) == 0:
            return result, None
        statistics, predictions = self._evaluate_frame(test)
        if result.output_directory is not None:
            rundir.write_json(result.output_directory / "test_statistics.json", statistics)
            predictions.to_csv(result.output_directory / "test_predictions.csv", index=False)
            if self._report is not None:  # an LLM run has no HTML report yet
                self._report.add_test(statistics, predictions, test)
                self._report.write(result.output_directory / "report.html")
        self.console.table({"test": statistics}, "test set")
        return result, statistics

    # ------------------------------------------------------------------------------------------------ inference
    def _require_model(self):
        if self.model is None:
            raise TuneforkError("this model is not trained: call train() or Model.load(path) first")

    def _inference_plan(self):
        if self.plan is None:
            self.plan = plan_mod.resolve_inference(self.config, hardware.detect())
        return self.plan

    def _table(self, dataset, with_outputs: bool):
        frame = read.read(dataset)
        pipeline.check_columns(self.config, {"dataset": frame}, with_outputs=with_outputs)
        return pipeline.transform(self.config, frame, self.meta, self.tokenizers, with_outputs=with_outputs)

    def predict(self, dataset) -> pd.DataFrame:
        """One row per input row: `<output>_predictions`, `_probabilities_<class>`, `_probability`."""
        from tunefork.training.loop import run_inference

        if self.is_llm:  # `<output>_response`: the generated text
            from tunefork import api_llm

            return api_llm.predict(self, dataset)
        self._require_model()
        table = self._table(dataset, with_outputs=False)
        collector = run_inference(self.model, table, self.config, self.meta, self._inference_plan(), with_targets=False)
        return self._frame(collector.outputs(), table)

    def _frame(self, outputs: dict, table) -> pd.DataFrame:
        columns = {}
        for feature in self.config.output_features:
            columns.update(OUTPUTS[feature.type].columns(feature, self.meta["outputs"][feature.name], outputs[feature.name]))
        return pd.DataFrame(columns, index=table.row_index)

    def _evaluate_frame(self, dataset) -> tuple[dict, pd.DataFrame]:
        from tunefork.training.loop import run_inference

        if self.is_llm:  # loss, perplexity, exact match, ROUGE-L, BLEU
            from tunefork import api_llm

            return api_llm.evaluate_frame(self, dataset)
        self._require_model()
        table = self._table(dataset, with_outputs=True)
        collector = run_inference(self.model, table, self.config, self.meta, self._inference_plan())
        return collector.metrics(table), self._frame(collector.outputs(), table)

    def evaluate(self, dataset) -> dict:
        """Metrics per output (loss, accuracy, macro-F1, ROC-AUC, confusion matrix; MAE, RMSE, R²)."""
        return self._evaluate_frame(dataset)[0]

    # ------------------------------------------------------------------------------------------------ on disk
    def save(self, directory) -> Path:
        from tunefork.models import artifact

        if self.is_llm:
            from tunefork import api_llm

            return api_llm.save(self, directory)
        self._require_model()
        artifact.save(Path(directory), self.model, config_mod.to_dict(self.config), self.meta, self.tokenizers)
        return Path(directory)

    @classmethod
    def load(cls, directory, *, progress: bool = False, quiet: bool = True) -> Model:
        from tunefork.models import artifact, llm_artifact

        loader = llm_artifact if llm_artifact.is_llm_folder(Path(directory)) else artifact
        config, meta, model, tokenizers = loader.load(Path(directory))
        self = cls(config, progress=progress, quiet=quiet)
        self.model, self.meta, self.tokenizers = model, meta, tokenizers
        return self
