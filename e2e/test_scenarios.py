"""End-to-end scenarios: deploy and predict, canary promotion, automatic rollback, ABTest split.

The same suite runs against the local environment (e2e/run.sh local) and kind (e2e/run.sh kind);
the operator is the one the Helm chart installed.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from modelpilot_dev.workloads import post_json, register_faulty_model, register_iris_model, wait_for

G, V = "modelpilot.io", "v1alpha1"
ROW_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [6.7, 3.0, 5.2, 2.3]}]}


def _ready_pods(core: Any, ns: str, selector: str) -> list[Any]:
    return [p for p in core.list_namespaced_pod(ns, label_selector=selector).items
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def _predict(address: str) -> int:
    """The predicted class of ROW sent to ``address`` (a Service), or minus the HTTP status of a failure."""
    try:
        return int(post_json(f"http://{address}/v2/models/iris/infer", ROW_BODY)["outputs"][0]["data"][0])
    except urllib.error.HTTPError as exc:
        return -exc.code


def _mv(name: str, version: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{G}/{V}", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"model": {"name": "iris", "version": version}, **spec}}


def _status(custom: Any, ns: str, name: str, plural: str = "modelversions") -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(G, V, ns, plural, name).get("status") or {})


def _ready_on(custom: Any, ns: str, name: str, version: str) -> bool:
    s = _status(custom, ns, name)
    return (s.get("model") or {}).get("version") == version and any(
        c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions") or [])


ROLLOUT = {"steps": [50, 100], "stepIntervalSeconds": 15, "progressDeadlineSeconds": 300,
           "analysis": {"interval": "30s", "minSamples": 10, "checks": [{"name": "error-rate", "maxDelta": 0.05}]}}


class Traffic:
    """Requests to the ModelVersion's Service (~10/s) while a rollout runs; answers counted by class."""

    def __init__(self, services: Any, ns: str, name: str) -> None:
        self.address = services.address(ns, name)
        self.stop = threading.Event()
        self.answers: Counter[int] = Counter()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers[_predict(self.address)] += 1
            except OSError:
                pass
            self.stop.wait(0.1)

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_deploy_and_predict(core: Any, custom: Any, services: Any, namespace: str, tracking_uri: str) -> None:
    version = register_iris_model(tracking_uri, "iris")
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _mv("iris", version, replicas=2))
    wait_for(lambda: _ready_on(custom, namespace, "iris", version), 300, 1.0, "Ready")
    assert len(_ready_pods(core, namespace, "modelpilot.io/modelversion=iris")) == 2
    assert _predict(services.address(namespace, "iris")) == 2


def test_canary_promotion(core: Any, custom: Any, services: Any, namespace: str, tracking_uri: str) -> None:
    first = register_iris_model(tracking_uri, "iris")
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions",
                                           _mv("iris", first, replicas=2, rollout=ROLLOUT))
    wait_for(lambda: _ready_on(custom, namespace, "iris", first), 300, 1.0, "Ready on the first version")
    second = register_iris_model(tracking_uri, "iris")
    with Traffic(services, namespace, "iris") as traffic:
        custom.patch_namespaced_custom_object(G, V, namespace, "modelversions", "iris",
                                              {"spec": {"model": {"version": second}}})
        wait_for(lambda: _ready_on(custom, namespace, "iris", second)
                 and (_status(custom, namespace, "iris").get("rollout") or {}).get("phase") == "Promoted",
                 300, 1.0, "the canary promoted")
    assert traffic.answers[2] > 0 and not [a for a in traffic.answers if a < 0]


def test_automatic_rollback(core: Any, custom: Any, services: Any, namespace: str, tracking_uri: str) -> None:
    good = register_iris_model(tracking_uri, "iris")
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions",
                                           _mv("iris", good, replicas=2, rollout=ROLLOUT))
    wait_for(lambda: _ready_on(custom, namespace, "iris", good), 300, 1.0, "Ready")
    bad = register_faulty_model(tracking_uri, "iris")
    with Traffic(services, namespace, "iris"):
        custom.patch_namespaced_custom_object(G, V, namespace, "modelversions", "iris",
                                              {"spec": {"model": {"version": bad}}})
        wait_for(lambda: (_status(custom, namespace, "iris").get("rollout") or {}).get("phase") == "RolledBack",
                 300, 1.0, "the regressing canary rolled back")
    status = _status(custom, namespace, "iris")
    assert status["model"]["version"] == good and status["rollout"]["rejectedVersion"] == bad
    assert any(m["check"] == "error-rate" and m["verdict"] == "Fail" for m in status["rollout"]["analysis"])


def test_abtest_split(core: Any, custom: Any, namespace: str, tracking_uri: str) -> None:
    version = register_iris_model(tracking_uri, "iris")
    for name in ("iris-a", "iris-b"):
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _mv(name, version, replicas=2))
    custom.create_namespaced_custom_object(G, V, namespace, "abtests", {
        "apiVersion": f"{G}/{V}", "kind": "ABTest", "metadata": {"name": "iris"},
        "spec": {"variants": [{"name": "a", "modelVersion": "iris-a", "weight": 75},
                              {"name": "b", "modelVersion": "iris-b", "weight": 25}]}})

    def split() -> bool:
        per_mv = Counter(p.metadata.labels["modelpilot.io/modelversion"]
                         for p in _ready_pods(core, namespace, "modelpilot.io/abtest=iris"))
        return per_mv == {"iris-a": 3, "iris-b": 1} and _status(custom, namespace, "iris", "abtests").get(
            "split") == "a=75,b=25"

    wait_for(split, 300, 1.0, "a 3:1 replica split behind the ABTest Service")
