"""`model_type: llm`: a causal language model that generates the output text, with Ludwig's keys and defaults.

    model_type: llm
    base_model: meta-llama/Llama-2-7b-hf      # hub id or local folder
    input_features: [{name: instruction, type: text}]
    output_features: [{name: output, type: text}]
    prompt: {template: "### Instruction: {instruction}\\n### Response:"}
    adapter: lora
    trainer: {type: finetune}

One input and one output feature (Ludwig's rule). The prompt is what the model reads; the output column is what it
learns to write after it (the loss counts the output tokens only). Defaults that differ from ECD and why are noted
next to each field. Frozen like every section; derived values come from `plan.resolve_llm`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tunefork.adapters.named import NamedAdapters
from tunefork.adapters.registry import Adapter
from tunefork.config.backend import Backend, LocalBackend
from tunefork.config.features import FeatureBase, Quantization
from tunefork.config.generation import Generation
from tunefork.config.hyperopt import Hyperopt
from tunefork.config.preference import PreferenceKeys
from tunefork.config.prompt import CONTEXT, SAMPLE, TASK, Prompt, placeholders
from tunefork.config.schema import Preprocessing
from tunefork.config.trainer import Trainer
from tunefork.sections import Section, tagged

# The fewest prompt tokens generation may leave a prompt (all of it when shorter). A prompt cut to its last token or
# two is answered without its input; 32 tokens keep a template's cue and the end of its input. `plan` lowers
# generation.max_new_tokens so that a prompt keeps this many, and refuses a row that would keep fewer.
MIN_PROMPT_TOKENS = 32
# ------------------------------------------------------------------------------------------------- features


class PassthroughTextEncoder(Section):
    """The LLM reads the prompt itself: Ludwig's only encoder for `llm` inputs."""

    type: Literal["passthrough"] = "passthrough"


class LLMTextPreprocessing(Section):
    max_sequence_length: int | None = Field(
        None, gt=0, description="Tokens kept of this text (the prompt for an input, the target for an output); "
        "null: only preprocessing.global_max_sequence_length applies.")


class LLMFeature(FeatureBase):
    """A name and a column, under the ECD features' rule: the name is a folder name, so no '/', '\\' or '..'."""


class LLMTextInput(LLMFeature):
    type: Literal["text"]
    encoder: PassthroughTextEncoder = PassthroughTextEncoder()
    preprocessing: LLMTextPreprocessing = LLMTextPreprocessing()


class LLMMessagesInput(LLMFeature):
    """A conversation per row: a list of `{role, content}` turns (ShareGPT's `from`/`value` too), rendered with the
    chat template; the loss falls on the assistant turns (`data.chat`)."""

    type: Literal["messages"]
    encoder: PassthroughTextEncoder = PassthroughTextEncoder()

    @property
    def preprocessing(self) -> LLMTextPreprocessing:
        """No limit of its own: a conversation's turns share preprocessing.global_max_sequence_length."""
        return LLMTextPreprocessing()


class TextExtractor(Section):
    """The generated text, prompt stripped, is the prediction."""

    type: Literal["text_extractor"] = "text_extractor"
    json_schema: dict[str, Any] | None = Field(
        None, description="A JSON schema the generated text must be valid against: generation can write nothing "
        "else (constrained decoding with outlines; `models/constrained.py`). null: free text.")
    regex: str | None = Field(None, min_length=1, description="A regular expression the whole generated text "
                              "matches (constrained decoding, as json_schema). null: free text.")

    @model_validator(mode="after")
    def _one_constraint(self):
        if self.json_schema is not None and self.regex is not None:
            raise ValueError("json_schema and regex both constrain the output: keep one")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex: invalid regular expression ({exc})") from None
        return self


class LLMTextOutput(LLMFeature):
    type: Literal["text"]
    decoder: TextExtractor = TextExtractor()
    preprocessing: LLMTextPreprocessing = LLMTextPreprocessing()


class Match(Section):
    type: Literal["contains", "regex"] = "contains"
    value: str = Field(min_length=1, description="Substring (case-insensitive) or regular expression to look for.")


class CategoryExtractor(Section):
    """Classification by generation: the label whose pattern appears first in the generated text wins."""

    type: Literal["category_extractor"] = "category_extractor"
    constrain_to_vocabulary: bool = Field(
        False, description="Generation can write only a label, exactly (constrained decoding with outlines): every "
        "prediction is a valid label and `decoder.match` is not needed to read it.")
    match: dict[str, Match] | None = Field(
        None, description="label → {type: contains | regex, value}. null: each label (from the training data) is "
        "looked for as a whole word, case-insensitively.")

    @model_validator(mode="after")
    def _regexes_compile(self):
        for label, rule in (self.match or {}).items():
            if rule.type == "regex":
                try:
                    re.compile(rule.value)
                except re.error as exc:
                    raise ValueError(f"match.{label}: invalid regular expression ({exc}); fix the pattern, or match "
                                     "the text with type: contains") from None
        return self


class LLMCategoryPreprocessing(LLMTextPreprocessing):
    fallback_label: str | None = Field(
        None, description="The label predicted when the generated text names none (null: the most common training "
        "label, or the first `match` label without training data).")


class LLMCategoryOutput(LLMFeature):
    """A label the model writes: fine-tuned on the label text, predicted by matching the generated text."""

    type: Literal["category"]
    decoder: CategoryExtractor = CategoryExtractor()
    preprocessing: LLMCategoryPreprocessing = LLMCategoryPreprocessing()

    @model_validator(mode="after")
    def _fallback_is_a_label(self):
        """With decoder.match the labels are known now; otherwise `llm_output.fit` checks against the data's."""
        fallback, match = self.preprocessing.fallback_label, self.decoder.match
        if fallback is not None and match and fallback not in match:
            raise ValueError(f"preprocessing.fallback_label '{fallback}' is not one of the decoder.match labels "
                             f"({', '.join(match)}); set it to one of them, or add a match entry for it")
        return self


# -------------------------------------------------------------------------------------------------- sections


class LLMTrainer(PreferenceKeys, Trainer):
    """Ludwig's `finetune` (the ECD trainer's keys), `none` (zero-shot: nothing trains, metrics only), or preference
    tuning: `dpo`, `orpo`, `kto` with their keys (config/preference.py).

    Defaults differ from ECD where ECD's would be wrong for an LLM: 3 epochs and lr 1e-4 (Ludwig's LLM example),
    batch size 'auto' resolves small (see plan.resolve_llm), and `validation_metric` is loss or perplexity — the
    generation metrics need a full decode of the validation set and are computed by `evaluate` instead.
    """

    type: Literal["finetune", "none", "dpo", "orpo", "kto"] = "none"  # preference tuning: config/preference.py
    epochs: int = Field(3, gt=0)
    learning_rate: float | Literal["auto"] = Field(
        0.0001, description="A number (> 0), or 'auto': a learning-rate range test before training picks it.")
    validation_metric: Literal["loss", "perplexity", "rewards/accuracies", "rewards/margins"] = "loss"
    group_by_length: bool = Field(
        True, description="Shuffle, then batch rows of similar token length together (less padding, same data).")
    packing: bool = Field(
        False, description="Pack training rows into sequences of max_sequence_length tokens, each row attending only "
        "to itself (position ids restart per row); batch_size then counts packed sequences.")
    packing_max_sequences_per_pack: int | None = Field(
        None, gt=0, description="Most rows in one packed sequence (null: as many as fit).")

    @field_validator("learning_rate_scheduler")
    @classmethod
    def _plateau_on_loss(cls, section):
        if section.reduce_eval_metric == "perplexity":
            raise ValueError("reduce_eval_metric: perplexity is exp(loss), so both plateau together; write loss")
        return section


class LLMPreprocessing(Preprocessing):
    global_max_sequence_length: int | None = Field(
        None, gt=0, description="Most tokens of prompt + output together; longer rows lose the end of their output "
        "(then of their prompt). null: the model's context length.")


class LLMConfig(Section):
    model_type: Literal["llm"]
    base_model: str = Field(min_length=1, description="Hub id or local folder of a causal LM.")
    pretrained_kwargs: dict[str, Any] | None = Field(
        None, description="Extra keyword arguments for from_pretrained (the auto_transformer encoder's key), e.g. "
        "{gguf_file: model.Q4_1.gguf} to read a llama.cpp file from the base_model folder, or {revision: ...}.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model folder. Off unless you say so.")
    input_features: list[tagged(LLMTextInput, LLMMessagesInput)] = Field(min_length=1)
    output_features: list[tagged(LLMTextOutput, LLMCategoryOutput)] = Field(min_length=1)
    prompt: Prompt = Prompt()
    adapter: Adapter = Field(None, description="A PEFT method (lora, adalora, adaption_prompt, ...); model/ then "
                             "holds the adapter only. null with trainer finetune: every weight trains.")
    adapters: NamedAdapters | None = Field(
        None, description="Several named adapters, one active (Ludwig's multi-adapter form); the active one is also "
        "`adapter`. Exclusive with a different `adapter`.")
    quantization: Quantization | None = None
    generation: Generation = Generation()
    trainer: LLMTrainer = LLMTrainer()
    preprocessing: LLMPreprocessing = LLMPreprocessing()
    backend: Backend = LocalBackend()  # or a Ray cluster: DDP and FSDP2 workers, as for ECD
    hyperopt: Hyperopt | None = None  # read by `tunefork hyperopt` only: tunefork/config/hyperopt.py

    @model_validator(mode="before")
    @classmethod
    def _active_adapter_is_the_adapter(cls, data):
        """With `adapters:`, `adapter` is the active one, so everything that reads `adapter` applies to it."""
        if not isinstance(data, dict) or not isinstance(data.get("adapters"), dict):
            return data
        named, active = data["adapters"].get("adapters"), data["adapters"].get("active")
        if not isinstance(named, dict) or active not in named:
            return data  # the section reports it
        if data.get("adapter") is not None and data["adapter"] != named[active]:
            raise ValueError("adapter and adapters are exclusive: put every adapter under adapters.adapters")
        return {**data, "adapter": named[active]}

    @field_validator("input_features", "output_features")
    @classmethod
    def _one_feature(cls, features, info):
        if len(features) > 1:
            kind = "input" if info.field_name == "input_features" else "output"
            extra = "; put several columns into the prompt with prompt.template" if kind == "input" else ""
            raise ValueError(f"model_type llm takes one {kind} feature, got {len(features)}{extra}")
        return features

    @model_validator(mode="after")
    def _consistent(self):
        inp, out = self.input_features[0], self.output_features[0]
        if inp.name == out.name:
            raise ValueError(f"feature names must be unique; repeated: {inp.name} (rename one, and point its "
                             "`column` at the data's column)")
        finetune = self.trainer.type != "none"  # finetune, or preference tuning (dpo, orpo, kto)
        if self.quantization is not None and finetune and self.adapter is None:
            raise ValueError("quantization with trainer.type finetune needs an adapter (QLoRA): quantized base "
                             "weights cannot be trained directly; add adapter: lora, or remove quantization")
        if self.adapter is not None and not finetune and not self.adapter.pretrained_adapter_weights:
            raise ValueError(f"adapter {self.adapter.type} with trainer.type none would stay at its initial weights; "
                             f"set trainer.type: finetune, or adapter.pretrained_adapter_weights")
        refusal = self.adapter.training_refusal() if self.adapter is not None and finetune else None
        if refusal:
            raise ValueError(f"adapter.{refusal}")
        if self.adapter is not None and self.quantization is not None and \
                self.adapter.postprocessor.merge_adapter_into_base_model:
            raise ValueError("adapter.postprocessor.merge_adapter_into_base_model cannot merge into quantized base "
                             "weights; turn one of them off")
        self._chat_or_template()
        self._packing()
        field = self.trainer.validation_field
        if field not in ("combined", out.name):
            raise ValueError(f"trainer.validation_field '{field}' is neither 'combined' nor the output feature ({out.name})")
        return self

    def _chat_or_template(self) -> None:
        """A `messages` input is rendered by the chat template, so prompt.template and prompt.task would mean nothing
        for it; prompt.chat_template means nothing without one."""
        if self.input.type != "messages":
            if self.prompt.chat_template is not None:
                raise ValueError(f"prompt.chat_template renders a `messages` input, and '{self.input.name}' is "
                                 f"{self.input.type}; remove it, or make the input type: messages")
            self._template_reads_the_input_not_the_output()
            return
        if self.prompt.retrieval.type:
            raise ValueError("prompt.retrieval: a `messages` input is rendered by its chat template, which has no "
                             "{__context__}; remove prompt.retrieval and put the examples in the conversation")
        for key in ("template", "task"):
            if getattr(self.prompt, key) is not None:
                raise ValueError(f"prompt.{key}: a `messages` input is rendered by its chat template; remove "
                                 f"prompt.{key} (prompt.chat_template sets the template)")
        if self.output.type != "text":
            raise ValueError(f"output_features[0]: a `messages` input learns its assistant turns, so the output is "
                             f"their text: write type: text, not {self.output.type}")
        if self.output.preprocessing.max_sequence_length is not None:
            raise ValueError("output_features[0].preprocessing.max_sequence_length: a `messages` input's turns are "
                             "limited together; use preprocessing.global_max_sequence_length")

    def _packing(self) -> None:
        trainer = self.trainer
        if trainer.packing_max_sequences_per_pack is not None and not trainer.packing:
            raise ValueError("trainer.packing_max_sequences_per_pack needs trainer.packing: true")
        if trainer.packing and trainer.type != "finetune":
            raise ValueError("trainer.packing packs training rows, and trainer.type none trains nothing; remove it, "
                             "or set trainer.type: finetune")

    def _template_reads_the_input_not_the_output(self) -> None:
        """A template must not read the output column (else the model is shown the answer it is trained to write). It
        need not read the input feature: Ludwig's own examples name the input `prompt` and write the prompt from other
        columns (`{instruction}`, `{input}`), and the input's column is then not read at all (`columns`)."""
        template = self.prompt.text()
        if template is None:  # the input text is the prompt
            return
        out = self.output
        if out.source in placeholders(template):
            raise ValueError(f"prompt.template: placeholder {{{out.source}}} reads the output column, so the model "
                             f"would be shown the answer it learns to write; remove it")

    @property
    def chat(self) -> bool:
        """Whether the input is a conversation (`messages`), rendered by a chat template."""
        return self.input.type == "messages"

    @property
    def input(self):
        return self.input_features[0]

    @property
    def output(self):
        return self.output_features[0]

    def columns(self) -> list[str]:
        """Dataset columns a prompt reads: the input feature's where the prompt shows it (no template, `{__sample__}`
        or `{<its column>}`) or few-shot retrieval matches rows by it, then every other `{column}` of the template."""
        template = self.prompt.text()
        if template is None:
            return [self.input.source]
        fields = placeholders(template)
        shown = SAMPLE in fields or self.input.source in fields or self.prompt.retrieval.type is not None
        names = [self.input.source] if shown else []
        for name in fields:
            if name not in (SAMPLE, TASK, CONTEXT, *names):
                names.append(name)
        return names
