"""ABTest routing builders (replica ratios, HTTPRoute shape, the route's own traffic split) and the ABTest's pure
plan: observed ModelVersions and figures, fake time → routing to apply, status, Events, variants to follow."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from modelpilot.operator import abtest, abtest_reconcile, api
from modelpilot.operator.mirroring import MirrorStyle
from modelpilot.operator.plan import Membership
from tests.unit.kstatus import kstatus

SPEC = {"variants": [{"name": "a", "modelVersion": "iris-a", "weight": 90},
                     {"name": "b", "modelVersion": "iris-b", "weight": 10},
                     {"name": "s", "modelVersion": "iris-s", "weight": 0, "shadow": True}],
        "routing": {"gatewayRef": {"name": "gw", "namespace": "infra"}, "headerPinning": {"header": "x-variant"}}}
TYPED = api.ABTestSpec.model_validate(SPEC)  # what the ABTest reconciler hands the builders


@pytest.mark.parametrize("weights,replicas,expected", [
    ((90, 10), (2, 2), {"iris-a": 4, "iris-b": 1}),
    ((50, 50), (2, 2), {"iris-a": 2, "iris-b": 2}),
    ((100, 0), (3, 1), {"iris-a": 4, "iris-b": 0}),  # a 0 % variant gets no pod, so no traffic at all
    ((75, 25), (2, 2), {"iris-a": 3, "iris-b": 1}),
])
def test_replica_ratio(weights: tuple[int, int], replicas: tuple[int, int], expected: dict[str, int]) -> None:
    vs = [abtest.Variant("a", "iris-a", weights[0], False), abtest.Variant("b", "iris-b", weights[1], False)]
    split = abtest.replica_split(vs, {"iris-a": replicas[0], "iris-b": replicas[1]})
    assert split == expected
    eff = abtest.effective_weights(vs, split)
    assert sum(eff.values()) in (99, 100, 101)


def test_the_route_has_pinning_rules_weights_and_a_mirror_for_the_shadow() -> None:
    vs = abtest.variants(TYPED)
    route = abtest.build_httproute("iris", "ml", "uid", TYPED, vs, {"a": 90, "b": 10})
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw",
                                            "namespace": "infra"}]
    pin_a, pin_b, default = route["spec"]["rules"]
    assert pin_a["matches"][0]["headers"][0] == {"type": "Exact", "name": "x-variant", "value": "a"}
    assert [(r["name"], r["weight"]) for r in default["backendRefs"]] == [("iris-a", 90), ("iris-b", 10)]
    assert default["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"kind": "Service", "name": "iris-s", "port": 80}}}]
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ABTest"


def test_the_route_matches_the_hostnames_given_and_every_hostname_otherwise() -> None:
    """Two experiments on one Gateway, each on its own hostnames: the route's spec.hostnames, in order. Without
    hostnames (absent or empty) the field is left out, as before."""
    vs = abtest.variants(TYPED)
    assert "hostnames" not in abtest.build_httproute("iris", "ml", "uid", TYPED, vs, {"a": 90, "b": 10})["spec"]
    hosts = {**SPEC, "routing": {**SPEC["routing"], "hostnames": ["iris.ml.example.com", "*.iris.example.com"]}}
    typed = api.ABTestSpec.model_validate(hosts)
    for style in MirrorStyle:
        route = abtest.build_httproute("iris", "ml", "uid", typed, vs, {"a": 90, "b": 10}, style)
        assert route["spec"]["hostnames"] == ["iris.ml.example.com", "*.iris.example.com"]
        assert route["spec"]["rules"] == abtest.build_httproute("iris", "ml", "uid", TYPED, vs, {"a": 90, "b": 10},
                                                                style)["spec"]["rules"]
    empty = api.ABTestSpec.model_validate({**SPEC, "routing": {**SPEC["routing"], "hostnames": []}})
    assert "hostnames" not in abtest.build_httproute("iris", "ml", "uid", empty, vs, {"a": 90, "b": 10})["spec"]


def test_on_nginx_gateway_fabric_the_shadow_is_mirrored_through_a_snippets_filter() -> None:
    """NGF 1.6 answers a RequestMirror rule with 500: the shadow becomes an ExtensionRef to a SnippetsFilter
    owned and labelled like the route, with the shadow's Service a weight-0 backendRef (NGF's upstream)."""
    vs = abtest.variants(TYPED)
    route = abtest.build_httproute("iris", "ml", "uid", TYPED, vs, {"a": 90, "b": 10}, MirrorStyle.NGF_SNIPPETS)
    pin_a, pin_b, default = route["spec"]["rules"]
    assert "filters" not in pin_a and "filters" not in pin_b  # only the default rule mirrors, as before
    assert default["filters"] == [{"type": "ExtensionRef", "extensionRef": {
        "group": "gateway.nginx.org", "kind": "SnippetsFilter", "name": "iris-mirror-iris-s"}}]
    assert [(r["name"], r["weight"]) for r in default["backendRefs"]] == [("iris-a", 90), ("iris-b", 10),
                                                                          ("iris-s", 0)]
    (snippets,) = abtest.mirrors("iris", "ml", "uid", vs, MirrorStyle.NGF_SNIPPETS).objects
    assert snippets["apiVersion"] == "gateway.nginx.org/v1alpha1" and snippets["kind"] == "SnippetsFilter"
    assert snippets["metadata"]["name"] == "iris-mirror-iris-s" and snippets["metadata"]["namespace"] == "ml"
    assert snippets["metadata"]["ownerReferences"] == route["metadata"]["ownerReferences"]
    assert snippets["metadata"]["labels"] == route["metadata"]["labels"]
    server, location = snippets["spec"]["snippets"]
    assert server["context"] == "http.server" and location["context"] == "http.server.location"
    assert server["value"] == ("location = /_modelpilot_mirror/ml/iris/iris-s { internal; proxy_set_header Host "
                               "$host; proxy_pass http://ml_iris-s_80$request_uri; }")
    assert location["value"] == "mirror /_modelpilot_mirror/ml/iris/iris-s; mirror_request_body on;"
    # The standard form renders no object of NGF's API (its CRD may not exist).
    assert abtest.mirrors("iris", "ml", "uid", vs, MirrorStyle.REQUEST_MIRROR).objects == ()


def test_plan_on_ngf_applies_the_snippets_filter_before_the_route_and_deletes_those_no_longer_rendered() -> None:
    bodies = {"iris-a": _mv("iris-a"), "iris-b": _mv("iris-b"), "iris-s": _mv("iris-s")}
    p = _plan(_ab(SPEC), bodies, {}, T0, False, MirrorStyle.NGF_SNIPPETS)
    assert [(m["kind"], m["metadata"]["name"]) for m in p.apply] == [
        ("Service", "exp"), ("SnippetsFilter", "exp-mirror-iris-s"), ("HTTPRoute", "exp")]
    assert p.delete == []
    # The shadow made a serving variant: its SnippetsFilter (named from the last status) is deleted.
    served = {**SPEC, "variants": [{"name": "a", "modelVersion": "iris-a", "weight": 80},
                                   {"name": "b", "modelVersion": "iris-b", "weight": 10},
                                   {"name": "s", "modelVersion": "iris-s", "weight": 10}]}
    after = _plan(_ab(served, p.status, generation=2), bodies, {}, T1, False, MirrorStyle.NGF_SNIPPETS)
    assert [m["kind"] for m in after.apply] == ["Service", "HTTPRoute"]
    assert "filters" not in after.apply[-1]["spec"]["rules"][-1]
    assert after.delete == [("SnippetsFilter", "exp-mirror-iris-s")]
    # Another shadow instead: the new one's filter is applied, the old one's deleted.
    other = {**SPEC, "variants": [*SPEC["variants"][:2], {"name": "t", "modelVersion": "iris-t", "shadow": True}]}
    swapped = _plan(_ab(other, p.status, generation=2), {**bodies, "iris-t": _mv("iris-t")}, {}, T1, False,
                    MirrorStyle.NGF_SNIPPETS)
    assert ("SnippetsFilter", "exp-mirror-iris-t") in [(m["kind"], m["metadata"]["name"]) for m in swapped.apply]
    assert swapped.delete == [("SnippetsFilter", "exp-mirror-iris-s")]
    # Elsewhere the SnippetsFilter CRD may not exist: nothing of NGF's is applied or deleted.
    standard = _plan(_ab(served, p.status, generation=2), bodies, {}, T1, False)
    assert [m["kind"] for m in standard.apply] == ["Service", "HTTPRoute"] and standard.delete == []
    shadowed = _plan(_ab(SPEC), bodies, {}, T0, False)
    assert [m["kind"] for m in shadowed.apply] == ["Service", "HTTPRoute"]
    assert shadowed.apply[-1]["spec"]["rules"][-1]["filters"][0]["type"] == "RequestMirror"


def test_the_simulated_data_plane_follows_weights_and_pins() -> None:
    vs = abtest.variants(TYPED)
    route = abtest.build_httproute("iris", "ml", "uid", TYPED, vs, {"a": 90, "b": 10})
    counts = Counter(abtest.pick_backend(route, {}, i / 1000) for i in range(1000))
    assert counts == {"iris-a": 900, "iris-b": 100}
    assert abtest.pick_backend(route, {"X-Variant": "b"}, 0.0) == "iris-b"


def test_split_text_for_the_printer_column() -> None:
    assert abtest.split_text(abtest.variants(TYPED), {"a": 90, "b": 10}) == "a=90,b=10,s=shadow"


def test_provider_choice() -> None:
    assert abtest.provider(TYPED) == "gateway"
    assert abtest.provider(api.ABTestSpec.model_validate({"variants": SPEC["variants"]})) == "replicas"


# ---------------------------------------------------------------------------- the pure plan (observe → plan → act)

T0, T1 = "2026-11-30T06:00:00Z", "2026-11-30T06:00:15Z"


def _ab(spec: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "exp", "namespace": "ml", "uid": "u-1", "generation": generation},
            "spec": spec, "status": status or {}}


def _plan(body: dict[str, Any], *args: Any, **kwargs: Any) -> abtest_reconcile.ABTestPlan:
    """``plan`` with the body's spec parsed, as ``ABTestReconciler.reconcile`` hands it over."""
    return abtest_reconcile.plan(body, api.ABTestSpec.model_validate(body["spec"]), *args, **kwargs)


def _mv(name: str, replicas: int = 2, ready: bool = True, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": {"replicas": replicas},
            "status": {"model": {"version": version},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


REPLICAS = {"variants": [{"name": "a", "modelVersion": "mv-a", "weight": 75},
                         {"name": "b", "modelVersion": "mv-b", "weight": 25}]}


def _figures(a: tuple[int, int], b: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """(requests, errors) per variant, as ABTestReconciler._figures reports them."""
    return {n: {"requests": r, "errorRate": e / r, "p99LatencySeconds": 0.01, "accuracy": None,
                "_errors": float(e), "_correct": 0.0, "_feedback": 0.0} for n, (r, e) in (("a", a), ("b", b))}


def _cond(status: dict[str, Any], kind: str) -> tuple[str, str]:
    c = next(c for c in status["conditions"] if c["type"] == kind)
    return c["status"], c["reason"]


def test_plan_a_missing_variant_applies_nothing_and_retries() -> None:
    p = _plan(_ab(REPLICAS), {"mv-a": _mv("mv-a"), "mv-b": None}, {}, T0, measure=False)
    assert p.apply == [] and p.members == {} and p.retry
    assert _cond(p.status, "Ready") == ("False", "ModelVersionMissing") and p.status["phase"] == "Pending"
    assert [e.reason for e in p.events] == ["ModelVersionMissing"] and "mv-b" in p.message


def test_plan_replica_ratio_assigns_replicas_and_names_the_members_to_follow() -> None:
    body = _ab(REPLICAS)
    bodies = {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b")}
    before = (copy.deepcopy(body), copy.deepcopy(bodies))
    p = _plan(body, bodies, {}, T0, measure=False)
    assert (body, bodies) == before  # pure: nothing it was given changed
    assert [m["kind"] for m in p.apply] == ["Service"]  # no HTTPRoute without a Gateway
    assert {r["modelVersion"]: r["replicas"] for r in p.status["variants"]} == {"mv-a": 3, "mv-b": 1}
    assert p.members == {"mv-a": Membership("exp", 3, False), "mv-b": Membership("exp", 1, False)}
    assert _cond(p.status, "Ready") == ("True", "Routing") and p.status["phase"] == "Running"
    assert p.status["split"] == "a=75,b=25" and not p.retry
    # A refresh with the same shares re-reconciles nobody; a spec change re-reconciles everyone.
    again = _plan(_ab(REPLICAS, p.status), bodies, {}, T1, measure=True)
    assert again.members == {}
    respec = _plan(_ab(REPLICAS, p.status, generation=2), bodies, {}, T1, measure=False)
    assert set(respec.members) == {"mv-a", "mv-b"}


def test_plan_with_a_gateway_routes_by_httproute_and_says_what_it_cannot() -> None:
    spec = {**REPLICAS, "routing": {"gatewayRef": {"name": "gw"}, "sticky": {"header": "x-user"}}}
    p = _plan(_ab(spec), {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b", ready=False)}, {}, T0, False)
    assert [m["kind"] for m in p.apply] == ["Service", "HTTPRoute"] and p.members == {}
    assert _cond(p.status, "Ready") == ("False", "VariantsNotReady") and p.status["phase"] == "Pending"
    assert _cond(p.status, "RoutingLimited") == ("True", "Unsupported") and "session persistence" in p.message


def test_plan_replica_ratio_says_hostnames_need_a_gateway() -> None:
    spec = {**REPLICAS, "routing": {"hostnames": ["iris.example.com"]}}
    p = _plan(_ab(spec), {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b")}, {}, T0, False)
    assert [m["kind"] for m in p.apply] == ["Service"]
    assert _cond(p.status, "RoutingLimited") == ("True", "Unsupported")
    limited = next(c for c in p.status["conditions"] if c["type"] == "RoutingLimited")
    assert "cannot honour hostnames" in limited["message"] and "spec.routing.gatewayRef" in limited["message"]


def test_plan_declares_a_winner_once_and_keeps_figures_when_not_measured() -> None:
    spec = {**REPLICAS, "analysis": {"minSamples": 30, "significance": 0.01}}
    bodies = {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b")}
    figures = _figures((300, 0), (100, 60))
    kept = copy.deepcopy(figures)
    p = _plan(_ab(spec), bodies, figures, T0, measure=True)
    assert figures == kept  # the comparison does not consume the figures
    assert p.status["winner"] == "a" and p.status["phase"] == "Concluded"
    assert [e.reason for e in p.events] == ["WinnerDeclared"]
    assert {r["name"]: r["requests"] for r in p.status["variants"]} == {"a": 300, "b": 100}
    later = _plan(_ab(spec, p.status), bodies, figures, T1, measure=True)
    assert later.events == [] and later.status["winner"] == "a"  # one Event per transition
    unmeasured = _plan(_ab(spec, p.status), bodies, {}, T1, measure=False)
    assert unmeasured.status["comparison"] == p.status["comparison"]  # Prometheus silent: the last verdict stays
    assert {r["name"]: r["requests"] for r in unmeasured.status["variants"]} == {"a": 300, "b": 100}
    promoted = _plan(_ab({**spec, "autoPromote": True}, p.status), bodies, {}, T1, False)
    assert promoted.status["phase"] == "Promoted"
    assert {r["name"]: r["weight"] for r in promoted.status["variants"]} == {"a": 100, "b": 0}


def test_an_abtest_reads_in_progress_to_kstatus_until_it_routes_and_failed_when_someone_must_act() -> None:
    """Before: ABTests carried only Ready, so once reconciled kstatus (Flux's health checks) read every one as
    Current — a missing variant or one that never became Ready included."""
    bodies = {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b")}
    assert kstatus({"observedGeneration": 0}) == "InProgress"  # the CRD's status default, before any reconcile
    missing = _plan(_ab(REPLICAS), {"mv-a": _mv("mv-a"), "mv-b": None}, {}, T0, measure=False)
    assert kstatus(missing.status) == "InProgress"
    assert _cond(missing.status, "Reconciling") == ("True", "ModelVersionMissing")
    waiting = _plan(_ab(REPLICAS), {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b", ready=False)}, {}, T0, False)
    assert kstatus(waiting.status) == "InProgress"
    assert _cond(waiting.status, "Stalled") == ("False", "VariantsNotReady")
    routing = _plan(_ab(REPLICAS, waiting.status), bodies, {}, T1, False)
    assert kstatus(routing.status) == "Current"
    assert _cond(routing.status, "Reconciling") == _cond(routing.status, "Stalled") == ("False", "Routing")
    refused = abtest_reconcile.routing_failed(routing, "apply HTTPRoute exp: 422 Invalid", 1, T1, refused=True)
    assert kstatus(refused.status) == "Failed"
    flaky = abtest_reconcile.routing_failed(routing, "apply Service exp: 500 etcd timeout", 1, T1)
    assert kstatus(flaky.status) == "InProgress"
    assert 401 in abtest_reconcile._TRANSIENT and 429 in abtest_reconcile._TRANSIENT  # a token rotating, throttling
    invalid = abtest_reconcile.invalid_spec(_ab({"variants": "x"}, routing.status), "spec.variants: not a list", T1)
    assert kstatus(invalid.status) == "Failed" and [e.reason for e in invalid.events] == ["SpecError"]
    again = abtest_reconcile.invalid_spec(_ab({"variants": "x"}, invalid.status), "spec.variants: not a list", T1)
    assert again.events == [] and again.status == invalid.status  # said: nothing new to write
    # Said before ABTests carried kstatus conditions (Ready only): Stalled is written, nothing said again.
    old = {**invalid.status, "conditions": [c for c in invalid.status["conditions"] if c["type"] == "Ready"]}
    upgraded = abtest_reconcile.invalid_spec(_ab({"variants": "x"}, old), "spec.variants: not a list", T1)
    assert kstatus(upgraded.status) == "Failed" and upgraded.events == []


def test_routing_that_cannot_be_applied_is_not_ready_with_the_api_message() -> None:
    p = _plan(_ab(REPLICAS), {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b")}, {}, T0, False)
    failed = abtest_reconcile.routing_failed(p, "apply Service exp: 403 forbidden", 1, T0)
    assert _cond(failed.status, "Ready") == ("False", "RoutingFailed") and failed.retry
    assert [e.reason for e in failed.events] == ["RoutingFailed"] and "403" in failed.message
    assert _cond(p.status, "Ready") == ("True", "Routing")  # the plan itself is left as it was


# ---------------------------------------------------------------------------- a spec that does not parse


class _Kube:
    """What the ABTest reconciler asks of the Kubernetes adapter, in memory."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = copy.deepcopy(body)
        self.applied: list[dict[str, Any]] = []
        self.status_writes = 0

    async def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _mv(name)

    async def read_abtest(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.body)

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(manifest)
        return manifest

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], plural: str = "",
                           resource_version: str | None = None) -> bool:
        self.body["status"] = copy.deepcopy(status)
        self.status_writes += 1
        return True

    async def post_event(self, involved: dict[str, Any], type: str, reason: str, message: str) -> None:
        pass

    async def close(self) -> None:
        pass


class _Models:
    """The ModelVersion reconciler as the ABTest reconciler uses it."""

    def __init__(self, kube: _Kube) -> None:
        from modelpilot.operator.settings import OperatorSettings

        self.kube, self.settings = kube, OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"})
        self.reconciled: list[str] = []

    async def reconcile_latest(self, namespace: str, name: str, **_: Any) -> None:
        self.reconciled.append(name)


def test_an_abtest_spec_that_does_not_parse_is_a_spec_error_naming_the_field_not_an_exception() -> None:
    """Only an object stored before the schema (or written around it) fails to parse: Ready=False SpecError naming
    each field, one Event, nothing applied or re-reconciled, no retry — and nothing written again for the same
    problem (the ticker refreshes every ABTest)."""
    import asyncio

    body = _ab(copy.deepcopy(REPLICAS))
    body["spec"]["variants"][1]["weight"] = 250  # broken after _ab(): test_api_contract parses what _ab builds
    body["spec"]["split"] = "a=50"
    kube = _Kube(body)
    models = _Models(kube)
    reconciler = abtest_reconcile.ABTestReconciler(models)  # type: ignore[arg-type]
    result = asyncio.run(reconciler.reconcile(copy.deepcopy(kube.body), measure=False))
    assert not result.retry and kube.applied == [] and models.reconciled == []
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "SpecError")]
    status, reason = _cond(kube.body["status"], "Ready")
    assert (status, reason) == ("False", "SpecError") and kube.body["status"]["phase"] == "Failed"
    message = next(c["message"] for c in kube.body["status"]["conditions"] if c["type"] == "Ready")
    assert "spec.variants[1].weight: Input should be less than or equal to 100" in message
    assert "spec.split: Extra inputs are not permitted" in message
    writes = kube.status_writes
    again = asyncio.run(reconciler.reconcile(copy.deepcopy(kube.body), measure=True))
    assert again.events == [] and kube.status_writes == writes

    # Through the watch-event handler: no exception, and the operator's index leaves it out.
    import kopf

    from modelpilot.operator import handlers

    kube = _Kube(body)
    memo = handlers.configure(models.settings, kube)  # type: ignore[arg-type]
    asyncio.run(handlers.abtest_event(body=kopf.Body(copy.deepcopy(kube.body)), type="ADDED", memo=memo))
    assert _cond(kube.body["status"], "Ready") == ("False", "SpecError") and kube.applied == []
    # Its own status write coming back, and kopf's re-listing: the generation is observed, nothing to do.
    runs: list[bool] = []
    real = memo.core.abtests.reconcile

    async def counted(body: dict[str, Any], measure: bool) -> Any:
        runs.append(measure)
        return await real(body, measure=measure)

    memo.core.abtests.reconcile = counted
    for type in ("MODIFIED", None):
        asyncio.run(handlers.abtest_event(body=kopf.Body(copy.deepcopy(kube.body)), type=type, memo=memo))
    assert runs == []
    kube.body["metadata"]["generation"] += 1  # a new spec (still invalid): reconciled again
    asyncio.run(handlers.abtest_event(body=kopf.Body(copy.deepcopy(kube.body)), type="MODIFIED", memo=memo))
    asyncio.run(memo.core.stop())
    assert runs == [False]
    assert asyncio.run(handlers.abtest_routes(body=kopf.Body(copy.deepcopy(kube.body)))) == {}


def test_a_reconcile_decides_on_the_abtest_as_it_is_now_not_on_the_body_it_was_handed() -> None:
    """The ticker's figures refresh read the ABTest, then waited seconds for Prometheus while the spec was edited
    and reconciled: applying its old route afterwards put a deleted mirror back (tests/cluster/test_gateway.py).
    Each reconcile re-reads the ABTest under its own lock, so a stale body routes nothing."""
    import asyncio

    old = _ab(copy.deepcopy(REPLICAS))
    new = copy.deepcopy(old)
    new["spec"]["variants"][0]["weight"], new["spec"]["variants"][1]["weight"] = 90, 10
    kube = _Kube(new)  # what the API has now
    reconciler = abtest_reconcile.ABTestReconciler(_Models(kube))  # type: ignore[arg-type]
    asyncio.run(reconciler.reconcile(copy.deepcopy(old), measure=False))  # handed the stale body
    assert kube.body["status"]["split"] == "a=80,b=20", kube.body["status"]  # 90/10 over the replicas, not 75/25
    # Gone meanwhile: nothing applied, nothing written.
    kube.applied.clear()
    writes = kube.status_writes

    async def gone(namespace: str, name: str) -> None:
        return None

    kube.read_abtest = gone  # type: ignore[method-assign,assignment]
    asyncio.run(reconciler.reconcile(copy.deepcopy(new), measure=False))
    assert kube.applied == [] and kube.status_writes == writes


def test_a_problem_that_persists_is_one_warning_until_it_changes() -> None:
    """The ABTest's periodic run re-plans a missing variant (or refused routing) every time; its Warning Event is
    posted when the problem starts or changes, not on every run (one Event per transition)."""
    missing = _plan(_ab(REPLICAS), {"mv-a": _mv("mv-a"), "mv-b": None}, {}, T0, measure=False)
    assert [e.reason for e in abtest_reconcile.warnings_not_said(missing.events, {})] == ["ModelVersionMissing"]
    again = _plan(_ab(REPLICAS, missing.status), {"mv-a": _mv("mv-a"), "mv-b": None}, {}, T1, measure=False)
    assert abtest_reconcile.warnings_not_said(again.events, missing.status) == []
    both = _plan(_ab(REPLICAS, missing.status), {"mv-a": None, "mv-b": None}, {}, T1, measure=False)
    assert [e.reason for e in abtest_reconcile.warnings_not_said(both.events, missing.status)] == \
        ["ModelVersionMissing"]  # another problem: said
    routed = _plan(_ab(REPLICAS), {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b")}, {}, T0, False)
    refused = abtest_reconcile.routing_failed(routed, "apply Service exp: 403 forbidden", 1, T0)
    assert [e.reason for e in abtest_reconcile.warnings_not_said(refused.events, routed.status)] == ["RoutingFailed"]
    still = abtest_reconcile.routing_failed(routed, "apply Service exp: 403 forbidden", 1, T1)
    assert abtest_reconcile.warnings_not_said(still.events, refused.status) == []


def test_variants_the_spec_drops_are_named_once_for_a_reconcile_of_their_own() -> None:
    """A variant taken out of an ABTest's spec keeps the ABTest's pod label and replica share until its
    ModelVersion is reconciled again: the reconciler names it from the status before and after the run."""
    p = _plan(_ab(REPLICAS), {"mv-a": _mv("mv-a"), "mv-b": _mv("mv-b")}, {}, T0, measure=False)
    spec = {"variants": [{"name": "a", "modelVersion": "mv-a", "weight": 50},
                         {"name": "c", "modelVersion": "mv-c", "weight": 50}]}
    respec = _plan(_ab(spec, p.status, generation=2), {"mv-a": _mv("mv-a"), "mv-c": _mv("mv-c")}, {}, T1, False)
    assert abtest_reconcile.dropped_variants(_ab(spec, p.status, generation=2), respec.status) == ["mv-b"]
    assert abtest_reconcile.dropped_variants(_ab(spec, respec.status, generation=2), respec.status) == []
    assert abtest_reconcile.dropped_variants(_ab(REPLICAS), p.status) == []  # the first run drops nothing


def test_the_events_of_a_variants_reconcile_are_posted_against_its_model_version() -> None:
    """An ABTest that changes a variant's replica share reconciles its ModelVersion; that reconcile's Events (a
    share that makes it NotReady, then Ready) are posted against the ModelVersion, not dropped."""
    import asyncio

    from modelpilot.operator.plan import Event
    from modelpilot.operator.reconcile import Result

    class Models(_Models):
        async def reconcile_latest(self, namespace: str, name: str, **_: Any) -> Any:
            self.reconciled.append(name)
            return Result(status={}, events=[Event("Normal", "Ready", f"{name} serves")]), _mv(name)

    kube = _Kube(_ab(REPLICAS))
    reconciler = abtest_reconcile.ABTestReconciler(Models(kube))  # type: ignore[arg-type]
    posted: list[tuple[str, str]] = []

    async def post(body: dict[str, Any], result: Any) -> None:
        posted.extend((body["metadata"]["name"], e.reason) for e in result.events)

    reconciler.post_variant = post
    asyncio.run(reconciler.reconcile(copy.deepcopy(kube.body), measure=False))
    assert sorted(posted) == [("mv-a", "Ready"), ("mv-b", "Ready")]
