"""Chat-format data for a causal LM: a `messages` column of `{role, content}` turns, rendered with a chat template,
with the loss on the assistant turns only.

    input_features: [{name: messages, type: messages}]   # a list of {role, content} per row (or a JSON string of one)
    output_features: [{name: reply, type: text}]          # names the prediction column: reply_response
    prompt: {chat_template: "..."}                         # optional Jinja; default: the tokenizer's own template

A row's value is a list of turns (JSON/JSONL/Parquet) or a JSON string of one (CSV). ShareGPT's layout (`from` /
`value` with roles `human`, `gpt`, `system`) is translated on read. The conversation is rendered once, whole, with
`tokenizer.apply_chat_template` (transformers' own renderer, so the text is exactly what the model's authors wrote
the template for), then tokenized with character offsets; a token is scored when its characters fall in an assistant
turn. An assistant turn's characters are found by rendering the conversation up to that turn with the generation
prompt, and up to its end: the difference is the turn as the template writes it, end-of-turn marker included, so the
model learns to close its turn. A template that rewrites earlier turns when later ones are added has no such
difference and is refused.

At generation, a conversation is answered after its last user turn: a trailing assistant turn is the reference
answer (what evaluate scores the generated reply against), so it is not shown to the model.
"""

from __future__ import annotations

import json

import numpy as np

from tunefork.data.tensors import TokenIds
from tunefork.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "tool": "tool", "function_call": "assistant", "observation": "tool"}


def parse(value, where: str) -> list[dict]:
    """One row's turns as `[{role, content}]`, checked; `where` names the row in errors."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not a JSON list of {{role, content}} turns ({exc.msg} at character "
                            f"{exc.pos})") from None
    if isinstance(value, np.ndarray):  # Parquet's list<struct> column
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} turns, got "
                        f"{type(value).__name__ if not isinstance(value, list) else 'an empty list'}")
    return [_turn(turn, f"{where}, turn {i}") for i, turn in enumerate(value)]


def _turn(turn, where: str) -> dict:
    if not isinstance(turn, dict):
        raise DataError(f"{where}: expected an object with 'role' and 'content', got {type(turn).__name__}")
    if "from" in turn and "role" not in turn:  # ShareGPT
        source = str(turn["from"])
        if source not in SHAREGPT_ROLES:
            raise DataError(f"{where}: ShareGPT role '{source}' is not one of {', '.join(SHAREGPT_ROLES)}")
        turn = {"role": SHAREGPT_ROLES[source], "content": turn.get("value")}
    if "role" not in turn:
        raise DataError(f"{where}: the turn has no 'role' (one of {', '.join(ROLES)})")
    role, content = turn["role"], turn.get("content")
    if role not in ROLES:
        raise DataError(f"{where}: role '{role}' is not one of {', '.join(ROLES)}")
    if not isinstance(content, str) or not content.strip():
        raise DataError(f"{where}: the {role} turn has {'no' if content is None else 'empty'} content")
    return {"role": role, "content": content}


def conversations(frame, column: str) -> list[list[dict]]:
    source = frame.attrs.get("source", "dataset")
    return [parse(value, f"{source}: row {row}, column '{column}'") for row, value in zip(frame.index, frame[column],
                                                                                          strict=True)]


def template(config, tokenizer) -> str:
    """The Jinja chat template: `prompt.chat_template`, else the tokenizer's; one clear error when neither has one."""
    text = config.prompt.chat_template or getattr(tokenizer, "chat_template", None)
    if not text:
        raise ConfigError([f"prompt.chat_template: the base model '{config.base_model}' ships no chat template, so "
                           f"'{config.input.name}' cannot be rendered; give one in prompt.chat_template (Jinja, as "
                           f"transformers takes it)"])
    return text


def _render(tokenizer, turns: list[dict], chat_template: str, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(turns, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, turns: list[dict], chat_template: str, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn in it."""
    text = _render(tokenizer, turns, chat_template, generation_prompt=False)
    spans = []
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = _render(tokenizer, turns[:i], chat_template, generation_prompt=True) if i else ""
        through = _render(tokenizer, turns[: i + 1], chat_template, generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise DataError(f"{where}: the chat template renders earlier turns differently once later turns are added, "
                            f"so the assistant turns cannot be told apart from the rest; give a template that renders a "
                            f"conversation turn by turn in prompt.chat_template")
        spans.append((len(before), len(through)))
    return text, spans


def encode(tokenizer, rows: list[list[dict]], chat_template: str, total: int, source: str):
    """(ids, per-token loss mask, first scored position, cut flag) per row: the whole conversation tokenized, the mask 1
    on assistant tokens. A conversation longer than `total` tokens keeps its start (and is flagged as cut)."""
    ids_rows, mask_rows, firsts, cut = [], [], [], np.zeros(len(rows), dtype=np.int8)
    for r, turns in enumerate(rows):
        where = f"{source}: row {r}"
        text, spans = assistant_spans(tokenizer, turns, chat_template, where)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        mask = [int(any(start <= a < end for start, end in spans)) for a, _ in offsets]
        if len(ids) > total:
            ids, mask, cut[r] = ids[:total], mask[:total], 1
        mask[0] = 0  # the first token has no predecessor to predict it
        ids_rows.append(ids)
        mask_rows.append(mask)
        firsts.append(mask.index(1) if 1 in mask else len(ids))
    return TokenIds.from_rows(ids_rows), TokenIds.from_rows(mask_rows), np.asarray(firsts, dtype=np.int64), cut


def prompt_turns(turns: list[dict]) -> list[dict]:
    """The turns a generation answers: all of them, less a trailing assistant turn (the reference answer)."""
    return turns[:-1] if len(turns) > 1 and turns[-1]["role"] == "assistant" else turns


def prompts(tokenizer, rows: list[list[dict]], chat_template: str) -> list[str]:
    """Each conversation rendered for generation: up to its last user turn, then the assistant's cue."""
    return [_render(tokenizer, prompt_turns(turns), chat_template, generation_prompt=True) for turns in rows]


def answered(turns: list[dict]) -> bool:
    """Whether a conversation ends with an assistant turn: a reply to learn and to score a generation against."""
    return turns[-1]["role"] == "assistant"


def references(rows: list[list[dict]]) -> list[str]:
    """The answer evaluate scores a generated reply against: each conversation's closing assistant turn."""
    return [turns[-1]["content"].strip() if answered(turns) else "" for turns in rows]
