"""Structured output: generation that can only write what the output feature allows.

    decoder: {json_schema: {...}}            text output: the generated text is JSON valid against the schema
    decoder: {regex: "(yes|no)"}             text output: the generated text matches the expression, whole
    decoder: {constrain_to_vocabulary: true} category output: the generated text is one of the labels, exactly

Both compile to a regular expression over the tokenizer's vocabulary and mask, at every step, each token that would
leave it; once the expression is complete only eos may follow. The library is outlines (its `outlines_core` backend:
JSON schema → regex → token index, and the logits processor that applies it). Chosen over the two others installed
or named: lm-format-enforcer 0.11.3's transformers integration imports `transformers.tokenization_utils`, which
transformers 5 removed, so it cannot load next to transformers 5.24; xgrammar would pull triton (hundreds of MB) for a
CPU-or-GPU library that must stay light. outlines_core is a small compiled package and runs on CPU and GPU alike.

The first masked step of a process compiles outlines' masking kernel (`torch.compile`): a few seconds, once.

One sequence per prompt: the processor keeps a parser state per batch row, which beam search would reorder under
it, so a constraint refuses `num_beams` > 1.
"""

from __future__ import annotations

import json

from tunefork.errors import ConfigError, TuneforkError

REGEX_SPECIALS = set("\\.^$*+?{}[]|()")


def literal(text: str) -> str:
    """`text` as a regular expression that matches it alone (outlines' syntax: escape the operators only)."""
    return "".join("\\" + c if c in REGEX_SPECIALS else c for c in text)


def pattern(config, meta: dict) -> str | None:
    """The regex a generated response must match, or None without a constraint."""
    output = config.output
    if output.type == "category" and output.decoder.constrain_to_vocabulary:
        return "(" + "|".join(literal(label) for label in meta["labels"]) + ")"
    if getattr(output.decoder, "regex", None) is not None:
        return output.decoder.regex
    schema = getattr(output.decoder, "json_schema", None)
    if schema is not None:
        from outlines_core.json_schema import build_regex_from_schema

        try:
            return build_regex_from_schema(json.dumps(schema))
        except Exception as exc:  # outlines_core raises its own error types for unsupported schemas
            raise ConfigError([f"output_features[0].decoder.json_schema: outlines cannot compile it "
                               f"({str(exc).splitlines()[0]}); simplify the schema"]) from None
    return None


class Constraint:
    """The compiled token index of one pattern for one tokenizer; `processor()` is a fresh logits processor per
    generate call (its parser state is per batch)."""

    def __init__(self, regex: str, tokenizer):
        try:
            from outlines.backends.outlines_core import OutlinesCoreBackend
            from outlines.models.transformers import TransformerTokenizer
            from outlines_core import Index
        except ImportError:
            raise TuneforkError("structured output (decoder.json_schema, regex, constrain_to_vocabulary) needs "
                                "outlines: pip install 'tunefork[llm]'") from None
        # the vocabulary as the strings each token writes, which the regex is matched against
        vocabulary = OutlinesCoreBackend.create_outlines_core_vocabulary(
            tokenizer.get_vocab(), tokenizer.eos_token_id, tokenizer.eos_token,
            TransformerTokenizer(tokenizer).convert_token_to_string)
        try:
            self.index = Index(regex, vocabulary)
        except Exception as exc:  # outlines_core's own error types: a syntax it lacks, or no token path at all
            raise ConfigError([f"output_features[0].decoder: outlines cannot compile the pattern '{regex[:80]}' over "
                               f"this tokenizer ({str(exc).splitlines()[0]}); simplify it"]) from None

    def processor(self):
        from outlines.backends.outlines_core import OutlinesCoreLogitsProcessor

        return OutlinesCoreLogitsProcessor(self.index, "torch")


def build(config, meta: dict, tokenizer, max_new_tokens: int) -> Constraint | None:
    """The output feature's constraint for this tokenizer, or None; refuses what cannot be honoured."""
    regex = pattern(config, meta)
    if regex is None:
        return None
    if config.generation.num_beams > 1:
        raise ConfigError([f"generation.num_beams {config.generation.num_beams}: a constrained output (decoder."
                           f"json_schema, regex or constrain_to_vocabulary) follows one sequence per prompt; set "
                           f"num_beams: 1"])
    if config.output.type == "category":
        # the constraint lets the model spell a label with any tokens, down to one per byte: room for the longest
        # spelling is what guarantees that every generated label is whole
        longest = max(meta["labels"], key=lambda label: len(label.encode()))
        if len(longest.encode()) > max_new_tokens:
            raise ConfigError([f"generation.max_new_tokens {max_new_tokens} leaves no room to write the label "
                               f"'{longest}' byte by byte ({len(longest.encode())} tokens at most), which "
                               f"constrain_to_vocabulary must allow so that every label is whole; raise "
                               f"max_new_tokens to {len(longest.encode())}"])
    return Constraint(regex, tokenizer)
