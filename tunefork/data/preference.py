"""Data for preference tuning (`trainer.type: dpo | orpo | kto`), tokenized as the causal-LM recipe tokenizes.

    DPO, ORPO   prompt (input feature / template) · chosen (output feature's column) · rejected (`rejected_column`)
    KTO         prompt · completion (output feature's column) · desirable or not (`label_column`)

Each completion is encoded exactly as an instruction-tuning output (`data.prompts.encode`: prompt ids, then the
completion's ids and eos, the prompt masked, the same length limits), so a preference-tuned model learns the tokens it
writes at predict time. A row without a completion (or without a label) is dropped, as `recipes.llm.labelled` drops
a row without an output; every cut is recorded and reported as for instruction tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tunefork.data import prompts
from tunefork.data.tensors import Table
from tunefork.errors import DataError

TRUE = {"true", "1", "yes", "desirable"}
FALSE = {"false", "0", "no", "undesirable"}


def _source(frame: pd.DataFrame) -> str:
    return frame.attrs.get("source", "dataset")


def second_column(config) -> tuple[str, str]:
    """(column, key) of the second thing a row holds: the rejected completion, or KTO's desirable label."""
    trainer = config.trainer
    return (trainer.label_column, "trainer.label_column") if trainer.type == "kto" else \
        (trainer.rejected_column, "trainer.rejected_column")


def check_columns(config, frame: pd.DataFrame) -> None:
    """The prompt's and the output's columns (`data.prompts.check_columns`), then the rejected or label column, which
    the prompt must not read: a model shown the rejected answer learns nothing about preferring the other."""
    prompts.check_columns(config, frame, with_output=True)
    column, key = second_column(config)
    if column not in frame.columns:
        raise DataError(f"{_source(frame)}: column '{column}' ({key}) not found; columns are: "
                        f"{', '.join(map(str, frame.columns[:12]))}")
    if column in config.columns() or column == config.output.source:
        raise DataError(f"{key} '{column}' is also read as the prompt or the output; name a column of its own")


def _present(values: pd.Series) -> pd.Series:
    return values.notna() & (values.astype(str).str.strip() != "")


def kept(config, frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with a completion and a rejected completion (or a label)."""
    check_columns(config, frame)
    column, _ = second_column(config)
    out = frame[_present(frame[config.output.source]) & _present(frame[column])]
    out.attrs = frame.attrs
    return out


def desirable(config, frame: pd.DataFrame) -> np.ndarray:
    """KTO's labels as booleans: a bool column, 0/1, or true/false, yes/no, desirable/undesirable."""
    column, key = second_column(config)
    values = frame[column]
    out = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values.tolist()):
        text = str(value).strip().lower()
        if isinstance(value, (bool, np.bool_)) or text in TRUE | FALSE:
            out[i] = bool(value) if isinstance(value, (bool, np.bool_)) else text in TRUE
            continue
        raise DataError(f"{_source(frame)}: row {frame.index[i]}: {key} '{column}' holds {value!r}; write true or "
                        f"false (1 or 0) for a desirable or an undesirable completion")
    return out


@dataclass(frozen=True)
class Pairs:
    """DPO's and ORPO's rows: the prompt with the chosen completion, and with the rejected one."""

    chosen: prompts.Encoded
    rejected: prompts.Encoded

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def lengths(self) -> np.ndarray:
        return self.chosen.ids.lengths + self.rejected.ids.lengths

    def to_table(self) -> Table:
        return Table({f"{part}:{k}": v for part in ("chosen", "rejected")
                      for k, v in getattr(self, part).to_table().columns.items()})

    @classmethod
    def from_table(cls, table: Table) -> Pairs:
        return cls(*(prompts.Encoded.from_table(_part(table, part)) for part in ("chosen", "rejected")))

    def truncation(self) -> dict:
        chosen, rejected = self.chosen.truncation(), self.rejected.truncation()
        return {"rows": chosen["rows"], "prompts_cut": chosen["prompts_cut"],
                "outputs_cut": chosen["outputs_cut"] + rejected["outputs_cut"]}


@dataclass(frozen=True)
class Labelled:
    """KTO's rows: the prompt with one completion, and whether that completion is desirable."""

    completion: prompts.Encoded
    desirable: np.ndarray

    def __len__(self) -> int:
        return len(self.completion)

    @property
    def lengths(self) -> np.ndarray:
        return self.completion.ids.lengths

    def to_table(self) -> Table:
        return Table({**{f"completion:{k}": v for k, v in self.completion.to_table().columns.items()},
                      "desirable": self.desirable})

    @classmethod
    def from_table(cls, table: Table) -> Labelled:
        return cls(prompts.Encoded.from_table(_part(table, "completion")), np.asarray(table["desirable"], dtype=bool))

    def truncation(self) -> dict:
        return self.completion.truncation()


def _part(table: Table, part: str) -> Table:
    prefix = f"{part}:"
    return Table({k[len(prefix):]: v for k, v in table.columns.items() if k.startswith(prefix)})


def encode(config, frame: pd.DataFrame, tokenizer, limits: prompts.Limits) -> Pairs | Labelled:
    """The rows of `frame` (already `kept`) as token ids."""
    rendered = prompts.render(config, frame)
    chosen = prompts.encode(tokenizer, rendered, prompts.targets(config, frame), limits)
    if config.trainer.type == "kto":
        return Labelled(chosen, desirable(config, frame))
    rejected = frame[config.trainer.rejected_column].astype(str).str.strip().tolist()
    return Pairs(chosen, prompts.encode(tokenizer, rendered, rejected, limits))


def from_table(config, table: Table) -> Pairs | Labelled:
    return Labelled.from_table(table) if config.trainer.type == "kto" else Pairs.from_table(table)
