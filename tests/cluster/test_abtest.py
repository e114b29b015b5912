"""ABTests on the real local environment.

The replica-ratio provider is fully real (Service, labels, replicas). The Gateway
provider's HTTPRoute is attached to the environment's real Gateway
(``gateway-system/public``, NGINX Gateway Fabric on the real node): requests go to
the Gateway's ClusterIP and the Gateway splits, pins and mirrors them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

from kubernetes import client

from modelpilot_dev.workloads import register_faulty_model, wait_for

GROUP, VERSION = "modelpilot.io", "v1alpha1"
ROW = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                              "data": [6.7, 3.0, 5.2, 2.3]}]}).encode()


def _mv(name: str, version: str, replicas: int = 2) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"model": {"name": "iris", "version": version}, "replicas": replicas}}


def _ready_pods(core: Any, namespace: str, selector: str) -> list[Any]:
    return [p for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            if p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def _abtest(custom: Any, namespace: str, name: str = "iris") -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "abtests", name))


def _ready(body: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (body.get("status") or {}).get("conditions")
               or [])


def test_replica_ratio_routes_by_weight_and_a_zero_percent_variant_gets_no_pods(
    operator: Any, custom: Any, core: Any, namespace: str, iris_version: str
) -> None:
    for name in ("iris-a", "iris-b"):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", _mv(name, iris_version))
    test = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ABTest", "metadata": {"name": "iris"},
            "spec": {"variants": [{"name": "a", "modelVersion": "iris-a", "weight": 75},
                                  {"name": "b", "modelVersion": "iris-b", "weight": 25}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "abtests", test)

    def split_applied() -> Any:
        body = _abtest(custom, namespace)
        pods = _ready_pods(core, namespace, "modelpilot.io/abtest=iris")
        per_mv = Counter(p.metadata.labels["modelpilot.io/modelversion"] for p in pods)
        return body if _ready(body) and per_mv == {"iris-a": 3, "iris-b": 1} else None

    body = wait_for(split_applied, 240, 1.0, "3 pods of iris-a and 1 of iris-b behind the ABTest")
    assert body["status"]["split"] == "a=75,b=25"
    assert {v["name"]: v["replicas"] for v in body["status"]["variants"]} == {"a": 3, "b": 1}
    service = core.read_namespaced_service("iris", namespace)
    assert service.spec.selector == {"modelpilot.io/abtest": "iris"}
    assert service.metadata.owner_references[0].kind == "ABTest"

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "abtests", "iris", {"spec": {"variants": [
        {"name": "a", "modelVersion": "iris-a", "weight": 100}, {"name": "b", "modelVersion": "iris-b", "weight": 0}]}})

    def b_drained() -> bool:
        pods = [p for p in core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=iris-b").items
                if p.metadata.deletion_timestamp is None]
        return not pods and _abtest(custom, namespace)["status"]["split"] == "a=100,b=0"

    wait_for(b_drained, 120, 1.0, "the 0 % variant to have no pods")

    # Deleting the ABTest gives each variant back its own replicas (2), out of the ABTest's pods.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "abtests", "iris")

    def on_their_own() -> bool:
        labelled = core.list_namespaced_pod(namespace, label_selector="modelpilot.io/abtest=iris").items
        per_mv = Counter(p.metadata.labels["modelpilot.io/modelversion"]
                         for p in _ready_pods(core, namespace, "modelpilot.io/modelversion"))
        return not labelled and per_mv == {"iris-a": 2, "iris-b": 2}

    wait_for(on_their_own, 180, 1.0, "each variant serving its own 2 replicas with no ABTest label")


def test_a_variant_rolling_out_a_canary_stays_in_its_abtest(
    operator: Any, dev_env: dict[str, Any], custom: Any, core: Any, namespace: str, iris_version: str
) -> None:
    """The ABTest + canary interplay: while iris-a rolls a new version out as a canary and after it is
    promoted, every pod of iris-a (both tracks) keeps the ABTest label, so the variant never drops out of
    the experiment's Service, and the canary splits the replicas the ABTest assigned (surge first).
    Serving continuity through the Service is tested in tests/cluster/test_guarded_rollouts.py."""
    from modelpilot_dev.workloads import register_iris_model

    canary_a = _mv("iris-a", iris_version)
    canary_a["spec"]["rollout"] = {"steps": [50, 100], "stepIntervalSeconds": 8, "progressDeadlineSeconds": 240,
                                   "analysis": {"enabled": False}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", canary_a)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", _mv("iris-b", iris_version))
    test = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ABTest", "metadata": {"name": "iris"},
            "spec": {"variants": [{"name": "a", "modelVersion": "iris-a", "weight": 50},
                                  {"name": "b", "modelVersion": "iris-b", "weight": 50}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "abtests", test)

    def behind_the_abtest() -> Counter[str]:
        pods = _ready_pods(core, namespace, "modelpilot.io/abtest=iris")
        return Counter(p.metadata.labels["modelpilot.io/modelversion"] for p in pods)

    wait_for(lambda: _ready(_abtest(custom, namespace)) and behind_the_abtest() == {"iris-a": 2, "iris-b": 2},
             240, 1.0, "2 pods of each variant behind the ABTest")
    newer = register_iris_model(dev_env["exports"]["MLFLOW_TRACKING_URI"], "iris")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", "iris-a",
                                          {"spec": {"model": {"version": newer}}})
    tracks: set[str] = set()

    def promoted() -> bool:
        pods = [p for p in core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=iris-a")
                .items if p.metadata.deletion_timestamp is None]
        unlabelled = [p.metadata.name for p in pods if p.metadata.labels.get("modelpilot.io/abtest") != "iris"]
        assert not unlabelled, f"pods of iris-a outside the ABTest: {unlabelled}"
        tracks.update(p.metadata.labels["modelpilot.io/track"] for p in pods)
        body = dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", "iris-a"))
        ro = (body.get("status") or {}).get("rollout") or {}
        if ro.get("phase") == "Progressing" and ro.get("replicas"):
            # The ABTest's share (2), split; surge first, so never fewer, and at most maxSurge (100 %) more.
            assert 2 <= sum(ro["replicas"].values()) <= 4, ro["replicas"]
        return ro.get("phase") == "Promoted" and {p.metadata.labels["modelpilot.io/version"] for p in pods} == {newer}

    wait_for(promoted, 240, 0.5, "iris-a's canary to be promoted inside the ABTest")
    assert tracks == {"stable", "canary"}
    wait_for(lambda: behind_the_abtest() == {"iris-a": 2, "iris-b": 2}, 120, 1.0,
             "2 pods of each variant behind the ABTest after the promotion")


def test_gateway_route_splits_pins_mirrors_and_the_comparison_names_a_winner(
    operator: Any, dev_env: dict[str, Any], api_client: Any, custom: Any, core: Any, namespace: str,
    iris_version: str
) -> None:
    gateways = client.CustomObjectsApi(api_client)
    gw = dev_env["node"]["gateway"]
    faulty = register_faulty_model(dev_env["exports"]["MLFLOW_TRACKING_URI"], "iris")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", _mv("iris-a", iris_version, 1))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", _mv("iris-b", faulty, 1))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", _mv("iris-s", iris_version, 1))
    test = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ABTest", "metadata": {"name": "iris"},
            "spec": {"variants": [{"name": "a", "modelVersion": "iris-a", "weight": 50},
                                  {"name": "b", "modelVersion": "iris-b", "weight": 50},
                                  {"name": "s", "modelVersion": "iris-s", "shadow": True}],
                     "routing": {"gatewayRef": {"name": gw["name"], "namespace": gw["namespace"]}},
                     "analysis": {"interval": "5m", "minSamples": 30, "significance": 0.01}}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "abtests", test)
    body = wait_for(lambda: (lambda b: b if _ready(b) else None)(_abtest(custom, namespace)), 240, 1.0,
                    "the ABTest Ready")
    route = gateways.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", "iris")
    default = route["spec"]["rules"][-1]
    assert [(r["name"], r["weight"]) for r in default["backendRefs"] if r.get("weight")] == [("iris-a", 50),
                                                                                            ("iris-b", 50)]
    assert "iris-s" in json.dumps(default.get("filters")) or any(
        r["name"] == "iris-s" for r in default["backendRefs"]), f"no mirror to the shadow: {default}"
    assert body["status"]["split"] == "a=50,b=50,s=shadow"

    # Measurement needs Prometheus to scrape every variant's current pod before traffic flows
    # (in production traffic is continuous; here it is one burst).
    def scraped() -> bool:
        pods = {p.metadata.name for mv in ("iris-a", "iris-b", "iris-s")
                for p in _ready_pods(core, namespace, f"modelpilot.io/modelversion={mv}")}
        q = urllib.parse.urlencode({"query": f'up{{namespace="{namespace}"}} == 1'})
        with urllib.request.urlopen(f"{dev_env['exports']['PROMETHEUS_URL']}/api/v1/query?{q}") as resp:
            up = {r["metric"].get("pod") for r in json.loads(resp.read())["data"]["result"]}
        return len(pods) == 3 and pods <= up

    wait_for(scraped, 120, 1.0, "Prometheus to scrape every variant's pod")

    # The route is served by the real Gateway once NGF has accepted it and programmed nginx.
    gateway_url = gw["url"]  # the Gateway's ClusterIP (the host routes the environment's Service range)

    def infer(headers: dict[str, str]) -> int:
        req = urllib.request.Request(f"{gateway_url}/v2/models/iris/infer", data=ROW,
                                     headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def accepted() -> bool:
        found = gateways.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes",
                                                      "iris")
        conditions = {c["type"]: c["status"] for p in (found.get("status") or {}).get("parents") or []
                      for c in p.get("conditions") or []}
        return conditions.get("Accepted") == "True" and infer({"x-modelpilot-variant": "a"}) == 200

    wait_for(accepted, 60, 0.5, "the real Gateway to accept and serve the ABTest's HTTPRoute")
    # iris-a answers 200, the faulty iris-b 500 on this row: the codes show the split; pinned requests go to a.
    codes: Counter[int] = Counter(infer({}) for _ in range(240))
    pinned: Counter[int] = Counter(infer({"x-modelpilot-variant": "a"}) for _ in range(20))
    print(f"\n[abtest] 240 requests through the Gateway: {dict(codes)}; 20 pinned to a: {dict(pinned)}")
    assert set(codes) <= {200, 500} and 80 <= codes[500] <= 160, codes  # ≈ 50/50 (p < 1e-4 outside)
    assert pinned == {200: 20}, pinned

    last: list[dict[str, Any]] = [{}]

    def decided() -> Any:
        last[0] = _abtest(custom, namespace)
        return last[0] if (last[0].get("status") or {}).get("winner") else None

    try:
        body = wait_for(decided, 180, 2.0, "the comparison to name a winner")
    except TimeoutError as exc:
        status = last[0].get("status") or {}
        q = urllib.parse.urlencode({"query": f'modelpilot_requests_total{{namespace="{namespace}"}}'})
        with urllib.request.urlopen(f"{dev_env['exports']['PROMETHEUS_URL']}/api/v1/query?{q}") as resp:
            raw = [(r["metric"].get("variant"), r["metric"].get("code"), r["value"][1])
                   for r in json.loads(resp.read())["data"]["result"]]
        q = urllib.parse.urlencode({"query": f'modelpilot_requests_total{{namespace="{namespace}",code="500"}}[10m]'})
        with urllib.request.urlopen(f"{dev_env['exports']['PROMETHEUS_URL']}/api/v1/query?{q}") as resp:
            raw.append(json.loads(resp.read())["data"]["result"])
        raise AssertionError(f"no winner; variants={status.get('variants')} "
                             f"comparison={status.get('comparison')} series={raw}") from exc
    status = body["status"]
    assert status["winner"] == "a" and status["phase"] == "Concluded"
    comparison = status["comparison"]
    assert comparison["metric"] == "success-rate" and comparison["pValue"] < 0.01
    figures = {v["name"]: v for v in status["variants"]}
    assert figures["a"]["requests"] >= 30 and figures["b"]["errorRate"] > 0.5 and figures["a"]["errorRate"] == 0
    # The shadow is measured like any variant. Its figures can trail the verdict by a refresh: the winner is
    # named as soon as a and b have two scrapes of their counters, whichever scrape of s comes later.
    def shadow_measured() -> Any:
        rows = {v["name"]: v for v in (_abtest(custom, namespace).get("status") or {}).get("variants") or []}
        return rows if (rows.get("s") or {}).get("requests", 0) >= 30 else None

    figures = wait_for(shadow_measured, 90, 2.0, "the shadow variant's figures")
    assert figures["s"]["requests"] >= 30
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=iris").items
    assert "WinnerDeclared" in {e.reason for e in events if e.involved_object.kind == "ABTest"}
