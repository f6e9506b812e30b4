"""The ECD task: what the one training loop needs to know about a classifier / regressor (`training.loop` docstring).

A batch is the inputs of rows `index` by feature (text as token ids + mask, or cached vectors) and the targets by
output; the loss is each output's loss weighted by `loss.weight`, a mean over the batch's rows; the scores are each
output feature's metrics (`features.*.metrics`) over the rows' predictions, in row order.
"""

from __future__ import annotations

import numpy as np
import torch

from tunefork.data.tensors import Table
from tunefork.features import OUTPUTS
from tunefork.plan import Plan
from tunefork.training import batches
from tunefork.training.loop import Out, autocast, placed, to_device


def loss_terms(config, meta: dict, logits: dict, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    terms = {}
    for feature in config.output_features:
        terms[feature.name] = OUTPUTS[feature.type].loss(feature, meta["outputs"][feature.name], logits[feature.name], targets[feature.name])
    total = sum(f.loss.weight * terms[f.name] for f in config.output_features)
    return total, terms


class Collector:
    """Accumulates per-output predictions (and loss) over batches, in row order, then scores them."""

    def __init__(self, config, meta: dict):
        self.config, self.meta = config, meta
        self.parts: dict[str, list] = {f.name: [] for f in config.output_features}
        self.index: list[np.ndarray] = []
        self.loss_sum = {f.name: 0.0 for f in config.output_features}
        self.loss_sum["combined"] = 0.0
        self.loss_rows = {f.name: 0 for f in config.output_features}  # rows each output's loss is a mean over
        self.rows = 0

    def add(self, index: np.ndarray, out: Out) -> None:
        logits, terms, total, counted = out.record
        for feature in self.config.output_features:
            self.parts[feature.name].append(OUTPUTS[feature.type].predict(feature, self.meta["outputs"][feature.name], logits[feature.name].detach()))
        self.index.append(index)
        if terms is not None:
            for name, value in terms.items():
                self.loss_sum[name] += value.item() * counted[name]
                self.loss_rows[name] += counted[name]
            self.loss_sum["combined"] += total.item() * len(index)
        self.rows += len(index)

    def state(self) -> tuple:
        return self.parts, self.index, self.loss_sum, self.loss_rows, self.rows

    def merge(self, states: list[tuple]) -> Collector:
        """Every worker's collector in one (in rank order: every rank computes identical metrics)."""
        merged = Collector(self.config, self.meta)
        for parts, index, loss_sum, loss_rows, rows in states:
            for name, values in parts.items():
                merged.parts[name].extend(values)
            merged.index.extend(index)
            for name, value in loss_sum.items():
                merged.loss_sum[name] += value
            for name, value in loss_rows.items():
                merged.loss_rows[name] += value
            merged.rows += rows
        return merged

    def outputs(self) -> dict[str, dict[str, np.ndarray]]:
        order = np.argsort(np.concatenate(self.index), kind="stable")
        return {name: {key: np.concatenate([p[key] for p in parts])[order] for key in parts[0]} for name, parts in self.parts.items()}

    def scores(self, table: Table | None, with_loss: bool = True) -> dict:
        out = self.outputs()
        index = np.sort(np.concatenate(self.index))
        result: dict = {}
        for feature in self.config.output_features:
            target = table[feature.name][index] if table is not None else None
            scores = OUTPUTS[feature.type].metrics(feature, self.meta["outputs"][feature.name], target, out[feature.name])
            if with_loss:
                rows = self.loss_rows[feature.name]
                scores = {"loss": self.loss_sum[feature.name] / rows if rows else float("nan"), **scores}
            result[feature.name] = scores
        if with_loss:
            result["combined"] = {"loss": self.loss_sum["combined"] / max(1, self.rows)}
        return result


class ECDTask:
    """The ECD model's batches, loss and scores for `training.loop.fit` and `training.loop.evaluate`."""

    def __init__(self, config, meta: dict):
        self.config, self.meta = config, meta

    def lengths(self, table: Table) -> np.ndarray | None:
        return batches.lengths(table, self.config)

    def units(self, table: Table, index: np.ndarray) -> int:
        return len(index)

    def forward(self, model, table: Table, index: np.ndarray, device: str, with_targets: bool = True) -> Out:
        inputs, targets = batches.collate(table, index, self.config, self.meta, with_targets)
        tokens = batches.token_count(inputs)
        logits = model(to_device(inputs, device))
        if not with_targets:
            return Out(torch.zeros(()), len(index), tokens, (logits, None, None, None))
        total, terms = loss_terms(self.config, self.meta, logits, to_device(targets, device))
        # an output's loss is a mean over the rows whose label it knows (a category label outside the classes is
        # -1 and ignored), so the split's loss weighs each batch by those rows
        counted = {name: len(index) if t.is_floating_point() else int((t >= 0).sum()) for name, t in targets.items()}
        return Out(total, len(index), tokens, (logits, terms, total, counted))

    def accumulator(self) -> Collector:
        return Collector(self.config, self.meta)

    def adapted(self, model) -> list:
        """(adapter section, peft model) of each text encoder trained through an adapter (tied inputs share one)."""
        unique = {id(e): e for e in model.text_encoders().values()}
        return [(e.adapter, e.transformer) for e in unique.values() if e.adapter is not None and e.adapted]

    def blocks(self, model) -> list:
        """The Hugging Face models inside: their `_no_split_modules` blocks are FSDP's units."""
        return [e.transformer for e in model.text_encoders().values()]


@torch.no_grad()
def run_inference(model, table: Table, config, meta: dict, plan: Plan, with_targets: bool = True) -> Collector:
    """Every row of `table` through the model, length-sorted batches, outputs back in row order."""
    task = ECDTask(config, meta)
    placed(model, plan["device"]).eval()  # a loaded model is on the CPU until here (a quantized encoder: on its GPU)
    collector = Collector(config, meta)
    for index in batches.evaluation_order(len(table), plan["eval_batch_size"], task.lengths(table)):
        with autocast(plan):
            out = task.forward(model, table, index, plan["device"], with_targets)
        collector.add(index, out)
    return collector
