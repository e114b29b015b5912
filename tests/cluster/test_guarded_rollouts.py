"""Guarded rollouts that hold, on the real local environment (issue 12): one test per gap peers' users hit.

Each scenario failed on the operator before the rollout planner (``rollout.plan``): an alias-triggered
canary thrashed, default checks could never promote, promote/abort/rollback opened capacity holes, a step
passed on the previous step's traffic, a crash-looping canary advanced, a multi-series query was judged on
its first series, replica ratios silently missed the requested weight, a new rollout kept the last one's
reason, and there was no way back after a promotion.

Traffic: ``ServiceTraffic`` (modelpilot_dev.workloads) sends requests at a steady rate to the Service's
ClusterIP, a new connection each, and the real node's kube-proxy balances them over the ready endpoints;
the serving pods are containers of the serving image on the real node.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from modelpilot_dev.workloads import ServiceTraffic, register_faulty_model, register_iris_model, wait_for

GROUP, VERSION, PLURAL = "modelpilot.io", "v1alpha1", "modelversions"
SMALL_ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def _mv(name: str, model: dict[str, Any], replicas: int = 2, **rollout: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"model": model, "replicas": replicas, "rollout": rollout}}


def _body(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def _rollout(custom: Any, ns: str, name: str) -> dict[str, Any]:
    return dict((_body(custom, ns, name).get("status") or {}).get("rollout") or {})


def _serving(custom: Any, ns: str, name: str, version: str) -> dict[str, Any] | None:
    body = _body(custom, ns, name)
    status = body.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    return body if ready and (status.get("model") or {}).get("version") == version else None


def _phase(custom: Any, ns: str, name: str, *phases: str) -> Any:
    ro = _rollout(custom, ns, name)
    return ro if ro.get("phase") in phases else None


def _cli(dev_env: dict[str, Any], namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpilot.cli", *args, "--kubeconfig",
                           dev_env["exports"]["KUBECONFIG"], "-n", namespace], capture_output=True, text=True,
                          timeout=60)


def _kubectl_plugin(dev_env: dict[str, Any], namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl modelpilot ...`` as a user runs it: kubectl finds ``kubectl-modelpilot`` on the PATH."""
    import os
    from pathlib import Path

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run([dev_env["binaries"]["kubectl"], "modelpilot", *args, "-n", namespace],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": path, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]})


def _events(core: Any, namespace: str, name: str) -> list[Any]:
    return list(core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items)


def test_promote_abort_rollback_and_undo_never_drop_a_request_or_capacity(
    operator: Any, dev_env: dict[str, Any], api_client: Any, custom: Any, core: Any, namespace: str,
    iris_version: str
) -> None:
    """Steady traffic through the Service while a good version is promoted, the next one aborted, a
    regressing one rolled back on its own, and the promotion undone: no request fails for want of a pod,
    and the ready endpoints never drop below spec.replicas (maxUnavailable is 0)."""
    tracking = dev_env["exports"]["MLFLOW_TRACKING_URI"]
    rollout = {"steps": [50, 100], "stepIntervalSeconds": 10, "progressDeadlineSeconds": 180,
               "analysis": {"interval": "30s", "minSamples": 10, "checks": [{"name": "error-rate", "maxDelta": 0.05}]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("iris", {"name": "iris", "version": iris_version}, **rollout))
    wait_for(lambda: _serving(custom, namespace, "iris", iris_version), 180, message="the first version Ready")
    good, aborted = register_iris_model(tracking), register_iris_model(tracking)
    with ServiceTraffic(api_client, namespace, "iris", "iris") as traffic:
        wait_for(lambda: traffic.sent > 20, 30, message="traffic through the Service")
        # 1. A good version is promoted step by step.
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": good}}})
        view = wait_for(lambda: (lambda r: r.stdout if "Step:        2 of 2" in r.stdout else None)(
            _kubectl_plugin(dev_env, namespace, "status", "iris")), 120, 1.0, "the status view at step 2")
        assert "Weight:      100% requested" in view and f"canary of version {good}" in view
        wait_for(lambda: _phase(custom, namespace, "iris", "Promoted") and
                 _serving(custom, namespace, "iris", good), 240, 1.0, "the good version promoted")
        promoted = _rollout(custom, namespace, "iris")
        assert [h["decision"] for h in promoted["history"]][-2:] == ["Promote", "Promoted"]
        # 2. The next one is aborted mid-rollout.
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": aborted}}})
        wait_for(lambda: _phase(custom, namespace, "iris", "Progressing"), 60, message="the next canary")
        done = _cli(dev_env, namespace, "abort", "iris")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: _phase(custom, namespace, "iris", "RolledBack"), 120, 1.0, "the abort")
        assert _rollout(custom, namespace, "iris")["reason"] == "aborted by the user"
        # 3. A regressing version is rolled back on its own; its rollout starts with a clean record.
        faulty = register_faulty_model(tracking, "iris")
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": faulty}}})
        fresh = wait_for(lambda: (lambda r: r if r.get("canaryVersion") == faulty else None)(
            _rollout(custom, namespace, "iris")), 60, message="the faulty canary")
        for stale in ("reason", "rejectedVersion", "finishedAt"):
            assert stale not in fresh, (stale, fresh.get(stale))  # not the abort's leftovers
        back = wait_for(lambda: _phase(custom, namespace, "iris", "RolledBack"), 240, 1.0, "the automatic rollback")
        assert back["rejectedVersion"] == faulty and "error-rate" in back["reason"]
        assert _serving(custom, namespace, "iris", good)
        # 4. Undo the promotion: the first version comes back at full size, then takes the traffic.
        done = _cli(dev_env, namespace, "undo", "iris")
        assert done.returncode == 0, done.stderr
        undone = wait_for(lambda: (lambda r: r if r.get("kind") == "Undo" and r.get("phase") == "RolledBack"
                                   else None)(_rollout(custom, namespace, "iris")), 180, 1.0, "the undo")
        assert _serving(custom, namespace, "iris", iris_version)
        # The spec still names the rejected version: it stays rejected (no new canary of it after the undo).
        assert undone["rejectedVersion"] == faulty and undone["history"][-1]["decision"] == "RolledBack"
        assert _body(custom, namespace, "iris")["status"]["previousModel"]["version"] == good
        wait_for(lambda: set(traffic.answers) and traffic.answers.get(iris_version, 0) > 0, 30,
                 message="answers from the version brought back")
        time.sleep(3)
    # Only the regressing model's own answers may fail (500 from the model); nothing else, ever.
    unexpected = traffic.dropped()
    assert traffic.sent > 500 and not unexpected, unexpected[:10]
    assert traffic.min_ready is not None and traffic.min_ready >= 2, traffic.min_ready
    assert traffic.answers.get(good, 0) > 0 and traffic.answers.get(iris_version, 0) > 0


def test_an_alias_triggered_canary_with_default_checks_promotes_an_identical_model(
    operator: Any, dev_env: dict[str, Any], api_client: Any, custom: Any, namespace: str
) -> None:
    """followAlias + rollout (examples/modelversion-canary.yaml) with the default checks: the alias moves to
    a retrained, identical model; the canary must roll out once (not restart every tick), pass the 100 %
    step against the baseline of the step before, and not be rolled back on latency noise."""
    from mlflow import MlflowClient

    tracking = dev_env["exports"]["MLFLOW_TRACKING_URI"]
    model = f"iris-{namespace}"
    registry = MlflowClient(tracking_uri=tracking)
    first = register_iris_model(tracking, model)
    registry.set_registered_model_alias(model, "champion", first)
    mv = _mv("guarded", {"name": model, "alias": "champion"}, steps=[50, 100], stepIntervalSeconds=15,
             progressDeadlineSeconds=180, analysis={"interval": "30s"})
    mv["spec"]["followAlias"] = True
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, mv)
    wait_for(lambda: _serving(custom, namespace, "guarded", first), 180, message="the first version Ready")
    second = register_iris_model(tracking, model)
    with ServiceTraffic(api_client, namespace, "guarded", model, rate=25) as traffic:
        wait_for(lambda: traffic.sent > 20, 30, message="traffic through the Service")
        registry.set_registered_model_alias(model, "champion", second)
        started = wait_for(lambda: _phase(custom, namespace, "guarded", "Progressing"), 60, message="the canary")
        ro = wait_for(lambda: _phase(custom, namespace, "guarded", "Promoted", "RolledBack", "Cancelled"), 300, 1.0,
                      "the alias-triggered canary to finish")
    assert ro["phase"] == "Promoted", (ro.get("reason"), ro.get("analysis"))
    assert ro["startedAt"] == started["startedAt"] and ro["canaryVersion"] == second
    decisions = [h["decision"] for h in ro["history"]]
    assert decisions.count("Start") == 1 and "Cancel" not in decisions, decisions
    # The 100 % step was judged: latency against the baseline measured at the 50 % step.
    checks = {m["check"]: m for m in ro["analysis"]}
    assert set(checks) == {"error-rate", "latency-p99"} and all(m["verdict"] == "Pass" for m in checks.values())
    assert checks["latency-p99"]["storedBaseline"] is True
    assert _serving(custom, namespace, "guarded", second)
    assert not traffic.failures, traffic.failures[:5]


def test_a_step_is_never_passed_on_the_previous_steps_traffic(
    operator: Any, dev_env: dict[str, Any], api_client: Any, custom: Any, namespace: str, iris_version: str
) -> None:
    """Traffic stops after the first step: the second step has no samples of its own, so it must hold and
    roll back at its deadline — not pass on step one's requests (cf. flagger#1011)."""
    tracking = dev_env["exports"]["MLFLOW_TRACKING_URI"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _mv(
        "iris", {"name": "iris", "version": iris_version}, steps=[50, 100], stepIntervalSeconds=15,
        progressDeadlineSeconds=50, analysis={"interval": "1m", "minSamples": 20,
                                              "checks": [{"name": "error-rate", "maxDelta": 0.05}]}))
    wait_for(lambda: _serving(custom, namespace, "iris", iris_version), 180, message="the first version Ready")
    newer = register_iris_model(tracking)
    with ServiceTraffic(api_client, namespace, "iris", "iris") as traffic:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": newer}}})
        wait_for(lambda: (lambda r: r if r.get("step") == 1 else None)(_rollout(custom, namespace, "iris")), 120,
                 0.5, "the second step")
        traffic.paused.set()  # no more traffic from here on
        ro = wait_for(lambda: _phase(custom, namespace, "iris", "Promoted", "RolledBack", "Promoting"), 180, 1.0,
                      "the second step's verdict")
    assert ro["phase"] == "RolledBack", ro
    assert "no data" in ro["reason"] and "< minSamples 20" in ro["reason"], ro["reason"]


def test_a_crash_looping_canary_is_rolled_back_naming_its_restarts(
    operator: Any, dev_env: dict[str, Any], api_client: Any, custom: Any, namespace: str, iris_version: str
) -> None:
    """Every answer of the canary is right, but its process crashes every 40 predictions: with analysis off,
    steps used to advance on time alone; restarts are a built-in failing check (cf. argo-rollouts#3765)."""
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _mv(
        "iris", {"name": "iris", "version": iris_version}, steps=[50, 100], stepIntervalSeconds=20,
        analysis={"enabled": False}))
    wait_for(lambda: _serving(custom, namespace, "iris", iris_version), 180, message="the first version Ready")
    crashing = register_faulty_model(dev_env["exports"]["MLFLOW_TRACKING_URI"], "iris", asset="crashing_model.py")
    with ServiceTraffic(api_client, namespace, "iris", "iris", rate=25, row=SMALL_ROW):
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": crashing}}})
        ro = wait_for(lambda: _phase(custom, namespace, "iris", "Promoted", "RolledBack", "Promoting"), 240, 1.0,
                      "a verdict on the crashing canary")
    assert ro["phase"] == "RolledBack", ro
    assert ro["reason"].startswith("pod-health: canary containers restarted"), ro["reason"]
    assert ro["analysis"][0]["check"] == "pod-health" and ro["analysis"][0]["verdict"] == "Fail"
    assert _serving(custom, namespace, "iris", iris_version)


def test_a_check_returning_several_series_is_an_error_never_a_pass(
    operator: Any, dev_env: dict[str, Any], api_client: Any, custom: Any, namespace: str, iris_version: str
) -> None:
    """A custom query without aggregation returns one series per pod: it used to be judged on whichever came
    first (cf. argo-rollouts#363). It is an Error: inconclusive, and the rollout pauses for a person."""
    query = 'rate(modelpilot_requests_total{{{sel}}}[{interval}])'
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _mv(
        "iris", {"name": "iris", "version": iris_version}, replicas=4, steps=[50, 100], stepIntervalSeconds=10,
        analysis={"interval": "30s", "minSamples": 5, "inconclusiveLimit": 0,
                  "checks": [{"name": "per-pod-rate", "query": query, "min": 0}]}))
    wait_for(lambda: _serving(custom, namespace, "iris", iris_version), 180, message="the first version Ready")
    newer = register_iris_model(dev_env["exports"]["MLFLOW_TRACKING_URI"])
    with ServiceTraffic(api_client, namespace, "iris", "iris", rate=25):
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": newer}}})
        ro = wait_for(lambda: _phase(custom, namespace, "iris", "Paused", "Promoted", "Promoting", "RolledBack"),
                      240, 1.0, "a verdict on the multi-series check")
    assert ro["phase"] == "Paused", ro
    (check,) = [m for m in ro["analysis"] if m["check"] == "per-pod-rate"]
    assert check["verdict"] == "Error" and "series" in check["message"] and "aggregate" in check["message"], check


def test_replica_ratio_weights_are_honoured_within_5_points_or_reported(
    operator: Any, dev_env: dict[str, Any], custom: Any, core: Any, namespace: str, iris_version: str
) -> None:
    """With replicas 2 a "10 %" step sent 50 % of the traffic to the canary, silently. Now extra replicas
    (up to maxSurge) honour each step within ±5 points, or status and an Event say it cannot."""
    slow = {"steps": [25, 100], "stepIntervalSeconds": 3600, "analysis": {"enabled": False}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _mv(
        "exact", {"name": "iris", "version": iris_version}, replicas=1, maxSurge=3, **slow))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _mv(
        "coarse", {"name": "iris", "version": iris_version}, replicas=2, **{**slow, "steps": [10, 100]}))
    for name in ("exact", "coarse"):
        wait_for(lambda: _serving(custom, namespace, name, iris_version), 180, message=f"{name} Ready")
    newer = register_iris_model(dev_env["exports"]["MLFLOW_TRACKING_URI"])
    for name in ("exact", "coarse"):
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                              {"spec": {"model": {"version": newer}}})
    exact = wait_for(lambda: (lambda r: r if r.get("stepStartedAt") else None)(_rollout(custom, namespace, "exact")),
                     180, 1.0, "the exact canary's first step in place")
    assert exact["replicas"] == {"stable": 3, "canary": 1} and exact["effectiveWeight"] == 25
    assert not exact.get("weightWarning")
    ready = [p for p in core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=exact").items
             if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
    assert len(ready) == 4
    coarse = wait_for(lambda: (lambda r: r if r.get("weightWarning") else None)(_rollout(custom, namespace, "coarse")),
                      60, 1.0, "the coarse canary's warning")
    assert "asks for 10% but 3 stable + 1 canary replicas give 25%" in coarse["weightWarning"]
    warned = [e for e in _events(core, namespace, "coarse") if e.reason == "WeightNotHonoured"]
    assert len(warned) == 1 and warned[0].type == "Warning"


def test_a_gateway_canary_is_an_httproute_with_exact_weights_pins_and_a_shadow_phase(
    operator: Any, dev_env: dict[str, Any], api_client: Any, custom: Any, namespace: str, iris_version: str
) -> None:
    """With spec.routing.gatewayRef the canary is an HTTPRoute on the environment's real Gateway (NGINX Gateway
    Fabric on the real node): a shadow phase mirrors traffic to the canary with no weight, then each step gets
    its exact weight — 10 % with 4 replicas, which replica ratio cannot do — and the header x-modelpilot-track
    pins a request to a track; pinned requests are sent through the Gateway's ClusterIP while the canary runs.
    tests/cluster/test_gateway.py measures the Gateway's split itself (90/10 over 2,000 requests)."""
    import json
    import urllib.request

    gw = dev_env["node"]["gateway"]
    gateway_url = gw["url"]  # the Gateway's ClusterIP
    mv = _mv("iris", {"name": "iris", "version": iris_version}, replicas=4, steps=[10, 100],
             stepIntervalSeconds=10, shadowSeconds=10, analysis={"enabled": False})
    mv["spec"]["routing"] = {"gatewayRef": {"name": gw["name"], "namespace": gw["namespace"]}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, mv)
    wait_for(lambda: _serving(custom, namespace, "iris", iris_version), 180, message="the first version Ready")

    def route() -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace,
                                                        "httproutes", "iris"))

    def weights(r: dict[str, Any]) -> dict[str, int]:
        return {ref["name"]: ref["weight"] for ref in r["spec"]["rules"][-1]["backendRefs"]}

    assert weights(route()) == {"iris-stable": 100}
    newer = register_iris_model(dev_env["exports"]["MLFLOW_TRACKING_URI"])
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                          {"spec": {"model": {"version": newer}}})
    seen: list[tuple[bool, dict[str, int]]] = []
    pinned: dict[str, str] = {}

    def answered_by(track: str) -> str | None:
        req = urllib.request.Request(f"{gateway_url}/v2/models/iris/infer", data=json.dumps(SMALL_ROW).encode(),
                                     headers={"Content-Type": "application/json", "x-modelpilot-track": track})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return str(json.loads(resp.read())["model_version"])
        except OSError:
            return None  # NGF reloads nginx after each route change: the next sample asks again

    def observe() -> Any:
        r = route()
        state = (bool(r["spec"]["rules"][-1].get("filters")), weights(r))
        if not seen or seen[-1] != state:
            seen.append(state)
        if len(r["spec"]["rules"]) == 3:
            pins = {rule["matches"][0]["headers"][0]["value"]: rule["backendRefs"][0]["name"]
                    for rule in r["spec"]["rules"][:2]}
            assert pins == {"canary": "iris-canary", "stable": "iris-stable"}, pins
            for track in ("canary", "stable"):
                if track not in pinned and (version := answered_by(track)):
                    pinned[track] = version
        return _phase(custom, namespace, "iris", "Promoted", "RolledBack")

    ro = wait_for(observe, 240, 0.5, "the Gateway canary to finish")
    assert ro["phase"] == "Promoted", ro
    assert (True, {"iris-stable": 100, "iris-canary": 0}) in seen  # the shadow phase: mirrored, no weight
    assert (False, {"iris-stable": 90, "iris-canary": 10}) in seen  # exactly 10 %
    assert (False, {"iris-stable": 0, "iris-canary": 100}) in seen
    assert seen[-1] == (False, {"iris-stable": 100})  # after promotion: everything on stable, no canary rules
    # Through the real Gateway while the canary ran: the header reached each track's own version.
    assert pinned == {"canary": newer, "stable": iris_version}, pinned
    decisions = [h["decision"] for h in ro["history"]]
    assert "shadow phase passed" in " ".join(h["message"] for h in ro["history"]), decisions
    assert _serving(custom, namespace, "iris", newer)


def test_a_version_change_mid_rollout_restarts_the_canary_on_its_own_pods(
    operator: Any, dev_env: dict[str, Any], custom: Any, namespace: str, iris_version: str
) -> None:
    """The spec moves on while a canary runs: the new canary must be judged on its own pods. (Found by a
    fresh-eyes try: the old canary's ready pods counted as the new step's, and the new pods' start-up read as
    a readiness flap, so the new version was rolled back within a second.)"""
    tracking = dev_env["exports"]["MLFLOW_TRACKING_URI"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _mv(
        "iris", {"name": "iris", "version": iris_version}, steps=[50, 100], stepIntervalSeconds=15,
        analysis={"enabled": False}))
    wait_for(lambda: _serving(custom, namespace, "iris", iris_version), 180, message="the first version Ready")
    second, third = register_iris_model(tracking), register_iris_model(tracking)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                          {"spec": {"model": {"version": second}}})
    wait_for(lambda: (lambda r: r if r.get("canaryVersion") == second and r.get("stepStartedAt") else None)(
        _rollout(custom, namespace, "iris")), 120, 0.5, "the first canary's step in place")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                          {"spec": {"model": {"version": third}}})
    ro = wait_for(lambda: (lambda r: r if r.get("canaryVersion") == third and r.get("phase") in
                           ("Promoted", "RolledBack") else None)(_rollout(custom, namespace, "iris")), 240, 1.0,
                  "the second canary to finish")
    assert ro["phase"] == "Promoted", (ro.get("reason"), ro.get("history"))
    assert _serving(custom, namespace, "iris", third)
