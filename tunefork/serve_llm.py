"""`POST /generate_stream` of a served `model_type: llm`: the generated text as server-sent events, token by token,
as TGI's and vLLM's streaming endpoints send it.

    data: {"token": " Paris"}          one event per decoded piece of text (transformers' TextIteratorStreamer)
    ...
    data: {"output_response": "Paris", ...}   the last event: the whole answer, the same object /predict returns
    data: [DONE]

A failure after the stream has begun cannot change its status (200 is sent): it arrives as a last event
`data: {"error": "..."}`. The generation runs on the server's forward thread, so it takes turns with the batches.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's `request: Request` at definition time.
import asyncio
import json

STREAM_TIMEOUT = 60.0  # seconds one piece of text may take to arrive before the stream gives up


def _event(payload) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, allow_nan=False)
    return f"data: {text}\n\n".encode()


def route(api, service, batcher, validate) -> None:
    from fastapi import HTTPException, Request
    from fastapi.responses import StreamingResponse

    @api.post("/generate_stream", response_class=StreamingResponse,
              responses={"200": {"content": {"text/event-stream": {}}}, "422": {"description": "an invalid row"}})
    async def generate_stream(request: Request):
        """One row (JSON): its generated text as server-sent events, then the whole answer, then [DONE]."""
        import pandas as pd
        from transformers import TextIteratorStreamer

        try:
            raw = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise HTTPException(422, "the body is not valid JSON") from None
        row = validate(raw)
        if service.fitted is None:
            raise HTTPException(503, "loading: the model is not loaded yet", headers={"Retry-After": "1"})
        fitted = service.fitted
        streamer = TextIteratorStreamer(fitted.tokenizers, skip_prompt=True, skip_special_tokens=True,
                                        timeout=STREAM_TIMEOUT)
        frame = pd.DataFrame([row], columns=service.config.columns())
        def produce():
            try:
                return fitted.predict(frame, streamer)
            finally:
                streamer.end()  # also when it failed before generating: the events below stop waiting

        work = asyncio.ensure_future(batcher.in_thread(produce))

        async def events():
            pieces = iter(streamer)
            try:
                while True:
                    piece = await asyncio.to_thread(next, pieces, None)
                    if piece is None:
                        break
                    if piece:
                        yield _event({"token": piece})
                answer = (await work).to_dict(orient="records")[0]
                yield _event(answer)
            except Exception as exc:  # noqa: BLE001 — the status is sent: the failure is the last event
                from tunefork.errors import first_line

                yield _event({"error": f"{type(exc).__name__}: {first_line(exc)}"})
            yield _event("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
