"""The ModelVersion reconciler on every path (plain, canary start/step, promote, rollback), without a cluster.

``FakeKube`` stands in for the Kubernetes adapter (``kube.Kube``): it keeps applied manifests and the
ModelVersion's status in memory, with resourceVersions so optimistic writes can conflict. The MLflow side
is the real ``Registry`` adapter over ``httpx.MockTransport``: a fake at the HTTP boundary, because a real
MLflow cannot be made to refuse credentials or fail on demand.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any

import httpx
import pytest

from modelpilot.operator import abtest, api, plan, reconcile
from modelpilot.operator.kube import KubeError
from modelpilot.operator.reconcile import Reconciler
from modelpilot.operator.registry import Credentials, Registry
from modelpilot.operator.settings import OperatorSettings

NS, NAME, UID = "ml", "iris", "uid-1"


class FakeKube:
    """In-memory stand-in for ``kube.Kube`` (the same method names and return shapes)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = copy.deepcopy(body)
        self.body["metadata"].setdefault("resourceVersion", "1")
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.abtests: list[dict[str, Any]] = []
        self.secrets: dict[str, dict[str, str]] = {}
        self.status_writes = 0
        self.conflict_next = 0  # how many upcoming optimistic status writes conflict
        self.gateways: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) → Gateway
        self.gateway_classes: dict[str, dict[str, Any]] = {}
        self.order: list[tuple[str, str, str]] = []  # ("apply" | "delete", kind, name) as acted on

    # what the adapter's reads would answer now (sync, for the tests' own checks)
    def body_now(self) -> dict[str, Any]:
        return copy.deepcopy(self.body)

    def deployment_now(self, name: str) -> dict[str, Any] | None:
        dep = self.objects.get(("Deployment", name))
        if dep is None:
            return None
        dep = copy.deepcopy(dep)
        replicas = int(dep["spec"].get("replicas", 1))
        dep["metadata"]["generation"] = 1
        dep["status"] = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                         "availableReplicas": replicas, "readyReplicas": replicas}
        return dep

    # reads
    async def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.body_now()

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.deployment_now(name)

    async def list_pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
        return []

    async def read_gateway(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.gateways.get((namespace, name)))

    async def read_gateway_class(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.gateway_classes.get(name))

    async def list_abtests(self, namespace: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.abtests)

    async def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        if name not in self.secrets:
            raise KubeError(f"Secret {namespace}/{name}: 404 not found")
        return dict(self.secrets[name])

    # writes
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.order.append(("apply", manifest["kind"], manifest["metadata"]["name"]))
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = copy.deepcopy(manifest)
        if manifest["kind"] == "Deployment":  # as the API answers an apply: the object now, status included
            return self.deployment_now(manifest["metadata"]["name"]) or {}
        return manifest

    async def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        if (kind, name) in self.objects:
            self.order.append(("delete", kind, name))
        return self.objects.pop((kind, name), None) is not None

    def assume_absent(self, kind: str, namespace: str, name: str, owner_uid: str) -> None:
        pass  # this fake reads its own dict: nothing to spare

    def forget_owner(self, owner_uid: str) -> None:
        pass

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], plural: str = "modelversions",
                     resource_version: str | None = None) -> bool:
        if resource_version is not None:
            if self.conflict_next:
                self.conflict_next -= 1
                self._bump()
                return False
            if resource_version != self.body["metadata"]["resourceVersion"]:
                return False
        merged = {**(self.body.get("status") or {}), **copy.deepcopy(status)}
        self.body["status"] = {k: v for k, v in merged.items() if v is not None}
        self.status_writes += 1
        self._bump()
        return True

    async def post_event(self, involved: dict[str, Any], type: str, reason: str, message: str) -> None:
        pass  # Events are asserted on the reconcilers' results

    async def close(self) -> None:
        pass

    async def release_idle_connections(self) -> bool:
        return False

    def _bump(self) -> None:
        self.body["metadata"]["resourceVersion"] = str(int(self.body["metadata"]["resourceVersion"]) + 1)


SKLEARN_MLMODEL = "flavors: {sklearn: {}, python_function: {}}\n"


def mlflow(versions: dict[str, str], seen: list[httpx.Request] | None = None,
           write_status: int = 200, mlmodel: str = SKLEARN_MLMODEL,
           aliases: dict[str, str] | None = None) -> httpx.MockTransport:
    """A fake MLflow REST API at the HTTP boundary: ``versions`` maps version → run id, ``aliases`` (a dict
    the test may change) alias → version."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        path = request.url.path
        if request.method == "GET" and path.endswith("/registered-models/alias"):
            version = (aliases or {}).get(request.url.params["alias"])
            if version is None:
                return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no alias"})
            return httpx.Response(200, json={"model_version": {"version": version, "run_id": versions[version],
                                                               "status": "READY", "source": "models:/m-1"}})
        if request.method == "POST":
            return httpx.Response(write_status, json={} if write_status < 400 else {"message": "denied"})
        if path.endswith("/model-versions/get"):
            version = request.url.params["version"]
            if version not in versions:
                return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST",
                                                 "message": f"version {version} not found"})
            return httpx.Response(200, json={"model_version": {"version": version, "run_id": versions[version],
                                                               "status": "READY", "source": "models:/m-1"}})
        if path.endswith("/get-download-uri"):
            return httpx.Response(200, json={"artifact_uri": f"mlflow-artifacts:/1/{request.url.params['version']}"})
        if path.endswith("/MLmodel"):
            return httpx.Response(200, text=mlmodel)
        return httpx.Response(404, json={"message": "no such thing"})

    return httpx.MockTransport(handle)


def mv_body(version: str = "1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
            "spec": {"model": {"name": "iris", "version": version}, "replicas": 2, **spec}}


def reconciler(kube: FakeKube, transport: httpx.MockTransport,
               made: list[Credentials] | None = None) -> Reconciler:
    def factory(uri: str, creds: Credentials) -> Registry:
        if made is not None:
            made.append(creds)
        return Registry(uri, creds, transport=transport)

    return Reconciler(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"}), kube,  # type: ignore[arg-type]
                      registry_factory=factory)


def run(kube: FakeKube, rec: Reconciler) -> reconcile.Result:
    return asyncio.run(rec.reconcile(kube.body_now()))


# --------------------------------------------------------------------------- one Event per transition


def _dep(replicas: int, available: int, updated: int) -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "replicas": replicas + (replicas - updated),
                       "updatedReplicas": updated, "availableReplicas": available, "readyReplicas": available}}


def test_an_ordinary_rolling_update_posts_normal_events_only() -> None:
    ready, _ = plan.readiness_status({}, 1, _dep(2, 2, 2), "t0")
    # New pods starting while the old ones still serve: not a Warning, and one Event for the transition.
    rolling, events = plan.readiness_status(ready, 2, _dep(2, 2, 1), "t1")
    assert [(e.type, e.reason) for e in events] == [("Normal", "RollingOut")]
    assert rolling["phase"] == "Deploying"
    _, events = plan.readiness_status(rolling, 2, _dep(2, 2, 1), "t2")
    assert events == []  # still rolling: no further Event
    _, events = plan.readiness_status(rolling, 2, _dep(2, 2, 2), "t3")
    assert [(e.type, e.reason) for e in events] == [("Normal", "Ready")]
    # Nothing serves any more: that is a Warning.
    _, events = plan.readiness_status(ready, 2, _dep(2, 0, 2), "t4")
    assert [(e.type, e.reason) for e in events] == [("Warning", "NotReady")]


def test_a_failing_pod_during_a_rolling_update_is_one_warning() -> None:
    ready, _ = plan.readiness_status({}, 1, _dep(2, 2, 2), "t0")
    crashed = {"metadata": {"name": "iris-new"}, "status": {"containerStatuses": [{
        "name": "server", "ready": False, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "model server failed: boom"}}}]}}
    new, events = plan.readiness_status(ready, 2, _dep(2, 2, 1), "t1", [crashed])
    assert [(e.type, e.reason) for e in events] == [("Warning", "ServingFailed")]
    assert new["phase"] == "Degraded"


def test_a_registry_failure_is_one_warning_however_often_it_is_retried() -> None:
    kube = FakeKube(mv_body("9"))
    rec = reconciler(kube, mlflow({}))  # version 9 is unknown: 404 → ModelNotFound
    first = run(kube, rec)
    assert first.retry and [(e.type, e.reason) for e in first.events] == [("Warning", "ModelNotFound")]
    again = run(kube, rec)
    assert again.retry and again.events == []


def _phase_and_conditions(kube: FakeKube) -> tuple[str, dict[str, tuple[str, str]]]:
    status = kube.body["status"]
    return status["phase"], {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_model_not_found_is_stalled_for_someone_to_act_yet_retried_and_deploys_once_registered() -> None:
    """A model version MLflow does not have waits for someone (register it, or fix the spec): Failed with
    Stalled=True and Reconciling=False, so kstatus, Argo CD and Flux report it instead of waiting — and the
    operator still retries with back-off, so registering it later deploys it without an edit."""
    versions: dict[str, str] = {}
    kube = FakeKube(mv_body("1"))
    rec = reconciler(kube, mlflow(versions))
    result = run(kube, rec)
    assert result.retry
    assert _phase_and_conditions(kube) == ("Failed", {
        "Resolved": ("False", "ModelNotFound"), "Ready": ("False", "ModelNotFound"),
        "Reconciling": ("False", "ModelNotFound"), "Stalled": ("True", "ModelNotFound")})
    assert kube.objects == {}
    versions["1"] = "run1"  # registered meanwhile: the next retry deploys it
    result = run(kube, rec)
    assert not result.retry and kube.body["status"]["phase"] == "Ready"
    assert _phase_and_conditions(kube)[1]["Stalled"][0] == "False"


def test_a_transient_registry_failure_is_resolving_not_failed() -> None:
    kube = FakeKube(mv_body("1"))
    rec = reconciler(kube, httpx.MockTransport(lambda request: httpx.Response(503, text="starting")))
    result = run(kube, rec)
    assert result.retry
    assert _phase_and_conditions(kube) == ("Resolving", {
        "Resolved": ("False", "RegistryUnavailable"), "Ready": ("False", "RegistryUnavailable"),
        "Reconciling": ("True", "RegistryUnavailable"), "Stalled": ("False", "RegistryUnavailable")})


def test_a_readiness_transition_written_meanwhile_is_not_posted_again() -> None:
    """A Deployment event's refresh wrote Ready=True (and posted Ready) after kopf read the body this
    reconcile starts from: the reconcile judges the transition against what was written, so no second Event."""
    kube = FakeKube(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    stale = kube.body_now()
    first = run(kube, rec)
    assert [e.reason for e in first.events] == ["Resolved", "Ready"]
    stale["status"] = {**kube.body["status"], "conditions": [c for c in kube.body["status"]["conditions"]
                                                            if c["type"] == "Resolved"]}
    again = asyncio.run(rec.reconcile(stale))  # stale: no Ready condition in it
    assert [e.reason for e in again.events] == []
    # A conflicting write is retried on the fresh version, still with one Event at most.
    kube.conflict_next = 1
    assert run(kube, rec).events == []


# --------------------------------------------------------------------------- a spec that does not parse


def _reason(kube: FakeKube, kind: str) -> tuple[str, str, str]:
    c = next(c for c in kube.body["status"]["conditions"] if c["type"] == kind)
    return c["status"], c["reason"], c["message"]


def test_a_spec_that_does_not_parse_is_a_spec_error_naming_the_field_not_an_exception() -> None:
    """The API server validated the spec, so only an object stored before the schema (or written around it) does
    not parse: the SpecError path names each field, nothing is applied, and the kopf handler returns — no
    exception, no retry (only a new spec can fix it, and a new spec is a reconcile of its own)."""
    import kopf

    from modelpilot.operator import handlers

    body = mv_body("1")
    # Broken after mv_body(): test_api_contract parses every body the tests build with it.
    body["spec"]["rollout"] = {"steps": [0, 100], "canarySteps": [5]}
    kube = FakeKube(body)
    settings = OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"})
    memo = handlers.configure(settings, kube)  # type: ignore[arg-type]
    asyncio.run(handlers.model_version_event(body=kopf.Body(kube.body_now()), type="ADDED", memo=memo))
    asyncio.run(memo.core.stop())
    assert not memo.core.ticker.interval("retry", NS, NAME)  # only a new spec can fix it: nothing retried
    assert kube.objects == {}  # nothing applied (and nothing deleted)
    status, reason, message = _reason(kube, "Resolved")
    assert (status, reason) == ("False", "SpecError")
    assert "spec.rollout.steps[0]: Input should be greater than or equal to 1" in message
    assert "spec.rollout.canarySteps: Extra inputs are not permitted" in message
    assert _reason(kube, "Ready")[:2] == ("False", "SpecError") and kube.body["status"]["phase"] == "Failed"
    # The one dead end of this path: nothing is retried, so kstatus reads Stalled, not in progress.
    assert _reason(kube, "Stalled")[:2] == ("True", "SpecError")
    assert _reason(kube, "Reconciling")[:2] == ("False", "SpecError")
    assert kube.body["status"]["observedGeneration"] == 1

    rec = reconciler(kube, mlflow({"1": "run1"}))
    writes = kube.status_writes
    again = run(kube, rec)  # e.g. a rollout tick: said already, nothing written again
    assert again.events == [] and not again.retry and kube.status_writes == writes


def test_a_serving_model_version_whose_spec_stops_parsing_keeps_serving_and_says_why_once() -> None:
    kube = FakeKube(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    run(kube, rec)
    deployment = copy.deepcopy(kube.objects[("Deployment", NAME)])
    kube.body["spec"]["replicas"] = -1
    kube.body["spec"]["serving"] = {"tolerations": [{"operator": "Maybe"}]}
    kube.body["metadata"]["generation"] += 1
    result = run(kube, rec)
    assert not result.retry and [(e.type, e.reason) for e in result.events] == [("Warning", "SpecError")]
    assert result.events[0].message.startswith("the spec cannot be read: spec.replicas: ")
    assert "spec.serving.tolerations[0].operator: Input should be 'Exists' or 'Equal'" in result.events[0].message
    assert kube.objects[("Deployment", NAME)] == deployment  # what serves is left as it is
    assert _reason(kube, "Resolved")[:2] == ("False", "SpecError")
    assert _reason(kube, "Ready")[0] == "True" and kube.body["status"]["model"]["version"] == "1"
    assert run(kube, rec).events == []  # one Event per problem
    kube.body["spec"]["serving"] = {}  # still unreadable (replicas), but another problem: said again
    kube.body["metadata"]["generation"] += 1
    assert [e.reason for e in run(kube, rec).events] == ["SpecError"]
    kube.body["spec"]["replicas"] = 3  # fixed
    kube.body["metadata"]["generation"] += 1
    run(kube, rec)
    assert _reason(kube, "Resolved")[:2] == ("True", "Resolved")
    assert kube.objects[("Deployment", NAME)]["spec"]["replicas"] == 3


# --------------------------------------------------------------------------- ABTest membership on every path

ROLLOUT = {"steps": [50, 100], "stepIntervalSeconds": 60, "analysis": {"enabled": False}}


def _member_of_abtest(kube: FakeKube, replicas: int = 3) -> None:
    kube.abtests = [{"metadata": {"name": "iris-ab", "namespace": NS},
                     "spec": {"variants": [{"name": "a", "modelVersion": NAME, "weight": 50},
                                           {"name": "b", "modelVersion": "iris-b", "weight": 50}]},
                     "status": {"variants": [{"name": "a", "modelVersion": NAME, "replicas": replicas}]}}]


def _pod_labels(kube: FakeKube, name: str = NAME) -> dict[str, str]:
    return kube.objects[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]


def _edit(kube: FakeKube, version: str | None = None, action: str | None = None) -> None:
    if version is not None:
        kube.body["spec"]["model"]["version"] = version
        kube.body["metadata"]["generation"] += 1
    if action is not None:
        kube.body["metadata"].setdefault("annotations", {})[reconcile.ACTION_ANNOTATION] = action


def _started_canary() -> tuple[FakeKube, Reconciler]:
    kube = FakeKube(mv_body("1", rollout=ROLLOUT))
    _member_of_abtest(kube)
    rec = reconciler(kube, mlflow({"1": "run1", "2": "run2"}))
    run(kube, rec)  # plain path: the first deployment
    assert _pod_labels(kube)[abtest.ABTEST_LABEL] == "iris-ab"
    assert kube.objects[("Deployment", NAME)]["spec"]["replicas"] == 3  # the ABTest's share, not spec.replicas
    _edit(kube, version="2")
    run(kube, rec)  # canary path: the rollout starts
    assert kube.body["status"]["rollout"]["phase"] == "Progressing"
    for name in (NAME, f"{NAME}-canary"):
        assert _pod_labels(kube, name)[abtest.ABTEST_LABEL] == "iris-ab", name
    replicas = kube.body["status"]["rollout"]["replicas"]
    assert replicas == {"stable": 3, "canary": 2}  # surge first: the canary comes up before stable shrinks
    run(kube, rec)  # the canary is ready: the stable track shrinks to its share of the ABTest's 3
    replicas = kube.body["status"]["rollout"]["replicas"]
    assert replicas == {"stable": 2, "canary": 2}  # 50 % of the ABTest's share, within maxSurge
    return kube, rec


def test_abtest_membership_is_kept_through_a_promotion() -> None:
    kube, rec = _started_canary()
    _edit(kube, action="promote")
    run(kube, rec)
    assert kube.body["status"]["rollout"]["phase"] == "Promoting"  # the new version at full size first
    assert ("Deployment", f"{NAME}-canary") in kube.objects
    run(kube, rec)
    assert kube.body["status"]["rollout"]["phase"] == "Promoted"
    assert ("Deployment", f"{NAME}-canary") not in kube.objects
    labels = _pod_labels(kube)
    assert labels[abtest.ABTEST_LABEL] == "iris-ab" and labels["modelpilot.io/version"] == "2"
    assert kube.objects[("Deployment", NAME)]["spec"]["replicas"] == 3


def test_abtest_membership_is_kept_through_a_rollback_and_after_it() -> None:
    kube, rec = _started_canary()
    _edit(kube, action="abort")
    run(kube, rec)
    assert kube.body["status"]["rollout"]["phase"] == "RollingBack"  # the stable version at full size first
    run(kube, rec)
    assert kube.body["status"]["rollout"]["phase"] == "RolledBack"
    labels = _pod_labels(kube)
    assert labels[abtest.ABTEST_LABEL] == "iris-ab" and labels["modelpilot.io/version"] == "1"
    run(kube, rec)  # the rejected version is still asked for: the stable one is re-applied
    assert _pod_labels(kube)[abtest.ABTEST_LABEL] == "iris-ab"
    assert kube.objects[("Deployment", NAME)]["spec"]["replicas"] == 3


def test_a_shadow_variant_is_not_labelled_into_the_abtest_service() -> None:
    kube = FakeKube(mv_body("1"))
    kube.abtests = [{"metadata": {"name": "iris-ab", "namespace": NS},
                     "spec": {"variants": [{"name": "a", "modelVersion": "iris-a", "weight": 100},
                                           {"name": "s", "modelVersion": NAME, "shadow": True}]}}]
    run(kube, reconciler(kube, mlflow({"1": "run1"})))
    assert abtest.ABTEST_LABEL not in _pod_labels(kube)


# --------------------------------------------------------------------------- registry write-back


def _secured_canary(write_status: int | None = None) -> tuple[FakeKube, Reconciler, list[httpx.Request]]:
    """A canary of version 2 against a secured MLflow (fake at the HTTP boundary) that accepts only the
    token in the resource's credentials Secret — or, with ``write_status``, answers every write with it."""
    seen: list[httpx.Request] = []
    inner = mlflow({"1": "run1", "2": "run2"}, seen)

    def secured(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Bearer s3cret":
            seen.append(request)
            return httpx.Response(401, json={"message": "unauthenticated"})
        if write_status is not None and request.method == "POST":
            seen.append(request)
            return httpx.Response(write_status, json={"message": "permission denied"})
        return inner.handler(request)  # type: ignore[no-any-return]

    body = mv_body("1", registry={"credentialsSecretRef": {"name": "mlflow-creds"}},
                   rollout={**ROLLOUT, "writeBack": {"enabled": True, "promoteAlias": "champion"}})
    kube = FakeKube(body)
    kube.secrets["mlflow-creds"] = {"MLFLOW_TRACKING_TOKEN": "s3cret"}
    rec = reconciler(kube, httpx.MockTransport(secured))
    run(kube, rec)
    _edit(kube, version="2")
    run(kube, rec)
    assert kube.body["status"]["rollout"]["phase"] == "Progressing"
    return kube, rec, seen


def _condition(kube: FakeKube, kind: str) -> dict[str, Any]:
    return next(c for c in kube.body["status"]["conditions"] if c["type"] == kind)


def test_write_back_uses_the_resources_credentials() -> None:
    kube, rec, seen = _secured_canary()
    _edit(kube, action="promote")
    run(kube, rec)
    result = run(kube, rec)
    writes = [r for r in seen if r.method == "POST"]
    assert [r.url.path.rsplit("/", 1)[-1] for r in writes] == ["alias", "set-tag"]
    assert all(r.headers["Authorization"] == "Bearer s3cret" for r in writes)
    assert json.loads(writes[0].content) == {"name": "iris", "alias": "champion", "version": "2"}
    assert _condition(kube, "RegistryWriteBack")["status"] == "True"
    assert not [e for e in result.events if e.type == "Warning"]


def test_a_refused_write_back_is_a_condition_and_one_event() -> None:
    kube, rec, _ = _secured_canary(write_status=403)
    _edit(kube, action="abort")
    run(kube, rec)
    result = run(kube, rec)
    assert kube.body["status"]["rollout"]["phase"] == "RolledBack"  # the decision stands
    cond = _condition(kube, "RegistryWriteBack")
    assert cond["status"] == "False" and cond["reason"] == "Unauthorized"
    assert "modelpilot.rejected" in cond["message"] and "HTTP 403" in cond["message"]
    failed = [e for e in result.events if e.reason == "RegistryWriteBackFailed"]
    assert len(failed) == 1 and failed[0].type == "Warning"
    # Later reconciles keep the condition and post nothing more about it.
    again = run(kube, rec)
    assert _condition(kube, "RegistryWriteBack")["status"] == "False"
    assert not [e for e in again.events if e.reason == "RegistryWriteBackFailed"]


def test_a_missing_credentials_secret_at_write_back_is_a_spec_error_condition() -> None:
    kube, rec, _ = _secured_canary()
    _edit(kube, action="promote")
    run(kube, rec)
    del kube.secrets["mlflow-creds"]
    result = run(kube, rec)
    assert kube.body["status"]["rollout"]["phase"] == "Promoted"
    assert _condition(kube, "RegistryWriteBack")["reason"] == "SpecError"
    assert [e.reason for e in result.events if e.type == "Warning"] == ["RegistryWriteBackFailed"]


# --------------------------------------------------------------------------- bounded status


def test_a_12000_column_signature_is_summarised_and_held_once() -> None:
    import yaml

    from modelpilot.operator.registry import SIGNATURE_MAX_BYTES, SIGNATURE_MAX_INPUTS

    columns = [{"type": "double", "name": f"feature_{i:05d}", "required": True} for i in range(12_000)]
    mlmodel = yaml.safe_dump({"flavors": {"sklearn": {}, "python_function": {}},
                              "signature": {"inputs": json.dumps(columns), "outputs": "[]"}})
    kube = FakeKube(mv_body("1", rollout=ROLLOUT))
    rec = reconciler(kube, mlflow({"1": "run1", "2": "run2"}, mlmodel=mlmodel))
    run(kube, rec)
    model = kube.body["status"]["model"]
    kept = json.loads(model["signature"])
    assert len(model["signature"].encode()) <= SIGNATURE_MAX_BYTES
    assert 0 < len(kept) <= SIGNATURE_MAX_INPUTS and kept == columns[:len(kept)]
    assert model["signatureInputs"] == 12_000 and model["signatureTruncated"] is True
    bounded = len(json.dumps(kube.body["status"]).encode())
    assert bounded < 16_384, bounded  # the logged signature alone is ~600 kB

    _edit(kube, version="2")
    run(kube, rec)  # a canary: the stable version's signature only, none in status.rollout
    assert kube.body["status"]["rollout"]["phase"] == "Progressing"
    assert "signature" not in kube.body["status"]["rollout"]["canaryModel"]
    assert json.dumps(kube.body["status"]).count("feature_00000") == 1
    assert len(json.dumps(kube.body["status"]).encode()) < 24_576

    _edit(kube, action="promote")
    run(kube, rec)  # Promoting: the new version at full size on the stable track
    run(kube, rec)  # the promoted version gets its (summarised) signature back from MLflow
    model = kube.body["status"]["model"]
    assert model["version"] == "2" and model["signatureInputs"] == 12_000 and model["signatureTruncated"] is True
    assert json.dumps(kube.body["status"]).count("feature_00000") == 1


def test_a_small_signature_is_kept_as_logged() -> None:
    from modelpilot.operator.registry import summarise_signature

    small = json.dumps([{"type": "double", "name": "sepal_length"}])
    assert summarise_signature(small) == (small, 1, False)
    assert summarise_signature("") == ("", None, False)
    text, count, truncated = summarise_signature("x" * 10_000)  # not JSON: cut at the byte bound
    assert len(text) == 4096 and count is None and truncated


# --------------------------------------------------------------------------- guarded rollouts (issue 12)


def test_an_alias_triggered_canary_rolls_out_instead_of_restarting_every_tick() -> None:
    """With followAlias, each tick pinned the stable version again, decided the spec no longer asked for the
    canary, cancelled and restarted it: the rollout thrashed (examples/modelversion-canary.yaml)."""
    aliases = {"champion": "1"}
    body = mv_body("1", followAlias=True, rollout=ROLLOUT)
    body["spec"]["model"] = {"name": "iris", "alias": "champion"}
    kube = FakeKube(body)
    rec = reconciler(kube, mlflow({"1": "run1", "2": "run2"}, aliases=aliases))
    run(kube, rec)
    assert kube.body["status"]["model"]["version"] == "1"
    aliases["champion"] = "2"
    result = asyncio.run(rec.reconcile(kube.body_now(), refresh=True))  # the poll
    ro = kube.body["status"]["rollout"]
    assert ro["phase"] == "Progressing" and ro["canaryVersion"] == "2" and ro["stableVersion"] == "1"
    assert "AliasMoved" in [e.reason for e in result.events]
    started_at = ro["startedAt"]
    for _ in range(3):  # rollout ticks, and the alias poll again
        result = run(kube, rec)
        assert not {"RolloutCancelled", "RolloutStarted"} & {e.reason for e in result.events}
        asyncio.run(rec.reconcile(kube.body_now(), refresh=True))
    ro = kube.body["status"]["rollout"]
    assert ro["phase"] == "Progressing" and ro["startedAt"] == started_at and ro["canaryVersion"] == "2"
    assert kube.body["status"]["model"]["version"] == "1"  # the stable version serves the rest


def test_a_new_rollout_starts_with_a_clean_record() -> None:
    """reason, rejectedVersion and finishedAt of a rolled-back rollout stayed on the next one: status is
    merge-patched, so the new record names them as null."""
    kube, rec = _started_canary()
    _edit(kube, action="abort")
    run(kube, rec)
    run(kube, rec)
    old = kube.body["status"]["rollout"]
    assert old["phase"] == "RolledBack" and old["reason"] and old["rejectedVersion"] == "2" and old["finishedAt"]
    kube.objects[("Deployment", NAME)]["spec"]["replicas"] = 3
    _edit(kube, version="3")
    rec = reconciler(kube, mlflow({"1": "run1", "2": "run2", "3": "run3"}))
    run(kube, rec)
    ro = kube.body["status"]["rollout"]
    assert ro["phase"] == "Progressing" and ro["canaryVersion"] == "3"
    for key in ("reason", "rejectedVersion", "finishedAt", "finalPhase", "canaryProblem"):
        assert key in ro and ro[key] is None, key


def _promoted_two(versions: dict[str, str]) -> tuple[FakeKube, Reconciler]:
    """Version 1 deployed, then version 2 rolled out and promoted by hand."""
    kube = FakeKube(mv_body("1", rollout=ROLLOUT))
    rec = reconciler(kube, mlflow(versions))
    run(kube, rec)
    _edit(kube, version="2")
    for _ in range(3):
        run(kube, rec)
    _edit(kube, action="promote/2")
    run(kube, rec)
    run(kube, rec)
    return kube, rec


def test_undo_brings_back_the_previous_version_and_keeps_the_undone_one_rejected() -> None:
    kube, rec = _promoted_two({"1": "run1", "2": "run2"})
    assert kube.body["status"]["rollout"]["phase"] == "Promoted"
    assert kube.body["status"]["model"]["version"] == "2"
    assert kube.body["status"]["previousModel"]["version"] == "1"
    _edit(kube, action="undo/2")
    events = []
    for _ in range(6):
        events += [e.reason for e in run(kube, rec).events]
    ro = kube.body["status"]["rollout"]
    assert ro["phase"] == "RolledBack" and ro["kind"] == "Undo" and ro["rejectedVersion"] == "2"  # the spec's
    assert kube.body["status"]["model"]["version"] == "1"
    assert _pod_labels(kube)["modelpilot.io/version"] == "1" and ("Deployment", f"{NAME}-canary") not in kube.objects
    assert events[0] == "RolloutStarted" and "RollbackComplete" in events
    assert [h["decision"] for h in ro["history"]][-1] == "RolledBack"
    run(kube, rec)  # the spec still says version 2: it stays rejected, version 1 serves
    assert kube.body["status"]["model"]["version"] == "1" and kube.body["status"]["rollout"]["phase"] == "RolledBack"


def test_undo_after_a_rollback_keeps_the_spec_version_rejected() -> None:
    """Serving 2 with the spec on rejected 3, undo goes back to 1: the spec's 3 must not start again."""
    kube, rec = _promoted_two({"1": "run1", "2": "run2", "3": "run3"})
    _edit(kube, version="3")
    run(kube, rec)
    _edit(kube, action="abort/3")
    run(kube, rec)
    run(kube, rec)
    assert kube.body["status"]["rollout"]["rejectedVersion"] == "3"
    _edit(kube, action="undo/2")
    for _ in range(6):
        run(kube, rec)
    ro = kube.body["status"]["rollout"]
    assert ro["kind"] == "Undo" and ro["phase"] == "RolledBack" and ro["rejectedVersion"] == "3"
    assert kube.body["status"]["model"]["version"] == "1"
    run(kube, rec)
    assert kube.body["status"]["rollout"]["kind"] == "Undo"  # no new canary of version 3


def test_undo_with_nothing_to_go_back_to_says_so() -> None:
    kube = FakeKube(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    run(kube, rec)
    _edit(kube, action="undo")
    result = run(kube, rec)
    assert [e.reason for e in result.events if e.type == "Warning"] == ["UndoImpossible"]
    assert kube.body["status"]["model"]["version"] == "1"


def _route(kube: FakeKube) -> dict[str, Any]:
    return kube.objects[("HTTPRoute", NAME)]


def _weights(kube: FakeKube) -> dict[str, int]:
    default = _route(kube)["spec"]["rules"][-1]
    return {ref["name"]: ref["weight"] for ref in default["backendRefs"]}


def test_a_gateway_canary_gets_exact_weights_header_pinning_and_a_shadow_phase(monkeypatch: Any) -> None:
    from modelpilot.operator import rollout

    clock = [1_800_000_000.0]
    monkeypatch.setattr(reconcile, "now_iso", lambda: rollout.fmt_time(clock[0]))

    def tick(seconds: float = 1) -> reconcile.Result:
        clock[0] += seconds
        return run(kube, rec)

    body = mv_body("1", routing={"gatewayRef": {"name": "gw", "namespace": "infra"}},
                   rollout={"steps": [10, 50, 100], "stepIntervalSeconds": 30, "shadowSeconds": 20,
                            "analysis": {"enabled": False}})
    body["spec"]["replicas"] = 4
    kube = FakeKube(body)
    rec = reconciler(kube, mlflow({"1": "run1", "2": "run2"}))
    run(kube, rec)
    route = _route(kube)
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw",
                                            "namespace": "infra"}]
    assert _weights(kube) == {f"{NAME}-stable": 100} and len(route["spec"]["rules"]) == 1  # no canary: no pins
    assert kube.objects[("Service", NAME)]["spec"]["selector"]["modelpilot.io/track"] == "stable"
    assert kube.objects[("Service", f"{NAME}-canary")]["spec"]["selector"]["modelpilot.io/track"] == "canary"
    assert kube.body["status"]["gatewayRoute"] == NAME

    _edit(kube, version="2")
    tick()
    ro = kube.body["status"]["rollout"]
    assert ro["shadow"] is True and ro["routeWeight"] == 0
    assert kube.objects[("Deployment", f"{NAME}-canary")]["spec"]["replicas"] == 1  # its share of the first step
    assert kube.objects[("Deployment", NAME)]["spec"]["replicas"] == 4  # stable keeps every replica
    tick()  # the canary is ready: mirrored traffic, no weight
    rules = _route(kube)["spec"]["rules"]
    assert [r["matches"][0]["headers"][0]["value"] for r in rules[:2]] == ["canary", "stable"]
    assert rules[0]["matches"][0]["headers"][0]["name"] == "x-modelpilot-track"
    assert rules[-1]["filters"] == [{"type": "RequestMirror", "requestMirror": {"backendRef": {
        "kind": "Service", "name": f"{NAME}-canary", "port": 80}}}]
    assert _weights(kube) == {f"{NAME}-stable": 100, f"{NAME}-canary": 0}
    tick(21)  # the shadow phase passed (analysis off: healthy pods for its duration)
    assert kube.body["status"]["rollout"]["shadow"] is False
    tick()
    assert _weights(kube) == {f"{NAME}-stable": 90, f"{NAME}-canary": 10}  # exact, with 4 replicas
    assert "filters" not in _route(kube)["spec"]["rules"][-1]
    assert kube.body["status"]["rollout"]["effectiveWeight"] == 10
    tick(31)  # next step: the canary grows to 2 replicas first; the route keeps 10 % until they are ready
    assert _weights(kube)[f"{NAME}-canary"] == 10
    assert kube.objects[("Deployment", f"{NAME}-canary")]["spec"]["replicas"] == 2
    tick()
    assert _weights(kube) == {f"{NAME}-stable": 50, f"{NAME}-canary": 50}
    tick(31)
    tick()
    assert _weights(kube) == {f"{NAME}-stable": 0, f"{NAME}-canary": 100}
    tick(31)  # promote: the stable Deployment runs version 2 at full size while the canary takes everything
    assert kube.body["status"]["rollout"]["phase"] == "Promoting" and _weights(kube)[f"{NAME}-canary"] == 100
    tick()  # version 2 ready on stable: all traffic to it, the canary stays while the Gateway applies that
    assert _weights(kube)[f"{NAME}-canary"] == 0 and ("Deployment", f"{NAME}-canary") in kube.objects
    tick(2)
    assert ("Deployment", f"{NAME}-canary") in kube.objects  # within ROUTE_GRACE_SECONDS
    tick(5)
    assert kube.body["status"]["rollout"]["phase"] == "Promoted"
    assert ("Deployment", f"{NAME}-canary") not in kube.objects
    assert _weights(kube) == {f"{NAME}-stable": 100} and len(_route(kube)["spec"]["rules"]) == 1
    assert _pod_labels(kube)["modelpilot.io/version"] == "2"
    assert not [k for k in kube.objects if k[0] == "SnippetsFilter"]  # no Gateway to read: the standard form


def _ngf(kube: FakeKube) -> None:
    """The spec's Gateway infra/gw belongs to an NGINX Gateway Fabric class."""
    kube.gateways[("infra", "gw")] = {"spec": {"gatewayClassName": "nginx"}}
    kube.gateway_classes["nginx"] = {"spec": {"controllerName": "gateway.nginx.org/nginx-gateway-controller"}}


def test_on_nginx_gateway_fabric_the_shadow_phase_mirrors_through_a_snippets_filter_deleted_after_it(
    monkeypatch: Any
) -> None:
    from modelpilot.operator import rollout

    clock = [1_800_000_000.0]
    monkeypatch.setattr(reconcile, "now_iso", lambda: rollout.fmt_time(clock[0]))
    body = mv_body("1", routing={"gatewayRef": {"name": "gw", "namespace": "infra"}},
                   rollout={"steps": [10, 100], "stepIntervalSeconds": 30, "shadowSeconds": 20,
                            "analysis": {"enabled": False}})
    body["spec"]["replicas"] = 4
    kube = FakeKube(body)
    _ngf(kube)
    rec = reconciler(kube, mlflow({"1": "run1", "2": "run2"}))

    def tick(seconds: float = 1) -> None:
        clock[0] += seconds
        run(kube, rec)

    tick()
    filter_name = f"{NAME}-mirror-{NAME}-canary"
    assert ("SnippetsFilter", filter_name) not in kube.objects
    _edit(kube, version="2")
    tick()
    tick()  # the canary is ready: its shadow phase mirrors
    default = _route(kube)["spec"]["rules"][-1]
    assert default["filters"] == [{"type": "ExtensionRef", "extensionRef": {
        "group": "gateway.nginx.org", "kind": "SnippetsFilter", "name": filter_name}}]
    # The canary is already a weight-0 backendRef of the rule (NGF makes its upstream): not added twice.
    assert _weights(kube) == {f"{NAME}-stable": 100, f"{NAME}-canary": 0}
    snippets = kube.objects[("SnippetsFilter", filter_name)]
    assert snippets["metadata"]["ownerReferences"][0]["uid"] == UID
    assert snippets["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelpilot"
    assert f"proxy_pass http://{NS}_{NAME}-canary_80$request_uri;" in snippets["spec"]["snippets"][0]["value"]
    # Applied before the route that references it.
    first = kube.order.index(("apply", "SnippetsFilter", filter_name))
    assert kube.order[first + 1] == ("apply", "HTTPRoute", NAME)
    tick(21)  # the shadow phase passed
    tick()
    assert _weights(kube) == {f"{NAME}-stable": 90, f"{NAME}-canary": 10}
    assert "filters" not in _route(kube)["spec"]["rules"][-1]
    assert ("SnippetsFilter", filter_name) not in kube.objects
    # Deleted after the route that no longer references it was applied.
    deleted = kube.order.index(("delete", "SnippetsFilter", filter_name))
    assert kube.order[deleted - 1] == ("apply", "HTTPRoute", NAME)
    assert rec.mirror_styles.reads == 1  # one Gateway read for every reconcile of this test (cached)


def test_dropping_the_gateway_removes_its_route_and_track_services() -> None:
    body = mv_body("1", routing={"gatewayRef": {"name": "gw"}})
    kube = FakeKube(body)
    rec = reconciler(kube, mlflow({"1": "run1"}))
    run(kube, rec)
    assert ("HTTPRoute", NAME) in kube.objects
    del kube.body["spec"]["routing"]
    kube.body["metadata"]["generation"] += 1
    run(kube, rec)
    assert ("HTTPRoute", NAME) not in kube.objects and ("Service", f"{NAME}-stable") not in kube.objects
    assert "modelpilot.io/track" not in kube.objects[("Service", NAME)]["spec"]["selector"]
    assert "gatewayRoute" not in kube.body["status"]


def test_a_deployment_event_showing_the_state_readiness_was_written_from_reads_nothing() -> None:
    """Most Deployment events are the controller's own bookkeeping: one that shows the state the ModelVersion's
    readiness was last written from is skipped; any change in what readiness is judged on is not."""
    kube = FakeKube(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    run(kube, rec)
    dep = kube.deployment_now(NAME)
    assert dep is not None
    assert rec.readiness_unchanged(NS, NAME, copy.deepcopy(dep))
    relabelled = copy.deepcopy(dep)
    relabelled["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "2"}
    assert rec.readiness_unchanged(NS, NAME, relabelled)  # bookkeeping only
    for field, value in (("readyReplicas", 1), ("observedGeneration", 0), ("updatedReplicas", 0)):
        moved = copy.deepcopy(dep)
        moved["status"][field] = value
        assert not rec.readiness_unchanged(NS, NAME, moved), field
    moved = copy.deepcopy(dep)
    moved["metadata"]["generation"] = 2
    assert not rec.readiness_unchanged(NS, NAME, moved)
    assert not rec.readiness_unchanged(NS, "another", dep)  # never written: refresh
    rec.forget(NS, NAME)
    assert not rec.readiness_unchanged(NS, NAME, dep)


class _Settling(FakeKube):
    """A Deployment that is not available until ``available`` is set (as right after it is applied)."""

    available = False

    def deployment_now(self, name: str) -> dict[str, Any] | None:
        dep = super().deployment_now(name)
        if dep is not None and not self.available:
            dep["status"].update(availableReplicas=0, readyReplicas=0)
        return dep


def test_a_readiness_write_that_conflicts_is_judged_again_not_dropped() -> None:
    """Found by tests/cluster/test_cold_start.py: the Deployment became available, its refresh's write met
    kopf's own annotation patch (409) and was dropped; the Deployment had settled, so no event came again and
    the ModelVersion stayed not Ready for good."""
    kube = _Settling(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    first = run(kube, rec)
    assert reconcile_ready(first.status) == "False"
    kube.available = True
    kube.conflict_next = 2  # two other writers came first
    result = asyncio.run(rec.refresh_readiness(NS, NAME))
    assert result is not None and [e.reason for e in result.events] == ["Ready"]
    assert reconcile_ready(kube.body["status"]) == "True"


class _Answering(_Settling):
    """As the real adapter: status writes answer with the object as written, reads are counted, and the
    Deployment carries a resourceVersion that moves with its status."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.reads: list[str] = []
        self.deployment_rv = 100

    def deployment_now(self, name: str) -> dict[str, Any] | None:
        dep = super().deployment_now(name)
        if dep is not None:
            dep["metadata"]["resourceVersion"] = str(self.deployment_rv)
        return dep

    async def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append("ModelVersion")
        return await super().read_model_version(namespace, name)

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append("Deployment")
        return await super().read_deployment(namespace, name)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], plural: str = "modelversions",
                           resource_version: str | None = None) -> Any:
        written = await super().patch_status(namespace, name, status, plural, resource_version)
        return self.body_now() if written else None


def test_a_deployment_event_is_judged_as_delivered_from_the_newest_known_model_version() -> None:
    """In a burst every readiness refresh read the ModelVersion and the Deployment again (two GETs per event,
    ~1,000 per 200 creates): now the Deployment is the event's copy and the ModelVersion the newest copy the
    watch or the operator's own write answered with. Same verdict, one Event, no read."""
    kube = _Answering(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    assert reconcile_ready(run(kube, rec).status) == "False"
    kube.available, kube.deployment_rv = True, 101
    kube.reads.clear()
    result = asyncio.run(rec.refresh_readiness(NS, NAME, kube.deployment_now(NAME)))
    assert result is not None and [e.reason for e in result.events] == ["Ready"]
    assert reconcile_ready(kube.body["status"]) == "True" and kube.reads == []


def test_the_readiness_view_of_a_deployment_judges_as_the_whole_deployment() -> None:
    """A reconcile keeps only the readiness view of its Deployment's apply answer (no pod template) while its other
    objects are applied: readiness, the pods' selector and the copy's order must read the same from it."""
    kube = _Answering(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    run(kube, rec)
    for available in (False, True):
        kube.available = available
        full = kube.deployment_now(NAME)
        assert full is not None and full["spec"]["template"]
        view = reconcile.readiness_view(full)
        assert "template" not in view["spec"] and view["spec"]["selector"] == full["spec"]["selector"]
        assert plan.observe(view) == plan.observe(full)
        assert reconcile._observed_key(view) == reconcile._observed_key(full)  # noqa: SLF001
        assert reconcile.resource_version(view) == reconcile.resource_version(full) == 100


def test_an_older_copy_of_the_deployment_never_undoes_a_newer_verdict() -> None:
    """kopf queues an object's events while its handler runs, so an event can deliver a Deployment older than the
    one readiness was last written from: it is not judged again (no Ready flap, no Event)."""
    kube = _Answering(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    run(kube, rec)
    kube.available = False
    old = kube.deployment_now(NAME)  # rv 100, not available
    kube.available, kube.deployment_rv = True, 105
    asyncio.run(rec.refresh_readiness(NS, NAME, kube.deployment_now(NAME)))
    assert reconcile_ready(kube.body["status"]) == "True"
    writes = kube.status_writes
    assert asyncio.run(rec.refresh_readiness(NS, NAME, old)) is None
    assert reconcile_ready(kube.body["status"]) == "True" and kube.status_writes == writes
    # A copy that cannot be ordered (no number) is read afresh instead of trusted.
    unordered = kube.deployment_now(NAME)
    assert unordered is not None
    unordered["metadata"]["resourceVersion"] = "opaque"
    unordered["status"]["availableReplicas"] = 0
    kube.reads.clear()
    asyncio.run(rec.refresh_readiness(NS, NAME, unordered))
    assert "Deployment" in kube.reads and reconcile_ready(kube.body["status"]) == "True"


def test_a_stale_known_copy_of_the_model_version_costs_a_read_not_a_wrong_status() -> None:
    """Someone else wrote the ModelVersion after the copy the operator knows: the conditional write conflicts,
    the refresh reads it and judges again on what is there."""
    kube = _Answering(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    run(kube, rec)
    kube.body["metadata"]["labels"] = {"touched": "yes"}
    kube._bump()  # noqa: SLF001 — another writer: the known copy is now one version behind
    kube.available, kube.deployment_rv = True, 101
    kube.reads.clear()
    result = asyncio.run(rec.refresh_readiness(NS, NAME, kube.deployment_now(NAME)))
    assert result is not None and [e.reason for e in result.events] == ["Ready"]
    assert kube.reads == ["ModelVersion"] and reconcile_ready(kube.body["status"]) == "True"
    rec.forget(NS, NAME)  # gone: nothing known about it is kept
    assert rec.known_body(NS, NAME) is None



def test_one_lock_per_model_version_while_in_use_and_none_kept_after() -> None:
    """Reconciles and refreshes of one ModelVersion run one at a time (they share its lock while any of them holds
    or awaits it); other ModelVersions do not wait; no lock is kept once nobody uses it."""
    locks = reconcile.KeyedLocks()
    order: list[tuple[str, str, int]] = []

    async def one(name: str, i: int) -> None:
        async with locks(NS, name):
            order.append(("in", name, i))
            await asyncio.sleep(0.01)
            order.append(("out", name, i))

    async def main() -> None:
        await asyncio.gather(*(one("a", i) for i in range(3)), one("b", 0))

    asyncio.run(main())
    a = [step for step in order if step[1] == "a"]
    assert a == [("in", "a", 0), ("out", "a", 0), ("in", "a", 1), ("out", "a", 1), ("in", "a", 2), ("out", "a", 2)]
    assert order.index(("in", "b", 0)) < order.index(("out", "a", 0))  # b did not wait for a
    assert len(locks) == 0


def test_an_event_after_the_deletion_leaves_nothing_behind() -> None:
    """The garbage collector deletes a ModelVersion's Deployment after the ModelVersion: that event refreshes a
    ModelVersion that is gone. Nothing of it may stay (a lock per deleted ModelVersion stayed, found by counting
    what pinned the operator's memory after 200 creates and deletions)."""
    from modelpilot.operator.core import OperatorCore

    class Gone(FakeKube):
        async def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
            return None

    kube = Gone(mv_body("1"))
    core = OperatorCore(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"}), kube)  # type: ignore[arg-type]
    body = {**mv_body("1"), "status": {"model": {"name": "iris", "version": "1"}}}
    body["metadata"]["resourceVersion"] = "7"
    core.seen(body, "MODIFIED")
    assert core.reconciler.known_body(NS, NAME) is not None
    core.seen(body, "DELETED")
    asyncio.run(core.refresh(NS, NAME, logging.getLogger("test"), None))  # the late Deployment event
    assert core.reconciler.known_body(NS, NAME) is None
    assert len(core.reconciler.lock) == 0
    assert ("readiness", NS, NAME) not in core.ticker.tracked()



def test_deployment_events_behind_a_held_lock_are_not_held_and_the_newest_copy_is_judged_once() -> None:
    """While a reconcile holds a ModelVersion's lock (a create's waits seconds for its Service), its Deployment's
    events return at once instead of queueing whole bodies behind it; when the lock frees, one refresh judges the
    newest copy they delivered (an older one arriving late does not replace it; an event that asks for a read
    wins over any copy)."""
    from modelpilot.operator.core import OperatorCore

    kube = _Answering(mv_body("1"))
    core = OperatorCore(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"}), kube)  # type: ignore[arg-type]
    rec = core.reconciler
    rec.registries = reconciler(kube, mlflow({"1": "run1"})).registries
    judged: list[dict[str, Any] | None] = []
    real = rec.refresh_readiness

    async def spy(namespace: str, name: str, deployment: dict[str, Any] | None = None) -> reconcile.Result | None:
        judged.append(deployment)
        return await real(namespace, name, deployment)

    rec.refresh_readiness = spy  # type: ignore[method-assign]

    def copy_at(rv: int) -> dict[str, Any]:
        kube.available, kube.deployment_rv = True, rv
        dep = kube.deployment_now(NAME)
        assert dep is not None
        return dep

    async def main() -> None:
        await rec.reconcile(kube.body_now())
        async with rec.lock(NS, NAME):  # a reconcile holds the lock
            for rv in (101, 103, 102):  # the handler's calls: none waits
                core.request_refresh(NS, NAME, copy_at(rv))
            await asyncio.sleep(0.05)
            assert judged == [] and len(core._refreshers) == 1  # noqa: SLF001 — one waits, none ran
        while core._refreshers:  # noqa: SLF001
            await asyncio.sleep(0.01)
        assert [reconcile.resource_version(d) for d in judged] == [103]
        assert reconcile_ready(kube.body["status"]) == "True"
        async with rec.lock(NS, NAME):
            core.request_refresh(NS, NAME, copy_at(104))
            core.request_refresh(NS, NAME, None)  # a canary's event: read it
            core.request_refresh(NS, NAME, copy_at(105))
        while core._refreshers:  # noqa: SLF001
            await asyncio.sleep(0.01)
        assert judged[1:] == [None] and "Deployment" in kube.reads
        assert not core._refresh_due  # noqa: SLF001 — nothing left waiting

    asyncio.run(main())


def reconcile_ready(status: dict[str, Any]) -> str:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), "")


def test_a_model_version_that_is_not_ready_is_rechecked_until_it_is() -> None:
    """Level-triggered readiness: whatever events were missed, the ticker re-reads a ModelVersion that serves a
    pinned model but is not Ready (for its current generation), and stops once it is."""
    from modelpilot.operator.core import OperatorCore

    core = OperatorCore(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"}), FakeKube(mv_body("1")))  # type: ignore[arg-type]
    key = ("readiness", NS, NAME)

    def seen(ready: str, observed: int, generation: int = 1, model: bool = True, type: str = "MODIFIED") -> bool:
        body = mv_body("1")
        body["metadata"]["generation"] = generation
        body["status"] = {"conditions": [{"type": "Ready", "status": ready, "observedGeneration": observed}],
                          **({"model": {"name": "iris", "version": "1"}} if model else {})}
        core.seen(body, type)
        return key in core.ticker._due  # noqa: SLF001 — what the ticker was told is the point

    assert seen("False", 1)
    assert not seen("True", 1)
    assert seen("True", 1, generation=2)  # judged on an older spec
    assert not seen("False", 1, model=False)  # nothing pinned yet: kopf's retries own that
    assert seen("False", 1) and not seen("False", 1, type="DELETED")
    asyncio.run(core.stop())


def _model(version: str) -> Any:
    from modelpilot.operator.registry import ResolvedModel

    return ResolvedModel(name="iris", version=version, alias="", run_id=f"run{version}", artifact_uri="a",
                         source="s", flavor="sklearn", signature="", resolved_at="t")


def _summary(objects: plan.Objects) -> list[tuple[str, str, str]]:
    return [(verb, what["kind"], what["metadata"]["name"]) if verb == "apply" else (verb, *what)
            for verb, what in objects.steps]


def test_the_owned_objects_of_every_path_come_from_one_pure_plan() -> None:
    from modelpilot.operator import builders

    owner = builders.Owner(name=NAME, namespace=NS, uid=UID)
    fields = mv_body("2")["spec"]
    spec = api.ModelVersionSpec.model_validate(fields)  # as reconcile() hands it down
    plain = plan.desired_objects(owner, spec, _model("1"), None, "http://mlflow", "img",
                                      had_gateway_route=False)
    assert _summary(plain) == [("delete", "Deployment", f"{NAME}-canary"), ("apply", "Deployment", NAME),
                               ("apply", "Service", NAME), ("delete", "HorizontalPodAutoscaler", NAME),
                               ("delete", "PodDisruptionBudget", NAME)]
    assert plain.gateway_route == plan.KEEP
    # A canary step behind a Gateway, for an ABTest member: canary first, both tracks labelled, exact weight.
    member = plan.Membership("exp", None, False)
    gated = api.ModelVersionSpec.model_validate({**fields, "routing": {"gatewayRef": {"name": "gw"}}})
    step = plan.desired_objects(owner, gated, _model("1"), member, "http://mlflow", "img",
                                     had_gateway_route=True, stable_replicas=2, canary=(_model("2"), 1),
                                     route_weight=20)
    summary = _summary(step)
    assert summary[0] == ("apply", "Deployment", f"{NAME}-canary") and summary[1] == ("apply", "Deployment", NAME)
    assert summary[-3:] == [("apply", "Service", f"{NAME}-stable"), ("apply", "Service", f"{NAME}-canary"),
                            ("apply", "HTTPRoute", NAME)]
    deployments = {w["metadata"]["name"]: w for v, w in step.steps if v == "apply" and w["kind"] == "Deployment"}
    for dep in deployments.values():
        assert dep["spec"]["template"]["metadata"]["labels"]["modelpilot.io/abtest"] == "exp"
    assert deployments[NAME]["spec"]["replicas"] == 2 and deployments[f"{NAME}-canary"]["spec"]["replicas"] == 1
    route = next(w for v, w in step.steps if v == "apply" and w["kind"] == "HTTPRoute")
    weights = [(b["name"], b["weight"]) for b in route["spec"]["rules"][-1]["backendRefs"]]
    assert weights == [(f"{NAME}-stable", 80), (f"{NAME}-canary", 20)] and step.gateway_route == NAME
    # The Gateway dropped from the spec: its route and Services go, and status forgets the route.
    dropped = plan.desired_objects(owner, spec, _model("2"), None, "http://mlflow", "img",
                                        had_gateway_route=True)
    assert _summary(dropped)[-3:] == [("delete", "HTTPRoute", NAME), ("delete", "Service", f"{NAME}-stable"),
                                      ("delete", "Service", f"{NAME}-canary")]
    assert dropped.gateway_route is None


# --------------------------------------------------------------------------- reads spared on a first reconcile


class CountingKube(FakeKube):
    """Records which owned objects the reconciler declares absent without asking the API."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.assumed: list[tuple[str, str]] = []

    def assume_absent(self, kind: str, namespace: str, name: str, owner_uid: str) -> None:
        self.assumed.append((kind, name))


def test_a_new_model_version_with_the_crds_default_status_is_known_to_own_nothing_yet() -> None:
    # The apiserver defaults status to {observedGeneration: 0} (kstatus reads "in progress"); a first
    # reconcile must still know nothing it owns exists yet. (It tested for "no status at all", which the
    # default made unreachable: 2–5 needless reads per new ModelVersion, seen in the apiserver's metrics.)
    body = mv_body("1")
    body["status"] = {"observedGeneration": 0}
    kube = CountingKube(body)
    rec = reconciler(kube, mlflow({"1": "run-1"}))
    run(kube, rec)
    assert ("HorizontalPodAutoscaler", NAME) in kube.assumed and ("PodDisruptionBudget", NAME) in kube.assumed
    assert ("Deployment", f"{NAME}-canary") in kube.assumed
    kube.assumed.clear()
    run(kube, rec)  # status written now: objects may exist, so they are checked again
    assert kube.assumed == []


def test_a_create_reconciles_from_the_event_body_and_later_ones_read_afresh() -> None:
    class Reads(FakeKube):
        reads = 0

        async def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
            self.reads += 1
            return self.body_now()

    body = mv_body("1")
    body["status"] = {"observedGeneration": 0}  # as the apiserver defaults it
    body["metadata"]["resourceVersion"] = "1"
    kube = Reads(body)
    rec = reconciler(kube, mlflow({"1": "run-1"}))
    done = asyncio.run(rec.reconcile_latest(NS, NAME, seen=kube.body_now()))
    assert done is not None and kube.reads == 0 and kube.body["status"]["model"]["version"] == "1"
    # Status written now: an event's copy may be behind another writer's, so the body is read inside the lock.
    asyncio.run(rec.reconcile_latest(NS, NAME, seen=kube.body_now()))
    assert kube.reads == 1
    # A stale create event delivered after the status write still writes nothing over it: the write is
    # conditional on the old body's resourceVersion, so it is judged again on a fresh read.
    asyncio.run(rec.reconcile_latest(NS, NAME, seen=body))
    assert kube.reads == 2 and kube.body["status"]["model"]["version"] == "1"


class _MovesOn(FakeKube):
    """The stable Deployment's apply answers 'not available yet'; by any later read it is available."""

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        answer = await super().apply(manifest)
        if manifest["kind"] == "Deployment":
            answer = copy.deepcopy(answer)
            answer["status"].update(availableReplicas=0, readyReplicas=0, updatedReplicas=0)
        return answer


def test_readiness_is_judged_on_a_fresh_read_when_the_apply_answer_is_old(monkeypatch: Any) -> None:
    # In a burst the Service apply waits seconds on the apiserver's ClusterIP allocator; by then the Deployment
    # has moved on, and judging on the apply's answer cost a second status write (and Ready came later).
    kube = _MovesOn(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    first = run(kube, rec)  # everything applied at once: the answer is fresh and stands
    assert reconcile_ready(first.status) == "False"
    kube = _MovesOn(mv_body("1"))
    rec = reconciler(kube, mlflow({"1": "run1"}))
    monkeypatch.setattr(reconcile, "STALE_APPLY_SECONDS", -1.0)  # as if the applies after it took long
    first = run(kube, rec)
    assert reconcile_ready(first.status) == "True" and [e.reason for e in first.events] == ["Resolved", "Ready"]


def test_a_rollout_step_judges_readiness_on_the_deployment_after_it_not_on_the_scale_answer() -> None:
    """A step scales the stable Deployment: the apply answers before its controller observed the new generation
    (not available). Judged on that answer, every step flapped the ModelVersion to Ready=False ("RollingOut")
    and back — and its ABTest to VariantsNotReady — while the stable version served throughout."""
    kube = _MovesOn(mv_body("1", rollout=ROLLOUT))
    rec = reconciler(kube, mlflow({"1": "run1", "2": "run2"}))
    run(kube, rec)
    asyncio.run(rec.refresh_readiness(NS, NAME))  # the Deployment's next event: available, Ready
    assert reconcile_ready(kube.body["status"]) == "True"
    _edit(kube, version="2")
    for _ in range(3):  # start, then steps as the canary becomes ready
        result = run(kube, rec)
        assert reconcile_ready(result.status) == "True", result.events
        assert not {"RollingOut", "NotReady"} & {e.reason for e in result.events}
    assert kube.body["status"]["rollout"]["phase"] == "Progressing"


def test_periodic_runs_are_not_queued_behind_a_burst_of_reconciles() -> None:
    from modelpilot.operator.core import OperatorCore

    kube = FakeKube(mv_body("1"))
    core = OperatorCore(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"}), kube)  # type: ignore[arg-type]
    core.reconciler.registries = reconciler(kube, mlflow({"1": "run1"})).registries

    async def scenario() -> None:
        core.reconcile_slots = asyncio.Semaphore(0)  # every slot taken by a burst of creates
        result = await asyncio.wait_for(core.measured_or_logged(NS, NAME, refresh=False), 5)
        assert result is not None and not result.retry
        await core.stop()

    asyncio.run(scenario())


# --------------------------------------------------------------------------- level-triggered watch events


def _event_core(kube: FakeKube, transport: httpx.MockTransport) -> tuple[Any, list[str]]:
    """kopf's memo with the operator's core, the fake API and a fake MLflow; and the list of reconciles run."""
    from modelpilot.operator import handlers

    settings = OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"})
    memo = handlers.configure(settings, kube)  # type: ignore[arg-type]
    memo.core.reconciler = reconciler(kube, transport)
    runs: list[str] = []
    real = memo.core.reconciler.reconcile_latest

    async def counted(namespace: str, name: str, **kw: Any) -> Any:
        runs.append(name)
        return await real(namespace, name, **kw)

    memo.core.reconciler.reconcile_latest = counted
    return memo, runs


def test_watch_events_reconcile_a_spec_not_yet_observed_and_resume_each_model_version_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """ModelVersions are level-triggered (no kopf create/update/resume handlers, no annotation written on them):
    an event is acted on when its spec's generation is not yet in ``status.observedGeneration``, or on the
    first listing after a (re)start — whatever events were missed in between."""
    import kopf

    from modelpilot.operator import handlers

    kube = FakeKube(mv_body("1"))
    transport = mlflow({"1": "run-1", "2": "run-2"})
    memo, runs = _event_core(kube, transport)

    def new_spec(version: str) -> None:
        kube.body["spec"]["model"]["version"] = version
        kube.body["metadata"]["generation"] += 1

    async def scenario() -> None:
        async def event(type: str | None, core: Any = memo) -> None:
            await handlers.model_version_event(body=kopf.Body(kube.body_now()), type=type, memo=core)

        with caplog.at_level(logging.INFO, logger="modelpilot.operator.core"):
            await event("ADDED")  # new: the CRD's default observedGeneration 0 is not generation 1
        assert runs == [NAME] and kube.body["status"]["observedGeneration"] == 1
        said = [r.getMessage() for r in caplog.records if "reconciled" in r.getMessage()]
        assert said == [f"[{NS}/{NAME}] reconciled generation 1: phase Ready"], said
        await event("MODIFIED")  # its own status write coming back
        await event(None)  # kopf re-lists at every watch restart: reconciled already in this process
        assert len(runs) == 1
        new_spec("2")
        await event("MODIFIED")
        assert len(runs) == 2 and kube.body["status"]["model"]["version"] == "2"
        new_spec("1")  # that event was missed: the next listing shows the new generation
        await event(None)
        assert len(runs) == 3 and kube.body["status"]["model"]["version"] == "1"
        assert kube.body["status"]["observedGeneration"] == 3
        # A restarted operator resumes each ModelVersion once (its rendering may have changed), on its first
        # listing; later listings of the same, unchanged object do nothing.
        restarted, again = _event_core(kube, transport)
        await event(None, restarted)
        await event(None, restarted)
        await event("MODIFIED", restarted)
        assert again == [NAME]
        # Being deleted, or gone: nothing to reconcile, even with a spec not observed.
        new_spec("2")
        kube.body["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
        await event("MODIFIED", restarted)
        await event("DELETED", restarted)
        assert again == [NAME]
        for core in (memo.core, restarted.core):
            await core.stop()

    asyncio.run(scenario())


def test_a_failed_reconcile_is_retried_by_the_ticker_until_it_succeeds() -> None:
    """No kopf retry exists for a watch event: an unreachable registry is retried on the ticker with back-off
    (10 s, then doubling), and the retry is forgotten once a reconcile succeeded."""
    import kopf

    from modelpilot.operator import handlers

    kube = FakeKube(mv_body("1"))
    healthy = mlflow({"1": "run-1"})
    down = {"now": True}

    def handle(request: httpx.Request) -> httpx.Response:
        if down["now"]:  # the registry's outage, injected at the HTTP boundary
            return httpx.Response(503, text="upstream unavailable")
        return healthy.handle_request(request)

    memo, runs = _event_core(kube, httpx.MockTransport(handle))

    async def scenario() -> None:
        await handlers.model_version_event(body=kopf.Body(kube.body_now()), type="ADDED", memo=memo)
        assert memo.core.ticker.interval("retry", NS, NAME) == 10.0
        assert _reason(kube, "Resolved")[0] == "False"
        await memo.core.tick("retry", NS, NAME)  # still down: the next one waits twice as long
        assert memo.core.ticker.interval("retry", NS, NAME) == 20.0
        down["now"] = False
        await memo.core.tick("retry", NS, NAME)
        assert memo.core.ticker.interval("retry", NS, NAME) is None  # succeeded: no more retries
        assert _reason(kube, "Resolved")[0] == "True" and len(runs) == 3
        assert ("Deployment", NAME) in kube.objects
        await memo.core.stop()

    asyncio.run(scenario())


def test_an_unexpected_failure_of_an_event_reconcile_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    """kopf logs and drops an exception from a watch-event handler, so nothing would ever retry that
    ModelVersion: any failure (here a bug, injected) is logged with its traceback and retried by the ticker."""
    import kopf

    from modelpilot.operator import handlers

    kube = FakeKube(mv_body("1"))
    memo, runs = _event_core(kube, mlflow({"1": "run-1"}))
    real = memo.core.reconciler.reconcile_latest
    failures = [RuntimeError("a bug")]

    async def failing_once(namespace: str, name: str, **kw: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(namespace, name, **kw)

    memo.core.reconciler.reconcile_latest = failing_once

    async def scenario() -> None:
        with caplog.at_level(logging.ERROR):
            await handlers.model_version_event(body=kopf.Body(kube.body_now()), type="ADDED", memo=memo)
        assert memo.core.ticker.interval("retry", NS, NAME) == 10.0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None and "retrying" in errors[0].getMessage()
        await memo.core.tick("retry", NS, NAME)
        assert memo.core.ticker.interval("retry", NS, NAME) is None
        assert kube.body["status"]["observedGeneration"] == 1 and ("Deployment", NAME) in kube.objects
        await memo.core.stop()

    asyncio.run(scenario())


class _Tampered(FakeKube):
    """The fake API, plus what the adapter tells of Deployments: whether one's spec was changed by someone else
    (set by the test, as ``Kube.changed_by_others`` reads generations) and which ones it deleted itself."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.tampered = False
        self.deleted_here: set[str] = set()

    def changed_by_others(self, deployment: dict[str, Any]) -> bool:
        return self.tampered

    def known_absent(self, kind: str, namespace: str, name: str) -> bool:
        return name in self.deleted_here

    def forget_deployment(self, namespace: str, name: str) -> None:
        pass


def test_a_deployment_deleted_or_changed_by_someone_else_is_put_back() -> None:
    """Level-triggered for the owned objects too: ``kubectl delete deployment`` or ``kubectl scale`` on a serving
    Deployment leaves the ModelVersion's spec as it was, so no ModelVersion event comes; the Deployment's own
    event has the ModelVersion reconciled, which applies what its spec asks for again. Not when the Deployment
    goes because its ModelVersion was deleted (the garbage collector), nor for a canary this operator deleted."""
    import kopf

    from modelpilot.operator import handlers

    kube = _Tampered(mv_body("1"))
    memo, runs = _event_core(kube, mlflow({"1": "run-1"}))

    async def settle() -> None:
        while memo.core._refreshers:  # noqa: SLF001 - the reconciles the events asked for, run to the end
            await asyncio.gather(*list(memo.core._refreshers))  # noqa: SLF001

    async def deployment_event(type: str, deployment: dict[str, Any]) -> None:
        await handlers.deployment_changed(body=kopf.Body(deployment), type=type, memo=memo)
        await settle()

    async def scenario() -> None:
        await handlers.model_version_event(body=kopf.Body(kube.body_now()), type="ADDED", memo=memo)
        assert runs == [NAME]
        deployment = kube.deployment_now(NAME)
        assert deployment is not None and deployment["metadata"]["ownerReferences"][0]["kind"] == "ModelVersion"
        # kubectl delete deployment iris
        del kube.objects[("Deployment", NAME)]
        await deployment_event("DELETED", deployment)
        assert runs == [NAME, NAME] and kube.deployment_now(NAME) is not None
        # The controller's own status updates: nothing to put back (readiness is refreshed, no reconcile).
        await deployment_event("MODIFIED", kube.deployment_now(NAME) or {})
        assert len(runs) == 2
        # kubectl scale deployment iris --replicas=5: a spec generation this operator did not apply
        kube.tampered = True
        await deployment_event("MODIFIED", kube.deployment_now(NAME) or {})
        kube.tampered = False
        assert len(runs) == 3 and kube.order[-1][0] == "apply"
        # Asked again while its reconcile runs (another change came after its read): one more run, not one per
        # event; asked twice while queued: still one.
        gate = asyncio.Event()
        inner = memo.core.reconciler.reconcile_latest

        async def gated(namespace: str, name: str, **kw: Any) -> Any:
            await gate.wait()  # the reconcile is under way (its lock taken, its read to come)
            return await inner(namespace, name, **kw)

        memo.core.reconciler.reconcile_latest = gated
        memo.core.request_reconcile(NS, NAME, "test")
        memo.core.request_reconcile(NS, NAME, "test")  # before it started: the same run covers it
        await asyncio.sleep(0.01)
        memo.core.request_reconcile(NS, NAME, "test")  # while it runs: once more after it
        await asyncio.sleep(0.01)
        memo.core.request_reconcile(NS, NAME, "test")  # still while it runs: the same one more, not another
        gate.set()
        await settle()
        memo.core.reconciler.reconcile_latest = inner
        assert len(runs) == 5
        # An autoscaled ModelVersion's Deployment is scaled by its HPA: not put back (no fight with the HPA).
        autoscaled = kube.body_now()
        autoscaled["spec"]["autoscaling"] = {"enabled": True, "minReplicas": 1, "maxReplicas": 3}
        memo.core.reconciler.note({**autoscaled, "metadata": {**autoscaled["metadata"], "resourceVersion": "999"}})
        kube.tampered = True
        await deployment_event("MODIFIED", kube.deployment_now(NAME) or {})
        kube.tampered = False
        assert len(runs) == 5
        # A canary Deployment this operator deleted itself (a promotion): nothing to put back.
        canary = copy.deepcopy(deployment)
        canary["metadata"]["name"] = f"{NAME}-canary"
        kube.deleted_here.add(f"{NAME}-canary")
        await deployment_event("DELETED", canary)
        assert len(runs) == 5
        # The ModelVersion is deleted; the garbage collector deletes its Deployment after it.
        await handlers.model_version_event(body=kopf.Body(kube.body_now()), type="DELETED", memo=memo)
        await deployment_event("DELETED", deployment)
        assert len(runs) == 5
        # A reconcile that finishes after the deletion does not count the deleted ModelVersion again.
        await memo.core.measured_or_logged(NS, NAME, refresh=False)
        assert memo.core.metrics.registry.get_sample_value(
            "modelpilot_operator_resources", {"kind": "ModelVersion", "phase": "Ready"}) == 0.0
        await memo.core.stop()

    asyncio.run(scenario())


def test_the_variants_of_a_deleted_abtest_are_reconciled_out_of_it() -> None:
    """Deleting an ABTest garbage-collects its Service, but its variants' Deployments still carry its pod label
    and the replica share it assigned: each variant's ModelVersion is reconciled (its membership looked up
    afresh), so a later ABTest of the same name does not find stale pods, and each serves its own replicas."""
    import kopf

    from modelpilot.operator import handlers

    kube = FakeKube(mv_body("1"))
    memo, runs = _event_core(kube, mlflow({"1": "run-1"}))
    test = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ABTest",
            "metadata": {"name": "exp", "namespace": NS, "uid": "ab-1", "generation": 1},
            "spec": {"variants": [{"name": "a", "modelVersion": "mv-a", "weight": 50},
                                  {"name": "b", "modelVersion": "mv-b", "weight": 50}]},
            "status": {"observedGeneration": 1}}

    async def scenario() -> None:
        await handlers.abtest_event(body=kopf.Body(test), type="DELETED", memo=memo)
        while memo.core._refreshers:  # noqa: SLF001 - the reconciles the deletion asked for, run to the end
            await asyncio.gather(*list(memo.core._refreshers))  # noqa: SLF001
        await memo.core.stop()

    asyncio.run(scenario())
    assert sorted(runs) == ["mv-a", "mv-b"]


def test_prometheus_is_asked_through_one_pooled_client() -> None:
    """Every canary analysis and ABTest comparison queries through the reconciler's one Prometheus client (a
    client per analysis round opened a connection per round); without a URL it is a ``PrometheusError`` naming
    the variable, and closing the reconciler closes it."""
    from modelpilot.operator.prometheus import PrometheusError

    kube = FakeKube(mv_body("1"))
    rec = Reconciler(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"},
                                         prometheus={"url": "http://prometheus:9090", "timeout_seconds": 3}),
                     kube)  # type: ignore[arg-type]
    first = rec.prometheus()
    assert rec.prometheus() is first and first.client.timeout.read == 3
    rec.close()
    assert first.client.is_closed and rec.prometheus() is not first
    rec.close()
    bare = Reconciler(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"}),
                      kube)  # type: ignore[arg-type]
    with pytest.raises(PrometheusError, match="MODELPILOT_PROMETHEUS_URL"):
        bare.prometheus()
    bare.close()


def test_each_operator_core_counts_in_its_own_metrics_and_the_phase_gauge_follows_every_move() -> None:
    """No module holds the operator's metrics: each core (kopf's memo) has its own registry, so two operators in
    one process (or two tests) never share counts; the by-phase gauge follows each resource's moves and its
    deletion."""
    from modelpilot.operator.core import OperatorCore

    settings = OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"})
    one = OperatorCore(settings, FakeKube(mv_body("1")))  # type: ignore[arg-type]
    two = OperatorCore(settings, FakeKube(mv_body("1")))  # type: ignore[arg-type]
    assert one.metrics is not two.metrics and one.reconciler.metrics is one.metrics

    def count(core: Any, phase: str) -> float | None:
        value = core.metrics.registry.get_sample_value("modelpilot_operator_resources",
                                                       {"kind": "ModelVersion", "phase": phase})
        return None if value is None else float(value)

    one.metrics.set_phase("ModelVersion", "ml/a", "Deploying")
    one.metrics.set_phase("ModelVersion", "ml/b", "Deploying")
    one.metrics.set_phase("ModelVersion", "ml/a", "Ready")
    one.metrics.set_phase("ModelVersion", "ml/a", "Ready")  # unchanged: nothing moves
    assert (count(one, "Deploying"), count(one, "Ready")) == (1.0, 1.0)
    one.metrics.set_phase("ModelVersion", "ml/b", None)  # deleted
    one.metrics.set_phase("ModelVersion", "ml/gone", None)  # never seen: nothing to forget
    assert (count(one, "Deploying"), count(one, "Ready")) == (0.0, 1.0)
    assert count(two, "Ready") is None  # the other core counted nothing
    # A deleted ModelVersion's rollout and analysis series go with it (no series per ModelVersion ever deleted).
    one.metrics.observe_rollout("ml", "a", "RollBack", api.RolloutStatus())
    one.metrics.observe_rollout("ml", "b", "Promote", api.RolloutStatus())
    get = one.metrics.registry.get_sample_value
    assert get("modelpilot_operator_rollbacks_total", {"namespace": "ml", "name": "a"}) == 1.0
    one.metrics.forget("ml", "a")
    one.metrics.forget("ml", "never")
    assert get("modelpilot_operator_rollbacks_total", {"namespace": "ml", "name": "a"}) is None
    assert get("modelpilot_operator_rollout_weight", {"namespace": "ml", "name": "a"}) is None
    assert get("modelpilot_operator_promotions_total", {"namespace": "ml", "name": "b"}) == 1.0
    asyncio.run(one.stop())
    asyncio.run(two.stop())
