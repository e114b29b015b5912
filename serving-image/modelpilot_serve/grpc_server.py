"""The gRPC face of the serving process: Open Inference Protocol `inference.GRPCInferenceService`.

Where it sits: next to the HTTP app, at the top of the package. `app.create_app`
starts it from the Starlette lifespan when `settings.grpc_port` is non-zero
(MODELPILOT_SERVE_GRPC_PORT / --grpc-port, 8081 by default from the CLI), so it
runs as a `grpc.aio` server on uvicorn's own event loop, and stops gracefully
when the lifespan ends. It shares everything with the HTTP handlers: the model
state, the runner (micro-batching and cache work across both protocols), the
metrics (protocol label `grpc`, `code` the HTTP status the same error would
have had, so error-rate queries need no change) and the feedback memory.

Like the HTTP adapter in `oip.py`, this module only translates: a
`ModelInferRequest` becomes the same `oip.Tensor`/`oip.InferRequest` values the
JSON decoder builds (checked by the same helpers), `oip.to_model_input` maps
them onto the model, and `oip.encode_outputs` supplies the outputs, which are
sent as `raw_output_contents` (as Triton does; tritonclient's `as_numpy` reads
them). Inputs may use either typed `contents` or `raw_input_contents`
(tritonclient's default). Streaming, shared memory and Triton's repository,
statistics and trace extensions are not served (UNIMPLEMENTED).

Errors: `ServeError`s become the gRPC status matching their HTTP status
(`GRPC_CODES`); anything else is a bug, logged with its traceback and answered
INTERNAL. Every call ends with an answer or a status; none is left hanging.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
import numpy as np

from starlette.concurrency import run_in_threadpool

from . import __version__, oip
from .app import INLINE_DECODE_MAX_BYTES, SERVER_NAME, WORKER_HEADER, prediction_ids
from .errors import BadRequest, NotFound, NotReady, ServeError, shorten
from .feedback import FeedbackStore
from .logs import event
from .metrics import ServeMetrics
from .model import ServedModel
from .proto import grpc_predict_v2_pb2 as pb
from .proto import grpc_predict_v2_pb2_grpc as pb_grpc
from .runner import Runner
from .settings import ServeSettings
from .state import ModelState, Phase

log = logging.getLogger(__name__)

PROTOCOL = "grpc"  # the `protocol` label of the request metrics
# In-flight calls get this long once the lifespan ends. uvicorn ends it only
# after draining HTTP (up to app.GRACEFUL_SHUTDOWN_SECONDS = 25 s, during
# which gRPC keeps serving): together they stay within Kubernetes' default
# 30 s termination grace period.
STOP_GRACE_SECONDS = 3.0
# The one mapping from the error vocabulary (HTTP statuses, errors.py) to gRPC.
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.UNIMPLEMENTED,
    # The model refused well-formed input (e.g. NaN into an estimator): still the caller's input.
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Typed `contents` field of each datatype (FP16 has none: raw only, per the spec).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = frozenset(_CONTENTS_FIELD.values())
_LENGTH = struct.Struct("<I")  # BYTES elements on the wire: 4-byte little-endian length, then the bytes

_T = TypeVar("_T")
Context: TypeAlias = grpc.aio.ServicerContext


class PredictCore(Protocol):
    """What the gRPC service shares with the HTTP handlers (`app._Server` is one)."""

    settings: ServeSettings
    state: ModelState
    metrics: ServeMetrics
    runner: Runner
    feedback_store: FeedbackStore

    def after_predict(self, model: ServedModel, output: Any, prediction_id: str) -> None: ...


def grpc_code(status: int) -> grpc.StatusCode:
    code = GRPC_CODES.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- decode


def decode_request(request: pb.ModelInferRequest, max_inputs: int) -> oip.InferRequest:
    """A ModelInferRequest as the `oip.InferRequest` the JSON decoder would have built."""
    inputs = request.inputs
    if not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors {name, shape, datatype, contents}")
    oip.check_input_count(len(inputs), max_inputs)
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; send one per input")
    tensors = tuple(_decode_tensor(i, t, raw[i] if raw else None) for i, t in enumerate(inputs))
    oip.check_unique_names(tensors)
    params = _parameters(request.parameters)
    return oip.InferRequest(request.id or None, tensors, params or None)


def _decode_tensor(index: int, tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> oip.Tensor:
    name = tensor.name
    if not name:
        raise BadRequest(f"inputs[{index}]: 'name' must be a non-empty string")
    where = f"input '{name}'"
    shape = oip.check_shape(where, list(tensor.shape))
    datatype = oip.check_datatype(where, tensor.datatype)
    has_contents = tensor.HasField("contents")
    if raw is not None:
        if has_contents:
            raise BadRequest(f"{where}: has typed 'contents' although the request uses raw_input_contents")
        arr = _raw_array(where, datatype, raw)
    elif datatype == "FP16":
        raise BadRequest(f"{where}: FP16 tensors can only be sent as raw_input_contents")
    else:
        arr = _typed_array(where, datatype, tensor.contents)
    return oip.shaped_tensor(where, name, datatype, arr, shape)


def _typed_array(where: str, datatype: str, contents: pb.InferTensorContents) -> np.ndarray:
    field = _CONTENTS_FIELD[datatype]
    others = [f for f in _ALL_CONTENTS_FIELDS - {field} if len(getattr(contents, f))]
    if others:
        raise BadRequest(
            f"{where}: datatype {datatype} takes its data in contents.{field}, not {', '.join(sorted(others))}"
        )
    values = list(getattr(contents, field))
    if datatype == "BYTES":
        return _strings(values, where)
    # The JSON path's conversion: range checks for the narrower integer types included.
    return oip.numeric_array(where, datatype, values)


def _raw_array(where: str, datatype: str, raw: bytes) -> np.ndarray:
    if datatype == "BYTES":
        return _strings(_split_bytes(where, raw), where)
    if datatype == "BOOL":
        return np.not_equal(np.frombuffer(raw, dtype=np.uint8), 0)
    dtype = oip.DATATYPES[datatype]
    if len(raw) % dtype.itemsize:
        raise BadRequest(f"{where}: {len(raw)} bytes of raw contents is not a whole number of {datatype} elements")
    # The wire is little-endian; copied, so the model gets a writable array as from JSON.
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)


def _split_bytes(where: str, raw: bytes) -> list[bytes]:
    items: list[bytes] = []
    view = memoryview(raw)
    pos, end = 0, len(raw)
    while pos < end:
        if end - pos < 4:
            raise BadRequest(f"{where}: raw BYTES contents end inside an element's 4-byte length")
        (size,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if size > end - pos:
            raise BadRequest(f"{where}: raw BYTES element of {size} bytes runs past the end of the contents")
        items.append(bytes(view[pos:pos + size]))
        pos += size
    return items


def _strings(values: list[bytes], where: str) -> np.ndarray:
    """BYTES elements as the JSON path has them: str (UTF-8), or a 400 naming the element.

    Not a silent fallback to `bytes` for the whole tensor: one bad element
    would change how every row of a string column is scored. Binary columns
    take base64 text, as MLflow's scoring protocol does.
    """
    arr = np.empty(len(values), dtype=object)
    decoded: list[str] = []
    for i, v in enumerate(values):
        try:
            decoded.append(v.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"{where}: BYTES element {i} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                "send text, or base64 for binary data"
            ) from None
    arr[:] = decoded
    return arr


def _parameters(params: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as plain values (what a JSON `parameters` object holds)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which is not None else None
    return out


# --------------------------------------------------------------------------- encode


def encode_outputs(
    output: Any, model: ServedModel, requested: list[str]
) -> tuple[list[pb.ModelInferResponse.InferOutputTensor], list[bytes]]:
    """The outputs of `oip.encode_outputs` as output tensors + their raw contents (same order)."""
    tensors = oip.encode_outputs(output, model)
    if requested:
        by_name = {t["name"]: t for t in tensors}
        unknown = [n for n in requested if n not in by_name]
        if unknown:
            raise BadRequest(f"unknown requested output(s) {unknown}; the model's outputs are {list(by_name)}")
        tensors = [by_name[n] for n in requested]
    described: list[pb.ModelInferResponse.InferOutputTensor] = []
    raw: list[bytes] = []
    for t in tensors:
        datatype, contents = _raw_contents(t["datatype"], t["data"])
        described.append(pb.ModelInferResponse.InferOutputTensor(name=t["name"], datatype=datatype, shape=t["shape"]))
        raw.append(contents)
    return described, raw


def _raw_contents(datatype: str, data: Any) -> tuple[str, bytes]:
    """(datatype, little-endian raw bytes) of one output tensor's flat data.

    Missing values (None, or NaN from pandas) have no JSON-like `null` in raw
    tensors: missing numbers are NaN — an integer or boolean tensor with
    missing values is sent as FP64 for that — and missing strings are empty.
    """
    if datatype == "BYTES":
        parts: list[bytes] = []
        for v in data:
            if isinstance(v, str):
                b = v.encode("utf-8")
            elif isinstance(v, bytes):
                b = v
            else:
                b = b"" if v is None else str(v).encode("utf-8")
            parts += (_LENGTH.pack(len(b)), b)
        return datatype, b"".join(parts)
    dtype = oip.DATATYPES[datatype]
    if not isinstance(data, np.ndarray) or data.dtype != dtype:
        if dtype.kind in "biu" and any(v is None for v in data):
            datatype, dtype = "FP64", np.dtype(np.float64)
        data = np.asarray(data, dtype=dtype)  # None → NaN for floats
    return datatype, np.ascontiguousarray(data, dtype=dtype.newbyteorder("<")).tobytes()


# --------------------------------------------------------------------------- service


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of the core protocol, over one process's predict core."""

    def __init__(self, core: PredictCore) -> None:
        self.core = core
        self.settings = core.settings
        # With worker processes only: which worker (pid) answered, as the HTTP header does.
        self.worker_metadata = ((WORKER_HEADER, str(os.getpid())),) if core.settings.workers > 1 else None

    # ---- shared

    def _check_model(self, name: str, version: str) -> None:
        s = self.settings
        if name != s.model_name:
            raise NotFound(f"unknown model {name!r}; this server serves {s.model_name!r}")
        if version and version != s.model_version:
            raise NotFound(
                f"unknown version {version!r} of model {name!r}; this server serves version {s.model_version!r}"
            )

    async def _answer(self, context: Context, call: Callable[[], Awaitable[_T]], rpc: str) -> _T:
        """Run one call; a ServeError or a bug becomes the call's gRPC status."""
        try:
            return await call()
        except ServeError as exc:
            await context.abort(grpc_code(exc.status), exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug in the server: INTERNAL, logged once
            event(log, logging.ERROR, "grpc call failed", exc_info=True, rpc=rpc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal server error: {type(exc).__name__}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    # ---- health and metadata

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        # Live while the process serves, unless the model state gave up (then the
        # kubelet should restart the container, as the HTTP liveness says too).
        return pb.ServerLiveResponse(live=self.core.state.snapshot.healthy)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.state.snapshot.phase is Phase.READY)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        async def call() -> pb.ModelReadyResponse:
            self._check_model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.core.state.snapshot.phase is Phase.READY)

        return await self._answer(context, call, "ModelReady")

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        async def call() -> pb.ModelMetadataResponse:
            self._check_model(request.name, request.version)
            snap = self.core.state.snapshot
            model = snap.model
            if model is None:
                raise NotReady(f"model metadata unavailable ({snap.phase.value}): {snap.reason}")
            inputs, outputs = oip.tensor_metadata(model.signature)
            s = self.settings
            return pb.ModelMetadataResponse(
                name=s.model_name, versions=[s.model_version], platform=f"mlflow_{model.flavor}",
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in inputs],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in outputs],
            )

        return await self._answer(context, call, "ModelMetadata")

    # ---- inference

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        # The HTTP `instrumented` wrapper, for gRPC: runner admission, one
        # metrics sample per call with the HTTP-equivalent status code.
        core = self.core
        start = time.perf_counter()
        status = 200
        failure: tuple[grpc.StatusCode, str] | None = None
        core.runner.enter()
        try:
            response = await self._infer(request)
        except ServeError as exc:
            status = exc.status
            failure = (grpc_code(exc.status), exc.message)
            event(log, logging.DEBUG, "request refused", rpc="ModelInfer", status=exc.status, error=exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug in the server or the model: INTERNAL, logged once
            status = 500
            event(log, logging.ERROR, "prediction failed", exc_info=True, rpc="ModelInfer")
            failure = (
                grpc.StatusCode.INTERNAL,
                f"internal error while predicting: {type(exc).__name__}: {shorten(str(exc), 500)}",
            )
        finally:
            core.runner.leave()
        core.metrics.observe_request(PROTOCOL, status, time.perf_counter() - start)
        if self.worker_metadata is not None:
            context.set_trailing_metadata(self.worker_metadata)
        if failure is not None:
            await context.abort(*failure)
        return response

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        core = self.core
        s = self.settings
        self._check_model(request.model_name, request.model_version)
        model = core.state.require_ready()

        def decode() -> tuple[oip.InferRequest, Any]:
            req = decode_request(request, s.max_columns)
            return req, oip.to_model_input(model, req)

        # As for HTTP bodies: large requests (thousands of columns) are decoded
        # off the event loop, so they do not delay other calls and health probes.
        if request.ByteSize() <= INLINE_DECODE_MAX_BYTES:
            req, inp = decode()
        else:
            req, inp = await run_in_threadpool(decode)
        output = await core.runner.run(model, inp)
        outputs, raw = encode_outputs(output, model, [o.name for o in request.outputs])
        prediction_id = req.id or prediction_ids.new()
        core.after_predict(model, output, prediction_id)
        return pb.ModelInferResponse(
            model_name=s.model_name, model_version=s.model_version, id=prediction_id,
            outputs=outputs, raw_output_contents=raw,
        )


# --------------------------------------------------------------------------- server


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc_server(core: PredictCore) -> grpc.aio.Server:
    """Create, bind and start the gRPC server on the running event loop; raise if the port cannot be bound."""
    s = core.settings
    server = grpc.aio.server(options=[
        # The same bound as an HTTP body (MODELPILOT_SERVE_MAX_REQUEST_BYTES); gRPC
        # itself answers RESOURCE_EXHAUSTED above it, before any handler runs.
        ("grpc.max_receive_message_length", s.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        # SO_REUSEPORT (gRPC's default on Linux, stated here because it matters):
        # worker processes (--workers N) each bind the port and the kernel spreads
        # new connections over them. A port held by any other program still fails
        # the start; only sockets that also set it (another gRPC server of the same
        # user) share the port, which in a pod's own network namespace are ours.
        ("grpc.so_reuseport", 1),
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(core), server)  # type: ignore[no-untyped-call]
    address = bind_address(s.host, s.grpc_port)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen for gRPC on {address} ({exc}); set MODELPILOT_SERVE_GRPC_PORT=0 to "
                           "turn gRPC off or choose another port") from None
    await server.start()
    event(log, logging.INFO, "grpc listening", address=address, max_receive_bytes=s.max_request_bytes)
    return server
