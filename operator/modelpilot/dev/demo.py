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

import yaml

from modelpilot.dev.environment import DevError, Environment
from modelpilot.dev.workloads import pod_address, register_iris_model, wait_for

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

    repo = Path(__file__).resolve().parents[3]
    _step("installing the CRDs and starting the operator (modelpilot operator)")
    env.install_crds(repo / "crds")
    env.start_operator()
    print("CRDs established; operator running (its log: " + str(env.logs / "operator.log") + ")")

    api = config.new_client_from_config(exports["KUBECONFIG"])
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    manifest = yaml.safe_load((repo / "examples" / "modelversion-iris.yaml").read_text())
    manifest["spec"]["model"]["version"] = version
    _step(f"kubectl apply -f examples/modelversion-iris.yaml  (model iris, version {version}, 2 replicas)")
    env.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(manifest))
    started = time.monotonic()
    _wait_ready(custom, "iris")
    print(f"modelversion/iris Ready (for its current generation) after {time.monotonic() - started:.1f}s")
    print(env.kubectl("get", "-n", NAMESPACE, "modelversion", "iris", "-o", "wide").stdout.rstrip())
    status = custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", NAMESPACE, "modelversions",
                                                 "iris")["status"]
    print(f"pinned: version {status['model']['version']}, run {status['model']['runId']}, "
          f"artifacts {status['model']['artifactUri']}")
    pods = [p for p in core.list_namespaced_pod(NAMESPACE, label_selector="modelpilot.io/modelversion=iris").items
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
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

    _follow_alias_story(env, tracking, core, custom)
    _guarded_canary_story(env, tracking, core, custom, version)

    print("\nDone. The environment keeps running; use it with:")
    print('  eval "$(.venv/bin/modelpilot dev env)"; kubectl get modelversions,pods -n modelpilot-demo -o wide')
    print("  .venv/bin/modelpilot dev status        # health of every component")
    print("  .venv/bin/modelpilot dev down          # stop everything")
    if not keep:
        env.down()
    return 0


def _follow_alias_story(env: Environment, tracking: str, core: Any, custom: Any) -> None:
    """@champion moves in MLflow → the ModelVersion following it rolls the new version out."""
    from mlflow import MlflowClient

    repo = Path(__file__).resolve().parents[3]
    registry = MlflowClient(tracking_uri=tracking)
    current = registry.get_model_version_by_alias("iris", "champion").version if _has_alias(registry) else None
    if current is None:
        current = max(int(v.version) for v in registry.search_model_versions("name='iris'"))
        registry.set_registered_model_alias("iris", "champion", str(current))
    _step(f"kubectl apply -f examples/modelversion-alias.yaml  (follows iris@champion, now version {current})")
    env.kubectl("apply", "-n", NAMESPACE, "-f", str(repo / "examples" / "modelversion-alias.yaml"))
    _wait_ready(custom, "iris-champion")
    newer = register_iris_model(tracking, "iris")
    _step(f"registered version {newer}; moving @champion to it in MLflow")
    registry.set_registered_model_alias("iris", "champion", newer)
    started = time.monotonic()

    def rolled() -> bool:
        body = custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", NAMESPACE, "modelversions",
                                                   "iris-champion")
        status = body.get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        return ready and (status.get("model") or {}).get("version") == newer

    wait_for(rolled, 180, 1.0, f"iris-champion to roll out version {newer}")
    print(f"iris-champion now serves version {newer} ({time.monotonic() - started:.1f}s after the alias moved; "
          "old pods served until the new ones were ready)")
    events = env.kubectl("get", "events", "-n", NAMESPACE, "--field-selector",
                         "involvedObject.name=iris-champion", "--sort-by=.lastTimestamp").stdout
    print(events.rstrip())


def _has_alias(registry: Any) -> bool:
    try:
        registry.get_model_version_by_alias("iris", "champion")
        return True
    except Exception:  # MlflowException: alias not set yet
        return False


def _guarded_canary_story(env: Environment, tracking: str, core: Any, custom: Any, stable: str) -> None:
    """A regressing version is rolled out as a canary and rolled back automatically, with the evidence."""
    import threading

    from modelpilot.dev.workloads import register_faulty_model

    name = "iris-guarded"
    manifest = {
        "apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
        "spec": {"model": {"name": "iris", "version": stable}, "replicas": 2,
                 "rollout": {"steps": [50, 100], "stepIntervalSeconds": 15, "progressDeadlineSeconds": 240,
                             "analysis": {"interval": "30s", "minSamples": 10,
                                          "checks": [{"name": "error-rate", "maxDelta": 0.05}]}}},
    }
    _step(f"a guarded ModelVersion {name} (canary steps 50 → 100 %, error-rate analysis) on version {stable}")
    env.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(manifest))
    _wait_ready(custom, name)
    faulty = register_faulty_model(tracking, "iris")
    _step(f"registered version {faulty}: passes its validation gate, fails on large flowers; "
          "sending traffic and moving the spec to it")
    stop = threading.Event()
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                                   "data": [6.7, 3.0, 5.2, 2.3]}]}).encode()

    def traffic() -> None:  # what a Service would spread over the ready pods of both tracks
        while not stop.is_set():
            pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"modelpilot.io/modelversion={name}").items
            for pod in pods:
                ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
                if ready and pod.metadata.deletion_timestamp is None and pod_address(pod):
                    req = urllib.request.Request(f"http://{pod_address(pod)}/v2/models/iris/infer", data=body,
                                                 headers={"Content-Type": "application/json"})
                    try:
                        urllib.request.urlopen(req, timeout=5).close()
                    except OSError:
                        pass  # the canary's 500s are the point
            stop.wait(0.1)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    custom.patch_namespaced_custom_object("modelpilot.io", "v1alpha1", NAMESPACE, "modelversions", name,
                                          {"spec": {"model": {"version": faulty}}})
    started = time.monotonic()
    try:
        def rolled_back() -> Any:
            status = custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", NAMESPACE, "modelversions",
                                                         name).get("status") or {}
            ro = status.get("rollout") or {}
            return ro if ro.get("phase") == "RolledBack" else None

        ro = wait_for(rolled_back, 300, 1.0, "the regressing canary to be rolled back")
    finally:
        stop.set()
    print(f"rolled back after {time.monotonic() - started:.0f}s; {name} serves version {ro['stableVersion']} again")
    for m in ro.get("analysis") or []:
        print(f"  evidence: {m['check']} = {m['value']} (baseline {m['baseline']}, {m['threshold']}, "
              f"{m['samples']:.0f} requests) → {m['verdict']}")
        print(f"            query: {m['query']}")
    for h in ro.get("history") or []:
        print(f"  {h['time']}  {h['decision']:9} {h['weight']:>3}%  {h['message'][:120]}")


def _wait_ready(custom: Any, name: str, timeout: float = 180) -> dict[str, Any]:
    """Ready=True *for the current generation* (plain `kubectl wait` can see a stale Ready after an edit)."""
    def ready() -> Any:
        body = custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", NAMESPACE, "modelversions", name)
        status = body.get("status") or {}
        ok = any(c["type"] == "Ready" and c["status"] == "True" and
                 c.get("observedGeneration") == body["metadata"]["generation"]
                 for c in status.get("conditions") or [])
        return body if ok and (status.get("rollout") or {}).get("phase") not in ("Progressing", "Paused") else None

    return dict(wait_for(ready, timeout, 1.0, f"modelversion/{name} Ready"))
