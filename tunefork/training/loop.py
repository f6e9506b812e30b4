"""The ECD recipe: the step loop written out, evaluation, early stopping and the best weights.

    autocast → loss / accumulation steps → backward → clip → optimizer step → zero_grad → scheduler step
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from tunefork.adapters.steps import AdapterSteps
from tunefork.data.tensors import Table
from tunefork.features import OUTPUTS
from tunefork.plan import Plan, higher_is_better
from tunefork.training import batches, optim

log = logging.getLogger("tunefork.train")
SPLITS = ("training", "validation", "test")


def autocast(plan: Plan):
    precision = plan["precision"]
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(plan["device"], dtype=dtype)


def to_device(tree, device: str):
    if device == "cpu":
        return tree
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    return tree.to(device, non_blocking=True) if isinstance(tree, torch.Tensor) else tree


def loss_terms(config, meta: dict, logits: dict, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    terms = {}
    for feature in config.output_features:
        terms[feature.name] = OUTPUTS[feature.type].loss(feature, meta["outputs"][feature.name], logits[feature.name], targets[feature.name])
    total = sum(f.loss.weight * terms[f.name] for f in config.output_features)
    return total, terms


class Collector:
    """Accumulates per-output predictions (and loss) over batches, in row order, then scores them."""

    def __init__(self, config, meta: dict, n: int | None = None):
        self.config, self.meta = config, meta
        self.parts: dict[str, list] = {f.name: [] for f in config.output_features}
        self.index: list[np.ndarray] = []
        self.loss_sum = {f.name: 0.0 for f in config.output_features}
        self.loss_sum["combined"] = 0.0
        self.rows = 0

    def add(self, index: np.ndarray, logits: dict, terms: dict | None = None, total=None) -> None:
        for feature in self.config.output_features:
            self.parts[feature.name].append(OUTPUTS[feature.type].predict(feature, self.meta["outputs"][feature.name], logits[feature.name].detach()))
        self.index.append(index)
        if terms is not None:
            for name, value in terms.items():
                self.loss_sum[name] += value.item() * len(index)
            self.loss_sum["combined"] += total.item() * len(index)
        self.rows += len(index)

    def outputs(self) -> dict[str, dict[str, np.ndarray]]:
        order = np.argsort(np.concatenate(self.index), kind="stable")
        return {name: {key: np.concatenate([p[key] for p in parts])[order] for key in parts[0]} for name, parts in self.parts.items()}

    def metrics(self, table: Table | None, with_loss: bool = True) -> dict:
        out = self.outputs()
        index = np.sort(np.concatenate(self.index))
        result: dict = {}
        for feature in self.config.output_features:
            target = table[feature.name][index] if table is not None else None
            scores = OUTPUTS[feature.type].metrics(feature, self.meta["outputs"][feature.name], target, out[feature.name])
            if with_loss:
                scores = {"loss": self.loss_sum[feature.name] / max(1, self.rows), **scores}
            result[feature.name] = scores
        if with_loss:
            result["combined"] = {"loss": self.loss_sum["combined"] / max(1, self.rows)}
        return result


@torch.no_grad()
def run_inference(model, table: Table, config, meta: dict, plan: Plan, with_targets: bool = True) -> Collector:
    model.eval()
    collector = Collector(config, meta)
    for index in batches.evaluation_order(len(table), plan["eval_batch_size"], batches.lengths(table, config)):
        inputs, targets = batches.collate(table, index, config, meta, with_targets)
        inputs, targets = to_device(inputs, plan["device"]), to_device(targets, plan["device"])
        with autocast(plan):
            logits = model(inputs)
            if with_targets:
                total, terms = loss_terms(config, meta, logits, targets)
        collector.add(index, logits, *((terms, total) if with_targets else ()))
    return collector


def evaluate(model, table: Table, config, meta: dict, plan: Plan) -> dict:
    return run_inference(model, table, config, meta, plan).metrics(table)


@dataclass
class History:
    evaluate_training_set: bool
    evaluations: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=lambda: {s: {} for s in SPLITS})
    best: dict | None = None
    train_examples: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0
    evaluate_seconds: float = 0.0

    def record(self, split: str, scores: dict) -> None:
        for output, values in scores.items():
            for name, value in values.items():
                if name != "confusion_matrix":
                    self.metrics[split].setdefault(output, {}).setdefault(name, []).append(value)

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> History:
        return cls(**state)

    def to_json(self) -> dict:
        source = ("a full evaluation pass over the training set after each evaluation" if self.evaluate_training_set
                  else "running aggregate of the training batches since the previous evaluation (approximate)")
        return {"training_metrics": source, "evaluations": self.evaluations, **self.metrics, "best": self.best}


def _trainable_state(model) -> dict[str, torch.Tensor]:
    """Copies of what training can change: trainable parameters and buffers (a frozen encoder is not copied)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


class Single:
    """The hooks `fit` calls around what a distributed run does differently, for one process: identities. The
    distributed implementation (`tunefork.backends.distributed.Distributed`) explains each one."""

    world = 1

    def wrap(self, model):
        return model

    def scaler(self, precision: str):
        return torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def sync_gradients(self, model, sync: bool) -> None:
        pass

    def shard(self, index: np.ndarray) -> tuple[np.ndarray, float]:
        return index, 1.0  # all rows of the batch, at full weight

    def mean(self, loss: torch.Tensor, weight: float) -> float:
        return loss.item()  # a sync point, once a step

    def gather(self, collector: Collector) -> Collector:
        return collector

    def evaluate(self, model, table: Table, config, meta: dict, plan: Plan) -> dict:
        return evaluate(model, table, config, meta, plan)

    def state(self, model) -> dict[str, torch.Tensor]:
        return _trainable_state(model)

    def load(self, model, state: dict) -> None:
        model.load_state_dict(state, strict=False)

    def load_optimizer(self, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)


@dataclass
class Progress:
    """Where training stands, beyond weights and optimizer: what a resumed run needs to continue exactly."""

    epoch: int = 0  # epochs started
    step: int = 0  # optimizer steps taken
    batch: int = 0  # batches of the current epoch done: the position in its data order
    epoch_rng: dict | None = None  # numpy generator state at the epoch's start; regenerates its batch order
    best_value: float | None = None
    stale: int = 0  # evaluations since the last improvement
    reductions: int = 0  # learning-rate reductions on plateau so far


def fit(model, tables: dict[str, Table], config, meta: dict, plan: Plan, seed: int, report=None,
        checkpoints=None, resume: dict | None = None, distributed=None) -> History:
    """Train `model` in place; the best weights (by the validation field and metric) are restored at the end.

    With `checkpoints` (a `checkpoint.Checkpoints`), a checkpoint follows every evaluation; `resume` (a loaded
    checkpoint) continues a run from it with the same batches, RNG draws and optimizer state as if never stopped.
    `distributed` (default: this one process) wraps the model, shards each batch and gathers evaluations when this
    is one of several workers (`tunefork.backends.distributed`); `plan["batch_size"]` is then per worker.
    """
    trainer = config.trainer
    dist = distributed or Single()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = plan["device"]
    model.to(device)
    adapter_steps = AdapterSteps(model)  # AdaLoRA's penalty and rank budget; nothing for other models
    model = dist.wrap(model)  # before the optimizer: FSDP replaces the parameters by their shards
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.optimizer(trainer.optimizer, params, plan["learning_rate"])
    factor = optim.schedule(trainer.learning_rate_scheduler, plan["total_steps"], plan["evaluate_every_steps"] or plan["steps_per_epoch"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = dist.scaler(plan["precision"])
    accumulation, total_steps = plan["gradient_accumulation_steps"], plan["total_steps"]

    train = tables["training"]
    by_length = batches.lengths(train, config) if trainer.group_by_length else None
    validation = tables.get("validation") if tables.get("validation") is not None and len(tables["validation"]) else None
    test = tables.get("test") if tables.get("test") is not None and len(tables["test"]) else None
    watch_split = "validation" if validation is not None else "training"
    watch_field, watch_metric = trainer.validation_field, trainer.validation_metric
    higher = higher_is_better(watch_metric)

    history, progress, best_state, best_adapter_state = History(trainer.evaluate_training_set), Progress(), None, None
    if resume is not None:
        progress, history, best_state = _restore(resume, model, optimizer, scheduler, scaler, dist)
        tensors, adapter_state = resume.get("adapter", ({}, {}))
        if adapter_state:  # AdaLoRA: its importance statistics and rank patterns (current, and the best's)
            adapter_steps.restore_checkpoint(tensors, adapter_state["current"])
            best_adapter_state = adapter_state["best"]
    stop = progress.step >= total_steps
    running = Collector(config, meta)
    while not stop:
        if progress.batch == 0:  # a new epoch: remember how its order was drawn
            progress.epoch += 1
            progress.epoch_rng = rng.bit_generator.state
        rng.bit_generator.state = progress.epoch_rng
        # the global batches: with N workers each holds N × batch_size rows, of which a worker computes its shard
        order = batches.training_order(len(train), plan["batch_size"] * dist.world, rng, trainer.should_shuffle, by_length)
        model.train()
        done_rows = sum(len(index) for index in order[: progress.batch])
        bar = tqdm(total=len(train), initial=done_rows, unit="ex", desc=f"epoch {progress.epoch}", leave=False,
                   disable=report is None or not report.progress)
        started = time.perf_counter()
        for i in range(progress.batch, len(order)):
            index = order[i]
            last_of_epoch = i == len(order) - 1
            dist.sync_gradients(model, (i + 1) % accumulation == 0 or last_of_epoch)
            mine, weight = dist.shard(index)
            inputs, targets = batches.collate(train, mine, config, meta)
            if weight:
                history.train_tokens += batches.token_count(inputs)
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            with autocast(plan):
                logits = model(inputs)
                loss, terms = loss_terms(config, meta, logits, targets)
                if trainer.regularization_lambda and trainer.regularization_type:
                    loss = loss + trainer.regularization_lambda * _penalty(params, trainer.regularization_type)
                extra = adapter_steps.penalty()  # trained on, not reported: the logged loss stays the task's
                objective = loss if extra is None else loss + extra
            # divide so the accumulated gradient is the mean over the effective batch, not the sum (`weight` is 1
            # in one process, and this worker's share of the global batch in a distributed run)
            scaled = objective * weight / accumulation
            (scaler.scale(scaled) if scaler else scaled).backward()
            if not trainer.evaluate_training_set and weight:
                running.add(mine, logits, terms, loss)
            history.train_examples += len(index)
            bar.update(len(index))
            if (i + 1) % accumulation and not last_of_epoch:
                continue
            optim.step(optimizer, scaler, trainer.gradient_clipping, params)
            adapter_steps.after_optimizer_step(progress.step + 1)  # AdaLoRA ranks by this step's gradients: before zero_grad
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            progress.step, progress.batch = progress.step + 1, i + 1
            shown = dist.mean(loss, weight)  # .item(): a sync point, once a step
            bar.set_postfix(loss=f"{shown:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
            if report is not None and hasattr(report, "step"):  # per-step loss and lr for experiment trackers
                report.step(progress.step, shown, scheduler.get_last_lr()[0])
            done = progress.step >= total_steps
            every = plan["evaluate_every_steps"]
            if not (done or (last_of_epoch if every is None else progress.step % every == 0)):
                continue
            history.train_seconds += time.perf_counter() - started
            eval_started = time.perf_counter()
            scores = {}
            if trainer.evaluate_training_set:
                scores["training"] = dist.evaluate(model, train, config, meta, plan)
            else:
                scores["training"] = dist.gather(running).metrics(train)
                running = Collector(config, meta)
            if not trainer.skip_all_evaluation:
                if validation is not None:
                    scores["validation"] = dist.evaluate(model, validation, config, meta, plan)
                if test is not None:
                    scores["test"] = dist.evaluate(model, test, config, meta, plan)
            for split, values in scores.items():
                history.record(split, values)
            history.evaluations.append({"epoch": progress.epoch, "step": progress.step, "learning_rate": scheduler.get_last_lr()[0]})
            value = scores.get(watch_split, scores["training"])[watch_field][watch_metric]
            best = progress.best_value
            improved = not math.isnan(value) and (best is None or (value > best if higher else value < best))
            if improved:
                progress.best_value, progress.stale = value, 0
                best_state, best_adapter_state = dist.state(model), adapter_steps.state()
                history.best = {"evaluation": len(history.evaluations) - 1, "epoch": progress.epoch, "step": progress.step,
                                "split": watch_split, "field": watch_field, "metric": watch_metric, "value": value}
            else:
                progress.stale += 1
                lr_section = trainer.learning_rate_scheduler
                if (lr_section.reduce_on_plateau and progress.reductions < lr_section.reduce_on_plateau
                        and progress.stale % lr_section.reduce_on_plateau_patience == 0):
                    progress.reductions += 1
                    scheduler.base_lrs = [lr * lr_section.reduce_on_plateau_rate for lr in scheduler.base_lrs]
            if checkpoints is not None:
                tensors, current = adapter_steps.checkpoint_state()
                checkpoints.save(dist.state(model), optimizer, scheduler, scaler, asdict(progress), history.to_state(),
                                 rng.bit_generator.state, improved,
                                 adapter=(tensors, {"current": current, "best": best_adapter_state} if current else {}))
            history.evaluate_seconds += time.perf_counter() - eval_started
            if report is not None:
                report.evaluation(progress.epoch, progress.step, scores, history, improved)
            model.train()
            started = time.perf_counter()
            if trainer.early_stop > 0 and progress.stale >= trainer.early_stop:
                log.info("early stop: %s %s has not improved for %d evaluations", watch_field, watch_metric, progress.stale)
                stop = True
            if done or stop:
                stop = True
                break
        bar.close()
        if not stop:  # time since the last evaluation (none when the epoch ended on one)
            history.train_seconds += time.perf_counter() - started
        progress.batch = 0
        if progress.epoch >= trainer.epochs and not trainer.train_steps:
            stop = True
    if best_state is not None:
        dist.load(model, best_state)
        if best_adapter_state is not None:
            adapter_steps.restore(best_adapter_state)
    return history


def _restore(resume: dict, model, optimizer, scheduler, scaler, dist):
    """Put a loaded checkpoint back: weights, optimizer, scheduler, RNGs, progress, history, best weights."""
    dist.load(model, resume["model"])
    dist.load_optimizer(optimizer, resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    if scaler is not None and resume["scaler"] is not None:
        scaler.load_state_dict(resume["scaler"])
    torch.set_rng_state(resume["torch_rng"])
    progress = Progress(**resume["progress"])
    history = History.from_state(resume["history"])
    return progress, history, resume.get("best_model")


def _penalty(params, kind: str) -> torch.Tensor:
    l1 = sum(p.abs().sum() for p in params) if "l1" in kind else 0.0
    l2 = sum(p.pow(2).sum() for p in params) if "l2" in kind else 0.0
    return l1 + l2
