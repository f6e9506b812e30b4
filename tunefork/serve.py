"""`tunefork serve`: a trained model behind a small REST API (FastAPI + uvicorn), Ludwig's routes and answers.

    GET  /health         liveness
    GET  /metadata       input and output features, classes, the weights' fingerprint
    POST /predict        one row, as JSON or as form fields          → {"label_predictions": ..., ...}
    POST /batch_predict  a JSON list of rows, a columns object, or pandas' split layout → {"columns", "index", "data"}

A `model_type: llm` folder is served the same way: a row holds the columns its prompt reads, and the answer is the
generated text (`<output>_response`, plus `<output>_predictions` for a category output).

Request bodies are validated against a model built from the input features, so a missing field or a wrong type is a
422 that names the field; a model's NaN or infinity becomes null instead of breaking the JSON (Ludwig answers 500);
bodies over a size limit are refused before they are read; and the server binds 127.0.0.1 unless told otherwise.

Work is bounded by the request, not by what a client sends: a text field over `max_field_chars` characters is a 422
naming the field; a text within it is cut to its model's limit in characters before it is tokenized
(`data.clipping`); and at most `max_pending` prediction requests are admitted at once (one computes, under the lock,
while the others wait with their bodies in memory) — one more is answered 503 with Retry-After.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (`request: Request`, imported
# inside `app` to keep `import tunefork` light) at definition time.
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Annotated

from tunefork import serve_limits
from tunefork.config.features import is_transformer
from tunefork.errors import TuneforkError

log = logging.getLogger("tunefork.serve")
MAX_BODY_BYTES = 8 * 2**20
# 100,000 characters: ~25,000 tokens of prose, beyond any encoder's 512 positions and most LLM prompts; a field over it
# is refused (422) rather than read, and `--max_field_chars` raises it for long-context models.
MAX_FIELD_CHARS = 100_000
# Prediction requests admitted at once: one computes, the rest wait for the lock holding their parsed bodies (each up
# to max_body_bytes), so this bounds the memory queued work can take; more is answered 503 with Retry-After.
MAX_PENDING = 16
# Missing-value strategies that fill a cell with one constant: only for these may a request send null.
CONSTANT_FILLS = ("fill_with_const", "fill_with_mode", "fill_with_mean", "fill_with_false")
JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


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
        fields = {f"field_{i}": (text | None, Field(..., alias=column, description="prompt column"))
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


def _output_columns(config, meta: dict) -> dict[str, dict]:
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
    """The loaded model and the one lock its forward passes share (they saturate the cores; interleaving slows both)."""

    def __init__(self, model_path, max_field_chars: int = MAX_FIELD_CHARS):
        from tunefork.api import Model
        from tunefork.models import folder

        self.folder = folder.check(Path(model_path))
        self.model = Model.load(self.folder)
        self.config, self.meta = self.model.config, self.model.meta
        self.Row = row_model(self.config, max_field_chars)
        self.fingerprint = fingerprint(self.folder)
        self.lock = threading.Lock()

    def predict(self, rows: list[dict]):
        import pandas as pd

        frame = pd.DataFrame(rows, columns=self.config.columns())
        with self.lock:
            return self.model.predict(frame)

    def metadata(self) -> dict:
        from tunefork import __version__

        common = {"model_path": str(self.folder), "fingerprint": self.fingerprint, "tunefork_version": __version__,
                  "prediction_columns": list(_output_columns(self.config, self.meta))}
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


def _errors(exc, prefix: tuple = ()) -> list[dict]:
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


def app(model_path, *, max_body_bytes: int = MAX_BODY_BYTES, max_field_chars: int = MAX_FIELD_CHARS,
        max_pending: int = MAX_PENDING):
    """The FastAPI application serving the model folder (or run directory) at `model_path`."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from tunefork.rundir import _clean

    class Response(JSONResponse):
        def render(self, content) -> bytes:  # NaN and infinity are not JSON: they are sent as null
            return json.dumps(_clean(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

    class Invalid(Exception):
        def __init__(self, errors: list[dict]):
            self.errors = errors

    service = Service(model_path, max_field_chars)
    api = FastAPI(title="tunefork model server", version=service.fingerprint[:12], default_response_class=Response,
                  description=f"Serving {service.folder}")
    api.state.service = service
    api.add_middleware(serve_limits.BodyLimit, limit=max_body_bytes)
    api.add_middleware(serve_limits.Admission, limit=max_pending)  # added last, so it runs first: refused before a byte is read

    @api.exception_handler(Invalid)
    async def _invalid(request, exc: Invalid):
        first = exc.errors[0]
        where = ".".join(map(str, first["loc"])) or "body"
        return Response({"message": f"{where}: {first['msg']}", "detail": exc.errors}, status_code=422)

    @api.exception_handler(TuneforkError)
    async def _user_error(request, exc: TuneforkError):
        return Response({"message": str(exc), "detail": [{"loc": [], "msg": str(exc), "type": "data_error"}]}, status_code=422)

    _routes(api, service, Response, Invalid, max_body_bytes)
    return api


def _routes(api, service: Service, Response, Invalid, max_body_bytes: int) -> None:
    """/health, /metadata, /predict and /batch_predict, with their OpenAPI schemas."""
    from fastapi import HTTPException, Request
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    def validate(raw, prefix: tuple = ()) -> dict:
        if not isinstance(raw, dict):
            raise Invalid([{"loc": list(prefix), "msg": "expected an object of input fields", "type": "model_type"}])
        try:
            return service.Row.model_validate(raw).model_dump(by_alias=True)
        except ValidationError as exc:
            raise Invalid(_errors(exc, prefix)) from None

    async def body_json(request: Request):
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if kind not in JSON_TYPES:
            raise HTTPException(415, f"send JSON (application/json), not {kind or 'an untyped body'}")
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise Invalid([{"loc": [], "msg": f"the body is not valid JSON ({exc})", "type": "json_invalid"}]) from None
        except RecursionError:  # json's parser recurses per level: a deep enough body exhausts the stack
            raise Invalid([serve_limits.too_deep()]) from None
        problem = serve_limits.unusable_json(body)
        if problem is not None:
            raise Invalid([problem])
        return body

    async def predictions(rows: list[dict]):
        return await run_in_threadpool(service.predict, rows)

    row_schema = service.Row.model_json_schema(by_alias=True)
    row_schema.pop("title", None)
    prediction_schema = {"type": "object", "properties": _output_columns(service.config, service.meta)}
    errors = {
        "413": {"description": f"body over {max_body_bytes} bytes"},
        "415": {"description": "unsupported content type"},
        "422": {"description": "a field is missing, has the wrong type, or holds a value the model cannot read"},
    }

    @api.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @api.get("/metadata")
    async def metadata() -> dict:
        return service.metadata()

    @api.post("/predict", responses={"200": {"content": {"application/json": {"schema": prediction_schema}}}, **errors},
              openapi_extra={"requestBody": {"required": True, "content": {
                  kind: {"schema": row_schema} for kind in (*JSON_TYPES, *FORM_TYPES)}}})
    async def predict(request: Request):
        """One row: a JSON object, or form fields (Ludwig's clients send multipart forms)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in FORM_TYPES:
            form = await request.form()
            files = [k for k, v in form.multi_items() if not isinstance(v, str)]
            if files:
                raise Invalid([{"loc": [files[0]], "msg": "files are not accepted; send the value as text", "type": "file"}])
            raw = dict(form)
        else:
            raw = await body_json(request)
        frame = await predictions([validate(raw)])
        return Response(frame.to_dict(orient="records")[0])

    columns_schema = {"type": "object", "additionalProperties": {"type": "array"}, "minProperties": 1}
    split_schema = {"type": "object", "required": ["columns", "data"],
                    "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                                   "data": {"type": "array", "items": {"type": "array"}}}}
    batch_out = {"type": "object", "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                                                  "index": {"type": "array", "items": {"type": "integer"}},
                                                  "data": {"type": "array", "items": {"type": "array"}}}}

    @api.post("/batch_predict", responses={"200": {"content": {"application/json": {"schema": batch_out}}}, **errors},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": [
                  {"type": "array", "items": row_schema, "minItems": 1}, split_schema, columns_schema]}}}}})
    async def batch_predict(request: Request):
        """Many rows: `[{...}, ...]`, `{"column": [values...], ...}`, or `{"columns": [...], "data": [[...], ...]}`."""
        rows = _rows(await body_json(request), Invalid)
        frame = await predictions([validate(row, (i,)) for i, row in enumerate(rows)])
        return Response({"columns": list(frame.columns), "index": list(range(len(frame))), "data": frame.to_numpy().tolist()})


def _rows(body, Invalid) -> list:
    """The rows of a batch body in any of its three layouts."""
    if isinstance(body, list):
        rows = body
    elif isinstance(body, dict) and isinstance(body.get("columns"), list) and isinstance(body.get("data"), list):
        names = body["columns"]
        bad = next((i for i, r in enumerate(body["data"]) if not isinstance(r, list) or len(r) != len(names)), None)
        if bad is not None:
            raise Invalid([{"loc": ["data", bad], "msg": f"expected a list of {len(names)} values", "type": "list_type"}])
        rows = [dict(zip(map(str, names), r, strict=True)) for r in body["data"]]
    elif isinstance(body, dict) and body:
        bad = next((k for k, v in body.items() if not isinstance(v, list)), None)
        if bad is not None:
            raise Invalid([{"loc": [bad], "msg": "expected a list of values (one per row)", "type": "list_type"}])
        lengths = {len(v) for v in body.values()}
        if len(lengths) > 1:
            raise Invalid([{"loc": [], "msg": f"columns have different lengths {sorted(lengths)}", "type": "value_error"}])
        rows = [dict(zip(body, values, strict=True)) for values in zip(*body.values(), strict=True)]
    else:
        raise Invalid([{"loc": [], "msg": "expected a list of rows or an object of columns", "type": "model_type"}])
    if not rows:
        raise Invalid([{"loc": [], "msg": "the batch has no rows", "type": "too_short"}])
    return rows


def run(model_path, host: str = "127.0.0.1", port: int = 8000, *, max_body_bytes: int = MAX_BODY_BYTES,
        max_field_chars: int = MAX_FIELD_CHARS, max_pending: int = MAX_PENDING, log_level: str = "info") -> None:
    """Serve until interrupted. Loopback by default: exposing a model to a network is a decision, not a default."""
    import uvicorn

    application = app(model_path, max_body_bytes=max_body_bytes, max_field_chars=max_field_chars,
                      max_pending=max_pending)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines, with no authentication", host)
    uvicorn.run(application, host=host, port=port, log_level=log_level, workers=1)

