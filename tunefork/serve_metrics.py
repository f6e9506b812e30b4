"""`/metrics` of `tunefork serve`, in Prometheus' text format through `prometheus_client`: requests by route and
status, their latency, the rows of each forward pass, and the rows waiting for one.

Each app has a registry of its own (two apps in one process, as in tests, do not share counts); under Ray Serve each
replica answers with its own counts, and Ray's own metrics export covers the deployment as a whole.
"""

from __future__ import annotations

import time

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ROUTES = ("/predict", "/batch_predict", "/generate_stream")
BATCHED = ("/predict", "/batch_predict")  # the routes whose rows join the batcher's queue


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("tunefork_requests", "Prediction requests answered, by route and HTTP status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("tunefork_request_seconds", "Seconds from a prediction request's arrival to its answer",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("tunefork_batch_rows", "Rows in each forward pass", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.queue_rows = Gauge("tunefork_queue_rows", "Rows waiting for a forward pass", registry=self.registry)
        self.in_progress = Gauge("tunefork_requests_in_progress", "Prediction requests received and not yet answered",
                                 ["route"], registry=self.registry)
        self.batched_inside = 0  # /predict and /batch_predict requests in the server: a batch's possible company

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Timing:
    """ASGI middleware: counts and times every request to a prediction route, refusals (413, 503) included, and
    counts those in the server from their arrival (the batcher waits for them, not for requests yet to come)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        route = scope.get("path") if scope["type"] == "http" else None
        if route not in ROUTES:
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), [500]
        batched = route in BATCHED
        self.metrics.batched_inside += batched
        self.metrics.in_progress.labels(route).inc()

        async def sent(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            self.metrics.batched_inside -= batched
            self.metrics.in_progress.labels(route).dec()
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - began)
