"""What `tunefork serve` knows about the model it serves: its folder's fingerprint, the pydantic model of one input
row, the columns of an answer, and `Service` — the model, loaded on the engine `--engine` picks (ONNX Runtime when the
model exports, `tunefork.onnx_engine`), answering a list of rows with a list of answers.

The records (config, metadata) are read at once, so the routes and their schemas exist before the weights are
loaded; `Service.load` then loads the model (in a thread when the server starts, so /health can say "loading").
"""

# No `from __future__ import annotations`: pydantic's create_model reads the field annotations at run time.
import hashlib
import logging
from pathlib import Path
from typing import Annotated

from tunefork.config.features import is_transformer

log = logging.getLogger("tunefork.serve")
# 100,000 characters: ~25,000 tokens of prose, beyond any encoder's 512 positions and most LLM prompts; a field over it
# is refused (422) rather than read, and `--max_field_chars` raises it for long-context models.
MAX_FIELD_CHARS = 100_000
# Missing-value strategies that fill a cell with one constant: only for these may a request send null.
CONSTANT_FILLS = ("fill_with_const", "fill_with_mode", "fill_with_mean", "fill_with_false")


def fingerprint(model_folder: Path) -> str:
    """blake2b-128 of what decides the answers: two servers answer alike exactly when their fingerprints match.
    A model's weights file; for an LLM, its config (base model, prompt, generation settings) and every safetensors
    file it holds (an adapter, or full weights), each with its path."""
    folder = Path(model_folder)
    digest = hashlib.blake2b(digest_size=16)
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        files = [folder / "model_hyperparameters.json", *sorted(folder.rglob("*.safetensors"))]
        for path in files:
            digest.update(str(path.relative_to(folder)).encode())
    for path in files:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def row_model(config, max_field_chars: int = MAX_FIELD_CHARS):
    """A pydantic model of one input row: one field per input feature (an LLM: per column its prompt reads), keyed by
    its dataset column; every string at most `max_field_chars` characters."""
    from pydantic import ConfigDict, Field, StringConstraints, create_model

    text = Annotated[str, StringConstraints(max_length=max_field_chars)]
    if config.model_type == "llm":  # a missing cell is an empty string in the prompt, as in training
        # a conversation (`messages` input): its turns as a list of {role, content}, or their JSON; data.chat checks them
        turns = list[dict[str, text | None]] | text if config.chat else text | None
        fields = {f"field_{i}": (turns, Field(..., alias=column, description="prompt column"))
                  for i, column in enumerate(config.columns())}
        return create_model("Row", __config__=ConfigDict(extra="ignore", populate_by_name=False), **fields)

    kinds = {
        "text": text,
        "category": text | int,  # categories read from a CSV of numbers arrive as ints
        "number": Annotated[float, Field(allow_inf_nan=False)],
        "binary": bool | text,  # true/false, 0/1, or one of the two labels seen in training
        "set": text,  # members split as in training: `"comedy drama"`
    }
    fields = {}
    for i, feature in enumerate(config.input_features):
        kind = kinds[feature.type]
        nullable = feature.preprocessing.missing_value_strategy in CONSTANT_FILLS
        why = f"{feature.type} input '{feature.name}'" + (" (null: filled as in training)" if nullable else "")
        fields[f"field_{i}"] = (kind | None if nullable else kind, Field(..., alias=feature.source, description=why))
    # extra keys are ignored, as in Ludwig: a client may send a whole dataset row
    return create_model("Row", __config__=ConfigDict(extra="ignore", populate_by_name=False), **fields)


def output_columns(config, meta: dict) -> dict[str, dict]:
    """JSON schema of each column a prediction has (mirrors features.*.columns)."""
    number = {"type": ["number", "null"]}
    out: dict[str, dict] = {}
    if config.model_type == "llm":
        name = config.output.name
        return {**({f"{name}_predictions": {"type": "string"}} if config.output.type == "category" else {}),
                f"{name}_response": {"type": "string"}}
    for feature in config.output_features:
        fitted = meta["outputs"][feature.name]
        if feature.type == "number":
            out[f"{feature.name}_predictions"] = number
            continue
        if feature.type == "set":  # Ludwig's shape: lists of labels and of probabilities
            out[f"{feature.name}_predictions"] = {"type": ["array", "null"], "items": {"type": "string"}}
            out[f"{feature.name}_probabilities"] = {"type": "array", "items": number}
            for label in fitted["vocab"]:
                out[f"{feature.name}_probabilities_{label}"] = number
            out[f"{feature.name}_probability"] = {"type": "array", "items": number}
            continue
        out[f"{feature.name}_predictions"] = {"type": "string"}
        for label in fitted.get("vocab") or fitted["labels"]:
            out[f"{feature.name}_probabilities_{label}"] = number
        out[f"{feature.name}_probability"] = number
    return out


class Service:
    """The served model: records at once, weights on `load()` (the engine's one line in `engine`). `predict(rows)`
    answers a list of row dicts with a DataFrame, one row each; `answers(rows)` with one dict per row."""

    def __init__(self, model_path, max_field_chars: int = MAX_FIELD_CHARS, *, engine: str = "auto", load: bool = True):
        from tunefork.models import folder

        self.folder = folder.check(Path(model_path))
        folder.refuse_shipped_code(self.folder)  # now, not in the loading thread: a refused folder is never served
        self.config, self.meta = folder.records(self.folder)
        self.Row = row_model(self.config, max_field_chars)
        self.fingerprint = None  # hashed with the weights' load: reading 90 MB is start-up time too
        self.engine_choice, self.fitted, self.engine, self.failure = engine, None, None, None
        if load:
            self.load()

    def load(self) -> None:
        from tunefork import onnx_engine, safety

        try:
            self.fingerprint = fingerprint(self.folder)
            self.fitted, self.engine = onnx_engine.load(self.folder, self.engine_choice, safety.remote_code_allowed())
        except Exception as exc:
            from tunefork.errors import first_line

            self.failure = f"the model could not be loaded: {first_line(exc)}"
            raise
        log.info("%s", self.engine)

    @property
    def model(self):
        """The torch model (`--engine torch`), for tests and benchmarks that reach into it."""
        return getattr(self.fitted, "model", None)

    def predict(self, rows: list[dict]):
        import pandas as pd

        return self.fitted.predict(pd.DataFrame(rows, columns=self.config.columns()))

    def answers(self, rows: list[dict]) -> list[dict]:
        """One dict per row; an `<output>_error` column appears only in the rows it is about."""
        records = self.predict(rows).to_dict(orient="records")
        return [{k: v for k, v in r.items() if not (k.endswith("_error") and (v is None or v != v))} for r in records]

    @staticmethod
    def length(row: dict) -> int:
        """What a row's padding cost follows: the characters of its text."""
        return sum(len(v) for v in row.values() if isinstance(v, str))

    def metadata(self) -> dict:
        from tunefork import __version__

        common = {"model_path": str(self.folder), "fingerprint": self.fingerprint, "tunefork_version": __version__,
                  "prediction_columns": list(output_columns(self.config, self.meta)), "engine": self.engine}
        if self.config.model_type == "llm":
            output = self.config.output
            return {**common, "model_type": "llm", "base_model": self.config.base_model,
                    "input_columns": self.config.columns(), "prompt_template": self.config.prompt.text(),
                    "output_features": [{"name": output.name, "type": output.type, "column": output.source,
                                         **({"labels": self.meta["labels"]} if output.type == "category" else {})}],
                    "generation": self.config.generation.model_dump(mode="json")}

        def describe(feature, fitted: dict, is_input: bool) -> dict:
            item = {"name": feature.name, "type": feature.type, "column": feature.source}
            if feature.type == "category":
                item["classes"] = [c for c in fitted["vocab"] if c != "<UNK>"]
            elif feature.type == "set" and not is_input:
                item["labels"] = fitted["vocab"]
            elif feature.type == "binary":
                item["labels"] = fitted["labels"]
            if is_input:
                item["nullable"] = feature.preprocessing.missing_value_strategy in CONSTANT_FILLS
                if feature.type == "text":
                    item["encoder"] = (feature.encoder.pretrained_model_name_or_path if is_transformer(feature)
                                       else feature.encoder.type)
                    item["max_sequence_length"] = fitted["max_sequence_length"]
            return item

        return {
            **common,
            "input_features": [describe(f, self.meta["inputs"][f.name], True) for f in self.config.input_features],
            "output_features": [describe(f, self.meta["outputs"][f.name], False) for f in self.config.output_features],
        }


def field_errors(exc, prefix: tuple = ()) -> list[dict]:
    """Pydantic's errors as [{loc, msg, type}], one per field: a union's members (`genre.str`, `genre.int`) are
    merged into one entry, since the client sent one field, not one per accepted type."""
    merged: dict[tuple, dict] = {}
    for e in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = (*prefix, *e["loc"][:1])
        if loc in merged:
            merged[loc]["msg"] += f"; {e['msg'][0].lower()}{e['msg'][1:]}"
        else:
            merged[loc] = {"loc": list(loc), "msg": e["msg"], "type": e["type"]}
    return list(merged.values())
