"""Serving throughput and latency: real servers on 127.0.0.1 against the model's bare forward pass, in one run.

    .venv/bin/python benchmarks/serve.py [--model_path RUN_DIR] [--skip_ray] [--skip_llm]

Model: all-MiniLM-L6-v2 (frozen, cached embeddings, a category head) trained for 1 epoch on the first 1,000 SST-2
training rows, max_sequence_length 64 — or any run directory given with --model_path. Load: SST-2 dev sentences, sent
by a client in a second process over loopback (on the same 2 cores as the server: its CPU time is in the figures).

- bare forward (baseline, a fresh process, before the servers): the model's own torch forward on pre-tokenized
  batches of 32 and 64 rows (rows/s) and on single rows (ms, p50) — and the ONNX Runtime session likewise;
- start-up: `tunefork predict` of 10 rows, whole command, on each engine; `tunefork serve` launch → /health "ok";
- local server (engine auto = ONNX Runtime; max_batch_size 32, batch_wait_ms 5, request_timeout 300 s — at c=128
  the 64-row requests queue 8,192 rows): concurrency 1, 8, 32, 128, for
  /predict (one row a request) and /batch_predict (64 rows a request): rows/s, p50/p99 latency, failures;
  the same at concurrency 32 with --engine torch;
- Ray Serve (`--backend ray`), 1 and 2 replicas of 1 CPU: the same grid;
- LLM (SmolLM2-135M-Instruct, zero-shot, 32 new tokens, greedy): 16 concurrent /predict requests against one batched
  `generate` of the same 16 prompts in a fresh process → tokens/s (tokens counted alike: the responses re-tokenized).

Targets: c=32 /predict rows/s ≥ 0.7 × bare batch-32 forward; c=1 /predict p50 ≤ bare single-row forward + 5 ms;
no failure at c=128; LLM tokens/s ≥ 0.8 × the batched generate. Prints and saves benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LENGTH, ROWS_PER_BATCH, CONCURRENCY, PHASE_SECONDS = 64, 64, (1, 8, 32, 128), 6.0
# 128 clients with 64 rows each queue 8,192 rows, ~40 s of compute on 2 cores: the default 60 s timeout is too close
TIMEOUT = ("--request_timeout", "300")
LLM_PROMPTS, LLM_TOKENS = 16, 32


def sentences(n: int) -> list[str]:
    import pandas as pd

    test = pd.read_csv(common.sst2() / "dev.csv")["sentence"].tolist()  # SST-2's labelled test split
    return [test[i % len(test)] for i in range(n)]


def train(folder: Path) -> Path:
    import pandas as pd

    from tunefork import Model

    data = common.sst2()
    config = {
        "input_features": [{"name": "sentence", "type": "text", "preprocessing": {"max_sequence_length": LENGTH, "cache_encoder_embeddings": True},
                            "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": str(common.minilm())}}],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": 1, "batch_size": 32},
    }
    result = Model(config, progress=False, quiet=True).train(
        training_set=pd.read_csv(data / "train.csv").head(1000), validation_set=pd.read_csv(data / "dev.csv").head(200),
        output_directory=folder)
    return result.output_directory


def bare(run: Path) -> dict:
    """The model's own forward passes, tokenized beforehand: torch (inference_mode) and the ONNX Runtime session."""
    import numpy as np
    import pandas as pd
    import torch

    from tunefork import Model, onnx_engine
    from tunefork.features import pipeline
    from tunefork.training import batches as batching

    model, texts = Model.load(run), sentences(320)
    table = pipeline.transform(model.config, pd.DataFrame({"sentence": texts}), model.meta, model.tokenizers, with_outputs=False)
    net, session = model.model.eval(), onnx_engine.load(run, "onnx")[0]
    fitted = model.meta["inputs"]["sentence"]

    def torch_pass(index):
        net(batching.collate(table, index, model.config, model.meta, with_targets=False)[0])

    def onnx_pass(index):
        ids, mask = table["sentence"].padded(index, fitted["pad_token_id"], left=fitted["padding_side"] == "left")
        session.session.run(None, {"sentence_input_ids": ids, "sentence_attention_mask": mask})

    out = {"torch_threads": torch.get_num_threads()}
    with torch.inference_mode():
        for name, forward in (("torch", torch_pass), ("onnx", onnx_pass)):
            forward(np.arange(32))  # warm-up
            for size in (32, ROWS_PER_BATCH):
                start = time.perf_counter()
                for i in range(0, len(texts), size):
                    forward(np.arange(i, min(i + size, len(texts))))
                out[f"{name}_batch{size}_rows_per_second"] = len(texts) / (time.perf_counter() - start)
            single = []
            for i in range(100):
                start = time.perf_counter()
                forward(np.array([i]))
                single.append((time.perf_counter() - start) * 1000)
            out[f"{name}_single_row_p50_ms"] = float(np.percentile(single, 50))
    return out


def load(url: str, phases: list) -> list[dict]:
    """The client, in its own process: for each (route, concurrency), a bounded count of requests in a time cap."""
    import asyncio

    import aiohttp  # a light client (Ray Serve's own dependency): httpx's per-request cost on these cores was ~4 ms
    import numpy as np

    texts = sentences(4000)

    async def phase(route: str, concurrency: int) -> dict:
        rows = 1 if route == "/predict" else ROWS_PER_BATCH
        count = min(max(8 * concurrency, 64), 300) if rows == 1 else max(concurrency, 16)
        bodies = [{"sentence": texts[i % len(texts)]} if rows == 1 else
                  {"sentence": [texts[(i * rows + j) % len(texts)] for j in range(rows)]} for i in range(count)]
        latencies, failures, queue = [], {}, iter(bodies)
        deadline = time.perf_counter() + PHASE_SECONDS

        async def worker(client):
            for body in queue:
                if time.perf_counter() > deadline:
                    return
                sent = time.perf_counter()
                try:
                    async with client.post(route, json=body) as response:
                        await response.read()
                        status = response.status
                except (TimeoutError, aiohttp.ClientError) as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - sent)
                if status != 200:
                    failures[str(status)] = failures.get(str(status), 0) + 1

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:
            async with client.post(route, json=bodies[0]) as response:  # warm-up
                await response.read()
            start = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
            seconds = time.perf_counter() - start
        ms = np.array(latencies) * 1000
        return {"route": route, "concurrency": concurrency, "requests": len(latencies), "failures": failures,
                "rows_per_second": len(latencies) * rows / seconds, "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99))}

    def sequential(route: str) -> dict:
        """Concurrency 1: one caller on one keep-alive connection through the standard library's http.client, the
        lightest client there is, so the latency is the server's (aiohttp's own cost here was 2-4 ms a request)."""
        import http.client
        from urllib.parse import urlsplit

        rows = 1 if route == "/predict" else ROWS_PER_BATCH
        count = 64 if rows == 1 else 16
        where = urlsplit(url)
        connection = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        bodies = [json.dumps({"sentence": texts[i % len(texts)]} if rows == 1 else
                             {"sentence": [texts[(i * rows + j) % len(texts)] for j in range(rows)]})
                  for i in range(count + 1)]
        def post(body: str) -> int:
            connection.request("POST", route, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            return response.status

        post(bodies[0])  # warm-up
        latencies, failures = [], {}
        start = time.perf_counter()
        for body in bodies[1:]:
            sent = time.perf_counter()
            status = post(body)
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                failures[str(status)] = failures.get(str(status), 0) + 1
        seconds = time.perf_counter() - start
        connection.close()
        ms = np.array(latencies) * 1000
        return {"route": route, "concurrency": 1, "requests": len(latencies), "failures": failures,
                "rows_per_second": len(latencies) * rows / seconds, "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)), "client": "http.client"}

    return [sequential(route) if c == 1 else asyncio.run(phase(route, c)) for route, c in phases]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phases_client(phases: list):
    return lambda url: common.in_subprocess(Path(__file__), "load", "--url", url, "--phases", json.dumps(phases))


def served(run: Path, *flags: str, client, ready_within: float = 240) -> dict:
    """Launch `tunefork serve`, time it to /health "ok", run `client(url)` (in its own process), stop the server."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    launched = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "tunefork", "serve", "-m", str(run), "--port", str(port),
                               "--logging_level", "warning", *flags], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        saw_loading = False
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited before it was ready:\n{server.stderr.read()[-3000:]}")
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                saw_loading |= health.json().get("status") == "loading"
                if health.status_code == 200:
                    break
            except (httpx.TransportError, ValueError):  # not listening yet, or Ray's proxy before the app is up
                pass
            if time.perf_counter() - launched > ready_within:
                sys.exit(f"the server was not ready within {ready_within:.0f} s")
            time.sleep(0.05)
        ready = time.perf_counter() - launched
        engine = httpx.get(f"{url}/metadata", timeout=10).json().get("engine")
        results = client(url)
    finally:
        server.send_signal(2)  # SIGINT: uvicorn and the Ray deployment shut down cleanly
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    return {"flags": list(flags), "ready_seconds": round(ready, 2), "health_said_loading": saw_loading,
            "engine": engine, "client": results}


def predict_command(run: Path, engine: str) -> float:
    """Wall seconds of `tunefork predict` of 10 SST-2 rows, the whole command."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame({"sentence": sentences(10)}).to_csv(Path(tmp) / "ten.csv", index=False)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tunefork", "predict", "-m", str(run), "--dataset", str(Path(tmp) / "ten.csv"),
                        "--output_directory", tmp, "--engine", engine, "--quiet"], check=True, capture_output=True)
        return time.perf_counter() - start


def grid() -> list:
    return [(route, c) for route in ("/predict", "/batch_predict") for c in CONCURRENCY]


def main(args) -> int:
    import llm_serve

    common.quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.model_path) if args.model_path else train(Path(tmp))
        predict_command(run, "auto")  # writes the ONNX graph once, outside the timings
        startup = {engine: round(min(predict_command(run, engine) for _ in range(2)), 2) for engine in ("auto", "torch")}
        baseline = common.in_subprocess(Path(__file__), "bare", "--model_path", str(run))
        local = served(run, *TIMEOUT, client=phases_client(grid()))
        torch_engine = served(run, *TIMEOUT, "--engine", "torch",
                              client=phases_client([("/predict", 32), ("/batch_predict", 32)]))
        ray = {} if args.skip_ray else {
            n: served(run, *TIMEOUT, "--backend", "ray", "--num_replicas", str(n), "--num_cpus", "1",
                      client=phases_client(grid())) for n in (1, 2)}
        llm = None if args.skip_llm else llm_serve.measure(Path(tmp))  # the LLM default: --batch_wait_ms 50
    result = {"model": "all-MiniLM-L6-v2, frozen, category head" if not args.model_path else str(args.model_path),
              "cpu_count": os.cpu_count(), "predict_10_rows_seconds": startup, "bare_forward": baseline,
              "local": local, "local_torch_engine": torch_engine, "ray_serve": ray, "llm": llm}
    result["targets"] = targets(result)
    path = common.save("serve", result)
    report(result)
    print(f"saved {path}")
    return 0


def _phase(server: dict, route: str, concurrency: int) -> dict:
    return next(p for p in server["client"] if p["route"] == route and p["concurrency"] == concurrency)


def targets(result: dict) -> dict:
    bare, local = result["bare_forward"], result["local"]
    c32, c1 = _phase(local, "/predict", 32), _phase(local, "/predict", 1)
    servers = [local, *result["ray_serve"].values()]
    out = {
        "c32_predict_vs_bare_batch32_torch": c32["rows_per_second"] / bare["torch_batch32_rows_per_second"],
        "c32_predict_vs_bare_batch32_onnx": c32["rows_per_second"] / bare["onnx_batch32_rows_per_second"],
        "c1_p50_minus_bare_single_row_torch_ms": c1["p50_ms"] - bare["torch_single_row_p50_ms"],
        "c1_p50_minus_bare_single_row_onnx_ms": c1["p50_ms"] - bare["onnx_single_row_p50_ms"],
        "failures_at_c128": sum(sum(_phase(s, r, 128)["failures"].values()) for s in servers
                                for r in ("/predict", "/batch_predict")),
        "predict_10_rows_seconds_onnx": result["predict_10_rows_seconds"]["auto"],
        "serve_ready_seconds": local["ready_seconds"],
    }
    if result["llm"]:
        out["llm_tokens_per_second_vs_batched_generate"] = result["llm"]["ratio"]
    return out


def report(result: dict) -> None:
    bare = result["bare_forward"]
    print(f"bare forward   torch: batch-32 {bare['torch_batch32_rows_per_second']:.0f} rows/s, single row "
          f"{bare['torch_single_row_p50_ms']:.1f} ms | onnx: batch-32 {bare['onnx_batch32_rows_per_second']:.0f} rows/s, "
          f"single row {bare['onnx_single_row_p50_ms']:.1f} ms")
    print(f"predict 10 rows (whole command): {result['predict_10_rows_seconds']}; serve ready in "
          f"{result['local']['ready_seconds']} s")
    servers = {"local": result["local"], "local --engine torch": result["local_torch_engine"],
               **{f"ray serve x{n}": s for n, s in result["ray_serve"].items()}}
    for name, server in servers.items():
        for p in server["client"]:
            print(f"{name:22s} {p['route']:15s} c={p['concurrency']:<4d} {p['rows_per_second']:8.1f} rows/s  "
                  f"p50 {p['p50_ms']:8.1f} ms  p99 {p['p99_ms']:8.1f} ms  failures {p['failures'] or 0}")
    if result["llm"]:
        llm = result["llm"]
        print(f"LLM: served {llm['served_tokens_per_second']:.1f} tokens/s vs one batched generate "
              f"{llm['bare_tokens_per_second']:.1f} → {llm['ratio']:.2f}")
    print(json.dumps(result["targets"], indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path")
    parser.add_argument("--skip_ray", action="store_true")
    parser.add_argument("--skip_llm", action="store_true")
    parser.add_argument("--case")
    parser.add_argument("--url")
    parser.add_argument("--phases")
    args = parser.parse_args()
    if args.case == "load":
        print(json.dumps(load(args.url, json.loads(args.phases))))
    elif args.case == "bare":
        common.quiet_transformers()
        print(json.dumps(bare(Path(args.model_path))))
    else:
        sys.exit(main(args))
