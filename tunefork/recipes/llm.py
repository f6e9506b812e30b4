"""The causal-LM recipe (`model_type: llm`): what instruction fine-tuning brings to the one run lifecycle.

    prepare   rows without an output dropped → few-shot examples retrieved (`prompt.retrieval`) → prompts
              rendered → prompt + output tokenized, the prompt masked (cached on disk like ECD's preprocessing)
    build     the base model (+ a fresh or `pretrained_adapter_weights` adapter), seeded
    task      `training.llm.LLMTask` for the loop
    Fitted    generate on raw rows (constrained to the output's form where the decoder asks:
              `models.constrained`), evaluate (loss, perplexity, then the generations scored), save as a model folder

With `trainer.type: none` nothing trains: the splits are scored once, and `predict` works without `train` — the base
model is loaded on first use (zero-shot).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from tunefork import plan as plan_mod
from tunefork.data import chat, packing, prompts
from tunefork.errors import DataError, TuneforkError
from tunefork.features import llm_output

log = logging.getLogger("tunefork")
CACHE_VERSION = 3  # 2: each row records whether its prompt or output was cut; 3: retrieval rows in the metadata


@dataclass(frozen=True)
class Prepared:
    tables: dict  # split → prompts.Encoded
    meta: dict
    tokenizers: object  # the one tokenizer
    fingerprints: dict
    facts: plan_mod.DataFacts
    cache_hit: bool = False
    index: object = None  # data.retrieval.Index of few-shot prompts


class Lookup(NamedTuple):
    context: int | None  # the model's context length
    total: int  # the sequence limit of prompt + output
    tokenizer: object
    fingerprints: dict
    folder: object  # the cache folder for these rows (None without a cache)
    found: tuple | None  # (meta, tables) the cache held


def labelled(frame: pd.DataFrame, config) -> pd.DataFrame:
    """Rows with an output value (a row without one can be neither learned nor scored); for a conversation, the ones
    that end with an assistant turn."""
    column = config.input.source if config.chat else config.output.source
    if column not in frame.columns:
        prompts.check_columns(config, frame, with_output=True)  # the one clear error about the missing column
    if config.chat:
        keep = [chat.answered(turns) for turns in chat.conversations(frame, column)]
    else:
        keep = frame[column].notna() & (frame[column].astype(str).str.strip() != "")
    out = frame[keep]
    out.attrs = frame.attrs
    return out


def limits(config, total: int) -> prompts.Limits:
    """The prompt's and the output's own limits, within `total` tokens of prompt + output."""
    return prompts.Limits(config.input.preprocessing.max_sequence_length,
                          config.output.preprocessing.max_sequence_length, total)


def encode(config, frame: pd.DataFrame, tokenizer, limits_: prompts.Limits, context=None) -> prompts.Encoded:
    """Prompt + output ids with the prompt masked (`context`: each row's retrieved examples, `data.retrieval`); a
    conversation whole, its assistant turns unmasked."""
    if not config.chat:
        return prompts.encode(tokenizer, prompts.render(config, frame, context), prompts.targets(config, frame), limits_)
    rows = chat.conversations(frame, config.input.source)
    ids, mask, firsts, cut = chat.encode(tokenizer, rows, chat.template(config, tokenizer), limits_.total,
                                         frame.attrs.get("source", "dataset"))
    return prompts.Encoded(ids, firsts, cut * prompts.OUTPUT_CUT, mask)


def prompt_texts(config, frame: pd.DataFrame, tokenizer, context=None) -> list[str]:
    """What generation continues: the rendered template (with `context`), or a conversation up to the assistant's
    cue."""
    if not config.chat:
        return prompts.render(config, frame, context)
    return chat.prompts(tokenizer, chat.conversations(frame, config.input.source), chat.template(config, tokenizer))


def references(config, frame: pd.DataFrame) -> list[str]:
    """The answers generations are scored against: the output column, or each conversation's closing turn."""
    if not config.chat:
        return prompts.targets(config, frame)
    return chat.references(chat.conversations(frame, config.input.source))


def _meta(config, tokenizer, limits_: prompts.Limits, context: int | None, training, trained: bool, index=None) -> dict:
    return {"model_type": "llm", "trained": trained, "pad_token_id": int(tokenizer.pad_token_id),
            "limits": asdict(limits_), "context_length": context, **llm_output.fit(config, training),
            **({"retrieval": index.to_meta()} if index is not None else {})}


class LLMRecipe:
    def __init__(self, config):
        self.config = config

    # ------------------------------------------------------------------------------------------------ data
    def _lookup(self, frames: dict, cache_dir) -> Lookup:
        """What encoding the rows needs (the model's context, the sequence limit, the tokenizer) and the cache's
        folder for these rows, with what it holds."""
        from tunefork import hf
        from tunefork.data import cache, read
        from tunefork.models import llm

        context = hf.context_length(llm.hf_config(self.config))
        total, _ = plan_mod.sequence_limit(self.config, context)
        tokenizer = llm.load_tokenizer(self.config)
        fingerprints = {k: read.fingerprint(v) for k, v in frames.items()}
        folder = cache_dir / "preprocessed" / self._cache_key(fingerprints, tokenizer, total) if cache_dir else None
        return Lookup(context, total, tokenizer, fingerprints, folder, cache.load(folder, frames))

    def prepare(self, frames: dict[str, pd.DataFrame], seed: int, cache_dir) -> Prepared:
        from tunefork.data import cache, retrieval

        config = self.config
        frames = {name: labelled(frame, config) for name, frame in frames.items()}
        if len(frames["training"]) == 0:
            raise DataError(f"the training split has no rows with a '{config.output.source}' value")
        for frame in frames.values():
            prompts.check_columns(config, frame, with_output=True)
        context, total, tokenizer, fingerprints, folder, found = self._lookup(frames, cache_dir)
        if found is not None:
            meta, stored = found
            tables = {name: prompts.Encoded.from_table(table) for name, table in stored.items()}
            index = retrieval.from_meta(config, meta.get("retrieval"), cache_dir)
        else:
            limits_ = limits(config, total)
            index = retrieval.build(config, frames["training"], cache_dir)
            tables = {name: encode(config, frame, tokenizer, limits_,
                                   retrieval.contexts(config, index, frame, exclude_self=name == "training"))
                      for name, frame in frames.items()}
            meta = _meta(config, tokenizer, limits_, context, frames["training"], config.trainer.type == "finetune",
                         index)
            cache.store(folder, meta, {name: encoded.to_table() for name, encoded in tables.items()})
        if config.trainer.packing:  # after the cache: packs are cheap to rebuild, and deterministic
            tables["training"] = packing.pack(tables["training"], total, config.trainer.packing_max_sequences_per_pack)
        # the loop batches packs as it batches rows: the plan's steps count packs
        facts = plan_mod.DataFacts(training_rows=len(tables["training"]), text_inputs={}, context_length=context)
        return Prepared(tables, meta, tokenizer, fingerprints, facts, found is not None, index)

    def _cache_key(self, fingerprints: dict, tokenizer, total: int) -> str:
        from tunefork.data import cache
        from tunefork.features.pipeline import tokenizer_identity

        config = self.config
        return cache.key({"version": CACHE_VERSION, "model_type": "llm", "data": fingerprints,
                          "prompt": config.prompt.model_dump(mode="json"), "columns": config.columns(),
                          "input": config.input.model_dump(mode="json"), "output": config.output.model_dump(mode="json"),
                          "total": total, "trainer": config.trainer.type, "tokenizer": tokenizer_identity(tokenizer),
                          "chat_template": chat.template(config, tokenizer) if config.chat else None})

    def prepare_files(self, files: list[str], seed: int, cache_dir) -> Prepared:
        raise TuneforkError(f"{files[0]}: model_type llm reads one table (a file or a DataFrame), not a folder or "
                            f"glob of files; concatenate them into one Parquet or JSONL file")

    # ------------------------------------------------------------------------------------------------ the model
    def build(self, prepared: Prepared | None, plan, seed: int):
        import torch

        from tunefork.models import llm

        torch.manual_seed(seed)  # a fresh adapter's initial weights
        steps = plan.get("adalora_total_step", plan.get("total_steps"))
        return llm.build(self.config, total_steps=steps, batches=_calibration_batches(self.config, prepared))

    def ready(self, model, prepared: Prepared, plan, resolve, console, phases, measure: bool):
        """Says, before training, what the data and the plan cut: prompts and outputs that lost tokens to the length
        limits (also in efficiency.json), and a max_new_tokens the plan capped."""
        for split, encoded in prepared.tables.items():
            counts = encoded.truncation()
            if counts["prompts_cut"] or counts["outputs_cut"]:
                console.note(f"truncated ({split}): {counts['prompts_cut']} of {counts['rows']} prompts lost their "
                             f"start and {counts['outputs_cut']} outputs their end to the length limits "
                             f"(max_sequence_length {plan['max_sequence_length']})")
        if plan["max_new_tokens"] != self.config.generation.max_new_tokens:
            console.note(f"max_new_tokens: {plan['max_new_tokens']} — {plan.decisions['max_new_tokens'].reason}")
        training = prepared.tables["training"]
        if isinstance(training, packing.Packed):
            packing.check_model(model, len(prepared.tokenizers))
            summary = training.summary()
            console.note(f"packing: {summary['rows']} training rows in {summary['packs']} sequences of up to "
                         f"{summary['capacity']} tokens ({summary['fill']:.0%} of their tokens are rows, not padding)")
        return prepared, plan

    def task(self, prepared: Prepared, plan):
        from tunefork.training.llm import LLMTask

        return LLMTask(self.config, prepared.meta["pad_token_id"])

    def finish(self, model, console):
        from tunefork.models import llm

        adapter = self.config.adapter
        if adapter is not None and adapter.postprocessor.merge_adapter_into_base_model:
            model = llm.merge(model, progressbar=adapter.postprocessor.progressbar)
            console.note("adapter merged into the base weights (model/ holds full weights)")
        return model.eval()

    def fitted(self, model, prepared: Prepared, plan) -> Fitted:
        return Fitted(self.config, model, prepared.meta, prepared.tokenizers, prepared.index)

    def efficiency(self, prepared: Prepared, plan) -> dict:
        training = prepared.tables["training"]
        packed = {"packing": training.summary()} if isinstance(training, packing.Packed) else {}
        return {"preprocessing_cache_hit": prepared.cache_hit, **packed,
                "truncation": {split: encoded.truncation() for split, encoded in prepared.tables.items()}}

    def loaded(self, model, meta: dict, tokenizers) -> Fitted:
        """A model read from a model folder (`models.folder.load`)."""
        return Fitted(self.config, model, meta, tokenizers)

    def untrained(self) -> Fitted:
        """A zero-shot model (`trainer.type: none`): the base model, loaded now."""
        from tunefork import hardware, hf
        from tunefork.models import llm

        config = self.config
        if config.trainer.type != "none":
            raise TuneforkError("this model is not trained: call train() or Model.load(path) first (a config with "
                                "trainer.type: none predicts zero-shot without training)")
        context = hf.context_length(llm.hf_config(config))
        plan = plan_mod.resolve_inference(config, hardware.detect(), context_length=context)
        tokenizer = llm.load_tokenizer(config)
        meta = _meta(config, tokenizer, limits(config, plan["max_sequence_length"]), context, None, trained=False)
        return Fitted(config, llm.build(config).eval(), meta, tokenizer)


def _calibration_batches(config, prepared: Prepared | None) -> list | None:
    """The first training rows, batched, for LoRA initialisations that read data (eva, corda); None otherwise."""
    from tunefork.adapters import lora_init

    if getattr(config.adapter, "init", None) not in lora_init.FROM_DATA or prepared is None:
        return None
    encoded, rows = prepared.tables["training"], lora_init.CALIBRATION_BATCHES * lora_init.CALIBRATION_ROWS
    index = np.arange(min(len(encoded), rows))
    return [prompts.batch(encoded, chunk, prepared.meta["pad_token_id"])
            for chunk in np.array_split(index, -(-len(index) // lora_init.CALIBRATION_ROWS))]


def statistics(config, meta: dict, loss, responses: list[str], references: list[str], truncated: int) -> dict:
    """Evaluate's numbers: the token loss and perplexity (`training.llm.TokenLoss`), the responses' scores, and how
    many prompts generation had to cut (never silent)."""
    scores = loss.scores()[config.output.name]
    scores.update(llm_output.metrics(config, meta, responses, references))
    scores["prompts_truncated"] = truncated
    return {config.output.name: scores, "combined": {"loss": scores["loss"]}}


class Fitted:
    """A trained, loaded or zero-shot causal LM with its tokenizer and metadata."""

    def __init__(self, config, model, meta: dict, tokenizer, index=None):
        self.config, self.model, self.meta, self.tokenizers = config, model, meta, tokenizer
        self.last_generation: dict | None = None  # what the last generation cost: benchmarks read it
        self._plan, self._index, self._constraint = None, index, False

    @property
    def index(self):
        """The few-shot index (`data.retrieval`), rebuilt from the saved training rows on first use after a load."""
        if self._index is None and self.config.prompt.retrieval.type:
            from tunefork.data import cache, retrieval

            self._index = retrieval.from_meta(self.config, self.meta.get("retrieval"), cache.root(self.config))
        return self._index

    def constraint(self, max_new_tokens: int):
        """The output feature's compiled constraint (`models.constrained`), or None; built once."""
        if self._constraint is False:
            from tunefork.models import constrained

            self._constraint = constrained.build(self.config, self.meta, self.tokenizers, max_new_tokens)
        return self._constraint

    def prompts(self, frame: pd.DataFrame) -> list[str]:
        """Each row's prompt, with its few-shot examples retrieved from the training rows."""
        from tunefork.data import retrieval

        context = retrieval.contexts(self.config, self.index, frame)
        return prompt_texts(self.config, frame, self.tokenizers, context)

    @property
    def plan(self):
        if self._plan is None:
            from tunefork import hardware

            self._plan = plan_mod.resolve_inference(self.config, hardware.detect(),
                                                    context_length=self.meta["context_length"])
            if self._plan["max_new_tokens"] != self.config.generation.max_new_tokens:
                log.warning("max_new_tokens: %s — %s", self._plan["max_new_tokens"],
                            self._plan.decisions["max_new_tokens"].reason)
        return self._plan

    def generate(self, frame: pd.DataFrame, texts: list[str] | None = None, streamer=None) -> list[str]:
        """The response to each row's prompt (the template filled from `frame`), or to `texts` as given, one per row
        of `frame` (Ludwig's `LudwigModel.generate` applies no template). `streamer`: see `models.llm.generate` (one row)."""
        from tunefork.models import llm
        from tunefork.training.loop import autocast

        plan, config = self.plan, self.config
        limits_ = prompts.Limits(**self.meta["limits"])
        texts = self.prompts(frame) if texts is None else texts
        ids, cut = prompts.encode_prompts(self.tokenizers, texts, limits_, reserve=plan["max_new_tokens"],
                                          special_tokens=not config.chat)
        _refuse_cut_below_minimum(frame, cut, limits_, plan)
        if cut.any():
            log.warning("truncated: %d of %d prompts lost their start to fit %d tokens (max_sequence_length %d less "
                        "max_new_tokens %d)", cut.sum(), len(cut), plan["prompt_tokens_at_generation"],
                        plan["max_sequence_length"], plan["max_new_tokens"])
        llm.place(self.model, plan["device"])
        generation = config.generation.model_copy(update={"max_new_tokens": plan["max_new_tokens"]})
        out = llm.generate(self.model, self.tokenizers, ids, generation, plan["eval_batch_size"], plan["device"],
                           autocast(plan), self.constraint(plan["max_new_tokens"]), streamer)
        self.last_generation = {"rows": len(ids), "prompt_tokens": sum(map(len, ids)), "prompts_truncated": int(cut.sum()),
                                "generated_tokens": out["generated_tokens"], "generate_seconds": out["seconds"]}
        return out["responses"]

    def predict(self, frame: pd.DataFrame, streamer=None) -> pd.DataFrame:
        """`<output>_response`: the generated text, prompt stripped (and `<output>_predictions`, the label, for a
        category output). `streamer`: see `models.llm.generate` (one row)."""
        prompts.check_columns(self.config, frame, with_output=False)
        return pd.DataFrame(llm_output.columns(self.config, self.meta, self.generate(frame, streamer=streamer)),
                            index=frame.index)

    def evaluate(self, frame: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
        """Loss and perplexity of the reference outputs (teacher forcing), then the generated responses scored against
        them: exact match, ROUGE-L and BLEU (text) or accuracy and macro-F1 (category)."""
        loss, responses, references, frame = self.scored(frame)
        if len(frame) == 0:
            raise DataError(f"{frame.attrs.get('source', 'dataset')}: no row has a '{self.config.output.source}' value to score")
        predictions = pd.DataFrame(llm_output.columns(self.config, self.meta, responses), index=frame.index)
        truncated = self.last_generation["prompts_truncated"] if self.last_generation else 0
        return statistics(self.config, self.meta, loss, responses, references, truncated), predictions

    def scored(self, frame: pd.DataFrame):
        """(TokenLoss, responses, references, labelled rows): what evaluate scores, as sums and rows that parts of a
        dataset (a Ray prediction worker's batches) add up to the whole's. Rows without an output are left out."""
        from tunefork.data import retrieval
        from tunefork.models import llm
        from tunefork.training.llm import TokenLoss, token_loss

        config = self.config
        prompts.check_columns(config, frame, with_output=True)
        frame = labelled(frame, config)
        if len(frame) == 0:
            return TokenLoss(config.output.name), [], [], frame
        llm.place(self.model, self.plan["device"])
        context = retrieval.contexts(config, self.index, frame)  # once: the scored and the generated prompts share it
        encoded = encode(config, frame, self.tokenizers, prompts.Limits(**self.meta["limits"]), context)
        loss = token_loss(self.model, encoded, config, self.meta["pad_token_id"], self.plan)
        texts = prompt_texts(config, frame, self.tokenizers, context)
        return loss, self.generate(frame, texts), references(config, frame), frame

    def save(self, folder) -> None:
        from tunefork import config as config_mod
        from tunefork.models import folder as folders

        folders.save_llm(folder, self.model, config_mod.to_dict(self.config), self.meta, self.tokenizers)

    def report_points(self, tables: dict) -> dict:
        return {}


def _refuse_cut_below_minimum(frame: pd.DataFrame, cut, limits_: prompts.Limits, plan) -> None:
    """A prompt keeps at least `MIN_PROMPT_TOKENS` (all of it when shorter). The plan caps max_new_tokens so that it
    can whenever the sequence limit allows; under a limit of 33 tokens or fewer, a prompt that would be cut to fewer
    is refused, naming its row, rather than answered without its input. A cut the input feature's own
    max_sequence_length asks for is the user's choice, and only counted."""
    from tunefork.config.llm import MIN_PROMPT_TOKENS

    room = plan["prompt_tokens_at_generation"]
    if room >= MIN_PROMPT_TOKENS or not cut.any() or (limits_.prompt is not None and limits_.prompt <= room):
        return
    row = frame.index[int(cut.argmax())]
    raise DataError(f"{frame.attrs.get('source', 'dataset')}: row {row}: its prompt would keep only its last {room} "
                    f"tokens (max_sequence_length {plan['max_sequence_length']} less generation.max_new_tokens "
                    f"{plan['max_new_tokens']}), fewer than the {MIN_PROMPT_TOKENS} a prompt keeps; shorten the prompt, "
                    f"lower max_new_tokens, or raise preprocessing.global_max_sequence_length")
