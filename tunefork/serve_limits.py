"""What one request to `tunefork serve` may cost, checked before the model sees it: the body's size (413), how many
prediction requests are in the server at once (503 with Retry-After), and what valid JSON can still hold that no
model input can — nesting past MAX_JSON_DEPTH, or a lone surrogate (422)."""

from __future__ import annotations

import threading

RETRY_AFTER_SECONDS = 1
MAX_JSON_DEPTH = 32  # a batch of rows is 3 levels deep; anything past this is abuse, not data


def too_deep() -> dict:
    return {"loc": [], "msg": f"the body nests deeper than {MAX_JSON_DEPTH} levels", "type": "json_invalid"}


def unusable_json(body) -> dict | None:
    """What valid JSON can still hold that no model input can: a string with a lone surrogate ("\\ud800" is a legal
    escape but no Unicode text; the tokenizer and the answer's encoder would fail on it, a 500) and nesting past
    MAX_JSON_DEPTH. The walk is iterative, so a deep body costs no recursion; the error never quotes the string."""
    stack = [(body, 1, ())]
    while stack:
        value, depth, loc = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return too_deep()
        if isinstance(value, dict):
            stack.extend((item, depth + 1, (*loc, key)) for key, item in value.items())
            keys = [key for key in value if isinstance(key, str)]
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (*loc, i)) for i, item in enumerate(value))
            keys = []
        else:
            keys = [value] if isinstance(value, str) else []
        for text in keys:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                where = [part if isinstance(part, int) else part.encode("utf-8", "replace").decode() for part in loc]
                return {"loc": where, "msg": "a string holds a lone surrogate (\\ud800-\\udfff), which is not "
                        "Unicode text; send UTF-8", "type": "string_unicode"}
    return None


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413 — by its Content-Length before anything is read,
    or as soon as a chunked body passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from fastapi import HTTPException
        from starlette.responses import PlainTextResponse

        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await PlainTextResponse("invalid Content-Length", 400)(scope, receive, send)
            if int(declared) > self.limit:
                return await PlainTextResponse(f"body over {self.limit} bytes", 413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"body over {self.limit} bytes")
            return message

        await self.app(scope, counted, send)


class Admission:
    """ASGI middleware: at most `limit` prediction requests (POST) in the server at once — computing, waiting for the
    model's lock, or sending their body; one more is answered 503 with Retry-After, before its body is read.

    A non-blocking semaphore rather than a queue: a client told to retry holds no memory here, where a queue would
    hold every waiting body; /health and /metadata are never refused."""

    def __init__(self, app, limit: int):
        self.app, self.slots = app, threading.BoundedSemaphore(limit)
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if not self.slots.acquire(blocking=False):
            from starlette.responses import JSONResponse

            message = f"busy: {self.limit} prediction requests are in progress; retry in {RETRY_AFTER_SECONDS} s"
            refusal = JSONResponse({"message": message, "detail": [{"loc": [], "msg": message, "type": "busy"}]},
                                   status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            return await refusal(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release()
