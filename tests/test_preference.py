"""Preference tuning (trainer.type dpo, orpo, kto) equals TRL: the same tiny Llama, weights and batch give TRL's
first-step loss, gradients and reward metrics within 1e-5; then the data, config and run behaviour around it."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from tunefork import config as config_mod
from tunefork import hardware
from tunefork import plan as plan_mod
from tunefork.recipes import for_config

trl = pytest.importorskip("trl", reason="TRL is a test dependency: pip install 'tunefork[test]'")

GOOD = ["great", "wonderful", "superb", "moving", "brilliant", "charming", "fresh", "funny"]
BAD = ["awful", "boring", "dull", "clumsy", "tedious", "bland", "stale", "messy"]


def pairs(n: int = 6) -> pd.DataFrame:
    """Prompts that start with the bos token, so TRL (which adds one where missing) and tunefork read the same ids."""
    rows = [{"prompt": f"<s>review {i}: the film was\n", "chosen": f"{GOOD[i % 8]} and {GOOD[(i + 3) % 8]} movie",
             "rejected": f"{BAD[i % 8]} plot" + " really" * (i % 3), "label": i % 3 != 0} for i in range(n)]
    return pd.DataFrame(rows)


def config(folder, trainer: dict, adapter: bool) -> dict:
    return {"model_type": "llm", "base_model": str(folder),
            "input_features": [{"name": "prompt", "type": "text"}],
            "output_features": [{"name": "chosen", "type": "text"}],
            "adapter": {"type": "lora", "r": 4, "dropout": 0.0} if adapter else None,
            "trainer": {"batch_size": 6, **trainer}}


def parts(raw: dict, frame: pd.DataFrame, scale: float = 0.05):
    """tunefork's model and task just before the first step, and the training rows' token table."""
    loaded = config_mod.load(raw)
    recipe = for_config(loaded)
    prepared = recipe.prepare({"training": frame}, 42, None)
    plan = plan_mod.resolve(loaded, prepared.facts, hardware.detect())
    model = recipe.build(prepared, plan, 42)
    moved(model, scale)
    return model, recipe.task(prepared, plan), prepared.tables["training"]


def moved(model, scale: float):
    """The weights moved off the base (LoRA starts as the identity, B = 0), so the policy differs from the reference;
    the trained adapter's only, never a frozen reference copy."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (".default." in name and "lora_B" in name) or (not hasattr(model, "peft_config") and "lm_head" in name):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * scale)
    return model


def twin(model, folder):
    """TRL's copy of `model`, and the peft config TRL should wrap it with: TRL takes a PeftModel as an adapter to
    continue (its initial copy is the reference), a base model and a peft_config as a new adapter (the base is)."""
    if not hasattr(model, "peft_config"):
        return copy.deepcopy(model), None
    return _reference(folder), model.peft_config["default"]


def same_adapter(trainer, model) -> None:
    """TRL's fresh adapter given tunefork's weights."""
    ours_ = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_" in name:
                p.copy_(ours_[name])


def ours(model, task, table):
    """tunefork's first micro-batch (every row): loss, gradients, and the metrics the evaluation would report."""
    out = task.forward(model, table, np.arange(len(table)), "cpu")
    out.loss.backward()
    acc = task.accumulator()
    acc.add(None, out)
    return out.loss.item(), _grads(model), acc.scores()["chosen"]


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def theirs(trainer, model):
    """TRL's first batch through its own compute_loss, then backward: loss, gradients, logged metrics."""
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    metrics = trainer._metrics["train"] if hasattr(trainer, "_metrics") else trainer._stored_metrics["train"]
    return loss.item(), _grads(model), {k: v[-1] for k, v in metrics.items()}, batch


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


def _rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return sorted(row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True))


def _args(cls, tmp_path, n, **kw):
    return cls(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=n, use_cpu=True, bf16=False,
               dataset_num_proc=None, **kw)


def _reference(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def _dataset(frame: pd.DataFrame, kto: bool = False):
    from datasets import Dataset

    if kto:
        return Dataset.from_dict({"prompt": frame["prompt"].tolist(), "completion": frame["chosen"].tolist(),
                                  "label": frame["label"].tolist()})
    return Dataset.from_dict({k: frame[k].tolist() for k in ("prompt", "chosen", "rejected")})


def _tokenizer(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token  # as tunefork pads a tokenizer without a pad token
    return tokenizer


def _dpo(tmp_path, folder, model, frame, **kw):
    """TRL's DPOTrainer on tunefork's `model` (its weights, its adapter as a new one)."""
    policy, peft_config = twin(model, folder)
    args = _args(trl.DPOConfig, tmp_path, len(frame), **kw)
    trainer = trl.DPOTrainer(model=policy, ref_model=None if peft_config else _reference(folder), args=args,
                             train_dataset=_dataset(frame), processing_class=_tokenizer(folder),
                             peft_config=peft_config)
    if peft_config:
        same_adapter(trainer, model)
    return trainer


@pytest.mark.parametrize("adapter,loss_type", [(False, "sigmoid"), (True, "ipo")])
def test_dpo_equals_trl(tmp_path, tiny_llama, adapter, loss_type):
    """Full fine-tune (a frozen copy as reference) and LoRA (the adapter disabled as reference), sigmoid and IPO."""
    frame = pairs()
    model, task, table = parts(config(tiny_llama, {"type": "dpo", "beta": 0.3, "dpo_loss_type": loss_type},
                                      adapter), frame)
    trainer = _dpo(tmp_path, tiny_llama, model, frame, beta=0.3, loss_type=[loss_type])
    loss, grads, scores = ours(model, task, table)
    their_loss, their_grads, metrics, batch = theirs(trainer, trainer.model)
    chosen = [list(table.chosen.ids.row(i)) for i in range(len(frame))]
    rejected = [list(table.rejected.ids.row(i)) for i in range(len(frame))]
    assert _rows(batch["input_ids"], batch["attention_mask"]) == sorted(chosen + rejected)  # the same batch
    assert abs(loss - their_loss) < 1e-5 and loss > 0
    _assert_same(grads, their_grads)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                 "logps/rejected"):
        assert scores[name] == pytest.approx(metrics[name], abs=1e-5), name


def test_dpo_continuing_an_adapter_compares_with_it_as_loaded(tmp_path, tiny_llama):
    """pretrained_adapter_weights: the reference is the adapter as loaded (TRL's frozen "ref" copy), not the base."""
    frame = pairs()
    saved, _, _ = parts(config(tiny_llama, {"type": "dpo"}, True), frame)
    saved.save_pretrained(tmp_path / "sft")
    raw = config(tiny_llama, {"type": "dpo", "beta": 0.3}, True)
    raw["adapter"]["pretrained_adapter_weights"] = str(tmp_path / "sft")
    model, task, table = parts(raw, frame, scale=0.0)
    policy = copy.deepcopy(model)
    trainer = trl.DPOTrainer(model=policy, args=_args(trl.DPOConfig, tmp_path / "trl", len(frame), beta=0.3),
                             train_dataset=_dataset(frame), processing_class=_tokenizer(tiny_llama))
    moved(model, 0.05), moved(policy, 0.05)  # a step away from where both runs started
    loss, grads, scores = ours(model, task, table)
    their_loss, their_grads, metrics, _ = theirs(trainer, policy)
    assert abs(loss - their_loss) < 1e-5 and abs(metrics["rewards/margins"]) > 1e-4
    _assert_same({n: g for n, g in grads.items()}, their_grads)
    assert scores["rewards/margins"] == pytest.approx(metrics["rewards/margins"], abs=1e-5)


def test_dpo_label_smoothing_is_cdpo_of_trl_losses(tmp_path, tiny_llama):
    """cDPO with ε (Ludwig's dpo_label_smoothing): (1 − ε) × TRL's sigmoid loss on the pairs + ε × TRL's on the pairs
    swapped — in loss and gradients (TRL 1.16's sigmoid loss has no label smoothing of its own)."""
    frame, eps = pairs(), 0.2
    model, task, table = parts(config(tiny_llama, {"type": "dpo", "dpo_beta": 0.5, "dpo_label_smoothing": eps}, True),
                               frame)
    flipped = frame.rename(columns={"chosen": "rejected", "rejected": "chosen"})
    straight, swapped = (_dpo(tmp_path / k, tiny_llama, model, f, beta=0.5) for k, f in (("a", frame), ("b", flipped)))
    loss, grads, _ = ours(model, task, table)
    a_loss, a_grads, _, _ = theirs(straight, straight.model)
    b_loss, b_grads, _, _ = theirs(swapped, swapped.model)
    assert loss == pytest.approx((1 - eps) * a_loss + eps * b_loss, abs=1e-5)
    _assert_same(grads, {n: (1 - eps) * a_grads[n] + eps * b_grads[n] for n in a_grads})


def test_orpo_equals_trl(tmp_path, tiny_llama):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    frame = pairs()
    model, task, table = parts(config(tiny_llama, {"type": "orpo", "orpo_beta": 0.25}, False), frame)
    policy = copy.deepcopy(model)
    loss, grads, scores = ours(model, task, table)
    args = _args(ORPOConfig, tmp_path, len(frame), beta=0.25, max_length=256, remove_unused_columns=False)
    trainer = ORPOTrainer(model=policy, args=args, train_dataset=_dataset(frame), processing_class=_tokenizer(tiny_llama))
    their_loss, their_grads, metrics, batch = theirs(trainer, policy)
    ours_rows = [list(table.chosen.ids.row(i)) for i in range(len(frame))]
    assert _rows(batch["chosen_input_ids"], batch["chosen_attention_mask"]) == sorted(ours_rows)
    assert abs(loss - their_loss) < 1e-5
    _assert_same(grads, their_grads)
    for name in ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "nll_loss",
                 "log_odds_ratio"):
        assert scores[name] == pytest.approx(np.mean(metrics[name]), abs=1e-5), name


def test_kto_equals_trl(tmp_path, tiny_llama):
    """Desirable and undesirable rows, weighted; the KL term from mismatched pairs; LoRA disabled as reference."""
    frame = pairs()
    trainer_keys = {"type": "kto", "kto_beta": 0.2, "kto_desirable_weight": 1.5, "kto_undesirable_weight": 0.5}
    model, task, table = parts(config(tiny_llama, trainer_keys, True), frame, scale=-0.3)  # a KL estimate above 0
    policy, peft_config = twin(model, tiny_llama)
    args = _args(trl.KTOConfig, tmp_path, len(frame), beta=0.2, desirable_weight=1.5, undesirable_weight=0.5)
    trainer = trl.KTOTrainer(model=policy, args=args, train_dataset=_dataset(frame, kto=True),
                             processing_class=_tokenizer(tiny_llama), peft_config=peft_config)
    same_adapter(trainer, model)
    loss, grads, scores = ours(model, task, table)
    their_loss, their_grads, metrics, batch = theirs(trainer, trainer.model)
    assert batch["input_ids"][:, 0].tolist() == [table.completion.ids.row(i)[0] for i in range(len(frame))]
    assert abs(loss - their_loss) < 1e-5 and metrics["kl"] > 0
    _assert_same(grads, their_grads)
    for name in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert scores[name] == pytest.approx(metrics[name], abs=1e-5), name
