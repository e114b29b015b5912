"""``modelpilot demo``: the Quick start story on the local environment.

Part of the local environment. Brings the environment up, registers a real
scikit-learn model in MLflow, deploys the serving image as a Deployment, waits
until its pods' processes are ready, and prints a real prediction served by a
pod — then how Prometheus sees it. Later features (the operator, canaries,
A/B tests) grow this story.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from modelpilot.dev.environment import DevError, Environment
from modelpilot.dev.workloads import pod_address, register_iris_model, serving_deployment, wait_for

NAMESPACE = "modelpilot-demo"


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def run(home: Path | None = None, keep: bool = True) -> int:
    from kubernetes import client, config

    env = Environment(home, progress=lambda m: print(m, flush=True))
    _step("bringing the local environment up (first run builds the control plane from Go modules)")
    try:
        state = env.up()
    except DevError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    exports = state["exports"]
    tracking = exports["MLFLOW_TRACKING_URI"]

    _step(f"training a scikit-learn classifier on iris and registering it in MLflow ({tracking})")
    version = register_iris_model(tracking, "iris")
    print(f"registered model 'iris' version {version}")

    _step(f"deploying the serving image: 2 replicas of models:/iris/{version} in namespace {NAMESPACE}")
    api = config.new_client_from_config(exports["KUBECONFIG"])
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    manifest = serving_deployment("iris", f"models:/iris/{version}", tracking, replicas=2, model_version=version)
    try:
        apps.create_namespaced_deployment(NAMESPACE, manifest)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        apps.replace_namespaced_deployment("iris", NAMESPACE, manifest)
    started = time.monotonic()

    def available() -> int:
        dep = apps.read_namespaced_deployment("iris", NAMESPACE)
        ready = dep.status.available_replicas or 0
        return ready if ready == 2 else 0

    wait_for(available, 180, 1.0, "the iris Deployment to be 2/2 available")
    print(f"deployment iris is 2/2 available after {time.monotonic() - started:.1f}s "
          "(each pod's Ready comes from its own process answering /v2/health/ready)")
    pods = core.list_namespaced_pod(NAMESPACE, label_selector="app.kubernetes.io/name=iris").items
    for pod in pods:
        print(f"  pod {pod.metadata.name:28} node {pod.spec.node_name:12} pod IP {pod.status.pod_ip:14} "
              f"process at {pod_address(pod)}")

    address = pod_address(pods[0])
    _step(f"predicting through pod {pods[0].metadata.name} at {address}")
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    body = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": rows}]}
    answer = _post(f"http://{address}/v2/models/iris/infer", body)
    print(f"Open Inference Protocol v2: {json.dumps(answer['outputs'])}")
    invocations = _post(f"http://{address}/invocations", {
        "dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"], "data": rows}
    })
    print(f"MLflow /invocations:        {json.dumps(invocations)}")

    _step("Prometheus scraping the pods at their loopback addresses")
    prom = exports["PROMETHEUS_URL"]

    def scraped() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{prom}/api/v1/targets?state=active", timeout=5) as resp:
            targets = json.loads(resp.read())["data"]["activeTargets"]
        return [t for t in targets if t["labels"].get("namespace") == NAMESPACE and t["health"] == "up"]

    for target in wait_for(scraped, 60, 1.0, "Prometheus to scrape the demo pods"):
        print(f"  up: {target['scrapeUrl']}  pod={target['labels'].get('pod')}")

    print("\nDone. The environment keeps running; use it with:")
    print('  eval "$(.venv/bin/modelpilot dev env)"; kubectl get pods -n modelpilot-demo -o wide')
    print("  .venv/bin/modelpilot dev status        # health of every component")
    print("  .venv/bin/modelpilot dev down          # stop everything")
    if not keep:
        env.down()
    return 0
