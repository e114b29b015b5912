"""The OpenAPI document, schemathesis fuzzing of the live server (no 5xx), and bad-input handling.

The fuzz test drives every operation of `/openapi.json` against a real server
(batching and the cache on, so their paths are fuzzed too) with a bounded
number of generated examples per operation; the only property asserted is
the one that matters for a serving pod: no input makes it answer 5xx.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")

# Examples per operation; raise it for a deeper search (e.g. MODELPILOT_FUZZ_EXAMPLES=500),
# MODELPILOT_FUZZ_RANDOM=1 for new examples instead of the fixed ones.
FUZZ_EXAMPLES = int(os.environ.get("MODELPILOT_FUZZ_EXAMPLES", "50"))
FUZZ_DERANDOMIZE = os.environ.get("MODELPILOT_FUZZ_RANDOM", "") != "1"


@pytest.fixture(scope="module")
def serve_fuzz_server(serve_iris_model: Any, serve_helpers: Any) -> Iterator[str]:
    from modelpilot_serve.app import build_server, create_app

    s = serve_helpers.settings(serve_iris_model.path, cache=True, max_request_bytes=64 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = build_server(s, create_app(s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        serve_helpers.poll(lambda: server.started, deadline_s=15)
        serve_helpers.poll(lambda: httpx.get(url + "/v2/health/ready").status_code == 200)
        yield url
    finally:
        server.should_exit = True
        thread.join(15)


def test_fuzz_no_server_errors(serve_fuzz_server: str) -> None:
    # Driven through schemathesis's Python API rather than its pytest plugin
    # (whose lazy-fixture loader does not support pytest 9 yet): one
    # Hypothesis run per operation of the live server's own document.
    from hypothesis import given

    schema = schemathesis.openapi.from_url(serve_fuzz_server + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=FUZZ_DERANDOMIZE,  # by default the same examples every run: failures reproduce
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            calls[operation.label] = calls.get(operation.label, 0) + 1
            case.call_and_validate(base_url=serve_fuzz_server, checks=[not_a_server_error])

        run()
    assert set(calls) == {op.label for op in operations}
    # The server is still healthy afterwards.
    assert httpx.get(serve_fuzz_server + "/v2/health/ready").status_code == 200


def test_openapi_document_lists_every_route(serve_fuzz_server: str) -> None:
    doc = httpx.get(serve_fuzz_server + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}", "/v2/models/{name}/ready",
                 "/v2/models/{name}/infer", "/v2/models/{name}/feedback", "/invocations", "/feedback",
                 "/ping", "/health", "/version", "/metrics"):
        assert path in doc["paths"], path
    assert doc["paths"]["/v2/models/{name}"]["parameters"][0]["schema"]["enum"] == ["iris"]


# --------------------------------------------------------------------------- bad input


def test_nan_and_infinity_reach_the_model_and_its_refusal_is_4xx(serve_fuzz_server: str, serve_iris_model: Any) -> None:
    cols = list(serve_iris_model.X.columns)
    url = serve_fuzz_server
    json_nan = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[NaN,1,2,3]}]}'
    cases = [
        # The bare NaN / Infinity tokens Python's json.dumps writes are parsed (as MLflow does);
        # this estimator refuses NaN, and that is the client's input: 422, not 5xx.
        (httpx.post(url + "/v2/models/iris/infer", content=json_nan, headers={"content-type": "application/json"}), 422, "NaN"),
        (httpx.post(url + "/invocations", content=b'{"inputs": {"a": [Infinity]}}', headers={"content-type": "application/json"}), 400, "unknown column"),
        (httpx.post(url + "/invocations", content=b'{"inputs": {"a": [Infinity}}', headers={"content-type": "application/json"}), 400, "malformed JSON"),
        # Strings standing in for them are not numbers.
        (httpx.post(url + "/v2/models/iris/infer", json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ["NaN", 1, 2, 3]}]}), 400, "needs numbers"),
        # CSV can carry them; this estimator refuses them, and that is the client's input, not a 5xx.
        (httpx.post(url + "/invocations", content=",".join(cols) + "\nnan,1,2,3\n", headers={"content-type": "text/csv"}), 422, "NaN"),
        (httpx.post(url + "/invocations", content=",".join(cols) + "\ninf,1,2,3\n", headers={"content-type": "text/csv"}), 422, "infinity"),
    ]
    for resp, status, fragment in cases:
        assert resp.status_code == status, resp.text
        assert fragment in resp.json()["error"], resp.json()


@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer")
def test_nan_where_the_signature_forbids_it(serve_launch: Any, serve_helpers: Any, tmp_path: Any) -> None:
    # An integer column: MLflow's signature cannot hold NaN there, so it is refused before the model runs.
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    X = pd.DataFrame({"age": pd.Series([20, 30, 40, 50], dtype="int64"), "score": [0.1, 0.2, 0.3, 0.4]})
    y = [0, 0, 1, 1]
    clf = LogisticRegression().fit(X, y)
    mlflow.sklearn.save_model(clf, str(tmp_path / "m"), signature=infer_signature(X, clf.predict(X)),
                              input_example=X.head(2), pip_requirements=["scikit-learn"])
    srv = serve_launch(serve_helpers.settings(tmp_path / "m", model_name="ages"))
    assert srv.get("/v2/health/ready").status_code == 200
    csv = "age,score\nnan,0.2\n"
    resp = srv.post("/invocations", content=csv, headers={"content-type": "text/csv"})
    assert resp.status_code == 400 and "age" in resp.json()["error"], resp.text
    resp = srv.post("/invocations", json={"dataframe_split": {"columns": ["age", "score"], "data": [[20.5, 0.2]]}})
    assert resp.status_code == 400 and "age" in resp.json()["error"], resp.text
    resp = srv.post("/v2/models/ages/infer", json={"inputs": [
        {"name": "age", "shape": [1], "datatype": "INT64", "data": [2.5]},
        {"name": "score", "shape": [1], "datatype": "FP64", "data": [0.2]},
    ]})
    assert resp.status_code == 400 and "integers" in resp.json()["error"], resp.text
    good = srv.post("/invocations", json={"dataframe_records": [{"age": 45, "score": 0.35}]})
    assert good.json()["predictions"] == [1]


def test_extra_and_missing_columns_are_named(serve_fuzz_server: str, serve_iris_model: Any) -> None:
    cols = list(serve_iris_model.X.columns)
    url = serve_fuzz_server
    row = serve_iris_model.X.iloc[0].tolist()
    cases = [
        ({"dataframe_split": {"columns": [*cols, "colour"], "data": [[*row, 1.0]]}}, "colour"),
        ({"dataframe_records": [{**dict(zip(cols, row)), "colour": 1.0}]}, "colour"),
        ({"inputs": {**{c: [v] for c, v in zip(cols, row)}, "colour": [1.0]}}, "colour"),
        ({"dataframe_split": {"columns": cols[:3], "data": [row[:3]]}}, "petal width (cm)"),
        ({"dataframe_records": [dict(zip(cols[1:], row[1:]))]}, "sepal length (cm)"),
    ]
    for payload, column in cases:
        resp = httpx.post(url + "/invocations", json=payload)
        assert resp.status_code == 400, (payload, resp.text)
        assert column in resp.json()["error"], resp.json()
    csv = ",".join([*cols, "colour"]) + "\n" + ",".join(map(str, [*row, 1])) + "\n"
    resp = httpx.post(url + "/invocations", content=csv, headers={"content-type": "text/csv"})
    assert resp.status_code == 400 and "colour" in resp.json()["error"]
    v2 = [{"name": c, "shape": [1], "datatype": "FP64", "data": [v]} for c, v in zip(cols, row)]
    resp = httpx.post(url + "/v2/models/iris/infer", json={"inputs": [*v2, {"name": "colour", "shape": [1], "datatype": "FP64", "data": [1.0]}]})
    assert resp.status_code == 400 and "colour" in resp.json()["error"]
    resp = httpx.post(url + "/v2/models/iris/infer", json={"inputs": v2[1:]})
    assert resp.status_code == 400 and "sepal length (cm)" in resp.json()["error"]
