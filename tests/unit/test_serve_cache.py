"""Inference cache: LRU + TTL in process (fake clock, no sleeps) and shared through a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from modelpilot_serve.app import build_runner
from modelpilot_serve.cache import LocalCache, cache_key, decode_value, encode_value
from modelpilot_serve.metrics import ServeMetrics
from modelpilot_serve.model import MatrixInput, PyfuncInput

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_cache_is_lru_and_expires_by_ttl() -> None:
    clock = FakeClock()
    cache = LocalCache(lambda m: "id", max_entries=2, ttl_seconds=10, clock=clock)
    cache.put_nowait("a", 1)
    cache.put_nowait("b", 2)
    assert cache.get_now("a") is not None  # a is now the most recently used
    cache.put_nowait("c", 3)  # evicts b, the least recently used
    assert cache.get_now("b") is None
    assert [cache.get_now(k).value for k in ("a", "c")] == [1, 3]  # type: ignore[union-attr]
    clock.now += 9.999
    assert cache.get_now("a") is not None
    clock.now += 0.001
    assert cache.get_now("a") is None and len(cache) == 1  # expired entries are dropped on read
    assert asyncio.run(cache.get("c")) is None


def test_cache_keys_are_canonical_and_per_model_version() -> None:
    import pandas as pd

    ints = MatrixInput(np.asarray([[1, 2]], dtype=np.int64).astype(np.float64))
    floats = MatrixInput(np.asarray([[1.0, 2.0]]))
    other = MatrixInput(np.asarray([[1.0, 2.5]]))
    assert cache_key("m\0001", ints) == cache_key("m\0001", floats)
    assert cache_key("m\0001", floats) != cache_key("m\0002", floats)
    assert cache_key("m\0001", floats) != cache_key("m\0001", other)
    # A [1, 2] matrix and a [2, 1] matrix with the same bytes are different inputs.
    assert cache_key("m", MatrixInput(np.zeros((1, 2)))) != cache_key("m", MatrixInput(np.zeros((2, 1))))
    frame = pd.DataFrame({"a": [1.0], "s": ["x"]})
    assert cache_key("m", PyfuncInput(frame)) == cache_key("m", PyfuncInput(frame.copy()))
    assert cache_key("m", PyfuncInput(frame)) != cache_key("m", PyfuncInput(frame, {"k": 1}))
    assert cache_key("m", PyfuncInput(object())) is None  # no canonical form: not cached


def test_values_round_trip_without_pickle() -> None:
    for value in (np.asarray([0, 2, 1]), np.asarray([1.5, -2.0]), np.asarray(["setosa", "virginica"])):
        raw = encode_value(value)
        assert raw is not None
        np.testing.assert_array_equal(decode_value(raw), value)
    assert encode_value(np.asarray([{"a": 1}], dtype=object)) is None
    assert encode_value({"a": 1}) is None


def _cached_server(serve_launch: Any, serve_helpers: Any, path: Any, cache: Any = None, **kw: Any) -> Any:
    settings = serve_helpers.settings(path, cache=True, **kw)
    metrics = ServeMetrics(settings.model_name, settings.model_version, settings.variant)
    return serve_launch(settings, metrics=metrics, runner=build_runner(settings, metrics, cache))


def test_server_answers_repeats_from_the_cache_until_they_expire(
    serve_iris_model: Any, serve_launch: Any, serve_helpers: Any
) -> None:
    clock = FakeClock()
    cache = LocalCache(lambda m: f"iris\0003\0{m.model_uuid}", max_entries=100, ttl_seconds=300, clock=clock)
    srv = _cached_server(serve_launch, serve_helpers, serve_iris_model.path, cache)
    X = serve_iris_model.X
    row = X.iloc[[0]]
    expected = serve_iris_model.estimator.predict(row).tolist()
    v2 = serve_helpers.v2_body(row.to_numpy())
    split = {"dataframe_split": {"columns": list(X.columns), "data": row.to_numpy().tolist()}}
    ints = {"dataframe_records": [{c: float(v) for c, v in row.iloc[0].items()}]}

    def hits_misses() -> tuple[float, float]:
        return srv.metric("modelpilot_cache_requests_total", result="hit"), srv.metric(
            "modelpilot_cache_requests_total", result="miss")

    assert srv.post("/v2/models/iris/infer", json=v2).json()["outputs"][0]["data"] == expected
    assert hits_misses() == (0, 1)
    # The same input through the other protocol and another JSON format is the same entry.
    assert srv.post("/invocations", json=split).json()["predictions"] == expected
    assert srv.post("/invocations", json=ints).json()["predictions"] == expected
    assert hits_misses() == (2, 1)
    # A cache hit still counts in the prediction distribution and gets a prediction id.
    resp = srv.post("/invocations", json=split)
    assert resp.headers["x-modelpilot-prediction-id"]
    assert srv.metric("modelpilot_predictions_total", **{"class": str(expected[0])}) == 4
    clock.now += 301
    assert srv.post("/v2/models/iris/infer", json=v2).status_code == 200
    assert hits_misses() == (3, 2)
    # A different input is a miss.
    assert srv.post("/v2/models/iris/infer", json=serve_helpers.v2_body(X.iloc[[100]].to_numpy())).status_code == 200
    assert hits_misses() == (3, 3)


def test_cache_off_by_default_counts_nothing(serve_iris_model: Any, serve_launch: Any, serve_helpers: Any) -> None:
    srv = serve_launch(serve_helpers.settings(serve_iris_model.path))
    body = serve_helpers.v2_body(serve_iris_model.X.iloc[[0]].to_numpy())
    for _ in range(2):
        assert srv.post("/v2/models/iris/infer", json=body).status_code == 200
    assert srv.metric("modelpilot_cache_requests_total") == 0


def test_redis_cache_is_shared_between_replicas(
    serve_iris_model: Any, serve_launch: Any, serve_helpers: Any, serve_redis_url: str
) -> None:
    import redis

    client = redis.Redis.from_url(serve_redis_url)
    client.flushall()
    a = _cached_server(serve_launch, serve_helpers, serve_iris_model.path, cache_redis_url=serve_redis_url,
                       cache_ttl_seconds=120)
    b = _cached_server(serve_launch, serve_helpers, serve_iris_model.path, cache_redis_url=serve_redis_url,
                       cache_ttl_seconds=120)
    X = serve_iris_model.X
    rows = X.iloc[[0, 60, 120]]
    expected = serve_iris_model.estimator.predict(rows).tolist()
    body = serve_helpers.v2_body(rows.to_numpy())
    assert a.post("/v2/models/iris/infer", json=body).json()["outputs"][0]["data"] == expected
    assert a.metric("modelpilot_cache_requests_total", result="miss") == 1
    keys = serve_helpers.poll(lambda: client.keys("modelpilot:cache:*"), deadline_s=10)  # written asynchronously
    assert len(keys) == 1
    assert 0 < client.pttl(keys[0]) <= 120_000  # Redis expires the entry (the TTL is Redis's job)
    # Replica b never saw this input: it is answered from Redis.
    resp = b.post("/invocations", json={"dataframe_split": {"columns": list(X.columns), "data": rows.to_numpy().tolist()}})
    assert resp.json()["predictions"] == expected
    assert b.metric("modelpilot_cache_requests_total", result="hit") == 1
    assert b.metric("modelpilot_cache_requests_total", result="miss") == 0
    # A corrupt entry is a miss (and an error), never a failed request.
    client.set(keys[0], b"not an npy file")
    assert b.post("/v2/models/iris/infer", json=body).json()["outputs"][0]["data"] == expected
    assert b.metric("modelpilot_cache_errors_total") == 1
    client.close()


def test_unreachable_redis_serves_uncached(
    serve_iris_model: Any, serve_launch: Any, serve_helpers: Any, tmp_path: Any
) -> None:
    srv = _cached_server(serve_launch, serve_helpers, serve_iris_model.path,
                         cache_redis_url=f"unix://{tmp_path}/no-such.sock")
    body = serve_helpers.v2_body(serve_iris_model.X.iloc[[0]].to_numpy())
    for _ in range(2):
        resp = srv.post("/v2/models/iris/infer", json=body)
        assert resp.status_code == 200, resp.text
    assert srv.metric("modelpilot_cache_requests_total", result="miss") == 2
    assert srv.metric("modelpilot_cache_errors_total") >= 2
