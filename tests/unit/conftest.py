"""Fixtures of the serving-package unit tests (all prefixed `serve_`).

Real models (saved with MLflow into temporary directories), real uvicorn
servers on free loopback ports in background threads, a real `redis-server`
— no mocks of MLflow, HTTP or Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest


def serve_poll(fn: Callable[[], Any], *, deadline_s: float = 60.0, interval: float = 0.02) -> Any:
    """Call fn until it returns something truthy; fail after the deadline (no fixed sleeps)."""
    end = time.monotonic() + deadline_s
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline_s}s")
        time.sleep(interval)


@dataclass
class ServeModelDir:
    path: Path
    estimator: Any
    X: Any  # pandas.DataFrame
    y: Any


@dataclass
class ServeRunning:
    url: str
    server: Any
    thread: threading.Thread
    app: Any
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=10, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.get("/metrics").text
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def _save(estimator: Any, X: Any, y: Any, path: Path) -> ServeModelDir:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    estimator.fit(X, y)
    mlflow.sklearn.save_model(
        estimator, str(path), input_example=X.head(3), signature=infer_signature(X, estimator.predict(X)),
        pip_requirements=["scikit-learn"],  # inferring them spawns a process and costs seconds
    )
    return ServeModelDir(path, estimator, X, y)


@pytest.fixture(scope="session")
def serve_iris_model(tmp_path_factory: pytest.TempPathFactory) -> ServeModelDir:
    """A logistic regression on iris (classes 0, 1, 2), saved as an MLflow model."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True, as_frame=True)
    return _save(LogisticRegression(max_iter=500), X, y, tmp_path_factory.mktemp("serve-iris") / "model")


@pytest.fixture(scope="session")
def serve_regressor_model(tmp_path_factory: pytest.TempPathFactory) -> ServeModelDir:
    """A linear regression on the diabetes data set, saved as an MLflow model."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    X, y = load_diabetes(return_X_y=True, as_frame=True)
    return _save(LinearRegression(), X, y, tmp_path_factory.mktemp("serve-diabetes") / "model")


def serve_settings(path: Path, **kw: Any) -> Any:
    from modelpilot_serve.settings import ServeSettings

    base: dict[str, Any] = dict(
        model_uri=str(path), model_name="iris", model_version="3", variant="blue",
        host="127.0.0.1", port=8080, max_request_bytes=256 * 1024,
    )
    base.update(kw)
    return ServeSettings(**base)


@pytest.fixture
def serve_launch() -> Iterator[Callable[..., ServeRunning]]:
    """Factory: start a real server for settings (+ create_app kwargs), wait until it is not loading.

    Every server started through it is stopped after the test.
    """
    from modelpilot_serve.app import build_server, create_app

    started: list[ServeRunning] = []

    def launch(settings: Any, *, wait_ready: bool = True, **app_kw: Any) -> ServeRunning:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        app = create_app(settings, **app_kw)
        server = build_server(settings, app)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        serve_poll(lambda: server.started, deadline_s=15)
        running = ServeRunning(f"http://127.0.0.1:{port}", server, thread, app)
        started.append(running)
        if wait_ready:
            serve_poll(lambda: running.get("/v2/health/ready").json()["state"] != "loading")
        return running

    yield launch
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def serve_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a unix socket (no TCP port to collide on), stopped afterwards."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed; scripts/bootstrap.sh installs it (apt: redis-server)")
    home = tmp_path_factory.mktemp("redis")
    sock = home / "redis.sock"
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--save", "",
         "--appendonly", "no", "--dir", str(home)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def up() -> bool:
            assert proc.poll() is None, "redis-server exited"
            return sock.exists()

        serve_poll(up, deadline_s=15)
        import redis

        client = redis.Redis(unix_socket_path=str(sock))
        serve_poll(lambda: client.ping(), deadline_s=15)
        client.close()
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_v2_body(rows: Any, *, req_id: str | None = None, datatype: str = "FP64") -> dict[str, Any]:
    import numpy as np

    values = np.asarray(rows, dtype=float)
    body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": list(values.shape), "datatype": datatype,
                                        "data": values.reshape(-1).tolist()}]}
    if req_id is not None:
        body["id"] = req_id
    return body


@pytest.fixture(scope="session")
def serve_helpers() -> Any:
    """The plain helper functions above, for test modules (conftest is not importable by name)."""

    class Helpers:
        poll = staticmethod(serve_poll)
        settings = staticmethod(serve_settings)
        v2_body = staticmethod(serve_v2_body)

    return Helpers
