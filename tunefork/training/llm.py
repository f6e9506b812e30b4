"""The causal-LM task: what the one training loop needs to know about instruction fine-tuning (`training.loop`).

A batch is prompt + output ids, right-padded, with labels -100 on the prompt and the padding (or, with
`trainer.packing`, packs of rows: `data.packing`); the loss is the mean
cross-entropy over the output tokens (the units the loop weights micro-batches by, so a short micro-batch does not
weigh more than its tokens); the scores are that loss and its perplexity exp(loss).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tunefork.data import packing, prompts
from tunefork.models.llm import logits, token_loss_sum
from tunefork.training.loop import Out, to_device


def scores(loss_sum: float, tokens: int) -> dict[str, float]:
    loss = loss_sum / tokens if tokens else float("nan")
    # exp overflows a float past 709: a diverged run reports an infinite perplexity (null in JSON), not an error
    perplexity = float("nan") if not tokens else (math.exp(loss) if loss < 709 else float("inf"))
    return {"loss": loss, "perplexity": perplexity}


class TokenLoss:
    """Summed output-token loss and token count over batches: a split's loss and perplexity."""

    def __init__(self, output: str, total: float = 0.0, tokens: int = 0):
        self.output, self.total, self.tokens = output, total, tokens

    def add(self, index: np.ndarray, out: Out) -> None:
        self.total += out.record
        self.tokens += out.units

    def state(self) -> tuple[float, int]:
        return self.total, self.tokens

    def merge(self, states: list[tuple[float, int]]) -> TokenLoss:
        return TokenLoss(self.output, sum(s[0] for s in states), sum(s[1] for s in states))

    def scores(self, table=None) -> dict:
        values = scores(self.total, self.tokens)
        return {self.output: values, "combined": {"loss": values["loss"]}}


class LLMTask:
    """A causal LM's batches, loss and scores for `training.loop.fit` and `training.loop.evaluate`."""

    def __init__(self, config, pad_id: int):
        self.config, self.pad_id = config, pad_id

    def lengths(self, table: prompts.Encoded | packing.Packed) -> np.ndarray:
        return table.lengths if isinstance(table, packing.Packed) else table.ids.lengths

    def units(self, table: prompts.Encoded, index: np.ndarray) -> int:
        return table.scored(index)

    def forward(self, model, table: prompts.Encoded | packing.Packed, index: np.ndarray, device: str) -> Out:
        if isinstance(table, packing.Packed):
            batch, tokens = packing.batch(table, index, self.pad_id), int(table.lengths[index].sum())
        else:
            batch = prompts.batch(table, index, self.pad_id)
            tokens = int(batch["attention_mask"].sum())
        batch = to_device(batch, device)
        summed, n = token_loss_sum(logits(model, batch), batch["labels"])
        # the mean over this micro-batch's output tokens; the summed value is what a split's loss adds up
        return Out(summed / max(1, n), n, tokens, summed.item(), positions=batch["input_ids"].numel())

    def accumulator(self) -> TokenLoss:
        return TokenLoss(self.config.output.name)

    def adapted(self, model) -> list:
        from tunefork.adapters import wrapper as adapters

        return [(self.config.adapter, model)] if self.config.adapter is not None and adapters.is_peft(model) else []

    def blocks(self, model) -> list:
        return [model]


@torch.no_grad()
def score(model, encoded: prompts.Encoded, config, pad_id: int, plan) -> dict:
    """Loss and perplexity of the reference outputs of `encoded` (teacher forcing, no generation)."""
    return token_loss(model, encoded, config, pad_id, plan).scores()


@torch.no_grad()
def token_loss(model, encoded: prompts.Encoded, config, pad_id: int, plan) -> TokenLoss:
    """The summed output-token loss and token count of `encoded`: parts of a dataset add up to the whole's loss."""
    from tunefork.training.loop import accumulate

    return accumulate(LLMTask(config, pad_id), model, encoded, plan)
