"""`tunefork serve`: a trained model behind a small REST API (FastAPI + uvicorn), Ludwig's routes and answers.

    GET  /health           "ok" once the model is loaded; "loading" (503, Retry-After) until then
    GET  /metadata         input and output features, classes, the weights' fingerprint, the engine
    GET  /metrics          Prometheus text: requests, latency, rows per forward pass, rows waiting (`serve_metrics`)
    POST /predict          one row, as JSON or as form fields          → {"label_predictions": ..., ...}
    POST /batch_predict    a JSON list of rows, a columns object, or pandas' split layout → {"columns", "index", "data"}
    POST /generate_stream  (model_type: llm) one row → server-sent events of the generated text as it is generated

A `model_type: llm` folder is served the same way: a row holds the columns its prompt reads, and the answer is the
generated text (`<output>_response`, plus `<output>_predictions` for a category output).

Requests that arrive together run as one forward pass (`serve_batching`: up to `max_batch_size` rows, waiting at
most `batch_wait_ms` for company; an LLM's rows as one left-padded `generate`), each answer to its own caller, and a
failure stays with the requests it concerns. The routes are built once, here, for both servers: the local one
batches with `serve_batching.Batcher`, the Ray Serve one (`serve_ray`) passes its `@serve.batch` function as
`dispatch`.

Request bodies are validated against a model built from the input features, so a missing field or a wrong type is a
422 that names the field; a model's NaN or infinity becomes null instead of breaking the JSON (Ludwig answers 500);
bodies over a size limit are refused before they are read; and the server binds 127.0.0.1 unless told otherwise.

Work is bounded by the request, not by what a client sends: a text field over `max_field_chars` characters is a 422
naming the field; a text within it is cut to its model's limit in characters before it is tokenized
(`data.clipping`); at most `max_pending` prediction requests are in the server at once (queued or computing) — one
more is answered 503 with Retry-After; and a request not answered within `request_timeout` seconds is answered 504
and dropped from the queue.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (`request: Request`, imported
# inside `app` to keep `import tunefork` light) at definition time.
import asyncio
import json
import logging
import threading

from tunefork import serve_limits
from tunefork.errors import TuneforkError
from tunefork.serve_batching import MAX_BATCH_SIZE, Batcher, BatchFailed, wait_ms
from tunefork.serve_model import (
    MAX_FIELD_CHARS,
    Service,
    field_errors,
    fingerprint,
    output_columns,
    row_model,
)

__all__ = ["Service", "app", "fingerprint", "row_model", "run"]
log = logging.getLogger("tunefork.serve")
MAX_BODY_BYTES = 8 * 2**20
# Prediction requests in the server at once, queued or computing, each holding its parsed body (up to max_body_bytes):
# this bounds the memory queued work can take; more is answered 503 with Retry-After. 256 lets 128 concurrent clients,
# each with a request in flight and the next arriving, through.
MAX_PENDING = 256
REQUEST_TIMEOUT = 60.0  # seconds from arrival to answer; a request over it is answered 504 and leaves the queue
JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def app(model_path, *, max_body_bytes: int = MAX_BODY_BYTES, max_field_chars: int = MAX_FIELD_CHARS,
        max_pending: int = MAX_PENDING, max_batch_size: int = MAX_BATCH_SIZE, batch_wait_ms: float | None = None,
        request_timeout: float = REQUEST_TIMEOUT, engine: str = "auto", background: bool = False, dispatch=None):
    """The FastAPI application serving the model folder (or run directory) at `model_path`.

    `background`: the weights load in a thread once the server starts (/health says "loading" until then) instead
    of before this returns. `dispatch(service) -> async (rows, gone) -> answers` replaces the local batcher."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from tunefork.rundir import _clean
    from tunefork.serve_metrics import Metrics, Timing

    class Response(JSONResponse):
        def render(self, content) -> bytes:  # NaN and infinity are not JSON: they are sent as null
            return json.dumps(_clean(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()

    class Invalid(Exception):
        def __init__(self, errors: list[dict]):
            self.errors = errors

    service = Service(model_path, max_field_chars, engine=engine, load=not background)
    metrics = Metrics()
    llm = service.config.model_type == "llm"
    batcher = Batcher(lambda rows: service.answers(rows), max_batch_size=max_batch_size,
                      batch_wait_ms=wait_ms(batch_wait_ms, llm), length=Service.length,
                      observe=metrics.batch_rows.observe, inside=lambda: metrics.batched_inside, eager=not llm)
    metrics.queue_rows.set_function(lambda: batcher.depth)

    @asynccontextmanager
    async def lifespan(_):
        if background and service.fitted is None:
            threading.Thread(target=_load_logged, args=(service,), daemon=True, name="tunefork-load").start()
        yield
        batcher.close()

    from tunefork import __version__

    api = FastAPI(title="tunefork model server", version=__version__, default_response_class=Response,
                  description=f"Serving {service.folder}", lifespan=lifespan)
    api.state.service, api.state.batcher, api.state.metrics = service, batcher, metrics
    api.add_middleware(serve_limits.BodyLimit, limit=max_body_bytes)
    api.add_middleware(serve_limits.Admission, limit=max_pending)  # before a byte is read
    api.add_middleware(Timing, metrics=metrics)  # added last, so it runs first: refusals are counted too

    @api.exception_handler(Invalid)
    async def _invalid(request, exc: Invalid):
        first = exc.errors[0]
        where = ".".join(map(str, first["loc"])) or "body"
        return Response({"message": f"{where}: {first['msg']}", "detail": exc.errors}, status_code=422)

    @api.exception_handler(TuneforkError)
    async def _user_error(request, exc: TuneforkError):
        return Response(_message(str(exc), "data_error"), status_code=422)

    @api.exception_handler(Refused)
    async def _refused(request, exc: Refused):
        return Response(_message(exc.message, exc.kind), status_code=exc.status, headers=exc.headers)

    submit = dispatch(service) if dispatch is not None else batcher.submit
    _routes(api, service, Response, Invalid, max_body_bytes, _answering(service, submit, request_timeout, Response))
    if service.config.model_type == "llm":
        from tunefork import serve_llm

        serve_llm.route(api, service, batcher, lambda raw: _validate(service, raw, Invalid, ()))
    return api


def _load_logged(service: Service) -> None:
    try:
        service.load()
    except Exception:  # noqa: BLE001 — said by /health ("failed" and why) and in the log
        log.error("%s", service.failure)


class Refused(Exception):
    """A prediction request answered with an error status and the usual body: {"message", "detail"}."""

    def __init__(self, status: int, message: str, kind: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def _message(text: str, kind: str) -> dict:
    return {"message": text, "detail": [{"loc": [], "msg": text, "type": kind}]}


def _answering(service: Service, submit, timeout: float, Response):
    """async (request, rows) -> answers, or raises the HTTP answer: 503 while loading, 504 past the timeout,
    500 with one line when the forward pass of the request's batch failed."""
    async def answer(request, rows: list[dict]) -> list[dict]:
        if service.fitted is None:
            status = 500 if service.failure else 503
            raise Refused(status, service.failure or "loading: the model is not loaded yet", "loading",
                          None if service.failure else {"Retry-After": str(serve_limits.RETRY_AFTER_SECONDS)})
        try:
            return await asyncio.wait_for(submit(rows, request.is_disconnected), timeout)
        except TimeoutError:
            raise Refused(504, f"no answer within the request timeout ({timeout:g} s); the request was dropped",
                          "timeout") from None
        except BatchFailed as exc:
            raise Refused(500, str(exc), "batch_failed") from None

    return answer


def _validate(service: Service, raw, Invalid, prefix: tuple) -> dict:
    from pydantic import ValidationError

    if not isinstance(raw, dict):
        raise Invalid([{"loc": list(prefix), "msg": "expected an object of input fields", "type": "model_type"}])
    try:
        return service.Row.model_validate(raw).model_dump(by_alias=True)
    except ValidationError as exc:
        raise Invalid(field_errors(exc, prefix)) from None


def _routes(api, service: Service, Response, Invalid, max_body_bytes: int, answer) -> None:
    """/health, /metadata, /metrics, /predict and /batch_predict, with their OpenAPI schemas."""
    from fastapi import HTTPException, Request
    from fastapi.responses import Response as Plain

    def validate(raw, prefix: tuple = ()) -> dict:
        return _validate(service, raw, Invalid, prefix)

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

    row_schema = service.Row.model_json_schema(by_alias=True)
    row_schema.pop("title", None)
    prediction_schema = {"type": "object", "properties": output_columns(service.config, service.meta)}
    errors = {
        "413": {"description": f"body over {max_body_bytes} bytes"},
        "415": {"description": "unsupported content type"},
        "422": {"description": "a field is missing, has the wrong type, or holds a value the model cannot read"},
        "500": {"description": "the forward pass of the batch this request was in failed (one line: why)"},
        "503": {"description": "busy (max_pending requests in the server) or still loading; see Retry-After"},
        "504": {"description": "not answered within the request timeout"},
    }

    @api.get("/health")
    async def health():
        if service.fitted is not None:
            return {"status": "ok"}
        if service.failure:
            return Response({"status": "failed", "message": service.failure}, status_code=500)
        return Response({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})

    @api.get("/metrics", response_class=Plain, responses={"200": {"content": {"text/plain": {}}}})
    async def metrics():
        """Prometheus text format (prometheus_client)."""
        body, kind = api.state.metrics.render()
        return Plain(body, media_type=kind)

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
        return Response((await answer(request, [validate(raw)]))[0])

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
        answers = await answer(request, [validate(row, (i,)) for i, row in enumerate(rows)])
        columns = list(dict.fromkeys(key for a in answers for key in a))  # an `_error` column: when a row has one
        return Response({"columns": columns, "index": list(range(len(answers))),
                         "data": [[a.get(c) for c in columns] for a in answers]})


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


def run(model_path, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info", **options) -> None:
    """Serve until interrupted. Loopback by default: exposing a model to a network is a decision, not a default.
    The server listens at once; the weights load meanwhile (/health: "loading", then "ok")."""
    import uvicorn

    application = app(model_path, background=True, **options)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines, with no authentication", host)
    uvicorn.run(application, host=host, port=port, log_level=log_level, workers=1)
