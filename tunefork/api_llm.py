"""`Model` for `model_type: llm`: the same calls and run directory as ECD, through the causal-LM recipe.

    read → split → drop rows without an output → plan → tokenizer → prompts + outputs encoded (prompt masked)
    → base model + adapter → fit (trainer finetune) or one scoring pass (trainer none) → run directory

`api.Model` hands over here when its config is an `LLMConfig`; `owner` is that Model (its config, console, and the
model / meta / tokenizer / plan it keeps). With `trainer.type: none`, `predict` works without `train`: the base model
is loaded on first use (zero-shot).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from tunefork import config as config_mod
from tunefork import hardware, rundir
from tunefork import plan as plan_mod
from tunefork.data import prompts, read
from tunefork.errors import DataError, TuneforkError
from tunefork.features import llm_output
from tunefork.training.efficiency import Phases
from tunefork.training.efficiency import record as efficiency_record


def _labelled(frame: pd.DataFrame, config) -> pd.DataFrame:
    """Rows with an output value (a row without one can be neither learned nor scored)."""
    column = config.output.source
    if column not in frame.columns:
        prompts.check_columns(config, frame, with_output=True)  # the one clear error about the missing column
    keep = frame[column].notna() & (frame[column].astype(str).str.strip() != "")
    out = frame[keep]
    out.attrs = frame.attrs
    return out


def _meta(config, tokenizer, limits: prompts.Limits, context: int | None, training, trained: bool) -> dict:
    return {"model_type": "llm", "trained": trained, "pad_token_id": int(tokenizer.pad_token_id),
            "limits": asdict(limits), "context_length": context, **llm_output.fit(config, training)}


def _limits(config, plan) -> prompts.Limits:
    return prompts.Limits(config.input.preprocessing.max_sequence_length, config.output.preprocessing.max_sequence_length,
                          plan["max_sequence_length"])


def _encode(config, frame: pd.DataFrame, tokenizer, limits: prompts.Limits) -> prompts.Encoded:
    return prompts.encode(tokenizer, prompts.render(config, frame), prompts.targets(config, frame), limits)


def train(owner, dataset, *, training_set, validation_set, test_set, output_directory, experiment_name, model_name,
          random_seed, skip_save_model, logger, model_resume_path=None):
    import torch

    from tunefork import tracking
    from tunefork.api import TrainResult, _splits
    from tunefork.models import llm, llm_artifact
    from tunefork.training import llm as recipe
    from tunefork.training.loop import History

    config, phases = owner.config, Phases()
    if model_resume_path:
        raise TuneforkError("model_resume_path: resuming is not available for model_type llm; start the run again")
    with phases("read"):
        frames = {name: _labelled(frame, config) for name, frame in
                  _splits(config, dataset, training_set, validation_set, test_set, random_seed).items()}
    if len(frames["training"]) == 0:
        raise DataError(f"the training split has no rows with a '{config.output.source}' value")
    with phases("preprocess"):
        for frame in frames.values():
            prompts.check_columns(config, frame, with_output=True)
        context = llm.context_length(llm.hf_config(config))
        plan = plan_mod.resolve_llm(config, len(frames["training"]), context, hardware.detect())
        tokenizer = llm.load_tokenizer(config)
        limits = _limits(config, plan)
        tables = {name: _encode(config, frame, tokenizer, limits) for name, frame in frames.items()}
        meta = _meta(config, tokenizer, limits, context, frames["training"], trained=config.trainer.type == "finetune")
    for key in ("batch_size", "max_sequence_length", "precision", "learning_rate"):
        owner.console.note(f"{key}: {plan[key]} — {plan.decisions[key].reason}")
    with phases("load"):
        torch.manual_seed(random_seed)  # a fresh adapter's initial weights
        model = llm.build(config, total_steps=plan.get("adalora_total_step", plan["total_steps"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    owner.console.note(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(1, total):.2f}%)")
    board = tracking.Fanout(owner.console, *tracking.start(logger, output_directory, f"{experiment_name}_{model_name}",
                                                           config_mod.to_dict(config), owner.console))
    with phases("fit"):
        try:
            if config.trainer.type == "finetune":
                history = recipe.fit(model, tables, config, plan, meta["pad_token_id"], random_seed, report=board)
            else:  # zero-shot: nothing trains; the splits are scored once so the run still has its numbers
                history = _score_once(llm.place(model, plan["device"]), tables, config, plan, meta["pad_token_id"], History)
        finally:
            board.close()
    if config.adapter is not None and config.adapter.postprocessor.merge_adapter_into_base_model:
        model = llm.merge(model)
        owner.console.note("adapter merged into the base weights (model/ holds full weights)")
    phases.seconds["train"], phases.seconds["evaluate"] = history.train_seconds, history.evaluate_seconds
    owner.model, owner.meta, owner.tokenizers, owner.plan = model.eval(), meta, tokenizer, plan
    owner._last_test = frames.get("test")

    statistics = history.to_json()
    efficiency = efficiency_record(plan, phases, history)
    output = None
    if not skip_save_model:
        output = rundir.new(output_directory, experiment_name, model_name)
        staging = output.with_name(output.name + ".partial")
        staging.mkdir(parents=True)
        llm_artifact.save(staging / "model", model, config_mod.to_dict(config), meta, tokenizer)
        rundir.write_json(staging / "training_statistics.json", statistics)
        rundir.write_json(staging / "efficiency.json", efficiency)
        rundir.write_yaml(staging / "resolved_config.yaml", {"config": config_mod.to_dict(config), "plan": plan.to_dict()})
        rundir.write_json(staging / "description.json", {
            "versions": rundir.versions(),
            "config": config_mod.to_dict(config),
            "dataset_fingerprints": {k: read.fingerprint(v) for k, v in frames.items()},
            "rows": {k: len(v) for k, v in tables.items()},
            "random_seed": random_seed,
            "trust_remote_code": config.trust_remote_code,
        })
        staging.rename(output)  # the run directory appears whole or not at all
        owner.console.note(f"saved: {output}")
    return TrainResult(output, statistics, efficiency, plan.to_dict())


def _score_once(model, tables, config, plan, pad_id: int, History):
    from tunefork.training.llm import score

    history = History(evaluate_training_set=True)
    found = {split: score(model, table, pad_id, plan["eval_batch_size"], plan["device"], plan)
             for split, table in tables.items() if len(table)}
    for split, values in found.items():
        history.record(split, {config.output.name: values, "combined": {"loss": values["loss"]}})
    history.evaluations.append({"epoch": 0, "step": 0, "learning_rate": None})
    watch = "validation" if "validation" in found else "training"
    history.best = {"evaluation": 0, "epoch": 0, "step": 0, "split": watch, "field": config.output.name,
                    "metric": config.trainer.validation_metric, "value": found[watch][config.trainer.validation_metric]}
    return history


# ------------------------------------------------------------------------------------------------ inference
def _ready(owner):
    """The model, loaded on first use for zero-shot configs (`trainer.type: none`) that were never trained."""
    from tunefork.models import llm

    config = owner.config
    if owner.model is None:
        if config.trainer.type != "none":
            raise TuneforkError("this model is not trained: call train() or Model.load(path) first (a config with "
                                "trainer.type: none predicts zero-shot without training)")
        context = llm.context_length(llm.hf_config(config))
        owner.plan = plan_mod.resolve_llm_inference(config, context, hardware.detect())
        owner.tokenizers = llm.load_tokenizer(config)
        owner.meta = _meta(config, owner.tokenizers, _limits(config, owner.plan), context, None, trained=False)
        owner.model = llm.build(config).eval()
    if owner.plan is None:
        owner.plan = plan_mod.resolve_llm_inference(config, owner.meta["context_length"], hardware.detect())
    llm.place(owner.model, owner.plan["device"])
    return owner.model, owner.tokenizers, owner.meta, owner.plan


def _generate(owner, frame: pd.DataFrame) -> list[str]:
    from tunefork.models import llm
    from tunefork.training.loop import autocast

    model, tokenizer, meta, plan = _ready(owner)
    config = owner.config
    limits = prompts.Limits(**meta["limits"])
    ids = prompts.encode_prompts(tokenizer, prompts.render(config, frame), limits, reserve=config.generation.max_new_tokens)
    out = llm.generate(model, tokenizer, ids, config.generation, plan["eval_batch_size"], plan["device"], autocast(plan))
    # what the last predict cost: benchmarks and efficiency records read it
    owner.last_generation = {"rows": len(ids), "prompt_tokens": sum(map(len, ids)),
                             "generated_tokens": out["generated_tokens"], "generate_seconds": out["seconds"]}
    return out["responses"]


def predict(owner, dataset) -> pd.DataFrame:
    """`<output>_response`: the generated text, prompt stripped (and `<output>_predictions`, the label, for a
    category output)."""
    frame = read.read(dataset)
    prompts.check_columns(owner.config, frame, with_output=False)
    _ready(owner)
    return pd.DataFrame(llm_output.columns(owner.config, owner.meta, _generate(owner, frame)), index=frame.index)


def evaluate_frame(owner, dataset) -> tuple[dict, pd.DataFrame]:
    """Loss and perplexity of the reference outputs (teacher forcing), then the generated responses scored against
    them: exact match, ROUGE-L and BLEU (text) or accuracy and macro-F1 (category)."""
    from tunefork.training.llm import score

    config = owner.config
    frame = read.read(dataset)
    prompts.check_columns(config, frame, with_output=True)
    frame = _labelled(frame, config)
    if len(frame) == 0:
        raise DataError(f"{frame.attrs.get('source', 'dataset')}: no row has a '{config.output.source}' value to score")
    model, tokenizer, meta, plan = _ready(owner)
    encoded = _encode(config, frame, tokenizer, prompts.Limits(**meta["limits"]))
    scores = score(model, encoded, meta["pad_token_id"], plan["eval_batch_size"], plan["device"], plan)
    responses = _generate(owner, frame)
    scores.update(llm_output.metrics(config, meta, responses, prompts.targets(config, frame)))
    predictions = pd.DataFrame(llm_output.columns(config, meta, responses), index=frame.index)
    return {config.output.name: scores, "combined": {"loss": scores["loss"]}}, predictions


def save(owner, directory) -> Path:
    from tunefork.models import llm_artifact

    _ready(owner)
    llm_artifact.save(Path(directory), owner.model, config_mod.to_dict(owner.config), owner.meta, owner.tokenizers)
    return Path(directory)
