"""`tunefork serve --backend ray`: the same app as a Ray Serve deployment, to scale past one process.

Each replica builds the very FastAPI app the local server runs (`serve.app`: same routes, schemas and error bodies),
handed to Ray Serve as an ingress builder, which runs on the replica when it starts; only the batching differs: rows
go through Ray Serve's `@serve.batch` instead of the local batcher. Replicas reserve `ray_actor_options` (CPUs, GPUs);
a fixed `num_replicas`, or autoscaling between bounds on the requests each replica has in flight. Ray is joined at
`--address` / RAY_ADDRESS, or started on this machine; the server listens where --host/--port say (Ray Serve's proxy).

The ONNX graph (`onnx_engine`) is written once here, before deploying, so replicas never race to write it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunefork.errors import TuneforkError, first_line

log = logging.getLogger("tunefork.serve")
APP = "tunefork"


class Autoscaling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)


class Deployment(BaseModel):
    """How the deployment runs: what `serve:` in a YAML holds (and the matching flags)."""
    model_config = ConfigDict(extra="forbid")
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0, description="CPUs each replica reserves")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each replica reserves")
    autoscaling: Autoscaling | None = None
    address: str | None = None
    max_ongoing_requests: int = Field(256, ge=1)


class Settings(Deployment):
    """Everything `tunefork serve` takes: the `serve:` section of a YAML given with --config, flags over it."""
    backend: Literal["local", "ray"] = "local"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_request_mb: float = Field(8.0, gt=0)
    max_field_chars: int = Field(100_000, ge=1)
    max_pending: int = Field(256, ge=1)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_ms: float | None = Field(None, ge=0, description="null: 5 ms, or 50 ms for an LLM")
    request_timeout: float = Field(60.0, gt=0)
    engine: Literal["auto", "onnx", "torch"] = "auto"

    def app_options(self) -> dict:
        return {"max_body_bytes": int(self.max_request_mb * 2**20), "max_field_chars": self.max_field_chars,
                "max_pending": self.max_pending, "max_batch_size": self.max_batch_size,
                "batch_wait_ms": self.batch_wait_ms, "request_timeout": self.request_timeout, "engine": self.engine}

    def deployment(self) -> Deployment:
        return Deployment(**{k: getattr(self, k) for k in Deployment.model_fields})


def settings(config_path, flags: dict) -> Settings:
    """The `serve:` section of the YAML at `config_path` (if any), with `flags` over it; one line naming a bad key."""
    from pydantic import ValidationError

    section = {}
    if config_path:
        import yaml

        try:
            loaded = yaml.safe_load(open(config_path, encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise TuneforkError(f"{config_path}: cannot be read as YAML ({first_line(exc)})") from None
        section = loaded.get("serve") if isinstance(loaded, dict) else None
        if not isinstance(section, dict):
            raise TuneforkError(f"{config_path}: no `serve:` section (a mapping of serve settings)")
    try:
        return Settings(**{**section, **flags})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(map(str, error["loc"]))
        raise TuneforkError(f"serve.{where}: {error['msg']}" + (f" (in {config_path})" if config_path else "")) from None


def _batched(service, max_batch_size: int, batch_wait_ms: float):
    """The dispatch the app calls on a replica: each row joins Ray Serve's batch queue. A batch that fails on a row's
    data is answered row by row, so only the bad row gets its error; any other failure goes to that batch's rows."""
    from ray import serve
    from starlette.concurrency import run_in_threadpool

    from tunefork.serve_batching import BatchFailed

    @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_ms / 1000)
    async def forward(rows: list[dict]) -> list:
        ordered = sorted(range(len(rows)), key=lambda i: service.length(rows[i]))  # length-sorted: less padding
        try:
            answers = await run_in_threadpool(service.answers, [rows[i] for i in ordered])
        except TuneforkError:
            return [await _alone(service, row) for row in rows]
        except Exception as exc:  # noqa: BLE001 — given to this batch's rows
            failed = BatchFailed(f"the batch this request was in failed: {type(exc).__name__}: {first_line(exc)}")
            return [failed] * len(rows)
        back = [None] * len(rows)
        for answer, i in zip(answers, ordered, strict=True):
            back[i] = answer
        return back

    async def submit(rows: list[dict], gone=None) -> list[dict]:
        answers = await asyncio.gather(*(forward(row) for row in rows))
        failure = next((a for a in answers if isinstance(a, Exception)), None)
        if failure is not None:
            raise failure
        return list(answers)

    return submit


async def _alone(service, row: dict):
    from starlette.concurrency import run_in_threadpool

    try:
        return (await run_in_threadpool(service.answers, [row]))[0]
    except Exception as exc:  # noqa: BLE001 — handed back as this row's answer, raised for its caller
        return exc


def _builder(model_path: str, options: dict):
    """The ingress builder: runs on each replica as it starts, and builds the local server's app around Ray's batch."""
    batching = {k: options[k] for k in ("max_batch_size", "batch_wait_ms")}
    app_options = {k: v for k, v in options.items() if k not in batching}

    def build():
        from tunefork import serve as local

        return local.app(model_path, dispatch=lambda service: _batched(service, **batching), **app_options)

    return build


def _connect(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING) if address \
            else ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at '{address}'" if address else "on this machine"
        raise TuneforkError(f"--address: cannot reach a Ray cluster {where} ({first_line(exc)})") from None


def deploy(model_path, deployment: Deployment, *, host: str = "127.0.0.1", port: int = 8000, **options):
    """Deploy the model folder as the Ray Serve application `tunefork`, listening at host:port; returns its handle.
    `options`: the app's (max_batch_size, batch_wait_ms, request_timeout, engine, limits)."""
    from ray import serve

    from tunefork import onnx_engine
    from tunefork.models import folder as folders
    from tunefork.serve_batching import MAX_BATCH_SIZE, wait_ms

    folder = folders.check(model_path)
    config, meta = folders.records(folder)
    options = {"max_batch_size": MAX_BATCH_SIZE, **options}
    options["batch_wait_ms"] = wait_ms(options.get("batch_wait_ms"), config.model_type == "llm")
    if options.get("engine", "auto") != "torch":
        log.info("engine: %s", "onnxruntime" if onnx_engine.graph(folder, config, meta)[0] else "torch")
    _connect(deployment.address)
    serve.start(http_options={"host": host, "port": port})
    scaling = deployment.autoscaling
    ingress = serve.deployment(
        serve.ingress(_builder(str(folder), options))(),
        name="TuneforkServer",
        ray_actor_options={"num_cpus": deployment.num_cpus, "num_gpus": deployment.num_gpus},
        max_ongoing_requests=deployment.max_ongoing_requests,
        **({"autoscaling_config": scaling.model_dump()} if scaling else {"num_replicas": deployment.num_replicas}),
    )
    return serve.run(ingress.bind(), name=APP, route_prefix="/")


def shutdown() -> None:
    """Remove the deployment (its replicas end); Serve itself stops with the Ray it runs on."""
    from ray import serve

    serve.delete(APP)


def run(model_path, deployment: Deployment, *, host: str, port: int, **options) -> None:
    """Deploy, then serve until interrupted (also while deploying); the deployment is removed on the way out."""
    import time

    import ray

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines, with no authentication", host)
    try:
        deploy(model_path, deployment, host=host, port=port, **options)
        log.info("serving on http://%s:%d with Ray Serve (%s)", host, port, _replicas(deployment))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            shutdown()


def _replicas(deployment: Deployment) -> str:
    if deployment.autoscaling:
        return f"{deployment.autoscaling.min_replicas}-{deployment.autoscaling.max_replicas} replicas, autoscaling"
    return f"{deployment.num_replicas} replica{'s' if deployment.num_replicas > 1 else ''}"
