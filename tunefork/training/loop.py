"""The one training loop, for every model type: the step written out, in the spirit of torchtune's recipes.

    autocast → loss × (micro-batch units / effective-batch units) → backward → clip → optimizer step → adapter step →
    zero_grad → scheduler step → (every N steps) evaluate → best weights, early stop, reduce on plateau → checkpoint

A NaN or infinite step loss stops the run before that step's optimizer step (`training.divergence`).

What differs between a classifier and a causal LM is a small `task` each recipe supplies (`training.ecd.ECDTask`,
`training.llm.LLMTask`), plain methods, no hooks:

    lengths(table)                 tokens per row (length-grouped batches, length-sorted evaluation), or None
    units(table, index)            what the loss is a mean over, for rows `index`: rows (ECD) or scored tokens (LLM)
    forward(model, table, index, device) → Out(loss, units, tokens, record): the loss is the mean over its units
    accumulator() / merged(parts)  collects `Out`s into the scores of a split: {output: {metric: v}, combined: {loss}}
    adapted(model)                 (adapter section, peft model) pairs that need step hooks (AdaLoRA)

Each micro-batch is weighted by its share of the effective batch's units, so the accumulated gradient is the mean
over the whole effective batch — also for a short last group, and across the ranks of a distributed run (where
`distributed` shards each global batch; see `backends/distributed.py`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from tunefork.adapters.steps import AdapterSteps
from tunefork.plan import Plan, higher_is_better
from tunefork.training import batches, optim, plateau
from tunefork.training.divergence import Watch
from tunefork.training.history import History

log = logging.getLogger("tunefork.train")


@dataclass
class Out:
    """One micro-batch through a task: its loss (a mean over `units`), real tokens read, and what scoring needs;
    `positions`: the token positions computed, padding included (0: not counted by this task)."""

    loss: torch.Tensor
    units: int
    tokens: int
    record: object = None
    positions: int = 0


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


def placed(model, device: str):
    """`model` on `device`; bitsandbytes-quantized weights were put on their GPU at load and refuse `.to`."""
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        model.to(device)
    return model


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Copies of what training can change: trainable parameters and buffers (a frozen encoder is not copied)."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


class Single:
    """What a distributed run does differently, for one process: identities. The distributed implementation
    (`tunefork.backends.distributed.Distributed`) explains each one."""

    world = 1

    def wrap(self, model, blocks):
        return model

    def evaluation_model(self, model):
        return model

    def scaler(self, precision: str):
        return torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def sync_gradients(self, model, sync: bool) -> None:
        pass

    def shard(self, index: np.ndarray) -> tuple[np.ndarray, bool]:
        return index, True  # all rows of the batch, and they count

    def batches(self, order: list[np.ndarray]):
        return ((index, True) for index in order)

    def sum(self, value: float) -> float:
        return value

    def merged(self, task, accumulator):
        return accumulator

    def state(self, model) -> dict[str, torch.Tensor]:
        return trainable_state(model)

    def load(self, model, state: dict) -> None:
        model.load_state_dict(state, strict=False)

    def load_optimizer(self, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)


SINGLE = Single()


@torch.no_grad()
def evaluate(task, model, table, plan: Plan, dist=SINGLE) -> dict:
    """Scores of `table` in length-sorted batches; with several workers each scores its share and they merge."""
    return accumulate(task, model, table, plan, dist).scores(table)


@torch.no_grad()
def accumulate(task, model, table, plan: Plan, dist=SINGLE):
    """The task's accumulator over every row of `table` (merged across workers): sums a caller can add to others'."""
    net = dist.evaluation_model(model)
    net.eval()
    accumulator = task.accumulator()
    for index, counts in dist.batches(batches.evaluation_order(len(table), plan["eval_batch_size"], task.lengths(table))):
        with autocast(plan):
            out = task.forward(net, table, index, plan["device"])
        if counts:
            accumulator.add(index, out)
    return dist.merged(task, accumulator)


def scores_only(task, model, tables: dict, config, plan: Plan) -> History:
    """A run with nothing to train (`trainer.type: none`): every split scored once, so it still has its numbers."""
    history = History(evaluate_training_set=True)
    for split, table in tables.items():
        if len(table):
            history.record(split, evaluate(task, placed(model, plan["device"]), table, plan))
    history.evaluations.append({"epoch": 0, "step": 0, "learning_rate": None})
    watch = "validation" if history.metrics["validation"] else "training"
    field_, metric = config.trainer.validation_field, config.trainer.validation_metric
    history.best = {"evaluation": 0, "epoch": 0, "step": 0, "split": watch, "field": field_, "metric": metric,
                    "value": history.metrics[watch][field_][metric][0]}
    return history


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
    plateau_best: float | None = None  # reduce_eval_metric on reduce_eval_split: the best so far
    plateau_stale: int = 0  # evaluations since it last improved


@dataclass
class _Run:
    """What `fit` and its helpers share: the model, the optimizer and the rest of one run's moving parts."""

    task: object
    model: torch.nn.Module
    tables: dict
    config: object
    plan: Plan
    dist: object
    report: object
    checkpoints: object
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: object
    adapters: AdapterSteps
    rng: np.random.Generator
    history: History
    progress: Progress
    watch: Watch | None = None  # divergence: every step's loss, and the weights handed back
    best_state: dict | None = None
    best_adapter_state: object = None


def fit(task, model, tables: dict, config, plan: Plan, seed: int, report=None, checkpoints=None,
        resume: dict | None = None, distributed=None) -> History:
    """Train `model` in place; the best weights (by `trainer.validation_field` / `validation_metric`) are restored
    at the end. With `checkpoints` a checkpoint follows every evaluation; `resume` (a loaded checkpoint) continues a
    run with the same batches, RNG draws and optimizer state as if it had never stopped. `distributed` (default: this
    one process) wraps the model and shards each global batch of N × `plan["batch_size"]` rows."""
    trainer = config.trainer
    run = _start(task, model, tables, config, plan, seed, report, checkpoints, resume, distributed or SINGLE)
    train, accumulation, world = tables["training"], plan["gradient_accumulation_steps"], run.dist.world
    by_length = task.lengths(train) if trainer.group_by_length else None
    running = task.accumulator()
    stop = run.progress.step >= plan["total_steps"]
    while not stop:
        progress = run.progress
        if progress.batch == 0:  # a new epoch: remember how its order was drawn
            progress.epoch += 1
            progress.epoch_rng = run.rng.bit_generator.state
        run.rng.bit_generator.state = progress.epoch_rng
        # the global batches: with N workers each holds N × batch_size rows, of which a worker computes its shard
        order = batches.training_order(len(train), plan["batch_size"] * world, run.rng, trainer.should_shuffle, by_length)
        run.model.train()
        bar = tqdm(total=len(train), initial=sum(len(i) for i in order[: progress.batch]), unit="ex",
                   desc=f"epoch {progress.epoch}", leave=False, disable=report is None or not report.progress)
        started = time.perf_counter()
        for i in range(progress.batch, len(order)):
            start = i - i % accumulation
            group = order[start : start + accumulation]
            last = i == len(order) - 1 or i % accumulation == accumulation - 1
            if i == start or i == progress.batch:
                group_units, group_loss = sum(task.units(train, g) for g in group), 0.0
            run.dist.sync_gradients(run.model, last)
            out, counts = _backward(run, train, order[i], group_units, running)
            group_loss += out.loss.item() * out.units if counts else 0.0  # .item(): a sync point, once a micro-batch
            bar.update(len(order[i]))
            if not last:
                continue
            shown = run.dist.sum(group_loss) / max(1, group_units)  # all-reduced: every rank sees the same value
            run.watch.loss(progress.step + 1, shown, run.history.best)  # NaN or inf: stop before the step
            _step(run)
            progress.batch = i + 1
            lr = run.scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{shown:.4f}", lr=f"{lr:.2e}", refresh=False)
            if report is not None and hasattr(report, "step"):  # per-step loss and lr for experiment trackers
                report.step(progress.step, shown, lr)
            done = progress.step >= plan["total_steps"]
            every = plan["evaluate_every_steps"]
            if not (done or (i == len(order) - 1 if every is None else progress.step % every == 0)):
                continue
            run.history.train_seconds += time.perf_counter() - started
            _evaluate_and_keep(run, running)
            running = task.accumulator()
            started = time.perf_counter()
            if trainer.early_stop > 0 and progress.stale >= trainer.early_stop:
                log.info("early stop: %s has not improved for %d evaluations", plan["best_model"], progress.stale)
                done = True
            if done:
                stop = True
                break
        bar.close()
        if not stop:  # time since the last evaluation (none when the epoch ended on one)
            run.history.train_seconds += time.perf_counter() - started
        run.progress.batch = 0
        if run.progress.epoch >= trainer.epochs and not trainer.train_steps:
            stop = True
    if run.best_state is not None:
        run.dist.load(run.model, run.best_state)
        if run.best_adapter_state is not None:
            run.adapters.restore(run.best_adapter_state)
    run.watch.weights(run.params, run.dist, run.progress.step, run.history.best)
    return run.history


def _start(task, model, tables, config, plan, seed, report, checkpoints, resume, dist) -> _Run:
    """The optimizer, schedule, scaler and adapter hooks for `model`; a resumed run's state put back."""
    trainer = config.trainer
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    placed(model, plan["device"])
    adapters = AdapterSteps(task.adapted(model))  # AdaLoRA's penalty and rank budget; nothing for other models
    model = dist.wrap(model, task.blocks(model))  # before the optimizer: FSDP replaces the parameters by their shards
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.optimizer(trainer.optimizer, params, plan["learning_rate"])
    factor = optim.schedule(trainer.learning_rate_scheduler, plan["total_steps"],
                            plan["evaluate_every_steps"] or plan["steps_per_epoch"], plan["learning_rate"])
    if trainer.compile:  # compiled lazily, at the first step: `_backward` times that step
        model = torch.compile(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    run = _Run(task, model, tables, config, plan, dist, report, checkpoints, params, optimizer, scheduler,
               dist.scaler(plan["precision"]), adapters, rng, History(trainer.evaluate_training_set), Progress(),
               Watch(config, plan))
    if resume is not None:
        _restore(run, resume)
    return run


def _backward(run: _Run, train, index: np.ndarray, group_units: int, running):
    """Forward and backward of this worker's share of one global micro-batch."""
    trainer = run.config.trainer
    mine, counts = run.dist.shard(index)
    first = trainer.compile and run.history.compile_seconds is None
    started = time.perf_counter()
    with autocast(run.plan):
        out = run.task.forward(run.model, train, mine, run.plan["device"])
        objective = out.loss
        if trainer.regularization_lambda and trainer.regularization_type:
            objective = objective + trainer.regularization_lambda * _penalty(run.params, trainer.regularization_type)
        extra = run.adapters.penalty()  # trained on, not reported: the logged loss stays the task's
        if extra is not None:
            objective = objective + extra
    # the micro-batch's share of the effective batch's units (× world: the strategy averages over the workers), so
    # the accumulated gradient is the mean over the whole effective batch — not a sum over micro-batches
    share = run.dist.world * out.units / max(1, group_units) if counts else 0.0
    scaled = objective * share
    (run.scaler.scale(scaled) if run.scaler else scaled).backward()
    if first:
        run.history.compile_seconds = time.perf_counter() - started
    if counts:
        run.history.train_tokens += out.tokens
        run.history.train_positions += out.positions
        if not trainer.evaluate_training_set:
            running.add(mine, out)
    run.history.train_examples += len(index)
    return out, counts


def _step(run: _Run) -> None:
    optim.step(run.optimizer, run.scaler, run.config.trainer.gradient_clipping, run.params)
    run.adapters.after_optimizer_step(run.progress.step + 1)  # AdaLoRA ranks by this step's gradients: before zero_grad
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.progress.step += 1


def _evaluate_and_keep(run: _Run, running) -> None:
    """Score the splits, keep the best weights, count a plateau, checkpoint, and tell the report."""
    trainer, progress, history, plan, task = run.config.trainer, run.progress, run.history, run.plan, run.task
    started = time.perf_counter()
    tables, rows = run.tables, plan["evaluation_rows"]
    scores = {"training": evaluate(task, run.model, _first_rows(tables["training"], rows), plan, run.dist)
              if trainer.evaluate_training_set else run.dist.merged(task, running).scores(tables["training"])}
    if not trainer.skip_all_evaluation:
        for split in ("validation", "test"):
            if tables.get(split) is not None and len(tables[split]):
                scores[split] = evaluate(task, run.model, _first_rows(tables[split], rows), plan, run.dist)
    for split, values in scores.items():
        history.record(split, values)
    history.evaluations.append({"epoch": progress.epoch, "step": progress.step, "learning_rate": run.scheduler.get_last_lr()[0]})
    watch = "validation" if "validation" in scores else "training"
    field_, metric = trainer.validation_field, trainer.validation_metric
    value = scores[watch][field_][metric]
    best = progress.best_value
    improved = math.isfinite(value) and (best is None or (value > best if higher_is_better(metric) else value < best))
    if improved:
        progress.best_value, progress.stale = value, 0
        run.best_state, run.best_adapter_state = run.dist.state(run.model), run.adapters.state()
        history.best = {"evaluation": len(history.evaluations) - 1, "epoch": progress.epoch, "step": progress.step,
                        "split": watch, "field": field_, "metric": metric, "value": value}
    else:
        progress.stale += 1
    plateau.reduce(run.config, run.progress, run.scheduler, scores)
    if run.checkpoints is not None:
        tensors, current = run.adapters.checkpoint_state()
        run.checkpoints.save(run.dist.state(run.model), run.optimizer, run.scheduler, run.scaler, asdict(progress),
                             history.to_state(), run.rng.bit_generator.state, improved,
                             adapter=(tensors, {"current": current, "best": run.best_adapter_state} if current else {}))
    history.evaluate_seconds += time.perf_counter() - started
    if run.report is not None:
        run.report.evaluation(progress.epoch, progress.step, scores, history, improved)
    run.model.train()


def _first_rows(table, rows: int | None):
    """`trainer.eval_steps`: the first `rows` rows of a split (Ludwig's first eval_steps batches), or all of them."""
    return table if rows is None or len(table) <= rows else table.take(np.arange(rows))


def _restore(run: _Run, resume: dict) -> None:
    """Put a loaded checkpoint back: weights, optimizer, scheduler, RNGs, progress, history, best weights."""
    run.dist.load(run.model, resume["model"])
    run.dist.load_optimizer(run.optimizer, resume["optimizer"])
    run.scheduler.load_state_dict(resume["scheduler"])
    if run.scaler is not None and resume["scaler"] is not None:
        run.scaler.load_state_dict(resume["scaler"])
    torch.set_rng_state(resume["torch_rng"])
    run.progress = Progress(**resume["progress"])
    run.history = History.from_state(resume["history"])
    run.best_state = resume.get("best_model")
    tensors, adapter_state = resume.get("adapter", ({}, {}))
    if adapter_state:  # AdaLoRA: its importance statistics and rank patterns (current, and the best's)
        run.adapters.restore_checkpoint(tensors, adapter_state["current"])
        run.best_adapter_state = adapter_state["best"]


def _penalty(params, kind: str) -> torch.Tensor:
    l1 = sum(p.abs().sum() for p in params) if "l1" in kind else 0.0
    l2 = sum(p.pow(2).sum() for p in params) if "l2" in kind else 0.0
    return l1 + l2
