"""Prediction ids, ground-truth feedback and the prediction-distribution metrics."""

from __future__ import annotations

from typing import Any

import pytest

from modelpilot_serve.feedback import FeedbackItem, FeedbackStore, parse
from modelpilot_serve.metrics import ServeMetrics

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _labels() -> dict[str, str]:
    return {"model": "m", "version": "1", "variant": "v"}


def test_store_is_bounded_expires_and_scores_once() -> None:
    import numpy as np

    from modelpilot_serve.errors import NotFound, Unprocessable

    clock = FakeClock()
    metrics = ServeMetrics("m", "1", "v")
    store = FeedbackStore(metrics, max_pending=2, ttl_seconds=60, clock=clock)
    store.remember("a", np.asarray([1]))
    store.remember("b", np.asarray([0, 1]))
    store.remember("c", np.asarray([2]))  # evicts a (least recent)
    assert len(store) == 2
    with pytest.raises(NotFound, match="'a'"):
        store.submit([FeedbackItem("a", [1])], (0, 1, 2))
    with pytest.raises(Unprocessable, match="2 row"):
        store.submit([FeedbackItem("b", [1])], (0, 1, 2))
    with pytest.raises(Unprocessable, match="not one of the model's classes"):
        store.submit([FeedbackItem("b", [1, 7])], (0, 1, 2))
    # All or nothing: c is valid but b's truth is not, so c is still pending.
    with pytest.raises(Unprocessable):
        store.submit([FeedbackItem("c", [2]), FeedbackItem("b", ["x", 1])], (0, 1, 2))
    assert store.submit([FeedbackItem("b", [0, 0]), FeedbackItem("c", [2])], (0, 1, 2)) == {
        "accepted": 2, "rows": 3, "correct": 2, "incorrect": 1}
    with pytest.raises(NotFound):  # scored once
        store.submit([FeedbackItem("c", [2])], (0, 1, 2))
    get = metrics.registry.get_sample_value
    assert get("modelpilot_feedback_total", {**_labels(), "outcome": "correct"}) == 2
    assert get("modelpilot_feedback_total", {**_labels(), "outcome": "incorrect"}) == 1
    assert get("modelpilot_feedback_accuracy", _labels()) == pytest.approx(2 / 3)
    store.remember("d", np.asarray([1.5]))
    clock.now += 60
    with pytest.raises(NotFound, match="expired"):
        store.submit([FeedbackItem("d", [1.0])], None)
    assert get("modelpilot_feedback_pending_ids", _labels()) == 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "malformed JSON"),
        (b"[]", "empty"),
        (b'"x"', "must be an object"),
        (b'{"id": "a"}', "'truth' is missing"),
        (b'{"id": 3, "truth": 1}', "'id' must be"),
        (b'{"id": "a", "truth": 1, "extra": 2}', "unknown field"),
        (b'{"id": "a", "truth": []}', "empty list"),
        (b'{"id": "a", "truth": [null]}', "numbers, strings or booleans"),
        (b'[{"id": "a", "truth": 1}, {"id": "a", "truth": 2}]', "once per feedback request"),
    ],
)
def test_malformed_feedback_is_422(body: bytes, fragment: str) -> None:
    from modelpilot_serve.errors import Unprocessable

    with pytest.raises(Unprocessable) as err:
        parse(body)
    assert fragment in str(err.value)


def test_classifier_feedback_end_to_end(serve_iris_model: Any, serve_launch: Any, serve_helpers: Any) -> None:
    srv = serve_launch(serve_helpers.settings(serve_iris_model.path))
    X, y = serve_iris_model.X, serve_iris_model.y
    rows = X.iloc[[0, 60, 120, 70]]
    predicted = serve_iris_model.estimator.predict(rows).tolist()
    truth = y.iloc[[0, 60, 120, 70]].tolist()

    # v2: the request's id is the prediction id.
    resp = srv.post("/v2/models/iris/infer", json=serve_helpers.v2_body(rows.to_numpy(), req_id="order-17"))
    assert resp.json()["id"] == "order-17"
    # v2 without an id: one is generated.
    generated = srv.post("/v2/models/iris/infer", json=serve_helpers.v2_body(rows.iloc[[0]].to_numpy())).json()["id"]
    assert generated and generated != "order-17"
    # /invocations: the id is a response header (the client's own if it sent one).
    inv = srv.post("/invocations", json={"dataframe_split": {"columns": list(X.columns), "data": rows.iloc[[1]].to_numpy().tolist()}})
    inv_id = inv.headers["x-modelpilot-prediction-id"]
    assert inv_id and list(inv.json()) == ["predictions"]
    own = srv.post("/invocations", headers={"x-modelpilot-prediction-id": "client-1"},
                   json={"dataframe_records": rows.iloc[[2]].to_dict(orient="records")})
    assert own.headers["x-modelpilot-prediction-id"] == "client-1"

    resp = srv.post("/v2/models/iris/feedback", json={"id": "order-17", "truth": truth})
    assert resp.status_code == 200, resp.text
    correct = sum(p == t for p, t in zip(predicted, truth))
    assert resp.json() == {"accepted": 1, "rows": 4, "correct": correct, "incorrect": 4 - correct}
    # A list, through the model-less path: scalar truths for one-row predictions.
    resp = srv.post("/feedback", json=[{"id": generated, "truth": truth[0]}, {"id": inv_id, "truth": [truth[1]]},
                                        {"id": "client-1", "truth": truth[2]}])
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 3

    assert srv.metric("modelpilot_feedback_total", outcome="correct") == correct + 3
    assert srv.metric("modelpilot_feedback_total", outcome="incorrect") == 4 - correct
    assert srv.metric("modelpilot_feedback_accuracy") == pytest.approx((correct + 3) / 7)

    cases = [
        (srv.post("/v2/models/iris/feedback", json={"id": "order-17", "truth": truth}), 404, "order-17"),  # used
        (srv.post("/feedback", json={"id": "never-issued", "truth": 1}), 404, "never-issued"),
        (srv.post("/v2/models/other/feedback", json={"id": "x", "truth": 1}), 404, "other"),
        (srv.post("/feedback", content=b"{oops", headers={"content-type": "application/json"}), 422, "malformed JSON"),
        (srv.post("/feedback", json={"truth": 1}), 422, "'id'"),
    ]
    resp = srv.post("/v2/models/iris/infer", json=serve_helpers.v2_body(rows.iloc[[0]].to_numpy(), req_id="p2"))
    cases.append((srv.post("/feedback", json={"id": "p2", "truth": "setosa"}), 422, "classes [0, 1, 2]"))
    cases.append((srv.post("/feedback", json={"id": "p2", "truth": [0, 1]}), 422, "1 row"))
    for resp, status, fragment in cases:
        assert resp.status_code == status, resp.text
        assert fragment in resp.json()["error"], resp.json()
    # Feedback is not an inference request.
    assert srv.metric("modelpilot_requests_total", protocol="feedback") == 0


def test_regressor_feedback_and_prediction_histogram(
    serve_regressor_model: Any, serve_launch: Any, serve_helpers: Any
) -> None:
    srv = serve_launch(serve_helpers.settings(serve_regressor_model.path, model_name="diabetes"))
    X, y = serve_regressor_model.X, serve_regressor_model.y
    rows = X.iloc[:5]
    predicted = serve_regressor_model.estimator.predict(rows)
    resp = srv.post("/v2/models/diabetes/infer", json=serve_helpers.v2_body(rows.to_numpy(), req_id="r1"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == pytest.approx(predicted.tolist())

    assert srv.metric("modelpilot_prediction_value_count") == 5
    assert srv.metric("modelpilot_prediction_value_bucket", le="+Inf") == 5
    assert srv.metric("modelpilot_prediction_value_bucket", le="250.0") == int((predicted <= 250).sum())
    assert srv.metric("modelpilot_predictions_total") == 0  # no classes

    truth = y.iloc[:5].tolist()
    resp = srv.post("/v2/models/diabetes/feedback", json={"id": "r1", "truth": truth})
    assert resp.status_code == 200, resp.text
    mae = float(abs(predicted - y.iloc[:5].to_numpy()).mean())
    assert resp.json()["mean_absolute_error"] == pytest.approx(mae)
    assert srv.metric("modelpilot_feedback_absolute_error_count") == 5
    assert srv.metric("modelpilot_feedback_absolute_error_sum") == pytest.approx(mae * 5)
    srv.post("/v2/models/diabetes/infer", json=serve_helpers.v2_body(rows.iloc[[0]].to_numpy(), req_id="r2"))
    resp = srv.post("/feedback", json={"id": "r2", "truth": "high"})
    assert resp.status_code == 422 and "finite numbers" in resp.json()["error"]


def test_prediction_buckets_setting(serve_regressor_model: Any, serve_launch: Any, serve_helpers: Any) -> None:
    srv = serve_launch(serve_helpers.settings(serve_regressor_model.path, model_name="diabetes",
                                              prediction_buckets=(100.0, 200.0)))
    rows = serve_regressor_model.X.iloc[:20]
    predicted = serve_regressor_model.estimator.predict(rows)
    assert srv.post("/v2/models/diabetes/infer", json=serve_helpers.v2_body(rows.to_numpy())).status_code == 200
    assert srv.metric("modelpilot_prediction_value_bucket", le="100.0") == int((predicted <= 100).sum())
    assert srv.metric("modelpilot_prediction_value_bucket", le="200.0") == int((predicted <= 200).sum())
    # Non-negative buckets also expose the sum (Prometheus omits it when buckets go below 0).
    assert srv.metric("modelpilot_prediction_value_sum") == pytest.approx(float(predicted.sum()))
