"""Micro-batching (runner.BatchingRunner) and the batching/cache/feedback settings.

The runner is driven directly on an asyncio loop with a counting model, so
what is asserted (which requests share a predict call) is deterministic; one
test then checks the real server end to end under concurrent load.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import numpy as np
import pytest

from modelpilot_serve.metrics import ServeMetrics
from modelpilot_serve.model import MatrixInput, PyfuncInput, ServedModel
from modelpilot_serve.runner import BatchingRunner
from modelpilot_serve.settings import ServeSettings, SettingsError

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


class CountingModel:
    """A fast-path model whose estimator doubles the first column and records each call's rows."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def fn(self, matrix: np.ndarray) -> np.ndarray:
        if np.isnan(matrix).any():
            raise ValueError("Input X contains NaN")
        self.calls.append(matrix.shape[0])
        return matrix[:, 0] * 2

    def served(self) -> ServedModel:
        return ServedModel(uri="mem", local_path="", flavor="sklearn", pyfunc=None, signature=None,
                           serving_example=None, input_example=None, fast_fn=self.fn)


def _rows(*values: float) -> MatrixInput:
    return MatrixInput(np.asarray([[v, 0.0] for v in values]))


def _metrics() -> ServeMetrics:
    return ServeMetrics("m", "1", "v")


def _batch_sizes(metrics: ServeMetrics) -> tuple[float, float]:
    count = metrics.registry.get_sample_value("modelpilot_batch_size_count", {"model": "m", "version": "1", "variant": "v"})
    total = metrics.registry.get_sample_value("modelpilot_batch_size_sum", {"model": "m", "version": "1", "variant": "v"})
    return count or 0.0, total or 0.0


async def _request(runner: BatchingRunner, model: ServedModel, inp: Any) -> Any:
    """What the app does around every inference request."""
    runner.enter()
    try:
        return await runner.run(model, inp)
    finally:
        runner.leave()


def test_concurrent_requests_share_one_predict_and_get_their_own_rows() -> None:
    counting = CountingModel()
    model = counting.served()
    metrics = _metrics()

    async def scenario() -> list[Any]:
        runner = BatchingRunner(metrics, max_batch_size=64, max_latency_s=30.0)
        return await asyncio.gather(*(_request(runner, model, _rows(i, i + 0.5)) for i in range(5)))

    results = asyncio.run(scenario())
    assert counting.calls == [10]
    for i, out in enumerate(results):
        assert out.tolist() == [2 * i, 2 * i + 1]
    assert _batch_sizes(metrics) == (1, 10)


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    counting = CountingModel()
    model = counting.served()

    async def scenario() -> Any:
        runner = BatchingRunner(_metrics(), max_batch_size=64, max_latency_s=600.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        out = await asyncio.wait_for(_request(runner, model, _rows(3)), timeout=5)
        return out, loop.time() - start

    out, elapsed = asyncio.run(scenario())
    assert out.tolist() == [6] and counting.calls == [1]
    assert elapsed < 1.0  # a 600 s window was not waited for


def test_waits_only_for_requests_known_to_be_on_their_way() -> None:
    counting = CountingModel()
    model = counting.served()

    async def scenario() -> None:
        runner = BatchingRunner(_metrics(), max_batch_size=64, max_latency_s=600.0)
        # A second request was admitted and is still "reading its body".
        runner.enter()
        first = asyncio.ensure_future(_request(runner, model, _rows(1)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not first.done() and counting.calls == []  # held for the one on its way
        second = asyncio.ensure_future(runner.run(model, _rows(2)))
        assert (await first).tolist() == [2]
        assert (await second).tolist() == [4]
        runner.leave()
        assert counting.calls == [2]  # both in one call, without waiting 600 s

        # A request on its way that leaves without predicting (an error, a cache
        # hit) releases the queue too.
        runner.enter()
        third = asyncio.ensure_future(_request(runner, model, _rows(3)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not third.done()
        runner.leave()
        assert (await asyncio.wait_for(third, 5)).tolist() == [6]

    asyncio.run(scenario())
    assert counting.calls == [2, 1]


def test_window_bounds_the_wait() -> None:
    counting = CountingModel()
    model = counting.served()

    async def scenario() -> Any:
        runner = BatchingRunner(_metrics(), max_batch_size=64, max_latency_s=0.001)
        runner.enter()  # admitted, never arrives
        return await asyncio.wait_for(_request(runner, model, _rows(5)), timeout=5)

    assert asyncio.run(scenario()).tolist() == [10]


def test_batches_never_exceed_max_batch_size() -> None:
    counting = CountingModel()
    model = counting.served()
    metrics = _metrics()

    async def scenario() -> list[Any]:
        runner = BatchingRunner(metrics, max_batch_size=4, max_latency_s=0.005)
        inputs = [_rows(i) for i in range(9)] + [_rows(10, 11, 12), _rows(*range(20, 26))]
        return await asyncio.gather(*(_request(runner, model, inp) for inp in inputs))

    results = asyncio.run(scenario())
    assert all(c <= 4 for c in counting.calls[:-1])
    assert counting.calls[-1] == 6  # a request larger than the batch goes alone, unsplit
    assert sum(counting.calls) == 18
    assert [r.tolist() for r in results[:9]] == [[2 * i] for i in range(9)]
    assert results[9].tolist() == [20, 22, 24]
    assert results[10].tolist() == [40, 42, 44, 46, 48, 50]
    assert _batch_sizes(metrics)[1] == 18


def test_one_bad_request_does_not_fail_its_batch() -> None:
    counting = CountingModel()
    model = counting.served()

    async def scenario() -> list[Any]:
        runner = BatchingRunner(_metrics(), max_batch_size=64, max_latency_s=0.005)
        inputs = [_rows(1), _rows(float("nan")), _rows(3)]
        return await asyncio.gather(*(_request(runner, model, i) for i in inputs), return_exceptions=True)

    good1, bad, good3 = asyncio.run(scenario())
    assert good1.tolist() == [2] and good3.tolist() == [6]
    assert "NaN" in str(bad) and type(bad).__name__ == "Unprocessable"
    assert counting.calls == [1, 1]  # the batched call failed; each request was retried alone


def test_pyfunc_inputs_bypass_the_batcher() -> None:
    class Pyfunc:
        def predict(self, data: Any) -> Any:
            return np.asarray(data)[:, 0]

    model = ServedModel(uri="mem", local_path="", flavor="python_function", pyfunc=Pyfunc(), signature=None,
                        serving_example=None, input_example=None)

    async def scenario() -> Any:
        runner = BatchingRunner(_metrics(), max_batch_size=64, max_latency_s=0.005)
        return await _request(runner, model, PyfuncInput(np.asarray([[7.0, 1.0]])))

    assert asyncio.run(scenario()).tolist() == [7.0]


@pytest.mark.parametrize("batching", ["true", "false"])
def test_server_answers_concurrent_requests_correctly(
    serve_iris_model: Any, serve_launch: Any, serve_helpers: Any, batching: str
) -> None:
    settings = ServeSettings.load(
        {"model_uri": str(serve_iris_model.path), "host": "127.0.0.1", "model_name": "iris"},
        {"MODELPILOT_SERVE_BATCHING": batching, "MODELPILOT_SERVE_MAX_BATCH_SIZE": "8"},
    )
    srv = serve_launch(settings)
    X = serve_iris_model.X
    expected = serve_iris_model.estimator.predict(X).tolist()

    import httpx

    client = httpx.Client(base_url=srv.url, timeout=30, limits=httpx.Limits(max_connections=16))

    def one(i: int) -> Any:
        if i % 2:
            resp = client.post("/v2/models/iris/infer", json=serve_helpers.v2_body(X.iloc[[i]].to_numpy()))
            assert resp.status_code == 200, resp.text
            return resp.json()["outputs"][0]["data"][0]
        resp = client.post("/invocations", json={"dataframe_split": {"columns": list(X.columns), "data": X.iloc[[i]].to_numpy().tolist()}})
        assert resp.status_code == 200, resp.text
        return resp.json()["predictions"][0]

    with client, concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(len(X))))
    assert got == expected
    count = srv.metric("modelpilot_batch_size_count")
    rows = srv.metric("modelpilot_batch_size_sum")
    if batching == "true":
        assert rows == len(X) and 1 <= count <= len(X)
        assert srv.metric("modelpilot_batch_size_bucket", le="8.0") == count  # never above the maximum
    else:
        assert count == 0


# --------------------------------------------------------------------------- settings


def test_batching_cache_feedback_settings_from_env() -> None:
    defaults = ServeSettings.load({"model_uri": "/m"}, {})
    assert (defaults.batching, defaults.max_batch_size, defaults.max_batch_latency_ms) == (True, 64, 5)
    assert (defaults.cache, defaults.cache_max_entries, defaults.cache_ttl_seconds, defaults.cache_redis_url) == (
        False, 10000, 300, None)
    assert defaults.feedback_max_pending == 100000
    env = {
        "MODEL_URI": "/m", "MODELPILOT_SERVE_BATCHING": "false", "MODELPILOT_SERVE_MAX_BATCH_SIZE": "128",
        "MODELPILOT_SERVE_MAX_BATCH_LATENCY_MS": "0", "MODELPILOT_SERVE_CACHE": "TRUE",
        "MODELPILOT_SERVE_CACHE_MAX_ENTRIES": "7", "MODELPILOT_SERVE_CACHE_TTL_SECONDS": "9",
        "MODELPILOT_SERVE_CACHE_REDIS_URL": "redis://cache:6379/0", "MODELPILOT_SERVE_FEEDBACK_MAX_PENDING": "5",
        "MODELPILOT_SERVE_FEEDBACK_TTL_SECONDS": "60", "MODELPILOT_SERVE_PREDICTION_BUCKETS": "0,10,100",
    }
    s = ServeSettings.load({}, env)
    assert (s.batching, s.max_batch_size, s.max_batch_latency_ms) == (False, 128, 0)
    assert (s.cache, s.cache_max_entries, s.cache_ttl_seconds, s.cache_redis_url) == (True, 7, 9, "redis://cache:6379/0")
    assert (s.feedback_max_pending, s.feedback_ttl_seconds, s.prediction_buckets) == (5, 60, (0.0, 10.0, 100.0))
    # Kubernetes renders an unset optional value as "": the default applies.
    assert ServeSettings.load({}, {"MODEL_URI": "/m", "MODELPILOT_SERVE_CACHE_REDIS_URL": ""}).cache_redis_url is None
    # Flags win over env.
    assert ServeSettings.load({"batching": True, "max_batch_size": 3}, env).max_batch_size == 3


def test_invalid_batching_cache_settings_are_all_reported() -> None:
    env = {
        "MODEL_URI": "/m", "MODELPILOT_SERVE_BATCHING": "maybe", "MODELPILOT_SERVE_MAX_BATCH_SIZE": "0",
        "MODELPILOT_SERVE_MAX_BATCH_LATENCY_MS": "1001", "MODELPILOT_SERVE_CACHE": "2",
        "MODELPILOT_SERVE_CACHE_MAX_ENTRIES": "0", "MODELPILOT_SERVE_CACHE_TTL_SECONDS": "x",
        "MODELPILOT_SERVE_CACHE_REDIS_URL": "http://cache", "MODELPILOT_SERVE_PREDICTION_BUCKETS": "3,1",
    }
    with pytest.raises(SettingsError) as err:
        ServeSettings.load({}, env)
    text = str(err.value)
    for fragment in (
        "MODELPILOT_SERVE_BATCHING='maybe': must be true or false",
        "MODELPILOT_SERVE_MAX_BATCH_SIZE=0: must be between 1 and 4096",
        "MODELPILOT_SERVE_MAX_BATCH_LATENCY_MS=1001: must be between 0 and 1000",
        "MODELPILOT_SERVE_CACHE='2': must be true or false",
        "MODELPILOT_SERVE_CACHE_MAX_ENTRIES=0: must be at least 1",
        "MODELPILOT_SERVE_CACHE_TTL_SECONDS='x': not an integer",
        "MODELPILOT_SERVE_CACHE_REDIS_URL='http://cache'",
        "MODELPILOT_SERVE_PREDICTION_BUCKETS='3,1'",
    ):
        assert fragment in text, fragment


def test_cli_flags_for_batching_and_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelpilot_serve.cli import build_parser

    ns = build_parser().parse_args(["--model-uri", "/m", "--no-batching", "--cache", "--cache-ttl-seconds", "5"])
    s = ServeSettings.load(vars(ns), {"MODELPILOT_SERVE_BATCHING": "true"})
    assert (s.batching, s.cache, s.cache_ttl_seconds) == (False, True, 5)


# --------------------------------------------------------------------------- shutdown


@pytest.mark.filterwarnings("ignore::UserWarning")  # MLflow nags about the test model's type hints
def test_sigterm_finishes_in_flight_requests(tmp_path: Any, serve_helpers: Any) -> None:
    """SIGTERM while a slow prediction runs: that request still gets its answer, then exit 0."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading

    import httpx
    import mlflow.pyfunc
    import pandas as pd

    def make_model() -> Any:
        class Slow(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
            def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # MLflow reads hints
                import pathlib
                import time

                pathlib.Path(model_input["flag"].iloc[0]).touch()  # "prediction started"
                time.sleep(1.5)
                return model_input["x"] * 2

        return Slow()

    flag = tmp_path / "started"
    mlflow.pyfunc.save_model(str(tmp_path / "slow"), python_model=make_model(), pip_requirements=["mlflow"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpilot_serve", "--model-uri", str(tmp_path / "slow"), "--host", "127.0.0.1",
         "--port", str(port), "--model-name", "slow"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        serve_helpers.poll(ready, deadline_s=60)
        result: dict[str, Any] = {}
        body = {"dataframe_records": pd.DataFrame({"x": [21.0], "flag": [str(flag)]}).to_dict(orient="records")}
        worker = threading.Thread(target=lambda: result.update(r=httpx.post(url + "/invocations", json=body, timeout=30)))
        worker.start()
        serve_helpers.poll(flag.exists, deadline_s=30)
        proc.send_signal(signal.SIGTERM)
        worker.join(30)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].json()["predictions"] == [42.0]
    assert proc.returncode == 0, stderr
