"""Data for a causal LM: prompts rendered from the template, prompt + output tokenized with the prompt masked, and
batches padded to their longest row.

A training row is `prompt tokens + output tokens + eos`; its labels are the same ids with every prompt position set
to -100, so the loss (and perplexity) counts the output tokens only — the model is not taught to write prompts.
The output is tokenized on its own, as it will be generated after the prompt, so the tokens the model learns are
the ones it produces at predict time.

Length limits, in order: the input feature's `max_sequence_length` cuts the prompt, keeping its end (where the
template's cue, e.g. "### Response:", sits); the output's cuts the output, keeping its start; then
`global_max_sequence_length` cuts the output's end, and the prompt's start if the prompt alone is too long, always
leaving one output token. At generation the prompt keeps what `generation.max_new_tokens` leaves of that limit (the
plan caps max_new_tokens so that this is at least `MIN_PROMPT_TOKENS`). Every cut is recorded per row (`Encoded.cut`,
and the flags `encode_prompts` returns) so that it is counted and reported, never silent; characters are cut before
tokenizing (`data.clipping`), so a huge prompt costs what its kept end costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tunefork.config.prompt import CONTEXT, SAMPLE, TASK, fields, placeholders, spec_kind
from tunefork.data import clipping
from tunefork.data.tensors import TokenIds
from tunefork.errors import DataError, TuneforkError

IGNORE = -100  # torch's cross_entropy ignore_index: positions that carry no loss
PROMPT_CUT, OUTPUT_CUT = 1, 2  # bits of `Encoded.cut`


def check_columns(config, frame: pd.DataFrame, with_output: bool) -> None:
    """The columns a prompt reads, and the output's when `with_output` (a `messages` input holds its own answers)."""
    needed = config.columns() + ([config.output.source] if with_output and not config.chat else [])
    for column in needed:
        if column not in frame.columns:
            what = "the output feature" if with_output and column == config.output.source else (
                "the input feature" if column == config.input.source else "a prompt.template placeholder")
            raise DataError(f"{frame.attrs.get('source', 'dataset')}: column '{column}' ({what}) not found; columns "
                            f"are: {', '.join(map(str, frame.columns[:12]))}")


def _text(values: pd.Series) -> pd.Series:
    return values.where(values.notna(), "").astype(str)


def render(config, frame: pd.DataFrame, context: list[str] | None = None) -> list[str]:
    """The prompt of every row: the template filled from the row's columns (`context`: each row's retrieved examples
    for `{__context__}`, `data.retrieval.contexts`), or the input text as is."""
    template = config.prompt.text()
    if template is None:
        return _text(frame[config.input.source]).tolist()
    kinds: dict[str, str] = {}
    for name, _, spec in fields(template):
        if name not in (TASK, CONTEXT) and kinds.get(name, "str") == "str":
            kinds[name] = spec_kind(spec)  # a column formatted as a number anywhere is read as numbers
    columns = {name: _typed(frame, config.input.source if name == SAMPLE else name, kind, template)
               for name, kind in kinds.items()}
    if CONTEXT in placeholders(template) and (context is None or len(context) != len(frame)):
        raise TuneforkError("prompt.retrieval: the retrieved examples of these rows are missing (a bug: please report it)")
    extra = {TASK: config.prompt.task or ""}
    return [template.format(**{name: values[i] for name, values in columns.items()}, **extra,
                            **({CONTEXT: context[i]} if context is not None else {}))
            for i in range(len(frame))]


def _typed(frame: pd.DataFrame, column: str, kind: str, template: str) -> list:
    """A column as text, or as numbers where the template formats it with a numeric spec (`{price:.2f}`, `{n:d}`);
    a cell that is not a number is one sentence naming the column and row."""
    if kind == "str":
        return _text(frame[column]).tolist()
    values = pd.to_numeric(frame[column], errors="coerce")
    wrong = values.isna() & frame[column].notna() | (kind == "int") & values.notna() & (values % 1 != 0)
    wrong |= (kind == "int") & values.isna()
    if wrong.any():
        row = frame.index[int(np.argmax(wrong.to_numpy()))]
        cell = frame[column][row]
        what = "an integer" if kind == "int" else "a number"
        raise DataError(f"{frame.attrs.get('source', 'dataset')}: column '{column}' row {row}: "
                        f"{cell.item() if isinstance(cell, np.generic) else cell!r} is not {what}, and "
                        f"prompt.template formats this column as {what}")
    return [int(v) for v in values] if kind == "int" else values.astype(float).tolist()


def targets(config, frame: pd.DataFrame) -> list[str]:
    return _text(frame[config.output.source]).str.strip().tolist()


@dataclass(frozen=True)
class Limits:
    prompt: int | None  # input feature max_sequence_length
    output: int | None  # output feature max_sequence_length
    total: int  # global_max_sequence_length, or the model's context length


def encode_prompts(tokenizer, prompts: list[str], limits: Limits, reserve: int = 0,
                   special_tokens: bool = True) -> tuple[list[list[int]], np.ndarray]:
    """Prompt ids, cut to the input limit and to `total - reserve` (room kept for generated or output tokens), keeping
    their end; and which rows were cut (bool per row). A chat template writes its own special tokens:
    `special_tokens=False` then."""
    room = max(1, limits.total - reserve)
    keep = min(limits.prompt or room, room)
    clipped = [clipping.keep_tail(prompt, keep) for prompt in prompts]
    ids = tokenizer(clipped, add_special_tokens=special_tokens)["input_ids"]
    cut = np.fromiter((len(row) > keep or short is not whole for row, short, whole in zip(ids, clipped, prompts, strict=True)),
                      dtype=bool, count=len(ids))
    return [row[-keep:] if len(row) > keep else row for row in ids], cut


@dataclass(frozen=True)
class Encoded:
    """prompt + output ids per row (ragged), and how many of each row's leading tokens are the prompt. A conversation
    (`data.chat`) scores its assistant turns wherever they are: `label_mask` is then 1 on the tokens that carry a loss,
    and `prompt_lengths` is the position of each row's first one."""

    ids: TokenIds
    prompt_lengths: np.ndarray
    cut: np.ndarray | None = None  # per row: PROMPT_CUT | OUTPUT_CUT bits (None: not recorded)
    label_mask: TokenIds | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> Encoded:
        return Encoded(self.ids.take(index), self.prompt_lengths[index], None if self.cut is None else self.cut[index])

    @property
    def target_lengths(self) -> np.ndarray:
        return self.ids.lengths - self.prompt_lengths

    def to_table(self):
        """As a `Table` (ids + prompt lengths), for the preprocessing cache."""
        from tunefork.data.tensors import Table

        cut = self.cut if self.cut is not None else np.zeros(len(self), dtype=np.int8)
        mask = {"label_mask": self.label_mask} if self.label_mask is not None else {}
        return Table({"ids": self.ids, "prompt_lengths": self.prompt_lengths, "cut": cut, **mask})

    @classmethod
    def from_table(cls, table) -> Encoded:
        return cls(table["ids"], table["prompt_lengths"], table.columns.get("cut"), table.columns.get("label_mask"))

    def scored(self, index: np.ndarray) -> int:
        """Tokens that carry a loss in rows `index` (the first token of a row has no predecessor to predict it)."""
        if self.label_mask is not None:
            return int(sum(int(self.label_mask.row(i).sum()) for i in index))
        targets, prompt = self.target_lengths[index], self.prompt_lengths[index]
        return int((targets - ((prompt == 0) & (targets > 0))).sum())

    def labels(self, i: int) -> np.ndarray:
        """Row `i`'s labels: its ids where they carry a loss, IGNORE elsewhere."""
        ids = self.ids.row(i).astype(np.int64)
        if self.label_mask is not None:
            return np.where(self.label_mask.row(i) == 1, ids, IGNORE)
        labels = ids.copy()
        labels[: self.prompt_lengths[i]] = IGNORE
        return labels

    def truncation(self) -> dict:
        """How many rows lost the start of their prompt or the end of their output."""
        cut = self.cut if self.cut is not None else np.zeros(len(self), dtype=np.int8)
        return {"rows": len(self), "prompts_cut": int(np.count_nonzero(cut & PROMPT_CUT)),
                "outputs_cut": int(np.count_nonzero(cut & OUTPUT_CUT))}


def encode(tokenizer, prompts: list[str], outputs: list[str], limits: Limits) -> Encoded:
    prompt_ids, prompt_cut = encode_prompts(tokenizer, prompts, limits, reserve=1)
    # an output keeps its start: at most its limit (or the whole sequence limit) of characters' worth is tokenized
    kept = [clipping.keep_head(o, limits.output or limits.total) for o in outputs]
    output_ids = tokenizer(kept, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []  # learn to stop
    rows, prompt_lengths = [], []
    cut = np.where(prompt_cut, PROMPT_CUT, 0).astype(np.int8)
    for i, (p, o) in enumerate(zip(prompt_ids, output_ids, strict=True)):
        whole = len(o) + len(eos)
        o = (o[: limits.output] if limits.output else o) + eos
        o = o[: limits.total - len(p)]
        if len(o) < whole or kept[i] is not outputs[i]:
            cut[i] |= OUTPUT_CUT
        rows.append(p + o)
        prompt_lengths.append(len(p))
    return Encoded(TokenIds.from_rows(rows), np.asarray(prompt_lengths, dtype=np.int64), cut)


def batch(encoded: Encoded, index: np.ndarray, pad_id: int) -> dict:
    """Right-padded tensors for rows `index`: input_ids, attention_mask, labels (-100 on prompt and padding)."""
    import torch

    ids, mask = encoded.ids.padded(index, pad_id, left=False)
    if encoded.label_mask is None:
        labels = np.where(mask == 1, ids, IGNORE)
        labels[np.arange(ids.shape[1])[None, :] < encoded.prompt_lengths[index][:, None]] = IGNORE
    else:
        labels, _ = encoded.label_mask.padded(index, 0, left=False)
        labels = np.where(labels == 1, ids, IGNORE)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels)}


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts for generation: padded on the left, so every row's next token is written at the same position."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, row in enumerate(rows):
        ids[j, width - len(row):] = row
        mask[j, width - len(row):] = 1
    return ids, mask
