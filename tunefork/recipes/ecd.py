"""The ECD recipe: what a classifier / regressor brings to the one run lifecycle (`tunefork.runner`).

    prepare   tokenizers, then `features.pipeline` (fit on the training split, transform every split; cached)
    build     the ECD model (encoders → combiner → heads), seeded
    ready     a frozen encoder's pooled vectors computed once (or loaded from the embedding cache), then the memory
              estimate and `batch_size: auto` measured on the built model — a measured batch makes a new plan
    task      `training.ecd.ECDTask` for the loop
    Fitted    predict / evaluate on raw rows, save as a model folder, the report's regression points
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import pandas as pd

from tunefork import plan as plan_mod
from tunefork.config.features import is_transformer
from tunefork.errors import DataError, TuneforkError
from tunefork.features import OUTPUTS, missing, pipeline

log = logging.getLogger("tunefork")


@dataclass(frozen=True)
class Prepared:
    """Preprocessed splits and what was fitted on the training split."""

    tables: dict
    meta: dict
    tokenizers: dict
    fingerprints: dict
    facts: plan_mod.DataFacts
    cache_hit: bool = False
    embedding_hits: tuple = ()


def _text_facts(config) -> dict[str, dict]:
    from tunefork.encoders.transformer import hf_config
    from tunefork.hf import is_decoder_only

    return {f.name: {"decoder_only": is_decoder_only(hf_config(f.encoder))} for f in config.input_features if is_transformer(f)}


class ECDRecipe:
    def __init__(self, config):
        self.config = config

    # ------------------------------------------------------------------------------------------------ data
    def prepare(self, frames: dict[str, pd.DataFrame], seed: int, cache_dir) -> Prepared:
        from tunefork.data import read

        tokenizers = pipeline.tokenizers(self.config)
        meta, tables, hit = pipeline.preprocess(self.config, frames, seed, cache_dir, tokenizers)
        return self._prepared(tables, meta, tokenizers, {k: read.fingerprint(v) for k, v in frames.items()}, hit)

    def prepare_files(self, files: list[str], seed: int, cache_dir) -> Prepared:
        """A folder or glob of files, read and preprocessed by Ray Data in parallel."""
        from tunefork.backends import ray_data

        tokenizers = pipeline.tokenizers(self.config)
        meta, tables = ray_data.preprocess(self.config, files, seed, tokenizers, self.config.backend.processor.parallelism)
        return self._prepared(tables, meta, tokenizers, {"files": ray_data.fingerprint(files)}, False)

    def _prepared(self, tables, meta, tokenizers, fingerprints, hit) -> Prepared:
        if len(tables["training"]) == 0:
            raise DataError("the training split has no rows (check preprocessing.split)")
        facts = plan_mod.DataFacts(training_rows=len(tables["training"]), text_inputs=_text_facts(self.config))
        return Prepared(tables, meta, tokenizers, fingerprints, facts, hit)

    # ------------------------------------------------------------------------------------------------ the model
    def build(self, prepared: Prepared, plan, seed: int):
        import torch

        from tunefork.models.ecd import ECD

        torch.manual_seed(seed)  # the heads' initial weights
        meta = self._meta(prepared, plan)
        return ECD(self.config, meta, meta["pooling"], total_steps=plan["total_steps"])

    def _pooling(self, plan) -> dict[str, str]:
        return {f.name: plan[f"pooling.{f.name}"] for f in self.config.input_features if is_transformer(f)}

    def _meta(self, prepared: Prepared, plan) -> dict:
        """The fitted metadata plus the plan's pooling per text input: what the model folder saves."""
        return {**prepared.meta, "pooling": self._pooling(plan)}

    def ready(self, model, prepared: Prepared, plan, resolve, console, phases, measure: bool):
        """Cached embeddings in place of the frozen encoders' text, then (one process only) the memory estimate and a
        measured `batch_size: auto`. Returns (prepared, plan); `resolve(measured)` makes the final plan."""
        from tunefork.encoders import embeddings
        from tunefork.training.loop import autocast

        identities = {name: pipeline.tokenizer_identity(t) for name, t in prepared.tokenizers.items()
                      if plan.get(f"cache_embeddings.{name}")}
        with phases("embed"):
            tables, hits = embeddings.embed_frozen(self.config, plan, model, prepared.tables, prepared.meta,
                                                   identities, autocast(plan))
        if hits:
            console.note(f"encoder embeddings loaded from the cache: {', '.join(hits)}")
        prepared = replace(prepared, tables=tables, embedding_hits=tuple(hits))
        if not measure:
            return prepared, plan
        with phases("plan_memory"):
            plan = _fit_in_memory(self.config, plan, model, prepared, resolve, console)
        return prepared, plan

    def task(self, prepared: Prepared, plan):
        from tunefork.training.ecd import ECDTask

        return ECDTask(self.config, self._meta(prepared, plan))

    def finish(self, model, console):
        for name in model.merge_adapters():  # adapter.postprocessor.merge_adapter_into_base_model
            console.note(f"{name}: adapter merged into the base weights (model/ holds full weights)")
        return model.eval()

    def fitted(self, model, prepared: Prepared, plan) -> Fitted:
        return Fitted(self.config, model, self._meta(prepared, plan), prepared.tokenizers, plan)

    def efficiency(self, prepared: Prepared, plan) -> dict:
        return {"preprocessing_cache_hit": prepared.cache_hit,
                "embedding_cache_hit": {name: name in prepared.embedding_hits for name in self._pooling(plan)
                                        if plan.get(f"cache_embeddings.{name}")}}

    def loaded(self, model, meta: dict, tokenizers) -> Fitted:
        """A model read from a model folder (`models.folder.load`)."""
        return Fitted(self.config, model, meta, tokenizers)

    def untrained(self):
        raise TuneforkError("this model is not trained: call train() or Model.load(path) first")


def _fit_in_memory(config, plan, model, prepared: Prepared, resolve, console):
    """Estimate peak memory, pick the fastest micro-batch for `batch_size: auto`, refuse what cannot fit."""
    from tunefork.training import memory

    device = plan["device"]
    model.to(device)
    memory.reset_peak()  # what loading and preprocessing peaked at is past: measure training's own peak from here
    train = prepared.tables["training"]
    estimate = memory.estimate(model, config, plan, train)
    best, rates = None, {}
    if config.trainer.batch_size == "auto" and any(not e.frozen for e in model.text_encoders().values()):
        best, rates = memory.tune_batch_size(model, config, prepared.meta, plan, train, estimate, device)
    if rates:
        interim = resolve(plan_mod.Measured(best, rates, None))
        estimate = memory.estimate(model, config, interim, train)
        console.note(f"batch_size: auto → {best} × {interim['gradient_accumulation_steps']} accumulation "
                     f"({', '.join(f'{b}: {r:.0f}' for b, r in rates.items())} examples/s)")
    plan = resolve(plan_mod.Measured(best if rates else None, rates, estimate.to_dict()))
    memory.check(estimate, plan, device)
    return plan


class Fitted:
    """A trained (or loaded) ECD model with what inference needs: config, metadata, tokenizers."""

    def __init__(self, config, model, meta: dict, tokenizers: dict, plan=None):
        self.config, self.model, self.meta, self.tokenizers = config, model, meta, tokenizers
        self.plan = plan

    def _inference_plan(self):
        from tunefork import hardware

        return plan_mod.resolve_inference(self.config, hardware.detect())

    def _table(self, frame: pd.DataFrame, with_outputs: bool):
        pipeline.check_columns(self.config, {"dataset": frame}, with_outputs=with_outputs)
        return pipeline.transform(self.config, frame, self.meta, self.tokenizers, with_outputs=with_outputs)

    def _dropped(self, frame: pd.DataFrame, table, with_outputs: bool) -> int:
        """Rows `drop_row` removed, said in one warning line: the predictions then carry a `row` column."""
        dropped = len(frame) - len(table)
        if dropped:
            read = [*self.config.input_features, *(self.config.output_features if with_outputs else ())]
            names = [f.name for f in read if f.preprocessing.missing_value_strategy == "drop_row"
                     and missing.is_missing(frame[f.source]).any()]
            log.warning("%s: %d of %d rows dropped for a missing value in %s (missing_value_strategy: drop_row); "
                        "the predictions' `row` column is each kept row's 0-based position in the input",
                        frame.attrs.get("source", "dataset"), dropped, len(frame), ", ".join(map(repr, names)))
        return dropped

    def predictions(self, outputs: dict, table, dropped: int = 0) -> pd.DataFrame:
        """Prediction columns per output (of `Collector.outputs()`), indexed like the input's rows. When rows were
        dropped, a `row` column first holds each kept row's position in the input, so the file written from it
        (without the index) still matches back; with every row kept, row i of the predictions is row i of the input."""
        columns = {"row": table.positions} if dropped else {}
        for feature in self.config.output_features:
            columns.update(OUTPUTS[feature.type].columns(feature, self.meta["outputs"][feature.name], outputs[feature.name]))
        return pd.DataFrame(columns, index=table.row_index)

    def collect(self, frame: pd.DataFrame, with_targets: bool):
        """(Collector, table, rows dropped): every row through the model, with the loss when `with_targets`; the
        preprocessed table holds the targets. What predict and evaluate share, and what a Ray prediction worker runs
        on its batch."""
        from tunefork.training.ecd import run_inference

        table = self._table(frame, with_outputs=with_targets)
        dropped = self._dropped(frame, table, with_outputs=with_targets)
        collector = run_inference(self.model, table, self.config, self.meta, self._inference_plan(), with_targets=with_targets)
        return collector, table, dropped

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per input row kept: `<output>_predictions`, `_probabilities_<class>`, `_probability`; `row`
        (the input position) first when `drop_row` removed rows."""
        collector, table, dropped = self.collect(frame, with_targets=False)
        return self.predictions(collector.outputs(), table, dropped)

    def evaluate(self, frame: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
        """Metrics per output (loss, accuracy, macro-F1, ROC-AUC, confusion matrix; MAE, RMSE, R²) and predictions.

        A category label the model has no class for is left out of every metric and the loss, and counted in the
        output's `unseen_labels` (up to three in `unseen_label_examples`); rows `drop_row` removed are counted in
        `combined.dropped_rows`."""
        collector, table, dropped = self.collect(frame, with_targets=True)
        statistics = collector.scores(table)
        for name, unseen in getattr(table, "unseen_labels", {}).items():
            statistics[name]["unseen_label_examples"] = unseen["examples"]
        if dropped:
            statistics["combined"]["dropped_rows"] = dropped
        return statistics, self.predictions(collector.outputs(), table, dropped)

    def save(self, folder) -> None:
        from tunefork import config as config_mod
        from tunefork.models import folder as folders

        folders.save_ecd(folder, self.model, config_mod.to_dict(self.config), self.meta, self.tokenizers)

    def report_points(self, tables: dict) -> dict:
        """split → number output → (true, predicted) on the held-out split, for the report's scatter."""
        from tunefork import report

        numbers = [f for f in self.config.output_features if f.type == "number"]
        split = "validation" if tables.get("validation") is not None and len(tables["validation"]) else "training"
        if not numbers:
            return {}
        return {split: report.regression_points(self.model, tables[split], self.config, self.meta, self.plan, numbers)}
