"""The operator against the real local environment: MLflow registry → ModelVersion → serving pods.

The operator runs as its own process (``modelpilot operator``), exactly as a
user runs it; the apiserver, MLflow and the serving containers on the real node
are real, and requests go to the ModelVersion's Service (its ClusterIP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelpilot_dev.workloads import post_json, register_iris_model, service_url, wait_for

GROUP, VERSION, PLURAL = "modelpilot.io", "v1alpha1", "modelversions"


def _mv(name: str, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"model": model, **spec}}


def _get(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def _ready(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    body = _get(custom, ns, name)
    ok = _condition(body, "Ready").get("status") == "True"
    return body if ok and body["status"].get("observedGeneration") == body["metadata"]["generation"] else None


def _predict(core: client.CoreV1Api, namespace: str, service: str = "iris") -> Any:
    """One v2 prediction sent to the Service's ClusterIP (kube-proxy picks the pod)."""
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}
    return post_json(f"{service_url(core.api_client, namespace, service)}/v2/models/iris/infer", body)


def _set_alias(tracking: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking).set_registered_model_alias("iris", alias, version)


def test_a_model_version_becomes_ready_with_its_provenance_pinned(
    operator: Any, dev_env: dict[str, Any], custom: Any, core: Any, apps: Any, namespace: str, iris_version: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("iris", {"name": "iris", "version": iris_version}, replicas=2))
    # `kubectl wait --for=condition=Ready` is how users and CI wait on it.
    env = {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}
    subprocess.run([dev_env["binaries"]["kubectl"], "wait", "-n", namespace, "--for=condition=Ready",
                    "modelversion/iris", "--timeout=180s"], env=env, check=True, capture_output=True, timeout=200)
    body = wait_for(lambda: _ready(custom, namespace, "iris"), 30, message="observedGeneration to catch up")
    status = body["status"]
    assert status["model"]["version"] == iris_version and status["model"]["name"] == "iris"
    assert len(status["model"]["runId"]) == 32
    assert status["model"]["artifactUri"].startswith("mlflow-artifacts:/")
    assert status["model"]["flavor"] == "sklearn" and "sepal_length" in status["model"]["signature"]
    assert status["phase"] == "Ready" and status["readyReplicas"] == 2
    dep = apps.read_namespaced_deployment("iris", namespace)
    assert dep.metadata.owner_references[0].kind == "ModelVersion"
    assert dep.spec.template.metadata.labels["modelpilot.io/run-id"] == status["model"]["runId"]
    svc = core.read_namespaced_service("iris", namespace)
    assert svc.spec.selector == {"modelpilot.io/modelversion": "iris"}
    pods = core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=iris").items
    assert len(pods) == 2
    assert pods[0].metadata.annotations["modelpilot.io/model-uri"] == f"models:/iris/{iris_version}"
    assert _predict(core, namespace)["outputs"][0]["data"] == [0]  # setosa
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=iris").items
    assert {"Resolved", "Ready"} <= {e.reason for e in events if e.involved_object.kind == "ModelVersion"}

    # Deleting the ModelVersion garbage-collects what it owns, and the serving processes stop.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris")

    def collected() -> bool:
        try:
            apps.read_namespaced_deployment("iris", namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(collected, 60, message="the Deployment to be garbage-collected")
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, 60, message="the pods to go away")


def test_an_unknown_model_is_not_ready_with_the_registry_message_and_nothing_is_deployed(
    operator: Any, custom: Any, apps: Any, namespace: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("ghost", {"name": "ghost-model", "version": "1"}))

    def failed() -> Any:
        body = _get(custom, namespace, "ghost")
        return body if _condition(body, "Ready").get("reason") == "ModelNotFound" else None

    body = wait_for(failed, 60, message="Ready=False reason ModelNotFound")
    assert _condition(body, "Ready")["status"] == "False"
    assert "ghost-model" in _condition(body, "Ready")["message"]
    # Someone has to register it or fix the spec: Stalled (kstatus Failed) — still retried with back-off.
    assert body["status"]["phase"] == "Failed"
    assert _condition(body, "Reconciling")["status"] == "False" and _condition(body, "Stalled")["status"] == "True"
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("ghost", namespace)
    assert missing.value.status == 404


def test_registry_errors_never_touch_the_running_deployment(
    operator: Any, custom: Any, apps: Any, core: Any, namespace: str, iris_version: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("iris", {"name": "iris", "version": iris_version}))
    wait_for(lambda: _ready(custom, namespace, "iris"), 180, message="Ready")
    before = apps.read_namespaced_deployment("iris", namespace)

    # 1. A version that does not exist.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                          {"spec": {"model": {"version": "999"}}})
    body = wait_for(lambda: (lambda b: b if _condition(b, "Resolved").get("reason") == "ModelNotFound" else None)(
        _get(custom, namespace, "iris")), 60, message="Resolved=False ModelNotFound")
    assert "999" in _condition(body, "Resolved")["message"]
    # 2. MLflow unreachable (a per-resource tracking URI where nothing listens).
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                          {"spec": {"model": {"version": "998"},
                                                    "registry": {"trackingUri": "http://127.0.0.1:9"}}})
    wait_for(lambda: _condition(_get(custom, namespace, "iris"), "Resolved").get("reason") == "RegistryUnavailable",
             60, message="Resolved=False RegistryUnavailable")
    after = apps.read_namespaced_deployment("iris", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert after.spec.template == before.spec.template and after.spec.replicas == before.spec.replicas
    assert (after.status.available_replicas or 0) == 1
    assert _predict(core, namespace)["outputs"][0]["data"] == [0]


def test_following_an_alias_rolls_out_the_new_version_while_the_old_one_serves(
    operator: Any, dev_env: dict[str, Any], custom: Any, apps: Any, core: Any, namespace: str, iris_version: str
) -> None:
    tracking = dev_env["exports"]["MLFLOW_TRACKING_URI"]
    alias = f"a{namespace.replace('-', '')}"
    _set_alias(tracking, alias, iris_version)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("follow", {"name": "iris", "alias": alias}, followAlias=True))
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("pinned", {"name": "iris", "alias": alias}))
    for name in ("follow", "pinned"):
        body = wait_for(lambda n=name: _ready(custom, namespace, n), 180, message=f"{name} Ready")
        assert body["status"]["model"]["version"] == iris_version and body["status"]["model"]["alias"] == alias

    newer = register_iris_model(tracking, "iris")
    _set_alias(tracking, alias, newer)

    # While the new version rolls out, the old one keeps serving: availability never drops to 0.
    def rolled() -> Any:
        dep = apps.read_namespaced_deployment("follow", namespace)
        assert (dep.status.available_replicas or 0) >= 1, "no replica available during the rolling update"
        body = _ready(custom, namespace, "follow")
        return body if body and body["status"]["model"]["version"] == newer else None

    body = wait_for(rolled, 180, 0.3, "the followed alias to roll out")
    pods = [p for p in core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=follow").items
            if p.metadata.deletion_timestamp is None]
    assert {p.metadata.labels["modelpilot.io/version"] for p in pods} == {newer}
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=follow").items
    assert "AliasMoved" in {e.reason for e in events}
    # Without followAlias the version pinned at creation stays (several poll intervals later).
    time.sleep(6)
    assert _get(custom, namespace, "pinned")["status"]["model"]["version"] == iris_version


def test_the_operator_exports_its_own_metrics(
    operator: Any, custom: Any, namespace: str, iris_version: str, metrics_port: int
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("iris", {"name": "iris", "version": iris_version}))
    wait_for(lambda: _ready(custom, namespace, "iris"), 180, message="Ready")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    text = wait_for(lambda: (lambda t: t if 'modelpilot_operator_resources{kind="ModelVersion",phase="Ready"}' in t
                             else None)(scrape()), 30, message="the Ready phase gauge")
    assert 'modelpilot_operator_reconciles_total{kind="ModelVersion",result="success"}' in text
    assert "modelpilot_operator_reconcile_duration_seconds_bucket" in text


def test_a_second_replica_with_lower_priority_stands_by(
    operator: Any, operator_env: Any, custom: Any, namespace: str, iris_version: str, tmp_path: Path
) -> None:
    from modelpilot_dev.environment import free_port

    def peers() -> list[int]:
        try:
            body = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "modelpilot")
        except ApiException as exc:
            if exc.status == 404:  # the first replica has not created it yet
                return []
            raise
        return sorted(v["priority"] for v in (body.get("status") or {}).values() if isinstance(v, dict))

    # The running replica has announced itself (two replicas starting in the same instant can
    # both act briefly before either sees the other: a known limit of kopf's peering).
    wait_for(lambda: 100 in peers(), 60, message="the first replica in the peering object")
    logpath = tmp_path / "standby.log"
    with logpath.open("wb") as log:
        standby = subprocess.Popen([sys.executable, "-m", "modelpilot.cli", "operator", "--liveness",
                                    f"http://127.0.0.1:{free_port()}/healthz"],
                                   env=operator_env(MODELPILOT_PRIORITY="10", MODELPILOT_METRICS_PORT="0"),
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: 10 in peers(), 60, message="the second replica in the peering object")
        # Only the higher-priority replica acts on a new ModelVersion.
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                               _mv("iris", {"name": "iris", "version": iris_version}))
        wait_for(lambda: _ready(custom, namespace, "iris"), 180, message="Ready")
        text = logpath.read_text()
        assert "reconciled generation" not in text, text[-2000:]
    finally:
        standby.terminate()
        standby.wait(timeout=20)


def test_changing_the_version_rolls_over_with_no_moment_without_a_ready_pod(
    operator: Any, dev_env: dict[str, Any], custom: Any, apps: Any, core: Any, namespace: str, iris_version: str
) -> None:
    newer = register_iris_model(dev_env["exports"]["MLFLOW_TRACKING_URI"], "iris")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("iris", {"name": "iris", "version": iris_version}, replicas=2))
    wait_for(lambda: _ready(custom, namespace, "iris"), 180, message="Ready on the first version")
    url = service_url(core.api_client, namespace, "iris")
    _predict(core, namespace)  # the Service answers (kube-proxy has programmed its endpoints) before the change
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                          {"spec": {"model": {"version": newer}}})
    samples = 0

    def rolled() -> Any:
        nonlocal samples
        # Every sample: the Service answers ready (a new connection each: kube-proxy picks a ready endpoint).
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as resp:
                assert resp.status == 200
        except OSError as exc:
            raise AssertionError(f"a moment when the Service answered no request during the rollover: {exc}")
        samples += 1
        body = _ready(custom, namespace, "iris")
        return body if body and body["status"]["model"]["version"] == newer else None

    wait_for(rolled, 180, 0.2, "the new version to roll over")
    assert samples > 3
    pods = [p for p in core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=iris").items
            if p.metadata.deletion_timestamp is None]
    assert {p.metadata.annotations["modelpilot.io/model-uri"] for p in pods} == {f"models:/iris/{newer}"}
    # An ordinary rolling update while older pods serve is no Warning, and each transition is one Event.
    events = [e for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=iris").items
              if e.involved_object.kind == "ModelVersion"]
    assert not [(e.reason, e.message) for e in events if e.type == "Warning"]
    reasons = [e.reason for e in events for _ in range(e.count or 1)]
    assert reasons.count("Ready") <= 2 and reasons.count("RollingOut") <= 1, reasons  # first version, new version


MISSING_PACKAGE_MODEL = """# A model whose code needs a package no serving image has.
import modelpilot_missing_dependency  # noqa: F401

import mlflow
from mlflow.pyfunc import PythonModel


class NeedsMissingPackage(PythonModel):
    def predict(self, context, model_input, params=None):
        return [0] * len(model_input)


mlflow.models.set_model(NeedsMissingPackage())
"""


def _register_model_needing_a_missing_package(tracking: str, workdir: Path, name: str) -> str:
    """An MLflow "model from code" that imports ``modelpilot_missing_dependency`` and requires
    ``modelpilot-missing-dependency==1.0``: it can never load in the serving image."""
    import types

    import mlflow

    code = workdir / "needs_missing_package.py"
    code.write_text(MISSING_PACKAGE_MODEL)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment("modelpilot-tests")
    # MLflow imports the code once while logging it; only this test process gets a stand-in module.
    sys.modules["modelpilot_missing_dependency"] = types.ModuleType("modelpilot_missing_dependency")
    try:
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=str(code),
                                           pip_requirements=["modelpilot-missing-dependency==1.0"],
                                           registered_model_name=name)
    finally:
        sys.modules.pop("modelpilot_missing_dependency", None)
    return str(info.registered_model_version)


def test_a_model_that_can_never_load_says_why_in_its_ready_condition(
    operator: Any, dev_env: dict[str, Any], custom: Any, core: Any, namespace: str, iris_version: str,
    tmp_path: Path
) -> None:
    tracking = dev_env["exports"]["MLFLOW_TRACKING_URI"]
    version = _register_model_needing_a_missing_package(tracking, tmp_path, "needs-missing-package")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("needs", {"name": "needs-missing-package", "version": version}))

    # The server says why (503 on ready and live, the reason in its termination message), the liveness
    # probe (3 x 10 s) restarts it, the kubelet keeps the message in lastState, the operator surfaces it.
    def failed() -> Any:
        body = _get(custom, namespace, "needs")
        return body if "modelpilot-missing-dependency" in _condition(body, "Ready").get("message", "") else None

    try:
        body = wait_for(failed, 240, 1.0, "the Ready condition to name the missing package")
    except TimeoutError:
        pods = core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=needs").items
        print(_get(custom, namespace, "needs").get("status"), [p.status.container_statuses for p in pods])
        raise
    ready = _condition(body, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ServingFailed", ready
    assert ready["message"].startswith("pod needs-") and "model server failed: " in ready["message"], ready
    # The kubelet restarts it until the Deployment's progress deadline (600 s): Retrying, not yet Failed.
    assert body["status"]["phase"] == "Retrying"
    assert _condition(body, "Reconciling")["status"] == "True" and _condition(body, "Stalled")["status"] == "False"
    (pod,) = core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=needs").items
    terminated = pod.status.container_statuses[0].last_state.terminated
    assert "modelpilot-missing-dependency" in terminated.message
    assert pod.spec.containers[0].termination_message_policy == "FallbackToLogsOnError"

    # The next crash (same reason) changes nothing: no flapping, one Event for the problem.
    def restarted_twice() -> Any:
        (p,) = core.list_namespaced_pod(namespace, label_selector="modelpilot.io/modelversion=needs").items
        return p if p.status.container_statuses[0].restart_count >= 2 else None

    wait_for(restarted_twice, 180, 1.0, "a second crash of the same pod")
    time.sleep(4)  # two readiness checks
    again = _condition(_get(custom, namespace, "needs"), "Ready")
    assert (again["reason"], again["message"], again["lastTransitionTime"]) == (
        ready["reason"], ready["message"], ready["lastTransitionTime"])
    events = [e for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=needs").items
              if e.reason == "ServingFailed"]
    assert len(events) == 1 and (events[0].count or 1) == 1, [(e.message, e.count) for e in events]
    assert events[0].type == "Warning" and "modelpilot-missing-dependency" in events[0].message

    # A version that loads: once its pod is ready the condition is back to normal.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "needs",
                                          {"spec": {"model": {"name": "iris", "version": iris_version}}})
    body = wait_for(lambda: _ready(custom, namespace, "needs"), 180, message="Ready on a loadable version")
    assert _condition(body, "Ready")["reason"] == "Available" and body["status"]["phase"] == "Ready"


def test_nothing_blocks_deletion_while_the_operator_is_down(
    operator: Any, dev_env: dict[str, Any], custom: Any, namespace: str
) -> None:
    """kopf timers put a finalizer on every alias-following ModelVersion and every ABTest, so with the operator
    down they could not be deleted. Periodic work now runs without timers: the operator is frozen (SIGSTOP),
    and the resources still go at once."""
    import signal

    from mlflow import MlflowClient

    tracking = dev_env["exports"]["MLFLOW_TRACKING_URI"]
    model = f"iris-{namespace}"
    version = register_iris_model(tracking, model)
    MlflowClient(tracking_uri=tracking).set_registered_model_alias(model, "champion", version)
    mv = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion", "metadata": {"name": "follows"},
          "spec": {"model": {"name": model, "alias": "champion"}, "followAlias": True, "replicas": 1,
                   "rollout": {"steps": [50, 100]}}}
    custom.create_namespaced_custom_object("modelpilot.io", "v1alpha1", namespace, "modelversions", mv)
    ab = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ABTest", "metadata": {"name": "ab"},
          "spec": {"variants": [{"name": "a", "modelVersion": "follows", "weight": 50},
                                {"name": "b", "modelVersion": "not-there", "weight": 50}]}}
    custom.create_namespaced_custom_object("modelpilot.io", "v1alpha1", namespace, "abtests", ab)

    def handled() -> bool:
        mv_status = custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", namespace, "modelversions",
                                                        "follows").get("status") or {}
        ab_status = custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", namespace, "abtests",
                                                        "ab").get("status") or {}
        return bool((mv_status.get("model") or {}).get("version")) and bool(ab_status.get("phase"))

    wait_for(handled, 120, 1.0, "the operator to handle both resources")
    time.sleep(5)  # a few alias polls and ABTest refreshes (every 2-3 s in these tests)
    for plural, name in (("modelversions", "follows"), ("abtests", "ab")):
        body = custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", namespace, plural, name)
        assert not body["metadata"].get("finalizers"), (plural, body["metadata"].get("finalizers"))
    operator.send_signal(signal.SIGSTOP)  # the operator is down
    try:
        for plural, name in (("modelversions", "follows"), ("abtests", "ab")):
            custom.delete_namespaced_custom_object("modelpilot.io", "v1alpha1", namespace, plural, name)

        def gone() -> bool:
            for plural, name in (("modelversions", "follows"), ("abtests", "ab")):
                try:
                    custom.get_namespaced_custom_object("modelpilot.io", "v1alpha1", namespace, plural, name)
                    return False
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            return True

        wait_for(gone, 15, 0.5, "both resources deleted with the operator down")
    finally:
        operator.send_signal(signal.SIGCONT)


def test_companions_follow_the_spec_both_ways_every_time(
    operator: Any, custom: Any, api_client: Any, namespace: str, iris_version: str
) -> None:
    """The HPA and PDB come and go with the spec, again and again: the adapter remembers objects it knows are
    absent (to spare a GET per reconcile), and must forget that when it creates one again."""
    hpas, pdbs = client.AutoscalingV2Api(api_client), client.PolicyV1Api(api_client)

    def exists(read: Any) -> bool:
        try:
            read("iris", namespace)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("iris", {"name": "iris", "version": iris_version}))
    wait_for(lambda: _ready(custom, namespace, "iris"), 120, message="the ModelVersion Ready")
    for round_ in range(2):
        for enabled in (True, False):
            patch = {"spec": {"autoscaling": {"enabled": enabled, "minReplicas": 1, "maxReplicas": 3},
                              "podDisruptionBudget": {"enabled": enabled, "minAvailable": 1}}}
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris", patch)
            wait_for(lambda: exists(hpas.read_namespaced_horizontal_pod_autoscaler) is enabled
                     and exists(pdbs.read_namespaced_pod_disruption_budget) is enabled, 60,
                     message=f"round {round_}: HPA and PDB {'present' if enabled else 'gone'}")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris")


def test_a_serving_deployment_deleted_or_scaled_by_hand_is_put_back(
    operator: Any, dev_env: dict[str, Any], custom: Any, core: Any, apps: Any, namespace: str, iris_version: str
) -> None:
    """The operator converges from any state: ``kubectl scale`` and ``kubectl delete`` on the Deployment a
    ModelVersion owns change nothing in the ModelVersion, yet what its spec asks for comes back, and the model
    answers through its Service again."""
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           _mv("iris", {"name": "iris", "version": iris_version}, replicas=1))
    wait_for(lambda: _ready(custom, namespace, "iris"), 180, message="the ModelVersion Ready")
    env = {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}
    kubectl = dev_env["binaries"]["kubectl"]
    subprocess.run([kubectl, "scale", "-n", namespace, "deployment/iris", "--replicas=3"], env=env, check=True,
                   capture_output=True, timeout=60)
    wait_for(lambda: apps.read_namespaced_deployment("iris", namespace).spec.replicas == 1, 60,
             message="spec.replicas put back to the ModelVersion's 1")
    uid = apps.read_namespaced_deployment("iris", namespace).metadata.uid
    subprocess.run([kubectl, "delete", "-n", namespace, "deployment/iris", "--wait=false"], env=env, check=True,
                   capture_output=True, timeout=60)

    def recreated() -> bool:
        try:
            return bool(apps.read_namespaced_deployment("iris", namespace).metadata.uid != uid)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    wait_for(recreated, 60, message="the Deployment created again")
    wait_for(lambda: _ready(custom, namespace, "iris"), 180, message="the ModelVersion Ready again")

    def answer() -> Any:
        try:
            return _predict(core, namespace)
        except OSError:  # the Service's endpoints may trail the new pod's readiness by a moment
            return None

    assert wait_for(answer, 60, message="an answer through the Service")["outputs"][0]["data"] == [0]


class _ApiserverProxy:
    """A TCP forwarder in front of the apiserver. ``cut`` stops listening and closes every connection: to the
    process behind it the apiserver is gone (connections refused), while the session's apiserver — which the
    other tests share — keeps running. The fault is injected here, at the network boundary; everything else
    (apiserver, TLS, kopf, the operator process) is real."""

    def __init__(self, target: tuple[str, int]) -> None:
        import socket
        import threading

        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: list[Any] = []
        self._guard = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                downstream, _ = self._listener.accept()
                upstream = socket.create_connection(self._target)
            except OSError:
                return  # cut
            with self._guard:
                self._open += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: Any, sink: Any) -> None:
        import socket

        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        self._listener.close()
        with self._guard:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def test_sigterm_stops_the_operator_within_seconds_when_the_apiserver_is_gone(
    dev_env: dict[str, Any], operator_env: Any, crds_established: None, tmp_path: Path
) -> None:
    """kopf's own stop retried leaving the peering object for ~55 s once the apiserver was gone, holding the
    metrics and liveness ports; the operator now cancels what is left after ``run.STOP_SECONDS``."""
    from urllib.parse import urlparse

    from modelpilot.operator.run import STOP_SECONDS, _cannot_listen
    from modelpilot_dev.environment import free_ports

    kubeconfig = Path(dev_env["exports"]["KUBECONFIG"]).read_text()
    server = next(line.split("server:", 1)[1].strip() for line in kubeconfig.splitlines() if "server:" in line)
    apiserver = urlparse(server)
    assert apiserver.hostname and apiserver.port
    proxy = _ApiserverProxy((apiserver.hostname, apiserver.port))
    # The apiserver's certificate names 127.0.0.1, so the proxy's address verifies as the apiserver's does.
    proxied = tmp_path / "kubeconfig"
    proxied.write_text(kubeconfig.replace(server, f"https://127.0.0.1:{proxy.port}"))
    metrics_port, liveness_port = free_ports(2)
    logpath = tmp_path / "operator.log"
    with logpath.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "modelpilot.cli", "operator"],
                                env=operator_env(KUBECONFIG=str(proxied), MODELPILOT_PRIORITY="3",
                                                 MODELPILOT_METRICS_PORT=str(metrics_port),
                                                 MODELPILOT_LIVENESS_PORT=str(liveness_port),
                                                 MODELPILOT_BIND_ADDRESS="127.0.0.1"),
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        def alive() -> bool:  # kopf answers its liveness endpoint once it has started
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=2) as rsp:
                    return bool(rsp.status == 200)
            except OSError:
                return False

        wait_for(alive, 60, 0.5, "the operator's liveness endpoint")
        proxy.cut()
        time.sleep(2)  # kopf notices: its watches fail and are retried with back-off
        started = time.monotonic()
        proc.terminate()
        code = proc.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = logpath.read_text()
    assert code == 0, text[-3000:]
    assert took < STOP_SECONDS + 10, (took, text[-3000:])
    assert "SIGTERM received: the operator is stopping" in text, text[-3000:]
    assert (f"did not stop within {STOP_SECONDS:g} s: kopf is still waiting on the Kubernetes API at "
            f"https://127.0.0.1:{proxy.port}") in text, text[-3000:]
    assert "Unclosed client session" not in text, text[-3000:]
    for port in (metrics_port, liveness_port):
        assert _cannot_listen("127.0.0.1", port) == "", f"port {port} still taken after the operator exited"
