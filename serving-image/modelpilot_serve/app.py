"""The HTTP face of the serving process: routes, error mapping, the uvicorn server.

Where it sits: the top of the package. `create_app` wires settings, metrics,
the model state (background loading + gate) and a runner into a Starlette
app; `build_server`/`run` put it on uvicorn (uvloop + httptools). Handlers are
thin: check the model name, read the body within the limit, let a protocol
adapter decode, the runner predict, the adapter encode.

Endpoints (the operator ⇄ pod contract is marked *):
  GET  /v2/health/live *             200 as soon as the process listens; 503 once the model can never
                                     load (the kubelet then restarts the container, see state.py)
  GET  /v2/health/ready *            200 once loaded and gated, else 503 {"reason"}
  GET  /v2                           server metadata
  GET  /v2/models/{name}[/versions/{v}]          model metadata incl. signature
  GET  /v2/models/{name}[/versions/{v}]/ready    per-model readiness
  POST /v2/models/{name}[/versions/{v}]/infer *  Open Inference Protocol v2
  POST /invocations *                MLflow scoring protocol
  GET  /ping, /health                MLflow / SageMaker-style readiness
  GET  /version                      server and MLflow versions
  POST /v2/models/{name}[/versions/{v}]/feedback, /feedback   ground truth for a prediction id
  GET  /metrics *                    Prometheus text format
  GET  /openapi.json                 OpenAPI 3.1 document of this API
  gRPC inference.GRPCInferenceService on settings.grpc_port (8081), started from the lifespan: grpc_server.py

Every prediction carries an id (v2: the response `id`, the request's own if
it sent one; /invocations: the `x-modelpilot-prediction-id` response header,
the request's header of that name if it sent one) that the feedback endpoint
accepts with the true outcome.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import signal
import time
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import FrameType
from typing import Any, TypeVar

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from . import __version__, feedback, invocations, oip
from .cache import LocalCache, PredictionCache, RedisCache, model_identity
from .errors import BadRequest, NotFound, NotReady, PayloadTooLarge, ServeError, UnsupportedMediaType, shorten
from .feedback import FeedbackStore
from .logs import event
from .metrics import CONTENT_TYPE, ServeMetrics
from .model import ServedModel, load_model
from .openapi import openapi_document
from .runner import BatchingRunner, CachingRunner, DirectRunner, Runner
from .settings import ServeSettings
from .state import Loader, ModelState, Phase

log = logging.getLogger(__name__)

SERVER_NAME = "modelpilot-serve"
# Below Kubernetes' default 30 s termination grace period, so in-flight
# requests finish and the process still exits on its own (code 0).
GRACEFUL_SHUTDOWN_SECONDS = 25
# Longer than the 60 s idle timeout of common load balancers / gateways: the
# proxy, not the server, should close idle connections, or it may reuse one
# the server just closed and answer 502.
KEEP_ALIVE_SECONDS = 65
PREDICTION_ID_HEADER = "x-modelpilot-prediction-id"
# With worker processes only: which worker (pid) answered an inference request.
WORKER_HEADER = "x-modelpilot-worker"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,256}$")


class PredictionIds:
    """Unique prediction ids, cheaply: a random 64-bit prefix per process and a counter.

    32 hex characters like a uuid4's hex, but without 16 bytes of os.urandom per
    request (a measurable share of a fast-path request). Unique across replicas
    and restarts by the random prefix, within a process by the counter.
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = itertools.count(1).__next__

    def new(self) -> str:
        return f"{self._prefix}{self._next():016x}"


prediction_ids = PredictionIds()


# --------------------------------------------------------------------------- responses


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself: numpy scalars and arrays, missing markers, dates, bytes."""
    if isinstance(value, np.generic):
        if isinstance(value, (np.datetime64, np.timedelta64)):
            return None if np.isnat(value) else str(value)
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        # As MLflow's scoring server does: binary predictions are base64 text.
        return base64.b64encode(bytes(value)).decode("ascii")
    if _is_missing(value):
        return None  # pandas.NA, NaT: a missing value is null, never "<NA>"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _is_missing(value: Any) -> bool:
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover - pandas is always installed with MLflow
        return False


class JSONResponse(Response):
    """A JSON response built directly: orjson body and raw headers, without Starlette's header assembly.

    Same wire result as `starlette.responses.JSONResponse` (content-length,
    content-type application/json, extra headers); on the inference path the
    generic assembly cost more than a fast-path prediction.
    """

    media_type = "application/json"

    def __init__(self, content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.background = None
        body = self.render(content)
        self.body = body
        raw = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        if headers:
            raw.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        self.raw_headers = raw

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


class _RawHeaders:
    """Case-insensitive lookups in an ASGI scope's header list (servers send names lower-case).

    The list is indexed on the first lookup (a handler makes two or three, most
    of them for headers that are absent, which a scan would pay in full);
    the first occurrence of a repeated name wins, as in a scan.
    """

    __slots__ = ("_raw", "_index")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._index: dict[bytes, bytes] | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        index = self._index
        if index is None:
            index = self._index = {k.lower(): v for k, v in reversed(self._raw)}
        value = index.get(name.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class _Url:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class DirectRequest:
    """What the inference handlers use of a request — headers, path params, URL path, body —
    read straight from the ASGI scope and receive channel (the direct lane, see `ServeApp`)."""

    __slots__ = ("scope", "_receive", "headers", "path_params", "url")

    def __init__(self, scope: Any, receive: Any, path_params: dict[str, str]) -> None:
        self.scope = scope
        self._receive = receive
        self.headers = _RawHeaders(scope["headers"])
        self.path_params = path_params
        self.url = _Url(scope["path"])

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def body(self) -> bytes:
        # A small request arrives as one message: take it without the async generator.
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        first: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return first
        chunks = [first] if first else []
        async for chunk in self.stream():
            chunks.append(chunk)
        return b"".join(chunks)


def error_response(exc: ServeError) -> JSONResponse:
    """The one mapping from the error vocabulary to HTTP."""
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _serve_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    return error_response(exc)


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    # Starlette's own 404 (no route) / 405 (wrong method), in our JSON shape.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def _unhandled_handler(request: Request, exc: Exception) -> Response:
    event(log, logging.ERROR, "unhandled error", exc_info=True, path=request.url.path)
    return JSONResponse({"error": f"internal server error: {type(exc).__name__}"}, status_code=500)


# --------------------------------------------------------------------------- request helpers


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {limit} bytes")
        return await request.body()
    # Chunked upload: count as it arrives.
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


Endpoint = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
# Bodies above this size are decoded in a worker thread: parsing and checking
# a multi-megabyte or 10,000-column request takes long enough to delay health
# probes and every other request if it ran on the event loop.
INLINE_DECODE_MAX_BYTES = 64 * 1024


async def off_loop_if_large(body: bytes, decode: Callable[[], T]) -> T:
    """Run `decode` inline for small bodies (a thread hop costs more than they do), else in the thread pool."""
    if len(body) <= INLINE_DECODE_MAX_BYTES:
        return decode()
    return await run_in_threadpool(decode)


class _Server:
    """The handlers, closed over one process's settings, state, metrics and runner."""

    def __init__(
        self, settings: ServeSettings, state: ModelState, metrics: ServeMetrics, runner: Runner,
        feedback_store: FeedbackStore,
    ) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.runner = runner
        self.feedback_store = feedback_store
        self._openapi: bytes | None = None
        self.worker_header: tuple[bytes, bytes] | None = (
            (WORKER_HEADER.encode(), str(os.getpid()).encode()) if settings.workers > 1 else None
        )

    # ---- shared checks

    def check_model(self, request: Request) -> None:
        name = request.path_params["name"]
        s = self.settings
        if name != s.model_name:
            raise NotFound(f"unknown model {name!r}; this server serves {s.model_name!r}")
        version = request.path_params.get("version")
        if version is not None and version != s.model_version:
            raise NotFound(f"unknown version {version!r} of model {name!r}; this server serves version {s.model_version!r}")

    def readiness(self, extra: dict[str, Any] | None = None) -> JSONResponse:
        snap = self.state.snapshot
        body: dict[str, Any] = dict(extra or {})
        body["ready"] = snap.phase is Phase.READY
        body["state"] = snap.phase.value
        body["reason"] = snap.reason
        return JSONResponse(body, status_code=200 if snap.phase is Phase.READY else 503)

    def after_predict(self, model: ServedModel, output: Any, prediction_id: str) -> None:
        """Prediction-distribution metrics and the feedback memory, for every answered prediction (HTTP and gRPC)."""
        if isinstance(output, np.ndarray):
            if model.classes is not None:
                self.metrics.count_classes(output)
            elif output.dtype.kind in "iuf" and output.size and (output.ndim == 1 or output.shape[1:] == (1,)):
                self.metrics.observe_values(output)
        self.feedback_store.remember(prediction_id, output)

    def instrumented(self, protocol: str, handler: Endpoint) -> Endpoint:
        """Wrap an inference handler: errors → responses, and one metrics sample per request."""

        runner = self.runner
        worker_header = self.worker_header

        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            runner.enter()
            try:
                response = await handler(request)
            except ServeError as exc:
                response = error_response(exc)
                event(log, logging.DEBUG, "request refused", path=request.url.path, status=exc.status, error=exc.message)
            except Exception as exc:  # noqa: BLE001 - a bug in the server or the model: 500, logged once
                event(log, logging.ERROR, "prediction failed", exc_info=True, path=request.url.path)
                response = JSONResponse(
                    {"error": f"internal error while predicting: {type(exc).__name__}: {shorten(str(exc), 500)}"},
                    status_code=500,
                )
            finally:
                runner.leave()
            self.metrics.observe_request(protocol, response.status_code, time.perf_counter() - start)
            if worker_header is not None:
                response.raw_headers.append(worker_header)
            return response

        return endpoint

    # ---- health and metadata

    async def live(self, request: Request) -> Response:
        snap = self.state.snapshot
        if not snap.healthy:
            return JSONResponse({"live": False, "reason": snap.reason}, status_code=503)
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return self.readiness()

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return self.readiness({"name": self.settings.model_name})

    async def ping(self, request: Request) -> Response:
        return self.readiness()

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": []})

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        snap = self.state.snapshot
        model = snap.model
        s = self.settings
        if model is None:
            # Not loaded yet (or load failed): nothing to describe beyond why.
            raise NotReady(f"model metadata unavailable ({snap.phase.value}): {snap.reason}")
        inputs, outputs = oip.tensor_metadata(model.signature)
        return JSONResponse({
            "name": s.model_name,
            "versions": [s.model_version],
            "platform": f"mlflow_{model.flavor}",
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {
                "variant": s.variant,
                "model_uri": s.model_uri,
                "ready": snap.phase is Phase.READY,
                "state": snap.phase.value,
                "reason": snap.reason,
                **model.describe(),
                # Batching is on only where the settings allow it and the model passed its check.
                "batching": model.batching and s.batching,
            },
        })

    async def version(self, request: Request) -> Response:
        model = self.state.snapshot.model
        s = self.settings
        return JSONResponse({
            "server": SERVER_NAME,
            "version": __version__,
            "mlflow": model.mlflow_version if model is not None else None,
            "model": s.model_name,
            "model_version": s.model_version,
            "variant": s.variant,
        })

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    # ---- inference

    async def infer(self, request: Request) -> Response:
        self.check_model(request)
        model = self.state.require_ready()
        if "inference-header-content-length" in request.headers:
            raise UnsupportedMediaType("the binary tensor extension is not supported; send JSON tensors")
        body = await read_body(request, self.settings.max_request_bytes)
        max_columns = self.settings.max_columns

        def decode() -> tuple[str | None, Any]:
            doc = oip.loads_lenient(body)
            # The common numeric request of a fast-path model skips the per-tensor decode.
            fast = oip.fast_input(model, doc, max_columns)
            if fast is not None:
                return fast
            req = oip.decode_document(doc, max_columns)
            return req.id, oip.to_model_input(model, req)

        req_id, inp = await off_loop_if_large(body, decode)
        output = await self.runner.run(model, inp)
        prediction_id = req_id or prediction_ids.new()
        self.after_predict(model, output, prediction_id)
        s = self.settings
        return JSONResponse(oip.encode_response(s.model_name, s.model_version, prediction_id, output, model))

    async def invocations(self, request: Request) -> Response:
        model = self.state.require_ready()
        body = await read_body(request, self.settings.max_request_bytes)
        content_type = request.headers.get("content-type")
        max_columns = self.settings.max_columns
        inp = await off_loop_if_large(body, lambda: invocations.decode(model, body, content_type, max_columns))
        output = await self.runner.run(model, inp)
        client_id = request.headers.get(PREDICTION_ID_HEADER)
        prediction_id = client_id if client_id and _CLIENT_ID.match(client_id) else prediction_ids.new()
        self.after_predict(model, output, prediction_id)
        return JSONResponse(invocations.encode(output), headers={PREDICTION_ID_HEADER: prediction_id})

    # ---- feedback

    async def feedback(self, request: Request) -> Response:
        if "name" in request.path_params:
            self.check_model(request)
        body = await read_body(request, self.settings.max_request_bytes)
        items = feedback.parse(body)
        model = self.state.snapshot.model
        classes = model.classes if model is not None else None
        return JSONResponse(self.feedback_store.submit(items, classes))

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = orjson.dumps(openapi_document(self.settings.model_name, __version__))
        return Response(self._openapi, media_type="application/json")


# --------------------------------------------------------------------------- app


class ServeApp(Starlette):
    """Starlette, plus a direct lane for the inference endpoints of the served model.

    The two hot routes (`POST /v2/models/<name>[/versions/<v>]/infer`,
    `POST /invocations`) are matched by exact path and called without
    Starlette's middleware stack and route scan, which costs more per request
    than a fast-path prediction. The endpoints are the same instrumented
    handlers the routes use (they turn every error into a response
    themselves), so behaviour is identical either way; every other path,
    method and the lifespan go through Starlette.
    """

    direct: dict[str, tuple[Endpoint, dict[str, str]]]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            hit = self.direct.get(scope["path"])
            if hit is not None:
                endpoint, params = hit
                response = await endpoint(DirectRequest(scope, receive, params))  # type: ignore[arg-type]
                await send({"type": "http.response.start", "status": response.status_code,
                            "headers": response.raw_headers})
                await send({"type": "http.response.body", "body": response.body})
                return
        await super().__call__(scope, receive, send)


def build_runner(settings: ServeSettings, metrics: ServeMetrics, cache: PredictionCache | None = None) -> Runner:
    """The runner stack the settings ask for: [cache →] [batcher →] direct."""
    runner: Runner
    if settings.batching:
        runner = BatchingRunner(metrics, settings.max_batch_size, settings.max_batch_latency_ms / 1000)
    else:
        runner = DirectRunner()
    if cache is None and settings.cache:
        s = settings

        def identity(model: ServedModel) -> str:
            return model_identity(s.model_name, s.model_version, model)

        if settings.cache_redis_url:
            cache = RedisCache(identity, settings.cache_redis_url, settings.cache_ttl_seconds, metrics)
        else:
            cache = LocalCache(identity, settings.cache_max_entries, settings.cache_ttl_seconds)
    if cache is not None:
        runner = CachingRunner(runner, cache, metrics)
    return runner


def create_app(
    settings: ServeSettings,
    *,
    loader: Loader = load_model,
    runner: Runner | None = None,
    metrics: ServeMetrics | None = None,
    feedback_store: FeedbackStore | None = None,
) -> Starlette:
    """The ASGI app. Loading starts in the lifespan, i.e. once the server runs.

    `loader`, `runner` and `feedback_store` are seams for tests that need to
    hold loading at a known point, inject a cache with a fake clock, etc.
    """
    metrics = metrics or ServeMetrics(
        settings.model_name, settings.model_version, settings.variant, settings.prediction_buckets
    )
    state = ModelState(settings, metrics, loader)
    runner = runner or build_runner(settings, metrics)
    store = feedback_store or FeedbackStore(metrics, settings.feedback_max_pending, settings.feedback_ttl_seconds)
    srv = _Server(settings, state, metrics, runner, store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.start()
        grpc_server = None
        if settings.grpc_port:
            # Imported only when enabled: with gRPC off the process never loads grpcio.
            from .grpc_server import STOP_GRACE_SECONDS, start_grpc_server

            try:
                grpc_server = await start_grpc_server(srv)
            except BaseException:  # the port is taken: uvicorn reports a failed start-up (exit 3)
                state.stop()
                raise
        yield
        if grpc_server is not None:
            await grpc_server.stop(STOP_GRACE_SECONDS)
        state.stop()
        await runner.close()

    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    invocations_endpoint = srv.instrumented("invocations", srv.invocations)
    infer = srv.instrumented("v2", srv.infer)
    routes = [
        Route("/v2/health/live", srv.live, methods=["GET"]),
        Route("/v2/health/ready", srv.ready, methods=["GET"]),
        Route("/v2", srv.server_metadata, methods=["GET"]),
        Route("/invocations", invocations_endpoint, methods=["POST"]),
        Route("/ping", srv.ping, methods=["GET"]),
        Route("/health", srv.ping, methods=["GET"]),
        Route("/version", srv.version, methods=["GET"]),
        Route("/metrics", srv.metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", srv.openapi, methods=["GET"]),
        # Feedback is not an inference request: not in modelpilot_requests_total.
        Route("/feedback", srv.feedback, methods=["POST"]),
    ]
    for base in model_paths:
        routes += [
            Route(base, srv.model_metadata, methods=["GET"]),
            Route(base + "/ready", srv.model_ready, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
            Route(base + "/feedback", srv.feedback, methods=["POST"]),
        ]
    app = ServeApp(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ServeError: _serve_error_handler,
            HTTPException: _http_error_handler,
            Exception: _unhandled_handler,
        },
    )
    name, version = settings.model_name, settings.model_version
    app.direct = {
        "/invocations": (invocations_endpoint, {}),
        f"/v2/models/{name}/infer": (infer, {"name": name}),
        f"/v2/models/{name}/versions/{version}/infer": (infer, {"name": name, "version": version}),
    }
    app.state.model_state = state
    app.state.metrics = metrics
    app.state.runner = runner
    app.state.feedback = store
    return app


# --------------------------------------------------------------------------- server


def build_server(settings: ServeSettings, app: Starlette | None = None) -> uvicorn.Server:
    return uvicorn.Server(server_config(settings, app or create_app(settings)))


def server_config(settings: ServeSettings, app: Starlette | str, **extra: Any) -> uvicorn.Config:
    """uvicorn's configuration; `extra` for worker processes (an import string, factory, workers)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # Logging is ours (JSON, see logs.py); per-request access lines would
        # cost more than a fast prediction, and metrics already count requests.
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **extra,
    )


def run(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code (0 after a graceful stop)."""
    if settings.workers > 1:
        from .workers import run_workers

        return run_workers(settings)
    server = build_server(settings)

    # uvicorn re-raises the signal it caught once it has shut down, with the
    # handler that was installed before it started. With Python's defaults
    # that kills the process by SIGTERM (exit 143) after a clean shutdown;
    # with this handler the re-raise is harmless and a stop is exit 0. It also
    # covers a signal arriving before uvicorn installed its own handlers.
    def _stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    event(
        log, logging.INFO, "starting",
        host=settings.host, port=settings.port, model_uri=settings.model_uri,
        max_request_bytes=settings.max_request_bytes, server_version=__version__,
        batching=settings.batching, max_batch_size=settings.max_batch_size,
        max_batch_latency_ms=settings.max_batch_latency_ms, cache=settings.cache,
        cache_backend=("redis" if settings.cache_redis_url else "local") if settings.cache else None,
    )
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits non-zero (3) when it cannot bind or start
        code = exc.code if isinstance(exc.code, int) else 1
        event(log, logging.ERROR, "server failed to start", exit_code=code)
        return code
    event(log, logging.INFO, "stopped")
    return 0
