"""``modelpilot demo``: the Quick start story on the local environment.

Part of the local environment. Brings the environment up, registers a real
scikit-learn model in MLflow, deploys the serving image as a Deployment, waits
until its pods (containers of the serving image on the real node) are ready, and
prints a real prediction sent to its Service — then how Prometheus sees it, an alias move, and the guarded rollout
story: under steady traffic through the Service a regressing version is rolled
back on its own and a healthy one is promoted step by step, with a timeline.
The command exits non-zero unless both outcomes happened.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from modelpilot_dev.environment import DevError, Environment
from modelpilot_dev.workloads import post_json, register_iris_model, service_url, wait_for

NAMESPACE = "modelpilot-demo"


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


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

    repo = Path(__file__).resolve().parents[2]
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
        image = next((c.image for c in pod.spec.containers), "?")
        print(f"  pod {pod.metadata.name:28} node {pod.spec.node_name:16} pod IP {pod.status.pod_ip:14} "
              f"container {image}")

    address = service_url(api, NAMESPACE, "iris")
    _step(f"predicting through Service iris at {address} (its ClusterIP: kube-proxy picks the pod)")
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    body = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": rows}]}
    answer = post_json(f"{address}/v2/models/iris/infer", body)
    print(f"Open Inference Protocol v2: {json.dumps(answer['outputs'])}")
    invocations = post_json(f"{address}/invocations", {
        "dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"], "data": rows}
    })
    print(f"MLflow /invocations:        {json.dumps(invocations)}")

    _step("Prometheus scraping the pods at their pod IPs (Kubernetes service discovery)")
    prom = exports["PROMETHEUS_URL"]

    def scraped() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{prom}/api/v1/targets?state=active", timeout=5) as resp:
            targets = json.loads(resp.read())["data"]["activeTargets"]
        return [t for t in targets if t["labels"].get("namespace") == NAMESPACE and t["health"] == "up"]

    for target in wait_for(scraped, 60, 1.0, "Prometheus to scrape the demo pods"):
        print(f"  up: {target['scrapeUrl']}  pod={target['labels'].get('pod')}")

    _follow_alias_story(env, tracking, core, custom)
    ok = _guarded_canary_story(env, tracking, core, custom, version)

    print("\nDone. The environment keeps running; use it with:")
    print(f'  eval "$(.venv/bin/{env.command("env")})"; kubectl get modelversions,pods -n modelpilot-demo -o wide')
    print(f"  .venv/bin/{env.command('status')}        # health of every component")
    print(f"  .venv/bin/{env.command('down')}          # stop everything")
    if not keep:
        env.down()
    if not ok:
        print("\nerror: the guarded rollout story did not end as it must (see FAILED above)", file=sys.stderr)
        return 1
    return 0


def _follow_alias_story(env: Environment, tracking: str, core: Any, custom: Any) -> None:
    """@champion moves in MLflow → the ModelVersion following it rolls the new version out."""
    from mlflow import MlflowClient

    repo = Path(__file__).resolve().parents[2]
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


def _guarded_canary_story(env: Environment, tracking: str, core: Any, custom: Any, stable: str) -> bool:
    """The full story under steady traffic through the Service: version A serves, version B regresses and
    is rolled back on its own, version C is promoted step by step. A timeline of every decision with the
    measured values; False unless both outcomes happened."""
    from kubernetes import config

    from modelpilot_dev.workloads import ServiceTraffic, register_faulty_model

    name = "iris-guarded"
    manifest = {
        "apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion", "metadata": {"name": name},
        "spec": {"model": {"name": "iris", "version": stable}, "replicas": 2,
                 "rollout": {"steps": [25, 50, 100], "stepIntervalSeconds": 15, "progressDeadlineSeconds": 240,
                             "analysis": {"interval": "30s", "minSamples": 20,
                                          "checks": [{"name": "error-rate", "maxDelta": 0.05},
                                                     {"name": "latency-p99", "maxRatio": 1.5, "slack": 0.05}]}}},
    }
    _step(f"a guarded ModelVersion {name}: canary steps 25 → 50 → 100 %, error-rate and latency-p99 analysis, "
          f"serving version {stable}")
    env.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(manifest))
    _wait_ready(custom, name)
    api = config.new_client_from_config(env.exports()["KUBECONFIG"])
    ok = True
    with ServiceTraffic(api, NAMESPACE, name, "iris", rate=20) as traffic:
        wait_for(lambda: traffic.sent > 20, 60, 0.5, "traffic through the Service")
        print(f"traffic: 20 requests/s to Service {name} ({traffic.url.split('/v2/')[0]}, balanced by kube-proxy)")
        faulty = register_faulty_model(tracking, "iris")
        _step(f"version {faulty} regresses (passes its validation gate, fails on large flowers): rolling it out")
        ro = _timeline(custom, name, faulty, ("RolledBack", "Promoted", "Cancelled"))
        first_bad = min((t for t, _ in traffic.model_failures()), default=None)
        if ro.get("phase") != "RolledBack":
            print(f"FAILED: version {faulty} was not rolled back (phase {ro.get('phase')})", file=sys.stderr)
            ok = False
        elif first_bad is not None:
            back = _finished_at(ro)
            print(f"detected and rolled back: {back - first_bad:.0f}s from the first failed request to every "
                  f"request back on version {ro['stableVersion']}")
        good = register_iris_model(tracking, "iris")
        _step(f"version {good} is a retrained, healthy model: rolling it out")
        ro = _timeline(custom, name, good, ("Promoted", "RolledBack", "Cancelled"))
        if ro.get("phase") != "Promoted":
            print(f"FAILED: version {good} was not promoted (phase {ro.get('phase')}: {ro.get('reason')})",
                  file=sys.stderr)
            ok = False
        time.sleep(2)
    dropped = traffic.dropped()
    print(f"\nrequests: {traffic.sent} sent, answered by version: "
          + ", ".join(f"{v}: {n}" for v, n in sorted(traffic.answers.items()))
          + f"; failed by the regressing canary's model: {len(traffic.model_failures())}; "
          f"failed for want of a pod: {len(dropped)}; fewest ready endpoints: {traffic.min_ready}")
    if dropped:
        print(f"FAILED: {len(dropped)} requests failed outside the regressing model: {dropped[:3]}", file=sys.stderr)
        ok = False
    print(env.kubectl("get", "-n", NAMESPACE, "modelversion", name, "-o", "wide").stdout.rstrip())
    return ok


def _finished_at(ro: dict[str, Any]) -> float:
    from datetime import datetime, timezone

    return datetime.strptime(ro["finishedAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def _timeline(custom: Any, name: str, version: str, final: tuple[str, ...]) -> dict[str, Any]:
    """Move the spec to ``version`` and print each decision (time, step, weight, measured values) until the
    rollout reaches one of ``final``; returns the last rollout status."""
    custom.patch_namespaced_custom_object("modelpilot.io", "v1alpha1", NAMESPACE, "modelversions", name,
                                          {"spec": {"model": {"version": version}}})
    start, printed = time.monotonic(), 0
    print(f"  {'t':>5}  {'step':>4}  {'weight':>13}  {'decision':<11} measured / why")
    ro: dict[str, Any] = {}
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        status = custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", NAMESPACE, "modelversions",
                                                     name).get("status") or {}
        ro = status.get("rollout") or {}
        if ro.get("canaryVersion") == version:
            history = ro.get("history") or []
            for h in history[printed:]:
                values = ", ".join(f"{m['check']}={m['value']:.4g}" for m in ro.get("analysis") or []
                                   if m.get("value") is not None) if h["decision"] in ("Pass", "Fail", "RollBack") else ""
                weight = f"{h['weight']}%" + (f" (eff {h['effectiveWeight']}%)" if h.get("effectiveWeight") is not None
                                              else "")
                print(f"  {time.monotonic() - start:4.0f}s  {int(h['step']) + 1:>4}  {weight:>13}  "
                      f"{h['decision']:<11} {values + ' | ' if values else ''}{h['message'][:110]}", flush=True)
            printed = len(history)
            if ro.get("phase") in final:
                return ro
        time.sleep(1)
    return ro


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
