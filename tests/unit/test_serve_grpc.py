"""The Open Inference Protocol gRPC service of `modelpilot serve`, through Triton's own client.

Real servers (uvicorn + the grpc.aio server on its loop, see the `serve_launch`
fixture), real MLflow models from the test zoo, and `tritonclient.grpc` — the
client KServe/Triton users already have — so wire compatibility is what is
tested, not our reading of the spec. Typed `contents` (which tritonclient never
sends) go through the stubs generated from our own .proto. Answers are compared
with MLflow's own pyfunc scoring (`ZooModel.reference`).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import zoo  # noqa: E402  (tests/zoo.py, shared with the benchmark)

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

KINDS = ("sklearn_frame", "pipeline_strings", "pyfunc_params", "xgboost")
NAME, VERSION = "zoo", "7"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zoo.ZooModel]:
    where = tmp_path_factory.mktemp("grpc-zoo")
    return {kind: zoo.build(kind, where) for kind in KINDS}


class Grpc:
    """A server started with gRPC on, and a tritonclient connected to it."""

    def __init__(self, running: Any, port: int) -> None:
        self.running = running
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.client = tc.InferenceServerClient(self.address)

    def raw_stub(self) -> tuple[Any, Any, grpc.Channel]:
        from modelpilot_serve.proto import grpc_predict_v2_pb2 as pb
        from modelpilot_serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

        channel = grpc.insecure_channel(self.address)
        return pb, pb_grpc.GRPCInferenceServiceStub(channel), channel


@pytest.fixture
def grpc_launch(serve_launch: Callable[..., Any], serve_helpers: Any) -> Iterator[Callable[..., Grpc]]:
    clients: list[Grpc] = []

    def launch(model: zoo.ZooModel, *, wait_ready: bool = True, **kw: Any) -> Grpc:
        port = _free_port()
        settings = serve_helpers.settings(
            model.path, model_name=NAME, model_version=VERSION, grpc_port=port, **kw.pop("settings", {})
        )
        running = serve_launch(settings, wait_ready=wait_ready, **kw)
        g = Grpc(running, port)
        clients.append(g)
        return g

    yield launch
    for g in clients:
        g.client.close()


def _column_inputs(model: zoo.ZooModel, frame: Any = None) -> list[Any]:
    """One tensor per column, datatypes as a client maps pandas dtypes (raw contents: tritonclient's default)."""
    frame = model.rows if frame is None else frame
    inputs = []
    for col in frame.columns:
        series = frame[col]
        if series.dtype.kind == "f":
            datatype, arr = "FP64", series.to_numpy(np.float64)
        elif series.dtype.kind in "iu":
            datatype, arr = "INT64", series.to_numpy(np.int64)
        else:
            datatype, arr = "BYTES", series.to_numpy(dtype=object)
        tensor = tc.InferInput(str(col), [len(frame)], datatype)
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    return inputs


def _matrix_input(model: zoo.ZooModel, frame: Any = None) -> list[Any]:
    frame = model.rows if frame is None else frame
    matrix = frame.to_numpy(np.float64)
    tensor = tc.InferInput("input-0", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix)
    return [tensor]


def _only_output(result: Any) -> np.ndarray:
    outputs = result.get_response().outputs
    assert len(outputs) == 1, outputs
    return np.asarray(result.as_numpy(outputs[0].name))


def _same(got: np.ndarray, expected: Any) -> None:
    expected = np.asarray(expected)
    if got.dtype == object:  # BYTES come back as bytes
        got = np.array([v.decode() for v in got.reshape(-1)], dtype=object).reshape(got.shape)
        assert got.tolist() == expected.tolist()
    else:
        np.testing.assert_allclose(got, expected.astype(got.dtype), rtol=1e-12)


def _code(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# --------------------------------------------------------------------------- health and metadata


def test_health_and_metadata(grpc_launch: Callable[..., Grpc], zoo_models: dict[str, zoo.ZooModel]) -> None:
    g = grpc_launch(zoo_models["sklearn_frame"])
    c = g.client
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(NAME) and c.is_model_ready(NAME, VERSION)
    meta = c.get_server_metadata(as_json=True)
    assert meta["name"] == "modelpilot-serve" and meta["version"]
    model = c.get_model_metadata(NAME, as_json=True)
    http = g.running.get(f"/v2/models/{NAME}").json()
    assert model["name"] == NAME and model["versions"] == [VERSION] and model["platform"] == "mlflow_sklearn"
    # The same tensors the HTTP metadata lists (shape int64 → JSON strings in protobuf's JSON form).
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in model["inputs"]] == [
        (t["name"], t["datatype"], t["shape"]) for t in http["inputs"]
    ]
    assert [t["datatype"] for t in model["inputs"]] == ["FP64"] * 4
    for call in (lambda: c.is_model_ready("nope"), lambda: c.get_model_metadata(NAME, "99")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert _code(err) == "StatusCode.NOT_FOUND"


# --------------------------------------------------------------------------- inference


@pytest.mark.parametrize("kind", KINDS)
def test_infer_matches_mlflow(kind: str, grpc_launch: Callable[..., Grpc], zoo_models: dict[str, zoo.ZooModel]) -> None:
    model = zoo_models[kind]
    g = grpc_launch(model)
    params = model.params
    expected = model.reference(params=params) if params is not None else model.reference()
    bodies = {"columns": _column_inputs(model)}
    if all(model.rows[c].dtype.kind in "fiu" for c in model.rows.columns):
        bodies["matrix"] = _matrix_input(model)
    for body, inputs in bodies.items():
        result = g.client.infer(NAME, inputs, request_id=f"req-{body}", parameters=params)
        assert result.get_response().id == f"req-{body}"
        assert result.get_response().model_name == NAME and result.get_response().model_version == VERSION
        _same(_only_output(result), expected)
    # One row at a time too (the batcher's single-request path).
    for i in (0, len(model.rows) - 1):
        row = model.rows.iloc[[i]].reset_index(drop=True)
        got = _only_output(g.client.infer(NAME, _column_inputs(model, row), parameters=params))
        _same(got, np.asarray(expected)[i:i + 1])
    # One sample per call (the validation gate is not a request).
    assert g.running.metric("modelpilot_requests_total", protocol="grpc", code="200") == len(bodies) + 2


def test_typed_contents_answer_like_raw(grpc_launch: Callable[..., Grpc], zoo_models: dict[str, zoo.ZooModel]) -> None:
    model = zoo_models["pipeline_strings"]
    g = grpc_launch(model)
    pb, stub, channel = g.raw_stub()
    rows = model.rows
    req = pb.ModelInferRequest(model_name=NAME, id="typed")
    for col in rows.columns:
        t = req.inputs.add(name=col, shape=[len(rows)])
        series = rows[col]
        if series.dtype.kind == "f":
            t.datatype = "FP64"
            t.contents.fp64_contents.extend(series.tolist())
        elif series.dtype.kind in "iu":
            t.datatype = "INT64"
            t.contents.int64_contents.extend(series.tolist())
        else:
            t.datatype = "BYTES"
            t.contents.bytes_contents.extend(v.encode() for v in series.tolist())
    with channel:
        resp = stub.ModelInfer(req, timeout=30)
        assert resp.id == "typed" and resp.outputs[0].datatype == "INT64"
        got = np.frombuffer(resp.raw_output_contents[0], dtype="<i8")
        np.testing.assert_array_equal(got, model.reference())
        # A requested output by name, and an unknown one.
        req.outputs.add(name=resp.outputs[0].name)
        assert stub.ModelInfer(req, timeout=30).raw_output_contents[0] == resp.raw_output_contents[0]
        req.outputs.add(name="nope")
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(req, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in (err.value.details() or "")
        # Numbers in the wrong repeated field, and FP16 (raw only per the spec), are refused.
        bad = pb.ModelInferRequest(model_name=NAME)
        bad.inputs.add(name="income", datatype="FP64", shape=[1]).contents.int64_contents.append(3)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fp64_contents" in (err.value.details() or "")


# --------------------------------------------------------------------------- errors


def test_errors_map_to_grpc_status_codes(
    grpc_launch: Callable[..., Grpc], zoo_models: dict[str, zoo.ZooModel]
) -> None:
    model = zoo_models["sklearn_frame"]
    g = grpc_launch(model, settings={"max_columns": 4, "max_request_bytes": 64 * 1024})
    c = g.client

    def status(inputs: list[Any], name: str = NAME, **kw: Any) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as err:
            c.infer(name, inputs, **kw)
        return _code(err), str(err.value.message())

    assert status(_matrix_input(model), "nope")[0] == "StatusCode.NOT_FOUND"
    assert status(_matrix_input(model), model_version="99")[0] == "StatusCode.NOT_FOUND"
    # [rows, 3] for a 4-column model: the JSON path's own message.
    wrong = tc.InferInput("input-0", [2, 3], "FP64")
    wrong.set_data_from_numpy(np.zeros((2, 3)))
    code, message = status([wrong])
    assert code == "StatusCode.INVALID_ARGUMENT" and "[rows, 4]" in message
    # Declared shape and data disagree (tritonclient checks that itself, so build the request by hand).
    pb, stub, channel = g.raw_stub()
    with channel:
        def refused(req: Any) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(req, timeout=30)
            return err.value.code(), err.value.details() or ""

        req = pb.ModelInferRequest(model_name=NAME, raw_input_contents=[np.zeros(6).tobytes()])
        req.inputs.add(name="input-0", datatype="FP64", shape=[2, 4])
        assert refused(req) == (grpc.StatusCode.INVALID_ARGUMENT, "input 'input-0': shape [2, 4] needs 8 elements, data has 6")
        req = pb.ModelInferRequest(model_name=NAME, raw_input_contents=[b"\x01\x02\x03"])
        req.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
        assert refused(req)[0] == grpc.StatusCode.INVALID_ARGUMENT
        req = pb.ModelInferRequest(model_name=NAME, raw_input_contents=[struct.pack("<I", 10) + b"abc"])
        req.inputs.add(name="input-0", datatype="BYTES", shape=[1])
        assert "runs past the end" in refused(req)[1]
        req = pb.ModelInferRequest(model_name=NAME)
        req.inputs.add(name="input-0", datatype="FP99", shape=[1])
        assert "unsupported datatype" in refused(req)[1]
        req = pb.ModelInferRequest(model_name=NAME)
        for i in range(5):  # max_columns=4
            req.inputs.add(name=f"c{i}", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
        assert "at most 4" in refused(req)[1]
        # Above max_request_bytes: gRPC itself refuses before any handler runs.
        big = tc.InferInput("input-0", [4096, 4], "FP64")
        big.set_data_from_numpy(np.zeros((4096, 4)))
        assert status([big])[0] == "StatusCode.RESOURCE_EXHAUSTED"
    m = g.running.metric
    assert m("modelpilot_requests_total", protocol="grpc", code="404") == 2
    assert m("modelpilot_requests_total", protocol="grpc", code="400") == 6
    assert m("modelpilot_requests_total", protocol="grpc", code="200") == 0
    assert m("modelpilot_request_duration_seconds_count", protocol="grpc") == 8


def test_not_ready_is_unavailable_then_serves(
    grpc_launch: Callable[..., Grpc], zoo_models: dict[str, zoo.ZooModel], serve_helpers: Any
) -> None:
    from modelpilot_serve.model import load_model

    release = threading.Event()

    def held(settings: Any) -> Any:
        release.wait(60)
        return load_model(settings)

    model = zoo_models["sklearn_frame"]
    g = grpc_launch(model, wait_ready=False, loader=held)
    c = g.client
    serve_helpers.poll(lambda: _try(c.is_server_live), deadline_s=15)
    assert c.is_server_live() and not c.is_server_ready() and not c.is_model_ready(NAME)
    with pytest.raises(InferenceServerException) as err:
        c.infer(NAME, _matrix_input(model))
    assert _code(err) == "StatusCode.UNAVAILABLE" and "not ready" in str(err.value.message())
    with pytest.raises(InferenceServerException) as err:
        c.get_model_metadata(NAME)
    assert _code(err) == "StatusCode.UNAVAILABLE"
    assert g.running.metric("modelpilot_requests_total", protocol="grpc", code="503") == 1
    release.set()
    serve_helpers.poll(c.is_server_ready, deadline_s=60)
    _same(_only_output(c.infer(NAME, _matrix_input(model))), model.reference())


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except InferenceServerException:
        return False


def test_a_failing_predict_is_internal_and_logged(
    grpc_launch: Callable[..., Grpc], zoo_models: dict[str, zoo.ZooModel], caplog: pytest.LogCaptureFixture
) -> None:
    from modelpilot_serve.runner import DirectRunner

    class Broken(DirectRunner):
        async def run(self, model: Any, inp: Any) -> Any:
            raise RuntimeError("the estimator exploded")

    model = zoo_models["sklearn_frame"]
    g = grpc_launch(model, runner=Broken())
    with caplog.at_level("ERROR"), pytest.raises(InferenceServerException) as err:
        g.client.infer(NAME, _matrix_input(model), client_timeout=30)
    assert _code(err) == "StatusCode.INTERNAL" and "the estimator exploded" in str(err.value.message())
    assert any(r.exc_info for r in caplog.records if r.name == "modelpilot_serve.grpc_server")
    assert g.running.metric("modelpilot_requests_total", protocol="grpc", code="500") == 1


def test_feedback_accepts_a_grpc_prediction_id(
    grpc_launch: Callable[..., Grpc], zoo_models: dict[str, zoo.ZooModel]
) -> None:
    model = zoo_models["sklearn_frame"]
    g = grpc_launch(model)
    predicted = _only_output(g.client.infer(NAME, _matrix_input(model), request_id="fb-1"))
    resp = g.running.post(f"/v2/models/{NAME}/feedback", json={"id": "fb-1", "truth": predicted.tolist()})
    assert resp.status_code == 200, resp.text
    assert g.running.metric("modelpilot_feedback_total", outcome="correct") == len(predicted)


# --------------------------------------------------------------------------- encoding details


def test_missing_output_values_have_raw_encodings() -> None:
    from modelpilot_serve.grpc_server import _raw_contents, _split_bytes

    dt, raw = _raw_contents("FP32", [1.5, None])
    assert dt == "FP32" and np.isnan(np.frombuffer(raw, "<f4")[1])
    dt, raw = _raw_contents("INT64", [3, None])  # no integer NaN: sent as FP64
    assert dt == "FP64" and np.frombuffer(raw, "<f8")[0] == 3 and np.isnan(np.frombuffer(raw, "<f8")[1])
    dt, raw = _raw_contents("BYTES", ["é", None, b"\x00"])
    assert dt == "BYTES" and _split_bytes("t", raw) == ["é".encode(), b"", b"\x00"]
    dt, raw = _raw_contents("INT64", np.array([1, 2], dtype=np.int64))
    assert raw == np.array([1, 2], dtype="<i8").tobytes()


# --------------------------------------------------------------------------- the real command


def test_cli_serves_grpc_and_stops_on_sigterm(zoo_models: dict[str, zoo.ZooModel], serve_helpers: Any) -> None:
    model = zoo_models["sklearn_frame"]
    http_port, grpc_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW", "MODELPILOT_SERVE"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpilot_serve", "serve", "--model-uri", str(model.path), "--model-name", NAME,
         "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    client = tc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            return bool(_try(client.is_server_ready))

        serve_helpers.poll(ready, deadline_s=120, interval=0.1)
        _same(_only_output(client.infer(NAME, _column_inputs(model))), model.reference())
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert '"grpc listening"' in stderr and f"127.0.0.1:{grpc_port}" in stderr


def test_grpc_port_taken_fails_the_start(
    zoo_models: dict[str, zoo.ZooModel], serve_helpers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from modelpilot_serve.app import build_server, create_app

    exits: list[Any] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as exc:  # what `modelpilot serve` turns into its exit code
            exits.append(exc.code)

    with socket.socket() as taken:  # a plain listener (no SO_REUSEPORT) holds the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = serve_helpers.settings(zoo_models["sklearn_frame"].path, port=_free_port(), grpc_port=port)
        server = build_server(settings, create_app(settings))
        thread = threading.Thread(target=run, daemon=True)
        with caplog.at_level("ERROR"):
            thread.start()
            thread.join(30)
    assert not thread.is_alive() and not server.started and exits == [3]
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in caplog.text


def test_worker_processes_share_the_grpc_port(zoo_models: dict[str, zoo.ZooModel], serve_helpers: Any) -> None:
    """--workers 2: every worker binds the gRPC port (SO_REUSEPORT); new connections reach both."""
    from modelpilot_serve.proto import grpc_predict_v2_pb2 as pb
    from modelpilot_serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    model = zoo_models["sklearn_frame"]
    http_port, grpc_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW", "MODELPILOT_SERVE", "PROMETHEUS"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpilot_serve", "serve", "--model-uri", str(model.path), "--model-name", NAME,
         "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    matrix = model.rows.to_numpy(np.float64)
    req = pb.ModelInferRequest(model_name=NAME, raw_input_contents=[matrix.tobytes()])
    req.inputs.add(name="input-0", datatype="FP64", shape=list(matrix.shape))
    pids: set[str] = set()

    def one_connection() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        # A local subchannel pool: a new TCP connection per channel, so the kernel picks a worker each time.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            try:
                resp, call = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer.with_call(req, timeout=10)
            except grpc.RpcError:
                return False  # not listening or not ready yet
        np.testing.assert_array_equal(np.frombuffer(resp.raw_output_contents[0], "<i8"), model.reference())
        pids.update(v for k, v in call.trailing_metadata() if k == "x-modelpilot-worker")
        return len(pids) == 2

    try:
        serve_helpers.poll(one_connection, deadline_s=120, interval=0.05)
        assert str(proc.pid) not in pids
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
