"""Pure builders: ModelVersion spec + resolved model → manifests. No cluster, no I/O."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from modelpilot.operator import api, builders, mirroring
from modelpilot.operator.mirroring import MirrorStyle
from modelpilot.operator.registry import ResolvedModel

OWNER = builders.Owner(name="iris", namespace="ml", uid="uid-1")
MODEL = ResolvedModel(name="iris", version="3", alias="champion", run_id="abc123", artifact_uri="mlflow-artifacts:/1/x",
                      source="models:/m-1", flavor="sklearn", signature="[]", resolved_at="2026-01-01T00:00:00Z")
FIELDS: dict[str, Any] = {"model": {"name": "iris", "alias": "champion"}, "replicas": 2}
SPEC = api.ModelVersionSpec.model_validate(FIELDS)


def typed(fields: dict[str, Any]) -> api.ModelVersionSpec:
    """The spec as the reconciler hands it to the builders: parsed once."""
    return api.ModelVersionSpec.model_validate(fields)


def deployment(spec: api.ModelVersionSpec | None = None, model: ResolvedModel = MODEL) -> dict[str, Any]:
    return builders.build_deployment(OWNER, SPEC if spec is None else spec, model, "http://mlflow:5000", "img:1")


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


def env(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(dep)["env"]}


def test_the_pod_loads_the_pinned_version_never_the_alias() -> None:
    values = env(deployment())
    assert values["MODEL_URI"] == "models:/iris/3"
    assert values["MODEL_VERSION"] == "3" and values["MODEL_NAME"] == "iris" and values["MODEL_VARIANT"] == "iris"
    assert values["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_provenance_labels_and_annotations_are_on_every_pod() -> None:
    template = deployment()["spec"]["template"]
    labels, annotations = template["metadata"]["labels"], template["metadata"]["annotations"]
    assert labels["modelpilot.io/model"] == "iris" and labels["modelpilot.io/version"] == "3"
    assert labels["modelpilot.io/run-id"] == "abc123"
    assert labels["app.kubernetes.io/managed-by"] == "modelpilot"
    assert annotations["modelpilot.io/artifact-uri"] == "mlflow-artifacts:/1/x"
    assert annotations["modelpilot.io/alias"] == "champion"
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8080"
    assert not any("resolved" in k for k in annotations), "a timestamp in the template would roll pods needlessly"


def test_a_new_version_changes_the_pod_template_but_not_the_selector() -> None:
    newer = ResolvedModel(**{**MODEL.__dict__, "version": "4", "run_id": "def"})
    old, new = deployment(), deployment(model=newer)
    assert old["spec"]["selector"] == new["spec"]["selector"] == {"matchLabels": {"modelpilot.io/modelversion": "iris",
                                                                               "modelpilot.io/track": "stable"}}
    assert old["spec"]["template"] != new["spec"]["template"]
    # Rolling update keeps every old pod serving until a new one is ready.
    assert new["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_secure_pod_defaults() -> None:
    dep = deployment()
    pod = dep["spec"]["template"]["spec"]
    sc = container(dep)["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                  "capabilities": {"drop": ["ALL"]}}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container(dep)["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container(dep)["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # The server's final failure reason (or, without one, the end of its log) reaches lastState.terminated.
    assert "terminationMessagePath" not in container(dep)  # Kubernetes' default, /dev/termination-log
    assert container(dep)["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_owner_reference_makes_deletion_collect_everything() -> None:
    for manifest in builders.build_all(OWNER, typed({**FIELDS, "autoscaling": {"enabled": True},
                                                     "podDisruptionBudget": {"enabled": True, "minAvailable": 1}}),
                                       MODEL, "http://m", "img").values():
        assert manifest is not None
        (ref,) = manifest["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion", "name": "iris",
                       "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}


def test_autoscaling_leaves_replicas_to_the_hpa() -> None:
    spec = typed({**FIELDS, "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 7,
                                            "targetCPUUtilizationPercentage": 60}})
    assert "replicas" not in deployment(spec)["spec"]
    hpa = builders.build_hpa(OWNER, spec, MODEL)
    assert hpa is not None and hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 7
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert deployment()["spec"]["replicas"] == 2
    assert builders.build_hpa(OWNER, SPEC, MODEL) is None


@pytest.mark.parametrize("pdb,expected", [
    ({"enabled": True, "minAvailable": 2}, {"minAvailable": 2}),
    ({"enabled": True, "maxUnavailable": "25%"}, {"maxUnavailable": "25%"}),
    ({"enabled": False, "minAvailable": 2}, None),
])
def test_pod_disruption_budget(pdb: dict[str, Any], expected: dict[str, Any] | None) -> None:
    built = builders.build_pdb(OWNER, typed({**FIELDS, "podDisruptionBudget": pdb}), MODEL)
    if expected is None:
        assert built is None
    else:
        assert built is not None
        assert {k: v for k, v in built["spec"].items() if k != "selector"} == expected


def test_serving_options_reach_the_pod() -> None:
    spec = copy.deepcopy(FIELDS)
    spec["serving"] = {
        "image": "registry.example/serve:2", "resources": {"limits": {"cpu": "2"}},
        "env": [{"name": "EXTRA", "value": "1"}, {"name": "MODEL_VARIANT", "value": "override"}],
        "nodeSelector": {"gpu": "no"}, "tolerations": [{"key": "k", "operator": "Exists"}],
        "batching": {"enabled": True, "maxBatchSize": 32, "maxLatencyMs": 2},
        "cache": {"enabled": True, "maxEntries": 10, "ttlSeconds": 5, "redisUrl": "redis://r:6379"},
    }
    spec["registry"] = {"credentialsSecretRef": {"name": "creds"}}
    dep = deployment(typed(spec))
    c = container(dep)
    assert c["image"] == "registry.example/serve:2" and c["resources"] == {"limits": {"cpu": "2"}}
    values = env(dep)
    assert values["MODELPILOT_SERVE_MAX_BATCH_SIZE"] == "32" and values["MODELPILOT_SERVE_CACHE"] == "true"
    assert values["MODELPILOT_SERVE_CACHE_REDIS_URL"] == "redis://r:6379"
    assert values["MLFLOW_TRACKING_TOKEN"] == {"secretKeyRef": {"name": "creds", "key": "MLFLOW_TRACKING_TOKEN",
                                                                "optional": True}}
    assert [e["value"] for e in c["env"] if e["name"] == "MODEL_VARIANT"][-1] == "override"  # user env wins
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "no"} and pod["tolerations"] == [{"key": "k", "operator": "Exists"}]


def test_builders_are_deterministic() -> None:
    assert builders.build_all(OWNER, SPEC, MODEL, "u", "i") == builders.build_all(OWNER, SPEC, MODEL, "u", "i")


@pytest.mark.parametrize("raw,expected", [("my model/v2", "my-model-v2"), ("-a-", "a"), ("x" * 80, "x" * 63)])
def test_label_values_are_sanitised(raw: str, expected: str) -> None:
    assert builders.label_value(raw) == expected


def test_a_canary_track_is_its_own_deployment_behind_the_same_service() -> None:
    newer = ResolvedModel(**{**MODEL.__dict__, "version": "4"})
    canary = builders.build_deployment(OWNER, SPEC, newer, "u", "i", track="canary", replicas=1)
    assert canary["metadata"]["name"] == "iris-canary" and canary["spec"]["replicas"] == 1
    assert canary["spec"]["selector"]["matchLabels"]["modelpilot.io/track"] == "canary"
    service = builders.build_service(OWNER, MODEL)
    assert service["spec"]["selector"] == {"modelpilot.io/modelversion": "iris"}  # both tracks
    assert set(service["spec"]["selector"].items()) <= set(canary["spec"]["template"]["metadata"]["labels"].items())


def test_http_and_grpc_ports_on_the_pod_and_the_service() -> None:
    # 8081 is the serving image's MODELPILOT_SERVE_GRPC_PORT default; the Service exposes it by name.
    assert container(deployment())["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
    ]
    ports = {p["name"]: p for p in builders.build_service(OWNER, MODEL)["spec"]["ports"]}
    assert ports["http"] == {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    assert ports["grpc"] == {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP",
                             "appProtocol": "kubernetes.io/h2c"}


def test_pass_through_pod_fields_are_plain_json_in_the_order_the_api_server_delivers() -> None:
    spec = typed({**FIELDS, "serving": {
        "imagePullPolicy": "Always", "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": 1}},
        "tolerations": [{"effect": "NoSchedule", "key": "gpu", "operator": "Equal", "value": "true"}],
        "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}})
    dep = deployment(spec)
    c = container(dep)
    assert type(c["imagePullPolicy"]) is str and c["imagePullPolicy"] == "Always"  # not the api enum
    (toleration,) = dep["spec"]["template"]["spec"]["tolerations"]
    assert json.dumps(toleration) == '{"effect": "NoSchedule", "key": "gpu", "operator": "Equal", "value": "true"}'
    assert {type(v) for v in toleration.values()} == {str}
    assert json.dumps(c["resources"]) == '{"limits": {"memory": "1Gi"}, "requests": {"cpu": 1}}'
    assert c["env"][-1] == {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    yaml.safe_dump(dep)  # plain JSON values only (an enum member would not dump)


def test_an_empty_batching_cache_or_resources_object_adds_nothing() -> None:
    """``{}`` as given (the API server fills the CRD's defaults in, so it never delivers one) adds no setting,
    as when the spec was read as a dict; one field given brings the model's defaults for the others."""
    bare = deployment(typed({**FIELDS, "serving": {"batching": {}, "cache": {}, "resources": {}}}))
    assert not {"MODELPILOT_SERVE_BATCHING", "MODELPILOT_SERVE_CACHE"} & set(env(bare))
    assert container(bare)["resources"] == builders.DEFAULT_RESOURCES
    values = env(deployment(typed({**FIELDS, "serving": {"batching": {"enabled": True}, "cache": {"ttlSeconds": 9}}})))
    assert values["MODELPILOT_SERVE_MAX_BATCH_SIZE"] == "64" and values["MODELPILOT_SERVE_MAX_BATCH_LATENCY_MS"] == "5"
    assert values["MODELPILOT_SERVE_CACHE"] == "false" and values["MODELPILOT_SERVE_CACHE_MAX_ENTRIES"] == "10000"


# --------------------------------------------------------------------------- the canary route's mirroring

ROUTED = typed({**FIELDS, "routing": {"gatewayRef": {"name": "public", "namespace": "gateway-system"}}})


def test_the_shadow_phase_mirrors_with_the_standard_request_mirror_by_default() -> None:
    route = builders.build_canary_route(OWNER, ROUTED, MODEL, 0, mirror=True, canary_active=True)
    default = route["spec"]["rules"][-1]
    assert default["filters"] == [{"type": "RequestMirror", "requestMirror": {"backendRef": {
        "kind": "Service", "name": "iris-canary", "port": 80}}}]
    assert [(r["name"], r["weight"]) for r in default["backendRefs"]] == [("iris-stable", 100), ("iris-canary", 0)]
    assert builders.canary_mirrors(OWNER, MODEL, True, True, MirrorStyle.REQUEST_MIRROR).objects == ()


def test_on_nginx_gateway_fabric_the_shadow_phase_mirrors_through_a_snippets_filter() -> None:
    route = builders.build_canary_route(OWNER, ROUTED, MODEL, 0, mirror=True, canary_active=True,
                                        style=MirrorStyle.NGF_SNIPPETS)
    default = route["spec"]["rules"][-1]
    assert default["filters"] == [{"type": "ExtensionRef", "extensionRef": {
        "group": "gateway.nginx.org", "kind": "SnippetsFilter", "name": "iris-mirror-iris-canary"}}]
    # The canary already is the rule's weight-0 backendRef in its shadow phase: NGF has its upstream.
    assert [(r["name"], r["weight"]) for r in default["backendRefs"]] == [("iris-stable", 100), ("iris-canary", 0)]
    (snippets,) = builders.canary_mirrors(OWNER, MODEL, True, True, MirrorStyle.NGF_SNIPPETS).objects
    assert snippets["metadata"]["name"] == builders.canary_mirror_filter_name(OWNER) == "iris-mirror-iris-canary"
    assert snippets["metadata"]["ownerReferences"] == route["metadata"]["ownerReferences"]
    assert snippets["metadata"]["labels"] == route["metadata"]["labels"]
    assert "proxy_pass http://ml_iris-canary_80$request_uri;" in snippets["spec"]["snippets"][0]["value"]
    # Outside the shadow phase (weights, or no canary): no mirror in either form.
    for mirror, active in ((False, True), (True, False)):
        plain = builders.build_canary_route(OWNER, ROUTED, MODEL, 10 if active else 0, mirror, active,
                                            MirrorStyle.NGF_SNIPPETS)
        assert "filters" not in plain["spec"]["rules"][-1]
        assert builders.canary_mirrors(OWNER, MODEL, mirror, active, MirrorStyle.NGF_SNIPPETS).objects == ()


def test_the_canary_route_matches_the_hostnames_given_and_every_hostname_otherwise() -> None:
    """spec.routing.hostnames become the route's spec.hostnames, in every state of the route (plain, canary
    steps, shadow phase, either mirror style); without them (absent or empty) the field is left out."""
    hosted = typed({**FIELDS, "routing": {"gatewayRef": {"name": "public", "namespace": "gateway-system"},
                                          "hostnames": ["iris.ml.example.com", "*.models.example.com"]}})
    empty = typed({**FIELDS, "routing": {"gatewayRef": {"name": "public"}, "hostnames": []}})
    for weight, mirror, active in ((0, False, False), (25, False, True), (0, True, True)):
        for style in MirrorStyle:
            route = builders.build_canary_route(OWNER, hosted, MODEL, weight, mirror, active, style)
            assert route["spec"]["hostnames"] == ["iris.ml.example.com", "*.models.example.com"]
            plain = builders.build_canary_route(OWNER, ROUTED, MODEL, weight, mirror, active, style)
            assert "hostnames" not in plain["spec"] and plain["spec"]["rules"] == route["spec"]["rules"]
            assert "hostnames" not in builders.build_canary_route(OWNER, empty, MODEL, weight, mirror, active,
                                                                  style)["spec"]


def test_mirror_style_and_filter_names() -> None:
    assert mirroring.style_of("gateway.nginx.org/nginx-gateway-controller") == MirrorStyle.NGF_SNIPPETS
    for other in ("gateway.envoyproxy.io/gatewayclass-controller", "", None):
        assert mirroring.style_of(other) == MirrorStyle.REQUEST_MIRROR
    long = mirroring.filter_name("r" * 200, "s" * 100)
    assert len(long) <= 253 and long == mirroring.filter_name("r" * 200, "s" * 100)  # deterministic
    assert long != mirroring.filter_name("r" * 200, "s" * 99 + "t")
