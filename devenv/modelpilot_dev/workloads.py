"""Small helpers the demo and the tests share: a real model in MLflow, a serving Deployment, Service traffic.

Part of the local environment. The Deployment built here is the bare serving
contract (image, env, probes, scrape annotations); the operator's own builders
render the full production manifest from a ModelVersion.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

SERVING_IMAGE = "ghcr.io/modelpilot/modelpilot-serve:0.1.0"
#: One v2 request row (a large iris flower): the faulty demo model fails on it.
LARGE_FLOWER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [6.7, 3.0, 5.2, 2.3]}]}


def pinned(*distributions: str) -> list[str]:
    """``name==version`` of each distribution as installed here, for a model's explicit ``pip_requirements``.

    Without them MLflow infers a model's requirements from every package imported while it loads the model in
    this process's environment — in the dev venv that records psutil, pytest, rich and more, which the serving
    image lacks, so every serving pod warned about them. MLflow adds its own ``mlflow==`` line itself.
    """
    from importlib.metadata import version

    return [f"{d}=={version(d)}" for d in distributions]


def register_iris_model(tracking_uri: str, name: str = "iris") -> str:
    """Train a small scikit-learn classifier on iris, log it with an input example and register it.

    Returns the new registered version. Uses the dataset bundled with
    scikit-learn, so nothing is downloaded.
    """
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(tracking_uri)
    data = load_iris(as_frame=True)
    features = data.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    model = LogisticRegression(max_iter=500).fit(features, data.target)
    mlflow.set_experiment("modelpilot-demo")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=features.head(3),
            signature=infer_signature(features, model.predict(features)),
            registered_model_name=name,
            # skops loads the skops format; pandas and numpy are what the model is scored on.
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
            pip_requirements=pinned("scikit-learn", "skops", "pandas", "numpy"),
        )
    version = info.registered_model_version
    return str(version)


def register_faulty_model(tracking_uri: str, name: str = "iris", asset: str = "faulty_model.py") -> str:
    """Register a new version of ``name`` that passes the validation gate but fails on most real traffic.

    The model is logged from code (``assets/faulty_model.py``; ``crashing_model.py`` answers right but
    crashes its server process now and then), so serving it needs nothing of this package.
    """
    from pathlib import Path

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris

    mlflow.set_tracking_uri(tracking_uri)
    data = load_iris(as_frame=True)
    features = data.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    mlflow.set_experiment("modelpilot-demo")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).parent / "assets" / asset),
            input_example=features.head(3),
            signature=infer_signature(features, data.target),
            registered_model_name=name,
            pip_requirements=pinned("pandas"),  # the code imports mlflow and pandas only
        )
    return str(info.registered_model_version)


def serving_deployment(
    name: str,
    model_uri: str,
    tracking_uri: str,
    *,
    replicas: int = 1,
    model_name: str = "iris",
    model_version: str = "",
    variant: str = "default",
    image: str = SERVING_IMAGE,
) -> dict[str, Any]:
    """A Deployment of the serving image: the operator ⇄ pod contract in its simplest form."""
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "model-server",
              "modelpilot.io/model": model_name}
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 3}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics"},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "server",
                        "image": image,
                        "args": ["serve"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [
                            {"name": "MODEL_URI", "value": model_uri},
                            {"name": "MLFLOW_TRACKING_URI", "value": tracking_uri},
                            {"name": "MODEL_NAME", "value": model_name},
                            {"name": "MODEL_VERSION", "value": model_version},
                            {"name": "MODEL_VARIANT", "value": variant},
                        ],
                        "readinessProbe": probe,
                        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                                          "periodSeconds": 5, "failureThreshold": 3},
                    }],
                },
            },
        },
    }


def service_url(api_client: Any, namespace: str, service: str, port: int | str = 80) -> str:
    """``http://<ClusterIP>:<port>`` of a Service: where a client in the cluster sends its requests. The local
    environment's host routes its Service range to the real node, whose kube-proxy balances each connection
    over the Service's ready endpoints, so tests and the demo reach it exactly as a pod would."""
    from kubernetes import client

    spec = client.CoreV1Api(api_client).read_namespaced_service(service, namespace).spec
    if not spec.cluster_ip or spec.cluster_ip == "None":
        raise ValueError(f"Service {namespace}/{service} has no ClusterIP")
    if isinstance(port, str):
        port = next(p.port for p in spec.ports if p.name == port)
    return f"http://{spec.cluster_ip}:{port}"


def post_json(url: str, body: Any, timeout: float = 10.0, refused_for: float = 10.0,
              headers: dict[str, str] | None = None) -> Any:
    """POST ``body`` as JSON to ``url`` and return the decoded answer (``urllib.error.HTTPError`` on non-2xx).

    ``headers`` are sent too; a ``Host`` among them replaces the URL's (how a client reaches one hostname's
    route on a Gateway by its IP).

    A refused connection is retried for up to ``refused_for`` seconds: right after a Service's first endpoint
    turns ready, kube-proxy may not have programmed it yet (it resyncs at most once a second), and a ClusterIP
    without a programmed endpoint refuses connections. Any other error is raised at once."""
    import urllib.error

    # One timed-out attempt still leaves the retry budget: a connection to a ClusterIP whose rules kube-proxy is
    # rewriting can also time out instead of being refused (seen once in CI right after Ready).
    deadline = time.monotonic() + refused_for + timeout
    data = json.dumps(body).encode()
    while True:
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError:
            raise
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, (ConnectionRefusedError, TimeoutError)) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def wait_for(predicate: Any, timeout: float, interval: float = 0.25, message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; raise TimeoutError naming ``message``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {message} (last: {last!r})")


class ServiceTraffic:
    """Steady requests (``rate`` per second) to one Service's ClusterIP, a new connection each (so kube-proxy
    balances every request over the ready endpoints, as it does for any client in the cluster).

    Records answers per model version (the ``model_version`` of each v2 answer), every failure (connection
    errors and non-2xx, with the time; ``HTTP 500`` is a model failing, anything else a request that found no
    server), and the fewest ready endpoints in the Service's EndpointSlices seen while traffic ran (polled every
    0.2 s).

    Traffic starts once the Service has a ready endpoint, and failures count from the first HTTP answer on:
    kube-proxy programs a new endpoint into iptables a moment after the EndpointSlice says it is ready (its
    rules are resynced at most once a second), and until then a ClusterIP with no programmed endpoint refuses
    connections — for any client in any cluster. Those refusals are counted apart (``unprogrammed``).
    """

    def __init__(self, api_client: Any, namespace: str, service: str, model: str, rate: float = 20.0,
                 row: dict[str, Any] | None = None, port: int = 80) -> None:
        from kubernetes import client

        self.discovery = client.DiscoveryV1Api(api_client)
        self.namespace, self.service, self.model, self.rate = namespace, service, model, rate
        self.url = f"{service_url(api_client, namespace, service, port)}/v2/models/{model}/infer"
        self.body = json.dumps(row or LARGE_FLOWER).encode()
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.answers: dict[str, int] = {}
        self.failures: list[tuple[float, str]] = []  # (time, what)
        self.min_ready: int | None = None
        self.ready = 0
        self.sent = 0
        self.unprogrammed = 0  # connection errors before the Service's first HTTP answer
        self._answered = False
        self.threads = [threading.Thread(target=self._watch_endpoints, daemon=True),
                        threading.Thread(target=self._send, daemon=True)]

    def _watch_endpoints(self) -> None:
        while not self.stop.is_set():
            try:
                slices = self.discovery.list_namespaced_endpoint_slice(
                    self.namespace, label_selector=f"kubernetes.io/service-name={self.service}").items
                self.ready = sum(1 for s in slices for ep in s.endpoints or []
                                 if ep.conditions and ep.conditions.ready)
                if self.sent:  # capacity is judged once traffic runs
                    self.min_ready = self.ready if self.min_ready is None else min(self.min_ready, self.ready)
            except Exception:  # noqa: BLE001 - the next poll retries; the test judges what it saw
                pass
            self.stop.wait(0.2)

    def _send(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            if self.ready and not self.paused.is_set():
                self.sent += 1
                req = urllib.request.Request(self.url, data=self.body, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        version = str(json.loads(resp.read()).get("model_version", "?"))
                        self.answers[version] = self.answers.get(version, 0) + 1
                    self._answered = True
                except urllib.error.HTTPError as exc:
                    self._answered = True
                    self.failures.append((time.time(), f"HTTP {exc.code}"))
                except OSError as exc:
                    if self._answered:
                        self.failures.append((time.time(), f"{type(exc).__name__}: {exc}"))
                    else:
                        self.unprogrammed += 1
            self.stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))

    def model_failures(self) -> list[tuple[float, str]]:
        """Failures a model answered (HTTP 500: the server ran the model and it raised)."""
        return [f for f in self.failures if f[1] == "HTTP 500"]

    def dropped(self) -> list[tuple[float, str]]:
        """Requests that found no server: connection errors, timeouts, any non-2xx but a model's 500."""
        return [f for f in self.failures if f[1] != "HTTP 500"]

    def __enter__(self) -> ServiceTraffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
