"""Every kind of model users deploy, served and compared with MLflow's own pyfunc scoring.

The zoo (`tests/zoo.py`) trains real models of each kind; each is served by a
real `modelpilot serve` (uvicorn on a free loopback port) and scored through
every /invocations JSON format and CSV, and through v2 (one tensor per column
and, for numeric models, one matrix) — every answer must equal
`mlflow.pyfunc.load_model(path).predict(rows)`. Batched scoring is checked the
same way: many concurrent requests of different rows must each get exactly
their own rows' answers.
"""

from __future__ import annotations

import concurrent.futures
import time
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zoo

MODEL = "zoo"


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


_built: dict[str, zoo.ZooModel] = {}


def _model(kind: str, where: Path) -> zoo.ZooModel:
    if kind not in _built:
        _built[kind] = zoo.build(kind, where)
    return _built[kind]


def _same(got: Any, want: Any) -> bool:
    x = np.asarray(got)
    y = np.asarray(want)
    if x.shape != y.shape:
        return False
    if x.dtype.kind in "fc" or y.dtype.kind in "fc":
        return bool(np.allclose(x.astype(float), y.astype(float), rtol=1e-9, atol=1e-12, equal_nan=True))
    return bool(np.array_equal(x.astype(object), y.astype(object)))


def _v2_values(resp: httpx.Response) -> Any:
    assert resp.status_code == 200, resp.text
    out = resp.json()["outputs"]
    assert len(out) == 1, out
    tensor = out[0]
    values = np.asarray(tensor["data"], dtype=object if tensor["datatype"] == "BYTES" else None)
    return values.reshape(tensor["shape"])


@pytest.mark.parametrize("kind", zoo.KINDS)
def test_every_protocol_and_format_matches_mlflow(kind: str, zoo_dir: Path, serve_launch: Any,
                                                   serve_helpers: Any) -> None:
    model = _model(kind, zoo_dir)
    reference = model.reference(params=model.params)
    srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL, max_request_bytes=64 * 1024 * 1024))
    ready = srv.get("/v2/health/ready")
    assert ready.status_code == 200, ready.text

    for fmt, body in zoo.invocations_bodies(model).items():
        resp = srv.post("/invocations", json=body)
        assert resp.status_code == 200, f"{kind} {fmt}: {resp.text[:500]}"
        assert _same(resp.json()["predictions"], reference), f"{kind} {fmt}: {resp.text[:300]}"

    if not model.tensor and model.params is None:
        csv = io.StringIO()
        model.rows.to_csv(csv, index=False)
        resp = srv.post("/invocations", content=csv.getvalue().encode(), headers={"content-type": "text/csv"})
        assert resp.status_code == 200, f"{kind} csv: {resp.text[:500]}"
        assert _same(resp.json()["predictions"], reference), f"{kind} csv"

    for shape, body in zoo.v2_bodies(model).items():
        resp = srv.post(f"/v2/models/{MODEL}/infer", json=body)
        assert _same(_v2_values(resp), reference), f"{kind} v2 {shape}: {resp.text[:300]}"


@pytest.mark.parametrize("kind", ["sklearn_frame", "pipeline_strings", "xgboost", "lightgbm", "pyfunc_params",
                                  "sklearn_numpy", "no_signature"])
def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(
    kind: str, zoo_dir: Path, serve_launch: Any, serve_helpers: Any
) -> None:
    model = _model(kind, zoo_dir)
    srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL))
    rows = model.rows
    singles = [rows.iloc[[i]] for i in range(len(rows))] * 4  # many one-row requests, different rows
    expected = [model.reference(frame, params=model.params) for frame in singles]
    fmt = "dataframe_split" if not model.tensor else "instances"

    def call(i: int) -> Any:
        body = zoo.invocations_bodies(model, singles[i])[fmt]
        with httpx.Client(timeout=30) as client:
            resp = client.post(srv.url + "/invocations", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()["predictions"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(len(singles))))
    for i, (got, want) in enumerate(zip(answers, expected)):
        assert _same(got, want), f"{kind} request {i}: {got} != {want}"
    meta = srv.get(f"/v2/models/{MODEL}").json()["parameters"]
    assert meta["batching"] is True, meta
    rows_scored = srv.metric("modelpilot_batch_size_sum")
    assert rows_scored >= len(singles)
    if not meta["fast_path"]:
        # The pyfunc lane keeps one batch in flight; requests arriving meanwhile are
        # scored together, so 16 concurrent clients always share some predicts. (The
        # inline fast path batches only requests parsed in the same loop turn, which
        # depends on timing, so it is not asserted here.)
        batches = srv.metric("modelpilot_batch_size_count")
        assert batches < rows_scored, f"{kind}: {batches} batches for {rows_scored} rows: nothing was batched"


def test_native_fast_path_is_used_for_numeric_flavors(zoo_dir: Path, serve_launch: Any, serve_helpers: Any) -> None:
    for kind in ("sklearn_frame", "sklearn_numpy", "xgboost", "lightgbm", "no_signature"):
        model = _model(kind, zoo_dir)
        srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL))
        meta = srv.get(f"/v2/models/{MODEL}").json()["parameters"]
        assert meta["fast_path"] is True, (kind, meta)
    for kind in ("pipeline_strings", "pyfunc_params"):
        model = _model(kind, zoo_dir)
        srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL))
        meta = srv.get(f"/v2/models/{MODEL}").json()["parameters"]
        assert meta["fast_path"] is False and meta["batching"] is True, (kind, meta)


# --------------------------------------------------------------------------- custom pyfuncs and batching


def _concurrently(srv: Any, bodies: list[Any]) -> list[Any]:
    def call(body: Any) -> Any:
        with httpx.Client(timeout=30) as client:
            resp = client.post(srv.url + "/invocations", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()["predictions"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(call, bodies))


def test_a_row_dependent_pyfunc_is_never_batched(tmp_path: Path, serve_launch: Any, serve_helpers: Any) -> None:
    """A model whose answer for a row depends on the other rows (centres on the batch mean) must
    give every request the answer it would get alone: the start-up self-check turns batching off."""
    import mlflow.pyfunc
    import pandas as pd

    class Centre(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            x = pd.DataFrame(model_input)["x"].to_numpy(dtype=float)
            return (x - x.mean()).tolist()

    example = pd.DataFrame({"x": [1.0, 2.0, 6.0]})
    mlflow.pyfunc.save_model(str(tmp_path / "m"), python_model=Centre(), input_example=example,
                             pip_requirements=["pandas"])
    srv = serve_launch(serve_helpers.settings(tmp_path / "m", model_name=MODEL))
    assert srv.get(f"/v2/models/{MODEL}").json()["parameters"]["batching"] is False
    bodies = [{"dataframe_split": {"columns": ["x"], "data": [[float(i)], [float(i) * 3]]}} for i in range(48)]
    for i, got in enumerate(_concurrently(srv, bodies)):
        assert np.allclose(got, [-float(i), float(i)]), (i, got)


def test_a_custom_pyfunc_without_an_example_is_not_batched(tmp_path: Path, serve_launch: Any,
                                                           serve_helpers: Any) -> None:
    import mlflow.pyfunc

    class Double(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return np.asarray(model_input, dtype=float) * 2

    mlflow.pyfunc.save_model(str(tmp_path / "m"), python_model=Double(), pip_requirements=["numpy"])
    srv = serve_launch(serve_helpers.settings(tmp_path / "m", model_name=MODEL))
    # Nothing to verify batched scoring on: served one by one.
    assert srv.get(f"/v2/models/{MODEL}").json()["parameters"]["batching"] is False
    resp = srv.post("/invocations", json={"instances": [[1.0, 2.0]]})
    assert resp.status_code == 200 and resp.json()["predictions"] == [[2.0, 4.0]]


def test_a_tensor_signature_pyfunc_is_batched(tmp_path: Path, serve_launch: Any, serve_helpers: Any) -> None:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    class Norm(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            time.sleep(0.002)  # a model with a real per-call cost, so concurrent requests queue
            return np.linalg.norm(np.asarray(model_input, dtype=float), axis=1)

    example = np.array([[3.0, 4.0], [6.0, 8.0]])
    mlflow.pyfunc.save_model(str(tmp_path / "m"), python_model=Norm(), input_example=example,
                             signature=infer_signature(example, np.array([5.0, 10.0])), pip_requirements=["numpy"])
    srv = serve_launch(serve_helpers.settings(tmp_path / "m", model_name=MODEL))
    meta = srv.get(f"/v2/models/{MODEL}").json()["parameters"]
    assert meta["batching"] is True and meta["fast_path"] is False, meta
    bodies = [{"instances": [[3.0 * i, 4.0 * i]]} for i in range(1, 49)]
    for i, got in enumerate(_concurrently(srv, bodies), start=1):
        assert np.allclose(got, [5.0 * i]), (i, got)
    batches = srv.metric("modelpilot_batch_size_count")
    rows = srv.metric("modelpilot_batch_size_sum")
    assert rows >= 48 and batches < rows, f"{batches} predicts for {rows} rows: nothing was batched"


def test_the_linear_fast_path_equals_sklearn_predict_exactly() -> None:
    """The sklearn-free linear predict (fast path) against sklearn's own, on the linear estimators users fit."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, RidgeClassifier, SGDClassifier

    from modelpilot_serve.model import _linear_predict

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y2 = (X[:, 0] + X[:, 1] > 0).astype(int)
    y3 = np.digitize(X[:, 0], [-0.5, 0.5])
    labels = np.array(["no", "yes"])[y2]
    checked = 0
    for est, y in [
        (LogisticRegression(), y2), (LogisticRegression(), y3), (LogisticRegression(), labels),
        (RidgeClassifier(), y3), (SGDClassifier(random_state=0), y2),
        (LinearRegression(), X[:, 0] * 2), (LinearRegression(), X[:, :2]), (Ridge(), X[:, 1]),
    ]:
        est.fit(X, y)
        fn = _linear_predict(est)
        if fn is None:
            continue  # not a plain linear predict in this sklearn version: sklearn's own predict is used
        checked += 1
        got, want = fn(X), est.predict(X)
        assert got.shape == want.shape and got.dtype.kind == want.dtype.kind, type(est)
        assert (np.array_equal(got, want) if want.dtype.kind not in "f" else np.allclose(got, want, rtol=1e-12))
        bad = X[:3].copy()
        bad[1, 2] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            fn(bad)
        bad[1, 2] = np.inf
        with pytest.raises(ValueError, match="infinity"):
            fn(bad)
    assert checked >= 5  # LogisticRegression ×3, RidgeClassifier, SGDClassifier, LinearRegression at least
