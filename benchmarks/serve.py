"""Serving throughput: a real uvicorn server on 127.0.0.1 against the model's bare forward pass.

    .venv/bin/python benchmarks/serve.py [--model_path RUN_DIR] [--requests 2000] [--concurrency 8]

Model: all-MiniLM-L6-v2 (frozen encoder, cached embeddings, a category head) trained for 1 epoch on the first 1,000
SST-2 training rows, max_sequence_length 64 — or any run directory given with --model_path. Load: SST-2 dev sentences,
sent from a second process over loopback, with a bounded count and a time cap per phase:
  /predict        one row per request, `--requests` requests, `--concurrency` in flight → requests/s, p50/p99 latency;
  /batch_predict  64 rows per request, `--batch_requests` requests, 2 in flight (the server runs one forward at a
                  time; the second request's parsing overlaps the first one's forward) → rows/s;
  bare forward    the same 64-row batches through the model itself (tokenized beforehand, inference_mode), in a fresh
                  process before and after the HTTP load, no HTTP → rows/s (their mean). Target: /batch_predict ≥ 0.8 ×
                  bare forward.
Prints and saves benchmarks/results/serve.json.
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

BATCH, LENGTH, TIME_CAP = 64, 64, 300.0


def sentences(n: int) -> list[str]:
    import pandas as pd

    dev = pd.read_csv(common.sst2() / "dev.csv")["sentence"].tolist()
    return [dev[i % len(dev)] for i in range(n)]


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


def bare_forward(run: Path, batches: list[list[str]]) -> dict:
    """Rows/s of the model's own forward pass on the batches the server will get, tokenized beforehand."""
    import numpy as np
    import pandas as pd
    import torch

    from tunefork import Model
    from tunefork.features import pipeline
    from tunefork.training import batches as batching

    model = Model.load(run)
    tables = [pipeline.transform(model.config, pd.DataFrame({"sentence": b}), model.meta, model.tokenizers, with_outputs=False)
              for b in batches]
    inputs = [batching.collate(t, np.arange(len(t)), model.config, model.meta, with_targets=False)[0] for t in tables]
    net = model.model.eval()
    with torch.inference_mode():
        net(inputs[0])  # warm-up
        start = time.perf_counter()
        for x in inputs:
            net(x)
        seconds = time.perf_counter() - start
    rows = sum(map(len, batches))
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_second": rows / seconds, "torch_threads": torch.get_num_threads()}


def load(url: str, requests: int, concurrency: int, batch_requests: int) -> dict:
    """The client side, in its own process: bounded count, bounded time, loopback only."""
    import asyncio

    import httpx
    import numpy as np

    texts = sentences(max(requests, batch_requests * BATCH))

    async def phase(path: str, bodies: list, in_flight: int) -> dict:
        latencies, failures = [], 0
        queue = iter(bodies)
        deadline = time.perf_counter() + TIME_CAP

        async def worker(client):
            nonlocal failures
            for body in queue:
                if time.perf_counter() > deadline:
                    return
                sent = time.perf_counter()
                answer = await client.post(path, json=body)
                latencies.append(time.perf_counter() - sent)
                failures += answer.status_code != 200

        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=in_flight)) as client:
            await client.post(path, json=bodies[0])  # warm-up
            start = time.perf_counter()
            await asyncio.gather(*(worker(client) for _ in range(in_flight)))
            seconds = time.perf_counter() - start
        ms = np.array(latencies) * 1000
        return {"requests": len(latencies), "failures": failures, "seconds": round(seconds, 3),
                "requests_per_second": len(latencies) / seconds,
                "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}

    single = asyncio.run(phase("/predict", [{"sentence": t} for t in texts[:requests]], concurrency))
    chunks = [texts[i * BATCH:(i + 1) * BATCH] for i in range(batch_requests)]
    batch = asyncio.run(phase("/batch_predict", [{"sentence": c} for c in chunks], 2))
    batch["rows_per_second"] = batch["requests_per_second"] * BATCH
    return {"predict": single, "batch_predict": batch}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(args) -> int:
    common.quiet_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run = Path(args.model_path) if args.model_path else train(Path(tmp))
        trained = time.perf_counter() - started
        # The bare forward runs in a fresh process like the server, before and after the HTTP load: on a machine
        # shared with other work the two measurements bracket whatever else the cores were doing meanwhile.
        bare_args = ("--model_path", str(run), "--batch_requests", str(args.batch_requests))
        before = common.in_subprocess(Path(__file__), "bare", *bare_args)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "tunefork", "serve", "--model_path", str(run), "--port", str(port),
                                   "--logging_level", "warning"], env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            url = f"http://127.0.0.1:{port}"
            wait(url, server)
            client = common.in_subprocess(Path(__file__), "load", "--url", url, "--requests", str(args.requests),
                                          "--concurrency", str(args.concurrency), "--batch_requests", str(args.batch_requests))
        finally:
            server.terminate()
            server.wait(timeout=30)
        after = common.in_subprocess(Path(__file__), "bare", *bare_args)
    bare = {"before": before, "after": after, "rows_per_second": (before["rows_per_second"] + after["rows_per_second"]) / 2}
    ratio = client["batch_predict"]["rows_per_second"] / bare["rows_per_second"]
    result = {
        "model": "all-MiniLM-L6-v2, frozen, category head" if not args.model_path else str(args.model_path),
        "setup_seconds": round(trained, 1), "cpu_count": os.cpu_count(), "batch_rows": BATCH,
        **client, "bare_forward": bare,
        "batch_predict_vs_bare_forward": ratio, "target": 0.8, "target_met": ratio >= 0.8,
    }
    path = common.save("serve", result)
    p, b = client["predict"], client["batch_predict"]
    print(f"/predict        {p['requests_per_second']:7.1f} req/s  p50 {p['p50_ms']:6.1f} ms  p99 {p['p99_ms']:6.1f} ms  "
          f"({p['requests']} requests, {args.concurrency} in flight, {p['failures']} failed)")
    print(f"/batch_predict  {b['rows_per_second']:7.1f} rows/s  p50 {b['p50_ms']:6.1f} ms per {BATCH} rows  ({b['failures']} failed)")
    print(f"bare forward    {bare['rows_per_second']:7.1f} rows/s  (before {before['rows_per_second']:.1f}, after "
          f"{after['rows_per_second']:.1f})  → ratio {ratio:.2f} (target ≥ 0.8)")
    print(f"saved {path}")
    return 0


def wait(url: str, server, seconds: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit("the server exited before it answered /health")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    sys.exit(f"the server did not answer /health within {seconds:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch_requests", type=int, default=40)
    parser.add_argument("--case")
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.case == "load":
        print(json.dumps(load(args.url, args.requests, args.concurrency, args.batch_requests)))
    elif args.case == "bare":
        common.quiet_transformers()
        texts = sentences(args.batch_requests * BATCH)
        print(json.dumps(bare_forward(Path(args.model_path), [texts[i * BATCH:(i + 1) * BATCH] for i in range(args.batch_requests)])))
    else:
        sys.exit(main(args))
