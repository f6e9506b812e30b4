"""Recipes: what each model type brings to the one run lifecycle (`tunefork.runner`) and the one training loop
(`tunefork.training.loop`). A recipe prepares the data, builds the model, names its `task` for the loop, and turns
the trained model into a `Fitted` one that predicts, evaluates and saves itself. `api.Model` picks one, once.

    ecd.py   classifiers and regressors: encoders → combiner → heads
    llm.py   causal LMs (`model_type: llm`): prompt → generated output
    preference.py   causal LMs preference-tuned (`trainer.type: dpo | orpo | kto`)
"""

from __future__ import annotations


def for_config(config):
    """The recipe of `config`'s model type."""
    if config.model_type == "llm" and config.trainer.type in ("dpo", "orpo", "kto"):
        from tunefork.recipes.preference import PreferenceRecipe

        return PreferenceRecipe(config)
    if config.model_type == "llm":
        from tunefork.recipes.llm import LLMRecipe

        return LLMRecipe(config)
    from tunefork.recipes.ecd import ECDRecipe

    return ECDRecipe(config)
