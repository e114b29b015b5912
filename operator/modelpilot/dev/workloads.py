"""Small helpers the demo and the tests share: a real model in MLflow, a serving Deployment, pod addresses.

Part of the local environment. The Deployment built here is the bare serving
contract (image, env, probes, scrape annotations); the operator's own builders
render the full production manifest from a ModelVersion.
"""

from __future__ import annotations

import time
from typing import Any

SERVING_IMAGE = "ghcr.io/modelpilot/modelpilot-serve:0.1.0"
ADDRESS_ANNOTATION = "dev.modelpilot.io/address"


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
        )
    version = info.registered_model_version
    return str(version)


def register_faulty_model(tracking_uri: str, name: str = "iris") -> str:
    """Register a new version of ``name`` that passes the validation gate but fails on most real traffic.

    The model is logged from code (``assets/faulty_model.py``), so serving it needs nothing of this package.
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
            python_model=str(Path(__file__).parent / "assets" / "faulty_model.py"),
            input_example=features.head(3),
            signature=infer_signature(features, data.target),
            registered_model_name=name,
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


def pod_address(pod: Any) -> str | None:
    """The loopback ``host:port`` where a pod's process listens (never its virtual pod IP)."""
    annotations = (pod.metadata.annotations or {}) if hasattr(pod, "metadata") else pod["metadata"].get(
        "annotations", {})
    return annotations.get(ADDRESS_ANNOTATION)


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
