"""`generation`: transformers' `GenerationConfig` fields under Ludwig's names, passed to `model.generate` as they are.

Every key of Ludwig's `LLMGenerationConfig` that transformers 5 still acts on is a field here. A few keys Ludwig
lists do nothing in transformers 5 (or nothing for a decoder-only model given a prompt, which is every model_type
llm run); each is accepted at Ludwig's default — a saved Ludwig config writes them all — and any other value is
refused, saying what to write instead (`RETIRED`).

Greedy unless `do_sample` (Ludwig samples by default; greedy makes predictions repeatable, which evaluation and
save → load checks rely on). `temperature: 0` is greedy too, as in Ludwig: transformers refuses a zero temperature,
so sampling is turned off rather than passing it on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tunefork.sections import Section

# key → (the values that do nothing, why a different one is refused and what to write instead)
RETIRED: dict[str, tuple[tuple, str]] = {
    "num_beam_groups": ((1, None), "group beam search left transformers 5 for hub code (custom_generate); use "
                        "num_beams for beam search"),
    "diversity_penalty": ((0, 0.0, None), "it acts only in group beam search, which left transformers 5 for hub code "
                          "(custom_generate); remove it"),
    "penalty_alpha": ((None,), "contrastive search left transformers 5 for hub code (custom_generate); use num_beams "
                      "or do_sample with top_k"),
    "force_words_ids": ((None,), "constrained beam search left transformers 5 for hub code (custom_generate); to make "
                        "the output follow a form, give the output feature's decoder a json_schema (text) or "
                        "constrain_to_vocabulary (category)"),
    "forced_decoder_ids": ((None,), "transformers 5 no longer has it; use forced_bos_token_id or sequence_bias"),
    "max_length": ((32, None), "it counts prompt and output tokens together, and Ludwig lets max_new_tokens override "
                   "it; write max_new_tokens (tokens generated after the prompt)"),
    "min_length": ((0, None), "it counts prompt and output tokens together; write min_new_tokens (tokens generated "
                   "after the prompt)"),
    "forced_bos_token_id": ((None,), "it forces the first token of an encoder-decoder model's output; a causal LM "
                            "continues its prompt, so use sequence_bias to favour a first token"),
    "bos_token_id": ((None,), "generate uses it only when there is no prompt, and tunefork always gives one (the "
                     "prompt's own tokens come from the tokenizer); remove it"),
    "pad_token_id": ((None,), "prompts are padded with the tokenizer's pad token (or eos) and padded positions are "
                     "masked, so another id changes nothing; remove it"),
    "renormalize_logits": ((False, None), "renormalizing after the logits processors changes only the scores "
                           "transformers returns, which tunefork does not report, never the tokens; remove it"),
    "prompt_lookup_num_tokens": ((None, 0), "prompt lookup decoding generates one row at a time in transformers, and "
                                 "tunefork batches prompts; remove it (greedy output is the same without it)"),
}
SAMPLING = ("temperature", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


class Generation(Section):
    """How the model writes its output after the prompt (transformers' GenerationConfig, Ludwig's defaults)."""

    # length
    max_new_tokens: int = Field(32, gt=0, description="Most tokens generated after the prompt (Ludwig's default). "
                                "Capped by the plan so that a prompt keeps 32 tokens of the sequence limit.")
    min_new_tokens: int | None = Field(None, ge=0, description="Fewest tokens generated before eos may end a row.")
    early_stopping: bool | Literal["never"] = Field(
        False, description="Beam search: true stops at num_beams complete candidates, false at a heuristic, 'never' "
        "only when no better candidate can exist.")
    max_time: float | None = Field(None, gt=0, description="Seconds a generate call may run; it finishes the step "
                                   "under way, so rows end short.")
    # strategy
    do_sample: bool = Field(False, description="Sample with temperature / top_k / top_p instead of greedy decoding.")
    num_beams: int = Field(1, gt=0, description="Beam search width (1: no beam search).")
    use_cache: bool = Field(True, description="Reuse the keys and values of earlier positions (faster; the tokens "
                            "are the same).")
    # sampling
    temperature: float = Field(0.1, ge=0, description="Softmax temperature when sampling (Ludwig's default 0.1); 0 "
                               "is greedy decoding.")
    top_k: int = Field(50, ge=0, description="Keep this many most likely tokens when sampling (0: all).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: the smallest set with this probability.")
    typical_p: float = Field(1.0, gt=0, le=1, description="Locally typical sampling: the most typical tokens with "
                             "this probability (1: off).")
    epsilon_cutoff: float = Field(0.0, ge=0, lt=1, description="When sampling, drop tokens less likely than this "
                                  "(0: off).")
    eta_cutoff: float = Field(0.0, ge=0, lt=1, description="Eta sampling: drop tokens below min(eta, sqrt(eta)·"
                              "exp(-entropy)) (0: off).")
    # logits
    repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages repeating tokens (1: none).")
    encoder_repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages tokens that are not in the "
                                              "prompt (1: none).")
    length_penalty: float = Field(1.0, description="Beam search: > 0 favours longer outputs, < 0 shorter ones.")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Forbid repeating n-grams of this size (0: off).")
    bad_words_ids: list[list[int]] | None = Field(None, description="Token id sequences that may not be generated.")
    forced_eos_token_id: int | list[int] | None = Field(
        None, description="Token(s) forced as the last generated token when max_new_tokens is reached.")
    remove_invalid_values: bool = Field(False, description="Replace nan/inf logits so generation cannot crash.")
    exponential_decay_length_penalty: tuple[int, float] | None = Field(
        None, description="(start_index, decay_factor): after start_index generated tokens, raise eos's score by "
        "this factor per token.")
    suppress_tokens: list[int] | None = Field(None, description="Token ids never generated.")
    begin_suppress_tokens: list[int] | None = Field(None, description="Token ids not generated first.")
    sequence_bias: list[tuple[list[int], float]] | dict[str, float] | None = Field(
        None, description="Bias added to token sequences' scores: [[ids, bias], ...], or Ludwig's mapping with the "
        "ids written as a string ('12' or '12, 7').")
    guidance_scale: float | None = Field(None, ge=0, description="Classifier-free guidance (> 1 sticks closer to "
                                         "the prompt).")
    eos_token_id: int | list[int] | None = Field(None, description="Token(s) that end a row (null: the tokenizer's "
                                                 "eos).")

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data):
        """Ludwig's keys that transformers 5 dropped or that cannot act here: their defaults pass, others refused."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, (inert, reason) in RETIRED.items():
            if key in data:
                value = data.pop(key)
                booleans = any(isinstance(v, bool) for v in inert)
                if value is not None and (value not in inert or isinstance(value, bool) is not booleans):
                    raise ValueError(f"{key}: {reason}")
        return data

    @field_validator("sequence_bias")
    @classmethod
    def _sequence_bias_ids(cls, value):
        for ids in (value or {}) if isinstance(value, dict) else []:
            try:
                _ids(ids)
            except ValueError:
                raise ValueError(f"key '{ids}' is not token ids; write them as '12' or '12, 7'") from None
        return value

    @property
    def sampling(self) -> bool:
        """Sampling, unless temperature 0 asks for greedy decoding (Ludwig's reading)."""
        return self.do_sample and self.temperature > 0

    def kwargs(self) -> dict[str, Any]:
        """Arguments for `model.generate`; sampling knobs only when sampling, so transformers does not warn."""
        out = self.model_dump(exclude={"do_sample", *SAMPLING}, exclude_defaults=True)
        out.update(max_new_tokens=self.max_new_tokens, do_sample=self.sampling, num_beams=self.num_beams,
                   repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size,
                   use_cache=self.use_cache)
        if self.sequence_bias is not None:
            pairs = self.sequence_bias.items() if isinstance(self.sequence_bias, dict) else self.sequence_bias
            # transformers' list form: it also survives generation_config.json (tuple keys would not)
            out["sequence_bias"] = [[_ids(ids), float(bias)] for ids, bias in pairs]
        if self.exponential_decay_length_penalty is not None:
            out["exponential_decay_length_penalty"] = tuple(self.exponential_decay_length_penalty)
        if self.sampling:
            out.update({key: getattr(self, key) for key in SAMPLING})
        else:  # override any sampling defaults the model's generation_config.json ships with
            out.update(temperature=None, top_k=None, top_p=None)
        return out


def _ids(ids) -> list[int]:
    """Token ids from a list, or from Ludwig's string key ('12' or '12, 7'); ValueError when there are none."""
    out = [int(part) for part in ids.replace(",", " ").split()] if isinstance(ids, str) else [int(i) for i in ids]
    if not out:
        raise ValueError("no token ids")
    return out
