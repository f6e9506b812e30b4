"""`tunefork serve`: routes, request validation, NaN-safe JSON, body limits, a real uvicorn process, and fuzzing."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiny

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

ROW = {"review": "a great and moving film", "genre": "drama", "length": 5, "recommended": "yes"}


@pytest.fixture(scope="module")
def run_dir(tiny_bert, tmp_path_factory) -> Path:
    from tunefork import Model

    config = {
        "input_features": [
            {"name": "review", "type": "text", "preprocessing": {"max_sequence_length": 32},
             "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(tiny_bert)}},
            {"name": "genre", "type": "category"},
            {"name": "length", "type": "number", "preprocessing": {"missing_value_strategy": "drop_row"}},
            {"name": "recommended", "type": "binary"},
        ],
        "output_features": [{"name": "sentiment", "type": "category"}, {"name": "score", "type": "number"}],
        "trainer": {"epochs": 1, "batch_size": 32},
    }
    result = Model(config, progress=False, quiet=True).train(tiny.sentiment_frame(120), output_directory=tmp_path_factory.mktemp("serve"))
    return result.output_directory


@pytest.fixture(scope="module")
def client(run_dir):
    from tunefork import serve

    return TestClient(serve.app(run_dir, max_body_bytes=64 * 1024))


@pytest.fixture(scope="module")
def reference(run_dir):
    from tunefork import Model

    return Model.load(run_dir)


def test_health_and_metadata_describe_the_model(client, run_dir):
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    saved = json.loads((run_dir / "model" / "training_set_metadata.json").read_text())
    assert meta["fingerprint"] == hashlib.blake2b((run_dir / "model" / "model.safetensors").read_bytes(), digest_size=16).hexdigest()
    inputs = {f["name"]: f for f in meta["input_features"]}
    assert [inputs[n]["type"] for n in ("review", "genre", "length", "recommended")] == ["text", "category", "number", "binary"]
    assert inputs["length"]["nullable"] is False and inputs["genre"]["nullable"] is True
    outputs = {f["name"]: f for f in meta["output_features"]}
    assert outputs["sentiment"]["classes"] == saved["outputs"]["sentiment"]["vocab"]
    assert "sentiment_probabilities_positive" in meta["prediction_columns"]


def test_predict_matches_the_python_api_for_json_and_form_bodies(client, reference):
    expected = reference.predict(pd.DataFrame([ROW])).iloc[0]
    answers = [
        client.post("/predict", json=ROW),
        client.post("/predict", data={k: str(v) for k, v in ROW.items()}),
        client.post("/predict", files={k: (None, str(v)) for k, v in ROW.items()}),  # multipart, as Ludwig's clients send
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["sentiment_predictions"] == expected["sentiment_predictions"]
        assert body["sentiment_probabilities_positive"] == pytest.approx(expected["sentiment_probabilities_positive"], abs=1e-6)
        assert body["score_predictions"] == pytest.approx(expected["score_predictions"], abs=1e-5)


def test_batch_predict_accepts_rows_columns_and_split_layouts(client, reference):
    frame = tiny.sentiment_frame(7, seed=3)[list(ROW)]
    expected = reference.predict(frame)
    rows = frame.to_dict(orient="records")
    bodies = [rows, frame.to_dict(orient="list"), {"columns": list(frame.columns), "data": frame.values.tolist()}]
    for body in bodies:
        answer = client.post("/batch_predict", json=body)
        assert answer.status_code == 200, answer.text
        got = pd.DataFrame(answer.json()["data"], columns=answer.json()["columns"])
        assert list(got.columns) == list(expected.columns)
        assert got["sentiment_predictions"].tolist() == expected["sentiment_predictions"].tolist()
        np.testing.assert_allclose(got["score_predictions"], expected["score_predictions"], atol=1e-5)


@pytest.mark.parametrize("row, loc, kind", [
    ({k: v for k, v in ROW.items() if k != "review"}, ["review"], "missing"),
    ({**ROW, "review": 5}, ["review"], "string_type"),
    ({**ROW, "length": "long"}, ["length"], "float_parsing"),
    ({**ROW, "length": None}, ["length"], "float_type"),  # drop_row: a null would drop the very row asked about
    ({**ROW, "genre": [1]}, ["genre"], None),
])
def test_a_missing_or_mistyped_field_is_a_422_that_names_it(client, row, loc, kind):
    answer = client.post("/predict", json=row)
    assert answer.status_code == 422
    first = answer.json()["detail"][0]
    assert first["loc"] == loc and (kind is None or first["type"] == kind)
    assert answer.json()["message"].startswith(loc[0])


def test_nan_and_infinity_inputs_are_refused_not_crashed_on(client):
    for token in ("NaN", "Infinity", "-Infinity"):
        body = json.dumps({**ROW, "length": 0}).replace('"length": 0', f'"length": {token}')
        answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["length"]


def test_batch_errors_name_the_row_and_the_field(client):
    answer = client.post("/batch_predict", json=[ROW, {**ROW, "length": "x"}])
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == [1, "length"]
    for body, message in (([], "no rows"), ({"review": ["a"], "genre": ["b", "c"]}, "different lengths"), ("text", "list of rows")):
        answer = client.post("/batch_predict", json=body)
        assert answer.status_code == 422 and message in answer.json()["message"]


def test_null_is_filled_where_training_fills_it_and_unknown_binary_values_are_422(client):
    assert client.post("/predict", json={**ROW, "genre": None, "review": None}).status_code == 200
    answer = client.post("/predict", json={**ROW, "recommended": "maybe"})
    assert answer.status_code == 422 and "recommended" in answer.json()["message"]


def test_bodies_over_the_limit_and_other_content_types_are_refused(client):
    big = json.dumps({**ROW, "review": "word " * 20000})
    assert client.post("/predict", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: the limit must still hold while the body streams in
        for _ in range(40):
            yield b" " * 4096

    assert client.post("/batch_predict", content=chunks(), headers={"content-type": "application/json"}).status_code == 413
    assert client.post("/predict", content=b"review=x", headers={"content-type": "text/plain"}).status_code == 415
    bad = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["message"]


def test_nan_predictions_become_null_instead_of_a_500(run_dir):
    import torch

    from tunefork import serve

    api = serve.app(run_dir)
    with torch.no_grad():
        for head in api.state.service.model.heads.values():
            head[-1].weight.fill_(float("nan"))
    client = TestClient(api)
    answer = client.post("/predict", json=ROW)
    assert answer.status_code == 200
    assert answer.json()["score_predictions"] is None and answer.json()["sentiment_probabilities_positive"] is None
    batch = client.post("/batch_predict", json=[ROW, ROW])
    assert batch.status_code == 200
    row = dict(zip(batch.json()["columns"], batch.json()["data"][0], strict=True))
    assert row["score_predictions"] is None and row["sentiment_predictions"] is None and "not finite" in row["score_error"]
    assert "NaN" not in batch.text


def test_serve_binds_loopback_by_default():
    from tunefork.cli import parser

    assert parser().parse_args(["serve", "-m", "x"]).host == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_uvicorn_process_answers_over_http(run_dir, reference):
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "tunefork", "serve", "--model_path", str(run_dir), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, url = time.monotonic() + 120, f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the server did not come up in 120 s"
            time.sleep(0.3)
        answer = httpx.post(f"{url}/predict", json=ROW, timeout=30)
        assert answer.status_code == 200
        expected = reference.predict(pd.DataFrame([ROW])).iloc[0]
        assert answer.json()["sentiment_probabilities_positive"] == pytest.approx(expected["sentiment_probabilities_positive"], abs=1e-6)
        assert httpx.post(f"{url}/batch_predict", json=[ROW] * 3, timeout=30).json()["index"] == [0, 1, 2]
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in output  # uvicorn's own line: bound to loopback


# ---------------------------------------------------------------------------------------------- fuzzing

def test_no_generated_request_gets_a_server_error(run_dir):
    """schemathesis fuzzes every operation of the OpenAPI schema: no 5xx, and answers match the documented codes.

    Driven through hypothesis directly rather than schemathesis' pytest plugin, whose lazy fixtures do not run on
    pytest 9."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

    from tunefork import serve

    schema = schemathesis.openapi.from_asgi("/openapi.json", serve.app(run_dir, max_body_bytes=64 * 1024))
    seen = {}
    operations = [(result.ok(), mode) for result in schema.get_all_operations()
                  for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    for operation, mode in operations:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # nothing to get wrong in a GET without parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def fuzz(case):
            response = case.call()
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance])
            assert response.status_code < 500
            seen.setdefault(case.path, set()).add(response.status_code)
            if response.status_code == 200 and case.path == "/predict":
                assert all(v is None or isinstance(v, str) or math.isfinite(v) for v in response.json().values())

        fuzz()
    assert set(seen) == {"/health", "/metadata", "/metrics", "/predict", "/batch_predict"}
    assert 200 in seen["/predict"] and 422 in seen["/predict"]  # both valid and invalid rows were generated


# ---------------------------------------------------------------------------------------------- batching and limits

def _concurrently(application, requests: list[tuple[str, object]]) -> list:
    """Send every (path, body) at once through the ASGI app; the answers in order."""
    import asyncio

    import httpx

    async def main():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))

    return asyncio.run(main())


def _metric(application, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = TestClient(application).get("/metrics").text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_concurrent_requests_share_forward_passes_and_each_gets_its_own_answer(run_dir, reference):
    from tunefork import serve

    frame = tiny.sentiment_frame(16, seed=11)[list(ROW)]
    rows = frame.to_dict(orient="records")
    application = serve.app(run_dir, max_batch_size=8, batch_wait_ms=50)
    answers = _concurrently(application, [("/predict", row) for row in rows] + [("/batch_predict", rows[:5])])
    expected = reference.predict(frame)
    assert [a.status_code for a in answers] == [200] * 17
    for answer, (_, want) in zip(answers, expected.iterrows(), strict=False):
        assert answer.json()["sentiment_predictions"] == want["sentiment_predictions"]
        assert answer.json()["score_predictions"] == pytest.approx(want["score_predictions"], abs=1e-5)
    batch = pd.DataFrame(answers[-1].json()["data"], columns=answers[-1].json()["columns"])
    np.testing.assert_allclose(batch["score_predictions"], expected["score_predictions"][:5], atol=1e-5)
    passes = _metric(application, "tunefork_batch_rows_count")
    assert _metric(application, "tunefork_batch_rows_sum") == 21 and 3 <= passes < 17  # ≤ 8 rows a pass, shared
    assert _metric(application, "tunefork_requests_total", route="/predict", status="200") == 16


def test_a_bad_row_among_concurrent_ones_gets_its_own_422(run_dir):
    from tunefork import serve

    bad = {**ROW, "recommended": "maybe"}  # valid JSON for the schema; the binary feature refuses it
    answers = _concurrently(serve.app(run_dir, batch_wait_ms=50), [("/predict", ROW), ("/predict", bad), ("/predict", ROW)])
    assert [a.status_code for a in answers] == [200, 422, 200]
    assert "recommended" in answers[1].json()["message"]


def test_a_forward_pass_that_raises_is_a_500_for_its_batch_only_and_serving_goes_on(run_dir):
    from tunefork import serve

    application = serve.app(run_dir, batch_wait_ms=100)
    service, calls = application.state.service, []
    predict = service.predict

    def crash_once(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("out of memory\nwith a traceback below")
        return predict(rows)

    service.predict = crash_once
    failed = _concurrently(application, [("/predict", ROW)] * 3)
    assert [a.status_code for a in failed] == [500] * calls[0] and calls[0] == 3
    assert failed[0].json()["message"] == "the batch this request was in failed: RuntimeError: out of memory"
    assert TestClient(application).post("/predict", json=ROW).status_code == 200


def test_health_says_loading_until_the_model_is_loaded_and_predictions_wait_with_503(run_dir):
    from tunefork import serve

    application = serve.app(run_dir, background=True)
    client = TestClient(application)  # no lifespan yet: nothing loads
    assert client.get("/health").status_code == 503 and client.get("/health").json() == {"status": "loading"}
    refused = client.post("/predict", json=ROW)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert client.get("/metadata").json()["engine"] is None  # the records answer at once
    with TestClient(application) as started:  # the server starts: the weights load in a thread
        deadline = time.monotonic() + 60
        while started.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.get("/health").json() == {"status": "ok"}
        assert started.post("/predict", json=ROW).status_code == 200
        assert started.get("/metadata").json()["engine"].startswith("engine: torch")  # a category input: no ONNX


def test_a_request_past_the_timeout_is_a_504_and_leaves_the_queue(run_dir):
    from tunefork import serve

    application = serve.app(run_dir, request_timeout=0.3)
    service = application.state.service
    predict = service.predict
    service.predict = lambda rows: (time.sleep(1.0), predict(rows))[1]
    answer = TestClient(application).post("/predict", json=ROW)
    assert answer.status_code == 504 and "request timeout (0.3 s)" in answer.json()["message"]
    assert _metric(application, "tunefork_requests_total", route="/predict", status="504") == 1
    assert _metric(application, "tunefork_queue_rows") == 0
    assert _metric(application, "tunefork_requests_in_progress", route="/predict") == 0  # counted in, and out
    assert application.state.metrics.batched_inside == 0
