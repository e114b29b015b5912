"""Unit tests of the serving package against a real MLflow model and a real server.

No cluster and no mocks of MLflow: a scikit-learn model is saved with
`mlflow.sklearn.save_model` into a temporary directory and served by the real
uvicorn server (same `build_server` the CLI uses) on a free loopback port, in
a background thread; one test also runs `python -m modelpilot_serve` as a
subprocess to check logs and SIGTERM handling.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelpilot_serve.app import build_server, create_app
from modelpilot_serve.cli import main as serve_main
from modelpilot_serve.model import load_model
from modelpilot_serve.settings import ServeSettings, SettingsError

MODEL = "iris"
VERSION = "3"
VARIANT = "blue"
LIMIT = 256 * 1024  # small request limit, so the 413 test sends little

# pytest resets warning filters per test, undoing the server's own filter for
# sklearn's "fitted with feature names" warning on the numpy fast path.
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


# --------------------------------------------------------------------------- fixtures


@dataclass
class IrisModel:
    path: Path
    estimator: LogisticRegression
    X: pd.DataFrame

    @property
    def columns(self) -> list[str]:
        return list(self.X.columns)

    def sample(self) -> pd.DataFrame:
        # Rows from all three classes, so class counting sees each of them.
        return self.X.iloc[[0, 1, 60, 61, 120, 121]]


@dataclass
class RunningServer:
    url: str
    server: Any
    thread: threading.Thread
    # What the server answered before loading was allowed to start.
    before_ready: dict[str, httpx.Response] = field(default_factory=dict)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=10, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def _poll(fn: Callable[[], Any], *, deadline_s: float = 60.0, interval: float = 0.02) -> Any:
    """Call fn until it returns something truthy; fail after the deadline (no fixed sleeps)."""
    end = time.monotonic() + deadline_s
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline_s}s")
        time.sleep(interval)


def _start(settings: ServeSettings, loader: Callable[[ServeSettings], Any] = load_model) -> RunningServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = build_server(settings, create_app(settings, loader=loader))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _poll(lambda: server.started, deadline_s=15)
    return RunningServer(f"http://127.0.0.1:{port}", server, thread)


def _settings(path: Path, **kw: Any) -> ServeSettings:
    base: dict[str, Any] = dict(
        model_uri=str(path), model_name=MODEL, model_version=VERSION, variant=VARIANT,
        host="127.0.0.1", port=8080, max_request_bytes=LIMIT,
    )
    base.update(kw)
    return ServeSettings(**base)


def _ready_state(srv: RunningServer) -> str:
    return srv.get("/v2/health/ready").json()["state"]


@pytest.fixture(scope="module")
def serve_iris(tmp_path_factory: pytest.TempPathFactory) -> IrisModel:
    X, y = load_iris(return_X_y=True, as_frame=True)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    path = tmp_path_factory.mktemp("iris") / "model"
    mlflow.sklearn.save_model(
        clf, str(path), input_example=X.head(3), signature=infer_signature(X, clf.predict(X)),
        # Stated requirements: MLflow's inference of them spawns a process and
        # costs seconds, and serving never reads them.
        pip_requirements=["scikit-learn"],
    )
    return IrisModel(path, clf, X)


@pytest.fixture(scope="module")
def serve_server(serve_iris: IrisModel) -> Iterator[RunningServer]:
    """The iris model served; loading is held until pre-ready answers are recorded."""
    release = threading.Event()

    def held_loader(settings: ServeSettings) -> Any:
        release.wait(30)
        return load_model(settings)

    srv = _start(_settings(serve_iris.path), held_loader)
    try:
        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready", "/ping"):
            srv.before_ready[path] = srv.get(path)
        srv.before_ready["infer"] = srv.post(f"/v2/models/{MODEL}/infer", json=_v2_matrix(serve_iris.sample()))
        release.set()
        _poll(lambda: _ready_state(srv) != "loading")
        yield srv
    finally:
        release.set()
        srv.stop()


@pytest.fixture(scope="module")
def serve_bad_example(serve_iris: IrisModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A copy of the iris model whose logged input example lost a column."""
    path = tmp_path_factory.mktemp("bad") / "model"
    shutil.copytree(serve_iris.path, path)
    for name in ("input_example.json", "serving_input_example.json"):
        doc = json.loads((path / name).read_text())
        split = doc.get("dataframe_split", doc)
        split["columns"] = split["columns"][:3]
        split["data"] = [row[:3] for row in split["data"]]
        (path / name).write_text(json.dumps(doc))
    srv = _start(_settings(path))
    try:
        yield srv
    finally:
        srv.stop()


def _v2_matrix(frame: pd.DataFrame, *, nested: bool = False, datatype: str = "FP64") -> dict[str, Any]:
    values = frame.to_numpy()
    data = values.tolist() if nested else values.reshape(-1).tolist()
    return {"id": "req-1", "inputs": [{"name": "input-0", "shape": list(values.shape), "datatype": datatype, "data": data}]}


def _predictions(resp: httpx.Response) -> list[Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()["predictions"]


# --------------------------------------------------------------------------- readiness


def test_live_before_ready_and_ready_after_load(serve_server: RunningServer) -> None:
    before = serve_server.before_ready
    assert before["/v2/health/live"].status_code == 200
    assert before["/v2/health/ready"].status_code == 503
    assert before["/v2/health/ready"].json()["state"] == "loading"
    assert before["/v2/health/ready"].json()["reason"]
    assert before[f"/v2/models/{MODEL}/ready"].status_code == 503
    assert before["/ping"].status_code == 503
    assert before["infer"].status_code == 503
    assert "not ready" in before["infer"].json()["error"]

    assert serve_server.get("/v2/health/live").status_code == 200
    ready = serve_server.get("/v2/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True
    assert serve_server.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert serve_server.get(f"/v2/models/{MODEL}/versions/{VERSION}/ready").status_code == 200
    assert serve_server.get("/ping").status_code == 200
    assert serve_server.get("/health").status_code == 200


def test_failed_input_example_never_ready(serve_bad_example: RunningServer) -> None:
    _poll(lambda: _ready_state(serve_bad_example) == "failed")
    for _ in range(3):  # failed is final: it stays 503 with the reason
        resp = serve_bad_example.get("/v2/health/ready")
        assert resp.status_code == 503
        body = resp.json()
        assert body["ready"] is False and body["state"] == "failed"
        assert "input example" in body["reason"]
        assert "petal width (cm)" in body["reason"]
    # Final: liveness turns 503 with the same reason, so the kubelet restarts the container
    # and the reason lands in the pod's lastState.terminated.message.
    live = serve_bad_example.get("/v2/health/live")
    assert live.status_code == 503
    assert live.json()["live"] is False and "petal width (cm)" in live.json()["reason"]
    resp = serve_bad_example.post("/invocations", json={"inputs": {"a": [1]}})
    assert resp.status_code == 503
    assert "petal width (cm)" in resp.json()["error"]
    # Metadata still describes the loaded model, so the mismatch can be read.
    meta = serve_bad_example.get(f"/v2/models/{MODEL}")
    assert meta.status_code == 200
    assert meta.json()["parameters"]["state"] == "failed"


def test_unloadable_model_never_ready(tmp_path: Path) -> None:
    srv = _start(_settings(tmp_path / "does-not-exist"))
    try:
        _poll(lambda: _ready_state(srv) == "failed")
        body = srv.get("/v2/health/ready").json()
        assert "does-not-exist" in body["reason"]
        assert srv.get(f"/v2/models/{MODEL}").status_code == 503
    finally:
        srv.stop()


@pytest.mark.parametrize("with_example", [True, False], ids=["example", "no-example"])
def test_fast_path_turned_off_when_it_disagrees(serve_iris: IrisModel, tmp_path: Path, with_example: bool) -> None:
    # A pipeline that selects columns by name cannot take a numpy matrix: the
    # gate (or the probe row, without an example) must notice and fall back to
    # pyfunc instead of failing requests.
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_iris(return_X_y=True, as_frame=True)
    pipe = Pipeline([
        ("cols", ColumnTransformer([("scale", StandardScaler(), list(X.columns))])),
        ("clf", LogisticRegression(max_iter=500)),
    ]).fit(X, y)
    path = tmp_path / "pipeline"
    mlflow.sklearn.save_model(
        pipe, str(path), signature=infer_signature(X, pipe.predict(X)), pip_requirements=["scikit-learn"],
        input_example=X.head(2) if with_example else None,
    )
    srv = _start(_settings(path))
    try:
        _poll(lambda: _ready_state(srv) != "loading")
        ready = srv.get("/v2/health/ready").json()
        assert ready["ready"] is True, ready
        assert ("gate skipped" in ready["reason"]) is not with_example
        assert srv.get(f"/v2/models/{MODEL}").json()["parameters"]["fast_path"] is False
        sample = serve_iris.sample()
        resp = srv.post("/invocations", json={"dataframe_records": sample.to_dict(orient="records")})
        assert _predictions(resp) == pipe.predict(sample).tolist()
        resp = srv.post(f"/v2/models/{MODEL}/infer", json=_v2_matrix(sample))
        assert resp.status_code == 200, resp.text
        assert resp.json()["outputs"][0]["data"] == pipe.predict(sample).tolist()
    finally:
        srv.stop()


# --------------------------------------------------------------------------- v2 inference


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_v2_infer_matrix(serve_server: RunningServer, serve_iris: IrisModel, nested: bool) -> None:
    sample = serve_iris.sample()
    resp = serve_server.post(f"/v2/models/{MODEL}/infer", json=_v2_matrix(sample, nested=nested))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == MODEL and body["model_version"] == VERSION and body["id"] == "req-1"
    (out,) = body["outputs"]
    assert out["shape"] == [len(sample)] and out["datatype"] == "INT64"
    assert out["data"] == serve_iris.estimator.predict(sample).tolist()


def test_v2_infer_columns_fp32_and_versioned_path(serve_server: RunningServer, serve_iris: IrisModel) -> None:
    sample = serve_iris.sample()
    inputs = [
        {"name": c, "shape": [len(sample)], "datatype": "FP32", "data": sample[c].tolist()}
        for c in reversed(serve_iris.columns)  # order must not matter
    ]
    # Request parameters the model does not declare (MLServer clients send
    # content_type) are ignored, as MLflow ignores them.
    doc = {"inputs": inputs, "parameters": {"content_type": "pd"}}
    resp = serve_server.post(f"/v2/models/{MODEL}/versions/{VERSION}/infer", json=doc)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"]  # generated when the request has none
    assert body["outputs"][0]["data"] == serve_iris.estimator.predict(sample).tolist()


# --------------------------------------------------------------------------- /invocations


def test_invocations_formats_agree(serve_server: RunningServer, serve_iris: IrisModel) -> None:
    sample = serve_iris.sample()
    expected = serve_iris.estimator.predict(sample).tolist()
    split = json.loads(sample.to_json(orient="split", index=False))
    records = sample.to_dict(orient="records")
    columns = {c: sample[c].tolist() for c in sample.columns}
    for payload in (
        {"dataframe_split": split},
        {"dataframe_split": {"columns": split["columns"][::-1], "data": [r[::-1] for r in split["data"]]}},
        {"dataframe_records": records},
        {"instances": records},
        {"inputs": columns},
    ):
        assert _predictions(serve_server.post("/invocations", json=payload)) == expected, payload
    csv = sample.to_csv(index=False)
    for ctype in ("text/csv", "application/csv", "text/csv; charset=utf-8"):
        resp = serve_server.post("/invocations", content=csv, headers={"content-type": ctype})
        assert _predictions(resp) == expected, ctype


def test_invocations_pyfunc_path_for_non_numeric_input(serve_server: RunningServer, serve_iris: IrisModel) -> None:
    # Integers for double columns take the fast path; strings fall through to
    # MLflow's own parser, which refuses them with a 400.
    resp = serve_server.post("/invocations", json={"dataframe_split": {"columns": serve_iris.columns, "data": [[5, 3, 1, 0]]}})
    assert _predictions(resp) == serve_iris.estimator.predict(pd.DataFrame([[5.0, 3.0, 1.0, 0.0]], columns=serve_iris.columns)).tolist()
    resp = serve_server.post("/invocations", json={"dataframe_split": {"columns": serve_iris.columns, "data": [["x", 3, 1, 0]]}})
    assert resp.status_code == 400
    assert "sepal length (cm)" in resp.json()["error"]


# --------------------------------------------------------------------------- client errors


def test_client_errors_are_4xx_with_reason(serve_server: RunningServer, serve_iris: IrisModel) -> None:
    infer = f"/v2/models/{MODEL}/infer"
    good = _v2_matrix(serve_iris.sample())

    def v2(mutate: Callable[[dict[str, Any]], None]) -> httpx.Response:
        doc = json.loads(json.dumps(good))
        mutate(doc["inputs"][0])
        return serve_server.post(infer, json=doc)

    cases: list[tuple[str, httpx.Response, int, str]] = [
        ("malformed v2", serve_server.post(infer, content=b"{not json", headers={"content-type": "application/json"}), 400, "malformed JSON"),
        ("malformed invocations", serve_server.post("/invocations", content=b"[1,", headers={"content-type": "application/json"}), 400, "malformed JSON"),
        ("no inputs", serve_server.post(infer, json={"outputs": []}), 400, "inputs"),
        ("shape vs data", v2(lambda t: t.update(shape=[5, 4])), 400, "needs 20 elements"),
        ("wrong width", v2(lambda t: t.update(shape=[8, 3])), 400, "[rows, 4]"),
        ("nested vs shape", v2(lambda t: t.update(shape=[24], data=[[1.0] * 4] * 6)), 400, "nested data has shape"),
        ("ragged", v2(lambda t: t.update(shape=[2, 4], data=[[1.0] * 4, [1.0] * 3])), 400, "ragged"),
        ("strings as FP64", v2(lambda t: t.update(data=["a"] * 24)), 400, "needs numbers"),
        ("bad datatype", v2(lambda t: t.update(datatype="FP128")), 400, "unsupported datatype"),
        ("floats as INT64", v2(lambda t: t.update(datatype="INT64", data=[0.5] * 24)), 400, "needs integers"),
        ("negative shape", v2(lambda t: t.update(shape=[-1, 4])), 400, "shape"),
        (
            "missing column",
            serve_server.post(infer, json={"inputs": [
                {"name": c, "shape": [1], "datatype": "FP64", "data": [1.0]} for c in serve_iris.columns[:3]
            ]}),
            400,
            "petal width (cm)",
        ),
        (
            "unknown column",
            serve_server.post(infer, json={"inputs": [
                {"name": c, "shape": [1], "datatype": "FP64", "data": [1.0]} for c in [*serve_iris.columns, "extra"]
            ]}),
            400,
            "extra",
        ),
        ("unknown model", serve_server.post("/v2/models/nope/infer", json=good), 404, "nope"),
        ("unknown version", serve_server.post(f"/v2/models/{MODEL}/versions/99/infer", json=good), 404, "99"),
        ("unknown model metadata", serve_server.get("/v2/models/nope"), 404, "nope"),
        ("unknown model ready", serve_server.get("/v2/models/nope/ready"), 404, "nope"),
        ("no route", serve_server.get("/nothing-here"), 404, "Not Found"),
        ("no format key", serve_server.post("/invocations", json={"data": [[1, 2, 3, 4]]}), 400, "dataframe_split"),
        (
            "missing column invocations",
            serve_server.post("/invocations", json={"dataframe_records": [{c: 1.0 for c in serve_iris.columns[:3]}]}),
            400,
            "petal width (cm)",
        ),
        ("bad content type", serve_server.post("/invocations", content=b"x", headers={"content-type": "text/plain"}), 415, "text/plain"),
        ("oversized", serve_server.post("/invocations", content=b" " * (LIMIT + 1), headers={"content-type": "application/json"}), 413, "limit"),
        (
            "oversized chunked",
            serve_server.post(infer, content=iter([b" " * 65536] * 5), headers={"content-type": "application/json"}),
            413,
            "limit",
        ),
    ]
    for name, resp, status, fragment in cases:
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/json"), name
        assert fragment in resp.json()["error"], (name, resp.json())


# --------------------------------------------------------------------------- metadata and metrics


def test_metadata_endpoints(serve_server: RunningServer, serve_iris: IrisModel) -> None:
    server = serve_server.get("/v2").json()
    assert server["name"] == "modelpilot-serve" and "version" in server
    meta = serve_server.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["versions"] == [VERSION]
    assert [i["name"] for i in meta["inputs"]] == serve_iris.columns
    assert {i["datatype"] for i in meta["inputs"]} == {"FP64"}
    params = meta["parameters"]
    assert params["flavor"] == "sklearn" and params["fast_path"] is True
    assert params["variant"] == VARIANT and params["classes"] == [0, 1, 2]
    assert [s["name"] for s in params["signature"]["inputs"]] == serve_iris.columns
    assert params["input_example"]["columns"] == serve_iris.columns
    version = serve_server.get("/version").json()
    assert version["model"] == MODEL and version["variant"] == VARIANT and version["mlflow"] == mlflow.__version__


def test_metrics_carry_model_version_variant(serve_server: RunningServer, serve_iris: IrisModel) -> None:
    sample = serve_iris.sample()
    assert serve_server.post(f"/v2/models/{MODEL}/infer", json=_v2_matrix(sample)).status_code == 200
    assert serve_server.post("/invocations", json={"dataframe_records": sample.to_dict(orient="records")}).status_code == 200
    assert serve_server.post("/v2/models/nope/infer", json={}).status_code == 404
    resp = serve_server.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    samples = [s for fam in text_string_to_metric_families(resp.text) for s in fam.samples]
    identity = {"model": MODEL, "version": VERSION, "variant": VARIANT}
    assert all({k: s.labels.get(k) for k in identity} == identity for s in samples if s.name.startswith("modelpilot_"))

    def value(name: str, **labels: str) -> float:
        found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
        assert found, (name, labels)
        return found[0]

    assert value("modelpilot_requests_total", protocol="v2", code="200") >= 1
    assert value("modelpilot_requests_total", protocol="invocations", code="200") >= 1
    assert value("modelpilot_requests_total", protocol="v2", code="404") >= 1
    assert value("modelpilot_request_duration_seconds_count", protocol="v2") >= 1
    assert value("modelpilot_model_load_seconds") > 0
    assert value("modelpilot_model_ready") == 1
    predicted = serve_iris.estimator.predict(sample)
    for cls in (0, 1, 2):
        assert value("modelpilot_predictions_total", **{"class": str(cls)}) >= int((predicted == cls).sum())


# --------------------------------------------------------------------------- settings and CLI


def test_settings_require_model_uri_with_clear_message() -> None:
    with pytest.raises(SettingsError) as err:
        ServeSettings.load({}, {})
    assert "MODEL_URI" in str(err.value) and "--model-uri" in str(err.value)


def test_settings_cli_overrides_env_and_defaults() -> None:
    env = {
        "MODEL_URI": "models:/fraud/7", "MODEL_VARIANT": "green", "MODELPILOT_SERVE_PORT": "9000",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MODEL_NAME": "",  # "" means unset (Kubernetes)
    }
    s = ServeSettings.load({"port": 9100, "model_uri": None}, env)
    assert (s.model_uri, s.model_name, s.model_version, s.variant) == ("models:/fraud/7", "fraud", "7", "green")
    assert (s.port, s.host, s.max_request_bytes) == (9100, "0.0.0.0", 10 * 1024 * 1024)
    assert s.tracking_uri == "http://mlflow:5000"
    alias = ServeSettings.load({"model_uri": "models:/fraud@champion"}, {})
    assert (alias.model_name, alias.model_version, alias.variant) == ("fraud", "unknown", "default")


def test_settings_report_every_problem() -> None:
    env = {"MODEL_URI": "/m", "MODELPILOT_SERVE_PORT": "http", "MODELPILOT_SERVE_MAX_REQUEST_BYTES": "0"}
    with pytest.raises(SettingsError) as err:
        ServeSettings.load({"model_name": "a/b"}, env)
    text = str(err.value)
    assert "MODELPILOT_SERVE_PORT='http': not an integer" in text
    assert "MODELPILOT_SERVE_MAX_REQUEST_BYTES=0: must be at least 1" in text
    assert "--model-name='a/b'" in text


def test_cli_reports_settings_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_URI", raising=False)
    assert serve_main(["--port", "8081"]) == 2
    assert "MODEL_URI" in capsys.readouterr().err
    assert serve_main(["--port", "not-a-number"]) == 2
    assert serve_main(["--help"]) == 0


def test_subprocess_json_logs_and_sigterm_exit_zero(serve_iris: IrisModel) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpilot_serve", "serve", "--model-uri", str(serve_iris.path),
         "--host", "127.0.0.1", "--port", str(port), "--variant", VARIANT],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        def live() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                return False

        _poll(live, deadline_s=30)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    events = [line["event"] for line in lines]
    assert "starting" in events and "stopped" in events
    assert all(line["variant"] == VARIANT and line["model"] == "model" for line in lines)
