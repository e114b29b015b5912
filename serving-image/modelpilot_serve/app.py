"""The HTTP face of the serving process: routes, error mapping, the uvicorn server.

Where it sits: the top of the package. `create_app` wires settings, metrics,
the model state (background loading + gate) and a runner into a Starlette
app; `build_server`/`run` put it on uvicorn (uvloop + httptools). Handlers are
thin: check the model name, read the body within the limit, let a protocol
adapter decode, the runner predict, the adapter encode.

Endpoints (the operator ⇄ pod contract is marked *):
  GET  /v2/health/live *             200 as soon as the process listens
  GET  /v2/health/ready *            200 once loaded and gated, else 503 {"reason"}
  GET  /v2                           server metadata
  GET  /v2/models/{name}[/versions/{v}]          model metadata incl. signature
  GET  /v2/models/{name}[/versions/{v}]/ready    per-model readiness
  POST /v2/models/{name}[/versions/{v}]/infer *  Open Inference Protocol v2
  POST /invocations *                MLflow scoring protocol
  GET  /ping, /health                MLflow / SageMaker-style readiness
  GET  /version                      server and MLflow versions
  GET  /metrics *                    Prometheus text format
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType
from typing import Any

import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import __version__, invocations, oip
from .errors import BadRequest, NotFound, NotReady, PayloadTooLarge, ServeError, UnsupportedMediaType, shorten
from .logs import event
from .metrics import CONTENT_TYPE, ServeMetrics
from .model import ServedModel, load_model
from .runner import DirectRunner, Runner
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


# --------------------------------------------------------------------------- responses


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


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


class _Server:
    """The handlers, closed over one process's settings, state, metrics and runner."""

    def __init__(self, settings: ServeSettings, state: ModelState, metrics: ServeMetrics, runner: Runner) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.runner = runner

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

    def _count_classes(self, model: ServedModel, output: Any) -> None:
        if model.classes is not None and isinstance(output, np.ndarray):
            self.metrics.count_classes(output)

    def instrumented(self, protocol: str, handler: Endpoint) -> Endpoint:
        """Wrap an inference handler: errors → responses, and one metrics sample per request."""

        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
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
            self.metrics.observe_request(protocol, response.status_code, time.perf_counter() - start)
            return response

        return endpoint

    # ---- health and metadata

    async def live(self, request: Request) -> Response:
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
        req = oip.decode_request(body)
        inp = oip.to_model_input(model, req)
        output = await self.runner.run(model, inp)
        self._count_classes(model, output)
        s = self.settings
        return JSONResponse(oip.encode_response(s.model_name, s.model_version, req.id, output, model))

    async def invocations(self, request: Request) -> Response:
        model = self.state.require_ready()
        body = await read_body(request, self.settings.max_request_bytes)
        inp = invocations.decode(model, body, request.headers.get("content-type"))
        output = await self.runner.run(model, inp)
        self._count_classes(model, output)
        return JSONResponse(invocations.encode(output))


# --------------------------------------------------------------------------- app


def create_app(
    settings: ServeSettings,
    *,
    loader: Loader = load_model,
    runner: Runner | None = None,
    metrics: ServeMetrics | None = None,
) -> Starlette:
    """The ASGI app. Loading starts in the lifespan, i.e. once the server runs.

    `loader` and `runner` are the seams for what comes next (model caches,
    batching) and for tests that need to hold loading at a known point.
    """
    metrics = metrics or ServeMetrics(settings.model_name, settings.model_version, settings.variant)
    state = ModelState(settings, metrics, loader)
    srv = _Server(settings, state, metrics, runner or DirectRunner())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.start()
        yield

    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes = [
        Route("/v2/health/live", srv.live, methods=["GET"]),
        Route("/v2/health/ready", srv.ready, methods=["GET"]),
        Route("/v2", srv.server_metadata, methods=["GET"]),
        Route("/invocations", srv.instrumented("invocations", srv.invocations), methods=["POST"]),
        Route("/ping", srv.ping, methods=["GET"]),
        Route("/health", srv.ping, methods=["GET"]),
        Route("/version", srv.version, methods=["GET"]),
        Route("/metrics", srv.metrics_endpoint, methods=["GET"]),
    ]
    infer = srv.instrumented("v2", srv.infer)
    for base in model_paths:
        routes += [
            Route(base, srv.model_metadata, methods=["GET"]),
            Route(base + "/ready", srv.model_ready, methods=["GET"]),
            Route(base + "/infer", infer, methods=["POST"]),
        ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ServeError: _serve_error_handler,
            HTTPException: _http_error_handler,
            Exception: _unhandled_handler,
        },
    )
    app.state.model_state = state
    app.state.metrics = metrics
    return app


# --------------------------------------------------------------------------- server


def build_server(settings: ServeSettings, app: Starlette | None = None) -> uvicorn.Server:
    config = uvicorn.Config(
        app or create_app(settings),
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
    )
    return uvicorn.Server(config)


def run(settings: ServeSettings) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code (0 after a graceful stop)."""
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
    )
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits non-zero (3) when it cannot bind or start
        code = exc.code if isinstance(exc.code, int) else 1
        event(log, logging.ERROR, "server failed to start", exit_code=code)
        return code
    event(log, logging.INFO, "stopped")
    return 0
