"""`prompt`: what a causal LM reads — a template over the dataset's columns (Python format specs allowed), Ludwig's
task templates, and few-shot retrieval (`prompt.retrieval`, built in `data/retrieval.py`)."""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import Field, model_validator

from tunefork.sections import Section

SAMPLE, TASK, CONTEXT = "__sample__", "__task__", "__context__"
# Ludwig's default template when only `prompt.task` is given (ludwig/prompt.py, DEFAULT_ZERO_SHOT_PROMPT_TEMPLATE).
DEFAULT_TASK_TEMPLATE = "SAMPLE INPUT: {__sample__}\n\nUSER: Complete the following task: {__task__}\n\nASSISTANT:\n"
# ... and with `prompt.retrieval` (DEFAULT_FEW_SHOT_PROMPT_TEMPLATE, word for word)
DEFAULT_FEW_SHOT_TEMPLATE = (
    "Below is relevant context:\n\nCONTEXT: {__context__}\n\nCONTEXT is comprised of labeled samples whose embeddings "
    "were similar to that of the sample input. The labels in\nthese samples could aid you in your final prediction. "
    "Given this and no prior knowledge, follow the instructions\nbelow.\n\n" + DEFAULT_TASK_TEMPLATE)


class Retrieval(Section):
    """Few-shot prompts: the `k` training rows nearest each row (or `k` random ones) inserted at `{__context__}`,
    as Ludwig writes them (a list of {input: ..., output: ...} records). See `data/retrieval.py`."""

    type: Literal["random", "semantic"] | None = Field(
        None, description="random: k training rows drawn per row; semantic: the k whose input is nearest the row's, "
        "embedded with the sentence encoder `model_name`. null: no retrieval (zero-shot).")
    k: int = Field(0, ge=0, description="Training rows inserted per prompt (0 with a type: 1, as in Ludwig).")
    model_name: str | None = Field(None, description="Sentence encoder of semantic retrieval: a hub id or local "
                                   "folder sentence-transformers loads (e.g. all-MiniLM-L6-v2).")

    @model_validator(mode="before")
    @classmethod
    def _no_foreign_index(cls, data):
        """Ludwig's `index_name` (null in a config, an index of Ludwig's own cache once it trained) is not a key here:
        the index is built from the training rows and cached with the preprocessed data."""
        if isinstance(data, dict) and "index_name" in data:
            data = dict(data)
            if data.pop("index_name") is not None:
                raise ValueError("index_name names an index in Ludwig's cache; tunefork builds the index from the "
                                 "training rows and caches it with the preprocessed data: remove index_name")
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.type is None and (self.k or self.model_name):
            raise ValueError("k and model_name need a retrieval type: set type: semantic (or random)")
        if self.type == "semantic" and not self.model_name:
            raise ValueError("type semantic needs model_name, the sentence encoder (e.g. all-MiniLM-L6-v2)")
        if self.type == "random" and self.model_name:
            raise ValueError("type random embeds nothing, so model_name would be unused: remove it, or set type: "
                             "semantic")
        return self

    @property
    def count(self) -> int:
        return max(self.k, 1) if self.type else 0


class Prompt(Section):
    template: str | None = Field(
        None, description="What the model reads. `{column}` inserts any dataset column (with Python format specs and "
        "conversions: `{price:.2f}`, `{name!r}`), `{__sample__}` the input feature, `{__task__}` prompt.task, "
        "`{__context__}` the retrieved rows; write `{{` and `}}` for literal braces. It must read the input feature "
        "and must not read the output column. null: the input text as is (or Ludwig's default task template when a "
        "task is given, its few-shot template with retrieval).")
    task: str | None = Field(None, description="An instruction inserted at `{__task__}`.")
    chat_template: str | None = Field(
        None, min_length=1, description="A `messages` input's chat template (Jinja, as transformers' "
        "apply_chat_template takes it). null: the base model's own.")
    retrieval: Retrieval = Retrieval()

    @model_validator(mode="after")
    def _template_parses(self):
        if self.template is not None:
            fields = placeholders(self.template)  # raises ValueError with the reason on a malformed template
            if not fields:
                raise ValueError("template has no {column} placeholder, so every row would get the same prompt; add "
                                 "the input column as {name}, or {__sample__}")
            if TASK in fields and not self.task:
                raise ValueError("template uses {__task__} but prompt.task is not set; set prompt.task, or remove "
                                 "{__task__}")
            if self.retrieval.type and CONTEXT not in fields:
                raise ValueError("template has no {__context__} placeholder for the rows prompt.retrieval retrieves; "
                                 "add it where the examples go")
            if CONTEXT in fields and not self.retrieval.type:
                raise ValueError("template uses {__context__} but prompt.retrieval is not set: set retrieval: "
                                 "{type: semantic, k: 3, model_name: ...} (or type: random)")
        elif self.retrieval.type and not self.task:
            raise ValueError("retrieval without a template uses Ludwig's few-shot template, which reads prompt.task: "
                             "set task (or a template with {__context__})")
        return self

    def text(self) -> str | None:
        if self.template is not None:
            return self.template
        if self.retrieval.type:
            return DEFAULT_FEW_SHOT_TEMPLATE
        return DEFAULT_TASK_TEMPLATE if self.task else None


def placeholders(template: str) -> list[str]:
    """The `{name}` fields of a template, in order, once each. ValueError names what is malformed."""
    names = []
    for name, _, _ in fields(template):
        if name not in names:
            names.append(name)
    return names


def fields(template: str) -> list[tuple[str, str | None, str]]:
    """(name, conversion, format spec) of each placeholder. A name is a column (no `.attr` or `[key]` access); a
    conversion is !r, !s or !a; a spec is Python's format mini-language, checked against a sample of the kind it
    formats (a number for `.2f` or `d`, text otherwise). ValueError names what is malformed."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template cannot be parsed ({exc}); write {{{{ and }}}} for literal braces") from None
    out = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        if not name or not re.fullmatch(r"[^{}\[\].!:]+", name):
            raise ValueError(f"template placeholder {shown} is not a column name; write {{{{ and }}}} for literal "
                             f"braces")
        if conversion not in (None, "r", "s", "a"):
            raise ValueError(f"template placeholder {shown}: conversion !{conversion} is not one of !r, !s, !a")
        if spec:
            try:
                if "{" in spec:
                    raise ValueError("nested fields are not supported")
                format(SPEC_SAMPLES[spec_kind(spec)], spec)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"template placeholder {shown}: invalid format spec ({exc})") from None
        out.append((name, conversion, spec or ""))
    return out


SPEC_SAMPLES = {"float": 1.5, "int": 1, "str": "x"}


def spec_kind(spec: str) -> str:
    """What a format spec formats, by its presentation type (Ludwig casts `f` specs to float; `d`, `x`, ... need an
    integer; the rest, text)."""
    if spec and spec[-1] in "eEfFgGn%":
        return "float"
    if spec and spec[-1] in "bcdoxX":
        return "int"
    return "str"
