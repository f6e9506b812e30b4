"""Preference tuning as a task of the one training loop (`training.loop`): DPO, ORPO and KTO losses, TRL's metrics.

TRL 1.16 computes these losses inside its trainers' `_compute_loss` methods, not in functions that can be called on
their own (only ORPO's odds-ratio term is a method, and it needs a trainer instance), so they are written here, term
by term as TRL writes them, and tests/test_preference.py proves them equal to TRL's DPOTrainer, ORPOTrainer and
KTOTrainer: the same tiny Llama, weights and batch give the same first-step loss and gradients within 1e-5.

    DPO   −log σ(β·Δ) with Δ = (log π − log π_ref)(chosen) − (… )(rejected), summed completion log-probs;
          cDPO with dpo_label_smoothing ε: (1−ε)·that − ε·log σ(−β·Δ) (Ludwig's form); IPO: (Δ/tokens − 1/2β)²
          on per-token log-ratios (TRL's normalised form)
    ORPO  the chosen sequence's mean token NLL (prompt included, as TRL) − β·mean log σ(log odds(chosen) − log
          odds(rejected)), on mean per-token log-probs; no reference model
    KTO   1 − σ(β·(ratio − KL)) for desirable rows and 1 − σ(β·(KL − ratio)) for undesirable ones, weighted, mean; KL
          is the micro-batch's mean log-ratio of mismatched pairs (each prompt with the previous row's completion),
          detached and clamped at 0 — per worker on Ray, where TRL averages it over the processes

The reference model is the frozen base: with an adapter, the same model with the adapter disabled (peft's
`disable_adapter`, so no second copy of the weights is held); without one, a frozen copy of the base weights loaded
once from `base_model` (a resumed run's reference is still the base, never the resumed weights). An adapter continued
from `pretrained_adapter_weights` is compared with itself as it was loaded, as TRL does: a second, frozen copy of it
(`recipes.preference` loads it), switched on for the reference forward.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tunefork.data import prompts
from tunefork.data.preference import Labelled, Pairs
from tunefork.data.tensors import TokenIds
from tunefork.training.llm import LLMTask
from tunefork.training.loop import Out, to_device

REFERENCE = "reference"  # the frozen copy of an adapter continued from pretrained_adapter_weights
PAIRED = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
          "logps/rejected")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable on both sides of −ln 2 (TRL's ORPO helper)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens given the ones before, and how many there are."""
    targets = labels[:, 1:]
    picked = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.clamp(min=0), reduction="none")
    mask = targets != prompts.IGNORE
    return (picked * mask).sum(-1), mask.sum(-1)


def stacked(parts: list[dict], pad_id: int) -> dict:
    """Right-padded batches of different widths stacked into one (one forward for chosen and rejected rows)."""
    width = max(p["input_ids"].shape[1] for p in parts)

    def padded(key, value):
        return torch.cat([F.pad(p[key], (0, width - p[key].shape[1]), value=value) for p in parts])

    return {"input_ids": padded("input_ids", pad_id), "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", prompts.IGNORE)}


def mismatched(encoded: prompts.Encoded, index: np.ndarray, limit: int) -> prompts.Encoded:
    """KTO's KL rows: each prompt of `index` with the completion of the row before it (the first takes the last's),
    as TRL pairs them; cut to `limit` tokens."""
    rows, prompt_lengths = [], []
    for j, i in enumerate(index):
        row, donor = encoded.ids.row(i), encoded.ids.row(index[j - 1])
        prompt = row[: encoded.prompt_lengths[i]].tolist()
        rows.append((prompt + donor[encoded.prompt_lengths[index[j - 1]]:].tolist())[:limit])
        prompt_lengths.append(len(prompt))
    return prompts.Encoded(TokenIds.from_rows(rows), np.asarray(prompt_lengths, dtype=np.int64))


class Reference:
    """The frozen reference model: the base under the adapter, or a frozen copy of the base weights."""

    def __init__(self, config):
        self.config, self.copy = config, None

    @torch.no_grad()
    def logits(self, model, batch: dict, device: str) -> torch.Tensor:
        from tunefork.adapters import wrapper as adapters
        from tunefork.models import llm

        net = getattr(model, "module", model)  # DDP wraps the model; the adapter is switched on the model itself
        if adapters.is_peft(net) and REFERENCE in net.peft_config:
            trained = net.active_adapter
            net.set_adapter(REFERENCE, inference_mode=True)
            try:
                return llm.logits(net, batch)
            finally:
                net.set_adapter(trained)
        if adapters.is_peft(net):
            with net.disable_adapter():  # no virtual tokens either: the base model's own positions
                return net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        if self.copy is None:
            self.copy = llm.place(llm.load_base(self.config).requires_grad_(False).eval(), device)
        return llm.logits(self.copy, batch)


class Sums:
    """Summed per-row values of a split (what TRL averages), merged across workers: a split's preference scores."""

    def __init__(self, output: str, kind: str, sums: dict | None = None):
        self.output, self.kind, self.sums = output, kind, dict(sums or {})

    def add(self, index: np.ndarray, out: Out) -> None:
        for key, value in out.record.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def state(self) -> dict:
        return self.sums

    def merge(self, states: list[dict]) -> Sums:
        merged: dict = {}
        for state in states:
            for key, value in state.items():
                merged[key] = merged.get(key, 0.0) + value
        return Sums(self.output, self.kind, merged)

    def scores(self, table=None) -> dict:
        s = self.sums

        def mean(key: str, count: str = "rows") -> float:
            return s[key] / s[count] if s.get(count) else float("nan")

        if self.kind == "kto":  # TRL's: rewards and log-probs over the desirable rows, and over the undesirable ones
            values = {"loss": mean("loss"), "kl": mean("kl")}
            values.update({f"{what}/{part}": mean(f"{what}/{part}", part)
                           for part in ("chosen", "rejected") for what in ("rewards", "logps")})
            values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"]
        else:
            values = {k: mean(k) for k in ("loss", *PAIRED, *(("nll_loss", "log_odds_ratio") if self.kind == "orpo" else ()))}
        return {self.output: values, "combined": {"loss": values["loss"]}}


def _record(rows: int, loss: torch.Tensor, values: dict[str, torch.Tensor]) -> dict:
    """Per-micro-batch sums as floats, read back in one transfer."""
    names = list(values)
    numbers = torch.stack([loss.detach().float() * rows, *(values[k].detach().float().sum() for k in names)]).tolist()
    return {"rows": rows, "loss": numbers[0], **dict(zip(names, numbers[1:], strict=True))}


class PreferenceTask(LLMTask):
    """The loop's task for `trainer.type: dpo | orpo | kto` (batches, loss, scores); units are rows (pairs)."""

    def __init__(self, config, pad_id: int, limit: int):
        super().__init__(config, pad_id)
        self.trainer, self.limit, self.reference = config.trainer, limit, Reference(config)

    def lengths(self, table) -> np.ndarray:
        return table.lengths

    def units(self, table, index: np.ndarray) -> int:
        return len(index)

    def accumulator(self) -> Sums:
        return Sums(self.config.output.name, self.trainer.type)

    def forward(self, model, table: Pairs | Labelled, index: np.ndarray, device: str) -> Out:
        return {"dpo": self._dpo, "orpo": self._orpo, "kto": self._kto}[self.trainer.type](model, table, index, device)

    def _pair_batch(self, table: Pairs, index: np.ndarray, device: str) -> dict:
        parts = [prompts.batch(table.chosen, index, self.pad_id), prompts.batch(table.rejected, index, self.pad_id)]
        return to_device(stacked(parts, self.pad_id), device)

    def _dpo(self, model, table: Pairs, index: np.ndarray, device: str) -> Out:
        from tunefork.models.llm import logits

        batch, beta, n = self._pair_batch(table, index, device), self.trainer.strength, len(index)
        # the reference first: switching adapters toggles requires_grad, which must not happen inside a graph
        ref, _ = token_logps(self.reference.logits(model, batch, device), batch["labels"])
        logps, tokens = token_logps(logits(model, batch), batch["labels"])
        ratios = logps - ref
        chosen, rejected = ratios[:n], ratios[n:]
        if self.trainer.dpo_loss_type == "ipo":  # per-token log-ratios (TRL's normalised IPO)
            delta = chosen / tokens[:n].clamp(min=1) - rejected / tokens[n:].clamp(min=1)
            losses = (delta - 1 / (2 * beta)) ** 2
        else:
            margin, smoothing = beta * (chosen - rejected), self.trainer.dpo_label_smoothing
            losses = -(1 - smoothing) * F.logsigmoid(margin) - smoothing * F.logsigmoid(-margin)
        loss = losses.mean()
        return Out(loss, n, int(batch["attention_mask"].sum()), _record(n, loss, self._paired(
            beta * chosen, beta * rejected, logps[:n], logps[n:])))

    def _orpo(self, model, table: Pairs, index: np.ndarray, device: str) -> Out:
        from tunefork.models.llm import logits, token_loss_sum

        batch, beta, n = self._pair_batch(table, index, device), self.trainer.strength, len(index)
        out = logits(model, batch)
        summed, tokens = token_logps(out, batch["labels"])
        mean = summed / tokens.clamp(min=1)  # ORPO's odds are of the mean per-token probability
        chosen, rejected = mean[:n], mean[n:]
        # the chosen sequence's NLL over every real token, prompt included (TRL's ORPOTrainer)
        whole = batch["input_ids"][:n].masked_fill(batch["attention_mask"][:n] == 0, prompts.IGNORE)
        nll_sum, nll_tokens = token_loss_sum(out[:n], whole)
        nll = nll_sum / max(1, nll_tokens)
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        ratio = F.logsigmoid(log_odds)
        loss = nll - beta * ratio.mean()
        values = self._paired(beta * chosen, beta * rejected, chosen, rejected)
        values.update({"nll_loss": nll.expand(n), "log_odds_ratio": ratio})
        return Out(loss, n, int(batch["attention_mask"].sum()), _record(n, loss, values))

    @staticmethod
    def _paired(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> dict:
        return {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                "rewards/margins": chosen_rewards - rejected_rewards,
                "logps/chosen": chosen_logps, "logps/rejected": rejected_logps}

    def _kto(self, model, table: Labelled, index: np.ndarray, device: str) -> Out:
        from tunefork.models.llm import logits

        trainer, beta = self.trainer, self.trainer.strength
        batch = to_device(prompts.batch(table.completion, index, self.pad_id), device)
        other = to_device(prompts.batch(mismatched(table.completion, index, self.limit), np.arange(len(index)),
                                        self.pad_id), device)
        ref, _ = token_logps(self.reference.logits(model, batch, device), batch["labels"])  # first, as in DPO
        kl_ref, _ = token_logps(self.reference.logits(model, other, device), other["labels"])
        with torch.no_grad():  # the plain module: a no-grad pass needs no DDP bookkeeping
            kl_logps, _ = token_logps(logits(getattr(model, "module", model), other), other["labels"])
        kl = (kl_logps - kl_ref).mean().clamp(min=0)
        logps, _ = token_logps(logits(model, batch), batch["labels"])
        good = torch.as_tensor(table.desirable[index], device=logps.device)
        ratios = logps - ref
        losses = torch.where(good, trainer.kto_desirable_weight * (1 - torch.sigmoid(beta * (ratios - kl))),
                             trainer.kto_undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratios))))
        loss = losses.mean()
        rewards = (beta * ratios).detach()
        values = {"chosen": good.float(), "rejected": (~good).float(), "kl": kl.expand(len(index)),
                  "rewards/chosen": rewards[good], "rewards/rejected": rewards[~good],
                  "logps/chosen": logps[good], "logps/rejected": logps[~good]}
        return Out(loss, len(index), int(batch["attention_mask"].sum()), _record(len(index), loss, values))
