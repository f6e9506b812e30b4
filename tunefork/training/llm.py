"""The causal-LM recipe: instruction fine-tuning with the loss on the output tokens only, written out like the ECD loop.

    autocast → summed token loss / tokens of the effective batch → backward → clip → optimizer step → zero_grad →
    scheduler step

Shared pieces are the ECD recipe's plain functions (optimizer, schedule, clipping, autocast, batch order, History);
what differs is the batch (prompt + output ids, labels -100 on the prompt) and the metric (token loss, perplexity).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from tunefork.data import prompts
from tunefork.models.llm import logits, place, token_loss_sum
from tunefork.training import batches, optim
from tunefork.training.loop import History, autocast, to_device

log = logging.getLogger("tunefork.train")


def scored_tokens(encoded: prompts.Encoded, index: np.ndarray) -> int:
    """Output tokens that carry a loss in rows `index` (the first token of a row has no predecessor to predict it)."""
    targets, prompt = encoded.target_lengths[index], encoded.prompt_lengths[index]
    return int((targets - ((prompt == 0) & (targets > 0))).sum())


def scores(loss_sum: float, tokens: int) -> dict[str, float]:
    loss = loss_sum / tokens if tokens else float("nan")
    # exp overflows a float past 709: a diverged run reports an infinite perplexity (null in JSON), not an error
    perplexity = float("nan") if not tokens else (math.exp(loss) if loss < 709 else float("inf"))
    return {"loss": loss, "perplexity": perplexity}


@torch.no_grad()
def score(model, encoded: prompts.Encoded, pad_id: int, batch_size: int, device: str, plan) -> dict[str, float]:
    """Mean loss per output token over `encoded` and its perplexity exp(loss): teacher forcing, no generation."""
    model.eval()
    total, tokens = 0.0, 0
    for index in batches.evaluation_order(len(encoded), batch_size, encoded.ids.lengths):
        batch = to_device(prompts.batch(encoded, index, pad_id), device)
        with autocast(plan):
            summed, n = token_loss_sum(logits(model, batch), batch["labels"])
        total, tokens = total + summed.item(), tokens + n
    return scores(total, tokens)


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _evaluation(model, tables, config, plan, pad_id, running) -> dict:
    """Scores per split as {split: {output: {loss, perplexity}, combined: {loss}}} (the ECD layout)."""
    out, device, size = config.output.name, plan["device"], plan["eval_batch_size"]
    found = {"training": score(model, tables["training"], pad_id, size, device, plan)
             if config.trainer.evaluate_training_set else scores(*running)}
    if not config.trainer.skip_all_evaluation:
        for split in ("validation", "test"):
            if tables.get(split) is not None and len(tables[split]):
                found[split] = score(model, tables[split], pad_id, size, device, plan)
    return {split: {out: values, "combined": {"loss": values["loss"]}} for split, values in found.items()}


def fit(model, tables: dict[str, prompts.Encoded], config, plan, pad_id: int, seed: int, report=None) -> History:
    """Train `model` in place; the best weights (by the validation loss or perplexity) are restored at the end."""
    trainer, adapter = config.trainer, config.adapter
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = plan["device"]
    place(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.optimizer(trainer.optimizer, params, plan["learning_rate"])
    factor = optim.schedule(trainer.learning_rate_scheduler, plan["total_steps"], plan["evaluate_every_steps"] or plan["steps_per_epoch"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = torch.amp.GradScaler("cuda") if plan["precision"] == "fp16" else None
    accumulation, total_steps = plan["gradient_accumulation_steps"], plan["total_steps"]

    train = tables["training"]
    by_length = train.ids.lengths if trainer.group_by_length else None
    watch_split = "validation" if tables.get("validation") is not None and len(tables["validation"]) else "training"
    # one output: its loss is the combined loss, and perplexity is reported for it alone
    watch_field, watch_metric = config.output.name, trainer.validation_metric
    history = History(trainer.evaluate_training_set)
    best_value, best_state, best_adapter_state, stale = None, None, None, 0
    step, epoch, stop = 0, 0, False
    running = [0.0, 0]  # summed token loss and tokens since the last evaluation
    while not stop:
        epoch += 1
        model.train()
        order = batches.training_order(len(train), plan["batch_size"], rng, trainer.should_shuffle, by_length)
        bar = tqdm(total=len(train), unit="ex", desc=f"epoch {epoch}", leave=False, disable=report is None or not report.progress)
        started = time.perf_counter()
        for i, index in enumerate(order):
            if i % accumulation == 0:
                # the effective batch's loss is the mean over *all* its output tokens: each micro-batch's sum is
                # divided by the token count of the whole group, so a short micro-batch does not weigh more
                group = np.concatenate(order[i : i + accumulation])
                group_tokens = max(1, scored_tokens(train, group))
                step_loss = 0.0
            batch = prompts.batch(train, index, pad_id)
            history.train_tokens += int(batch["attention_mask"].sum())
            batch = to_device(batch, device)
            with autocast(plan):
                summed, n = token_loss_sum(logits(model, batch), batch["labels"])
                objective = summed / group_tokens
                extra = adapter.penalty(model) if adapter is not None else None  # AdaLoRA's orthogonality term
                if extra is not None:
                    objective = objective + extra / accumulation
            (scaler.scale(objective) if scaler else objective).backward()
            value = summed.item()  # a sync point, once a micro-batch; the logged loss is the task's alone
            step_loss += value
            running[0], running[1] = running[0] + value, running[1] + n
            history.train_examples += len(index)
            bar.update(len(index))
            last_of_epoch = i == len(order) - 1
            if (i + 1) % accumulation and not last_of_epoch:
                continue
            optim.step(optimizer, scaler, trainer.gradient_clipping, params)
            if adapter is not None:
                adapter.after_optimizer_step(model, step + 1)  # AdaLoRA ranks by this step's gradients: before zero_grad
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            bar.set_postfix(loss=f"{step_loss / group_tokens:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
            if report is not None and hasattr(report, "step"):
                report.step(step, step_loss / group_tokens, scheduler.get_last_lr()[0])
            done = step >= total_steps
            every = plan["evaluate_every_steps"]
            if not (done or (last_of_epoch if every is None else step % every == 0)):
                continue
            history.train_seconds += time.perf_counter() - started
            eval_started = time.perf_counter()
            found = _evaluation(model, tables, config, plan, pad_id, running)
            running = [0.0, 0]
            for split, values in found.items():
                history.record(split, values)
            history.evaluations.append({"epoch": epoch, "step": step, "learning_rate": scheduler.get_last_lr()[0]})
            value = found.get(watch_split, found["training"])[watch_field][watch_metric]
            improved = best_value is None or value < best_value  # loss and perplexity: lower is better
            if improved and not math.isnan(value):
                best_value, stale = value, 0
                best_state = _trainable_state(model)
                best_adapter_state = adapter.training_state(model) if adapter is not None else None
                history.best = {"evaluation": len(history.evaluations) - 1, "epoch": epoch, "step": step,
                                "split": watch_split, "field": watch_field, "metric": watch_metric, "value": value}
            else:
                stale += 1
            history.evaluate_seconds += time.perf_counter() - eval_started
            if report is not None:
                report.evaluation(epoch, step, found, history, improved)
            model.train()
            started = time.perf_counter()
            if (trainer.early_stop > 0 and stale >= trainer.early_stop) or done:
                if not done:
                    log.info("early stop: %s %s has not improved for %d evaluations", watch_field, watch_metric, stale)
                stop = True
                break
        bar.close()
        if epoch >= trainer.epochs and not trainer.train_steps:
            stop = True
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
        if adapter is not None:
            adapter.restore_training_state(model, best_adapter_state)
    model.eval()
    return history
