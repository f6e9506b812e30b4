"""Preference tuning (`model_type: llm`, `trainer.type: dpo | orpo | kto`): the causal-LM recipe with preference data
and the preference task (`training.preference`). The model, its adapter, generation, evaluation and saving are the
causal LM's (`recipes.llm`): a preference-tuned model is a causal LM that predicts, evaluates, exports and serves as
any other.

    prepare   rows with a chosen and a rejected completion (or a completion and a label) → prompt + completion ids
              for each (`data.preference`), cached on disk as instruction-tuning data is
    task      `training.preference.PreferenceTask`: the loss, the frozen reference, TRL's metrics
"""

from __future__ import annotations

from tunefork import plan as plan_mod
from tunefork.data import preference
from tunefork.errors import ConfigError, DataError
from tunefork.recipes.llm import LLMRecipe, Prepared, _meta, limits


class PreferenceRecipe(LLMRecipe):
    def prepare(self, frames: dict, seed: int, cache_dir) -> Prepared:
        from tunefork.data import cache

        config = self.config
        frames = {name: preference.kept(config, frame) for name, frame in frames.items()}
        if len(frames["training"]) == 0:
            column, _ = preference.second_column(config)
            raise DataError(f"the training split has no row with both a '{config.output.source}' and a "
                            f"'{column}' value")
        context, total, tokenizer, fingerprints, folder, found = self._lookup(frames, cache_dir)
        if found is not None:
            meta, stored = found
            tables = {name: preference.from_table(config, table) for name, table in stored.items()}
        else:
            limits_ = limits(config, total)
            tables = {name: preference.encode(config, frame, tokenizer, limits_) for name, frame in frames.items()}
            meta = _meta(config, tokenizer, limits_, context, frames["training"], trained=True)
            cache.store(folder, meta, {name: table.to_table() for name, table in tables.items()})
        facts = plan_mod.DataFacts(training_rows=len(frames["training"]), text_inputs={}, context_length=context)
        return Prepared(tables, meta, tokenizer, fingerprints, facts, found is not None)

    def _cache_key(self, fingerprints: dict, tokenizer, total: int) -> str:
        from tunefork.data import cache

        column, _ = preference.second_column(self.config)  # the column a row's second part is read from
        return f"{super()._cache_key(fingerprints, tokenizer, total)}-{cache.key({'column': column})}"

    def build(self, prepared: Prepared | None, plan, seed: int):
        """The causal LM; an adapter continued from `pretrained_adapter_weights` is loaded twice, the second copy
        frozen as the reference (TRL's "ref" adapter: the model the run starts from, not the bare base)."""
        from tunefork.training.preference import REFERENCE

        model = super().build(prepared, plan, seed)
        adapter = self.config.adapter
        if adapter is not None and adapter.pretrained_adapter_weights and self.config.trainer.type != "orpo":
            model.load_adapter(str(adapter.pretrained_adapter_weights), adapter_name=REFERENCE, is_trainable=False)
        return model

    def finish(self, model, console):
        from tunefork.training.preference import REFERENCE

        if REFERENCE in getattr(model, "peft_config", {}):
            model.delete_adapter(REFERENCE)  # the saved model is the trained adapter alone
        return super().finish(model, console)

    def ready(self, model, prepared: Prepared, plan, resolve, console, phases, measure: bool):
        if self.config.trainer.type == "kto" and plan["batch_size"] < 2:
            raise ConfigError([f"trainer.batch_size {plan['batch_size']}: KTO estimates its KL term from the other "
                               f"rows of a micro-batch, so it needs at least 2; raise trainer.batch_size"])
        return super().ready(model, prepared, plan, resolve, console, phases, measure)

    def task(self, prepared: Prepared, plan):
        from tunefork.training.preference import PreferenceTask

        return PreferenceTask(self.config, prepared.meta["pad_token_id"], plan["max_sequence_length"])
