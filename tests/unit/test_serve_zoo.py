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


def test_the_xgboost_fast_path_equals_xgboost_predict_exactly() -> None:
    """The fast path's XGBoost predict (one cached C call) against XGBoost's own sklearn-API predict, bit for bit."""
    import xgboost as xgb

    from modelpilot_serve.model import _DenseInplace, _xgboost_predict

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y2 = (X[:, 0] + X[:, 1] > 0).astype(int)
    y3 = np.digitize(X[:, 0], [-0.5, 0.5])
    test = rng.normal(size=(100, 6))
    test[3, 2] = np.nan  # a missing value takes the default branch in both
    supported = [
        (xgb.XGBClassifier(n_estimators=20), y2), (xgb.XGBClassifier(n_estimators=20), y3),
        (xgb.XGBClassifier(n_estimators=20, booster="dart"), y2),
        (xgb.XGBClassifier(n_estimators=60, early_stopping_rounds=3), y2),  # best_iteration < trees
        (xgb.XGBRegressor(n_estimators=20), X[:, 0] * 2), (xgb.XGBRFClassifier(n_estimators=5), y2),
        (xgb.XGBRFRegressor(n_estimators=5), X[:, 1]),
    ]
    for est, y in supported:
        if est.early_stopping_rounds:
            est.fit(X[:200], y[:200], eval_set=[(X[200:], y[200:])], verbose=False)
            assert est.best_iteration + 1 < est.get_booster().num_boosted_rounds()
        else:
            est.fit(X, y)
        fn = _xgboost_predict(est)
        assert fn is not None, est
        for rows in (test[:1], test):
            got, want = fn(rows), est.predict(rows)
            assert got.dtype == want.dtype and got.shape == want.shape, est
            assert np.array_equal(got, want), est
        # The cached C call is in use (not only the public inplace_predict), from any thread.
        cells = getattr(fn, "__closure__", None) or ()
        assert isinstance(fn, _DenseInplace) or any(isinstance(c.cell_contents, _DenseInplace) for c in cells), est
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(fn, [test[i:i + 25] for i in range(0, 100, 25)] * 4))
        assert all(np.array_equal(o, est.predict(test[i % 4 * 25:i % 4 * 25 + 25])) for i, o in enumerate(outs)), est
    # Shapes and boosters whose predict is more than one inplace_predict keep XGBoost's own.
    for est, y in [(xgb.XGBClassifier(n_estimators=5, objective="multi:softmax"), y3),
                   (xgb.XGBClassifier(n_estimators=5, booster="gblinear"), y2)]:
        est.fit(X, y)
        assert _xgboost_predict(est) is None, est


def _loaded(kind: str, where: Path) -> Any:
    from modelpilot_serve.model import load_model, validate
    from modelpilot_serve.settings import ServeSettings

    model = load_model(ServeSettings.load({"model_uri": str(_model(kind, where).path)}, {}))
    assert validate(model).passed and model.fast_path, kind
    return model


def _full_decode(model: Any, doc: Any, max_columns: int | None = None) -> tuple[Any, Any]:
    from modelpilot_serve import oip

    req = oip.decode_document(doc, max_columns)
    return req.id, oip.to_model_input(model, req)


def _column_tensors(model: Any, rows: list[list[Any]], datatype: str = "FP64", **extra: Any) -> dict[str, Any]:
    names = list(model.signature.input_names)
    return {"inputs": [{"name": n, "shape": [len(rows)], "datatype": datatype, "data": [r[i] for r in rows]}
                       for i, n in enumerate(names)], **extra}


@pytest.mark.parametrize("kind", ["sklearn_frame", "xgboost"])
def test_the_v2_fast_lane_builds_what_the_full_decoder_builds(kind: str, zoo_dir: Path) -> None:
    """The lane for numeric column tensors gives the exact input (and id) of the full v2 decoder, or None."""
    from modelpilot_serve import oip
    from modelpilot_serve.errors import ServeError
    from modelpilot_serve.model import MatrixInput

    model = _loaded(kind, zoo_dir)
    width = len(model.fast_columns)
    one = [[0.5 + i for i in range(width)]]
    two = [[1.5 * i for i in range(width)], [float(-i) for i in range(width)]]
    ints = [[i for i in range(width)]]
    taken = [
        _column_tensors(model, one),
        _column_tensors(model, two, id="req-7"),
        _column_tensors(model, ints),
        _column_tensors(model, ints, "INT64"),
        _column_tensors(model, [[2**53 + 1] * width]),  # a big integer rounds the same way either way
        {"inputs": list(reversed(_column_tensors(model, two)["inputs"]))},  # any order of inputs
        {"inputs": [{**t, "shape": [2, 1]} for t in _column_tensors(model, two)["inputs"]]},
    ]
    for doc in taken:
        fast = oip.fast_input(model, doc)
        assert fast is not None, doc
        want_id, want = _full_decode(model, doc)
        assert isinstance(want, MatrixInput) and fast[0] == want_id
        assert isinstance(fast[1], MatrixInput) and fast[1].matrix.dtype == want.matrix.dtype == np.float64
        assert np.array_equal(fast[1].matrix, want.matrix), doc

    base = _column_tensors(model, one)
    first = base["inputs"][0]
    left = [
        _column_tensors(model, one, "FP32"),  # narrower floats round first: the full decoder does that
        _column_tensors(model, [[True] * width], "BOOL"),
        {"inputs": [{**first, "data": [True]}, *base["inputs"][1:]]},
        {"inputs": [{**first, "data": ["1.0"]}, *base["inputs"][1:]]},
        {"inputs": [{**first, "data": [None]}, *base["inputs"][1:]]},
        {"inputs": [{**first, "data": [[1.0]]}, *base["inputs"][1:]]},
        {"inputs": [{**first, "data": 1.0}, *base["inputs"][1:]]},
        {"inputs": [{**first, "shape": [True]}, *base["inputs"][1:]]},
        {"inputs": [{**first, "shape": [2]}, *base["inputs"][1:]]},
        {"inputs": [{**first, "shape": [1, 2]}, *base["inputs"][1:]]},
        {"inputs": [{**first, "name": "nope"}, *base["inputs"][1:]]},
        {"inputs": [first, first, *base["inputs"][2:]]},
        {"inputs": base["inputs"][1:]},
        {"inputs": [*base["inputs"], {**first, "name": "extra"}]},
        {**base, "parameters": {"x": 1}},
        {**base, "id": 7},
        {"inputs": []},
        _column_tensors(model, [[2**63] * width], "INT64"),
        _column_tensors(model, []),  # no rows
    ]
    for doc in left:
        assert oip.fast_input(model, doc) is None, doc
        try:
            _full_decode(model, doc)  # whatever the full decoder makes of it, it is its answer
        except ServeError:
            pass
    # The input bound applies before anything else.
    assert oip.fast_input(model, base, max_columns=width - 1) is None
    with pytest.raises(ServeError, match="MODELPILOT_SERVE_MAX_COLUMNS"):
        _full_decode(model, base, max_columns=width - 1)


def test_the_v2_fast_lane_takes_one_matrix_for_a_tensor_model(zoo_dir: Path) -> None:
    from modelpilot_serve import oip
    from modelpilot_serve.model import MatrixInput

    model = _loaded("sklearn_numpy", zoo_dir)
    width = len(model.fast_columns)
    doc = {"inputs": [{"name": "input-0", "shape": [2, width], "datatype": "FP64",
                       "data": [float(i) for i in range(2 * width)]}]}
    fast = oip.fast_input(model, doc)
    _, want = _full_decode(model, doc)
    assert fast is not None and isinstance(want, MatrixInput)
    assert np.array_equal(fast[1].matrix, want.matrix) and fast[1].matrix.flags.c_contiguous
    for odd in ({**doc["inputs"][0], "datatype": "FP32"}, {**doc["inputs"][0], "shape": [1, 2 * width]},
                {**doc["inputs"][0], "shape": [2, width, 1]}, {**doc["inputs"][0], "data": [[0.0] * width] * 2}):
        assert oip.fast_input(model, {"inputs": [odd]}) is None, odd
