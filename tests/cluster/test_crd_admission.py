"""Admission of ModelVersion and ABTest objects by a real kube-apiserver.

The CRDs in crds/ are applied to the session's control plane and every
validation rule they declare (OpenAPI bounds, enums, patterns and the CEL
``x-kubernetes-validations``) is exercised with an object that breaks it. Each
invalid case names the text the apiserver's error must contain: the path of the
offending field and the problem, so a user reading ``kubectl apply`` output
knows what to fix. Valid objects, including a fully featured one, must be
accepted.

Every create is a server-side dry run (``dryRun=All``): the apiserver decodes,
defaults, validates and admits the object exactly as for a real create, but
nothing is persisted, so no operator ever sees these objects. Creates use
``fieldValidation=Strict`` (what kubectl sends), so unknown fields are errors
rather than silently pruned; the apiserver answers those with 400 (a strict
decoding error) where every schema or CEL violation is a 422.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "modelpilot.io", "v1alpha1"
PLURALS = {"ModelVersion": "modelversions", "ABTest": "abtests"}


# --------------------------------------------------------------------------- manifests

def mv(*, name: str = "iris", model: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A ModelVersion: the minimal valid one, with `model` and top-level spec fields replaced."""
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"model": model if model is not None else {"name": "iris", "version": "3"}, **spec}}


def model(**fields: Any) -> dict[str, Any]:
    return {"name": "iris", **fields}


def serving(**fields: Any) -> dict[str, Any]:
    return mv(serving=fields)


def ab(*variants: dict[str, Any], name: str = "iris-ab", **spec: Any) -> dict[str, Any]:
    """An ABTest: 90/10 between iris-a and iris-b unless variants are given."""
    if not variants:
        variants = ({"name": "a", "modelVersion": "iris-a", "weight": 90},
                    {"name": "b", "modelVersion": "iris-b", "weight": 10})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ABTest", "metadata": {"name": name},
            "spec": {"variants": list(variants), **spec}}


def v(model_version: str, weight: int | None = None, **fields: Any) -> dict[str, Any]:
    variant: dict[str, Any] = {"modelVersion": model_version, **fields}
    if weight is not None:
        variant["weight"] = weight
    return variant


def _without_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    del manifest["spec"]
    return manifest


def bad(case_id: str, manifest: dict[str, Any], *needles: str, status: int = 422) -> Any:
    return pytest.param(manifest, needles, status, id=case_id)


# The CEL messages, as written in the CRDs (checked verbatim so a reworded message is a conscious change).
EXACTLY_ONE = "exactly one of spec.model.version or spec.model.alias must be set"
BAD_VERSION = "spec.model.version must be a positive integer written as a string of digits"
BAD_ALIAS = "spec.model.alias must be a valid MLflow alias"
BAD_MODEL_NAME = "spec.model.name must be a non-blank MLflow registered model name without '/' or ':'"
FOLLOW_ALIAS = "spec.followAlias: true requires spec.model.alias"
BAD_TRACKING_URI = "spec.registry.trackingUri must be an http:// or https:// URL"
REQUESTS_OVER_LIMITS = "spec.serving.resources.requests must not exceed spec.serving.resources.limits"
ENV_BOTH = "spec.serving.env[]: value and valueFrom are mutually exclusive"
BAD_REDIS = "spec.serving.cache.redisUrl must be empty or a redis://, rediss:// or unix:// URL"
MIN_OVER_MAX = "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas"
PDB_BOTH = "spec.podDisruptionBudget: set at most one of minAvailable or maxUnavailable"
PDB_NEITHER = ("spec.podDisruptionBudget.enabled: true requires exactly one of "
               "spec.podDisruptionBudget.minAvailable or spec.podDisruptionBudget.maxUnavailable")
STEPS_ORDER = "spec.rollout.steps must be strictly increasing"
STEPS_LAST = "the last entry of spec.rollout.steps must be 100"
MV_NAME = "metadata.name must be a DNS-1035 label"
WEIGHTS_SUM = "spec.variants: the weights of the non-shadow variants must add up to 100"
SHADOW_WEIGHT = "spec.variants[].weight must be 0 for a shadow variant"
UNIQUE_NAMES = "spec.variants: variant names must be unique"
UNIQUE_MV = "spec.variants: each modelVersion may appear in only one variant"

INVALID = [
    # --- ModelVersion: spec.model -------------------------------------------------------------
    bad("mv-version-and-alias", mv(model=model(version="3", alias="champion")), "spec.model", EXACTLY_ONE),
    bad("mv-neither-version-nor-alias", mv(model=model()), "spec.model", EXACTLY_ONE),
    bad("mv-version-not-digits", mv(model=model(version="3a")), "spec.model.version", BAD_VERSION),
    bad("mv-version-leading-zero", mv(model=model(version="03")), "spec.model.version", BAD_VERSION),
    bad("mv-version-zero", mv(model=model(version="0")), "spec.model.version", BAD_VERSION),
    bad("mv-version-negative", mv(model=model(version="-1")), "spec.model.version", BAD_VERSION),
    bad("mv-version-integer-not-string", mv(model=model(version=3)), "spec.model.version",
        "must be of type string"),
    bad("mv-version-too-long", mv(model=model(version="1" * 21)), "spec.model.version",
        "may not be more than 20"),
    bad("mv-alias-latest", mv(model=model(alias="latest")), "spec.model.alias", BAD_ALIAS, "'latest'"),
    bad("mv-alias-latest-mixed-case", mv(model=model(alias="Latest")), "spec.model.alias", BAD_ALIAS),
    bad("mv-alias-version-like", mv(model=model(alias="v3")), "spec.model.alias", BAD_ALIAS, "v<digits>"),
    bad("mv-alias-version-like-upper", mv(model=model(alias="V12")), "spec.model.alias", BAD_ALIAS),
    bad("mv-alias-bad-character", mv(model=model(alias="champ.ion")), "spec.model.alias", BAD_ALIAS),
    bad("mv-alias-too-long", mv(model=model(alias="a" * 256)), "spec.model.alias", "may not be more than 255"),
    bad("mv-alias-empty", mv(model=model(alias="")), "spec.model.alias", BAD_ALIAS),
    bad("mv-model-name-missing", mv(model={"version": "3"}), "spec.model.name", "Required value"),
    bad("mv-model-name-empty", mv(model={"name": "", "version": "3"}), "spec.model.name",
        "at least 1 chars long"),
    bad("mv-model-name-too-long", mv(model={"name": "a" * 257, "version": "3"}), "spec.model.name",
        "may not be more than 256"),
    bad("mv-model-name-blank", mv(model={"name": "   ", "version": "3"}), "spec.model.name", BAD_MODEL_NAME),
    bad("mv-model-name-slash", mv(model={"name": "team/iris", "version": "3"}), "spec.model.name",
        BAD_MODEL_NAME),
    bad("mv-model-name-colon", mv(model={"name": "iris:3", "version": "3"}), "spec.model.name",
        BAD_MODEL_NAME),
    bad("mv-model-missing", {**mv(), "spec": {"replicas": 1}}, "spec.model", "Required value"),
    bad("mv-spec-missing", _without_spec(mv()), "spec", "Required value"),
    bad("mv-follow-alias-with-version", mv(followAlias=True), "spec.followAlias", FOLLOW_ALIAS),
    # --- ModelVersion: replicas, registry -----------------------------------------------------
    bad("mv-replicas-negative", mv(replicas=-1), "spec.replicas", "greater than or equal to 0"),
    bad("mv-replicas-too-many", mv(replicas=1001), "spec.replicas", "less than or equal to 1000"),
    bad("mv-replicas-string", mv(replicas="2"), "spec.replicas", "must be of type integer"),
    bad("mv-replicas-float", mv(replicas=1.5), "spec.replicas", "must be of type int32"),
    bad("mv-tracking-uri-no-scheme", mv(registry={"trackingUri": "mlflow:5000"}), "spec.registry.trackingUri",
        BAD_TRACKING_URI),
    bad("mv-tracking-uri-databricks", mv(registry={"trackingUri": "databricks"}), "spec.registry.trackingUri",
        BAD_TRACKING_URI),
    bad("mv-tracking-uri-ftp", mv(registry={"trackingUri": "ftp://mlflow:21"}), "spec.registry.trackingUri",
        BAD_TRACKING_URI),
    bad("mv-credentials-secret-bad-name", mv(registry={"credentialsSecretRef": {"name": "MLflow_Creds"}}),
        "spec.registry.credentialsSecretRef.name", "should match"),
    bad("mv-credentials-secret-no-name", mv(registry={"credentialsSecretRef": {}}),
        "spec.registry.credentialsSecretRef.name", "Required value"),
    # --- ModelVersion: serving ----------------------------------------------------------------
    bad("mv-requests-over-limits-cpu",
        serving(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}),
        "spec.serving.resources", REQUESTS_OVER_LIMITS),
    bad("mv-requests-over-limits-memory-units",
        serving(resources={"requests": {"memory": "2Gi"}, "limits": {"memory": "2G"}}),
        "spec.serving.resources", REQUESTS_OVER_LIMITS),
    bad("mv-requests-over-limits-int-vs-string",
        serving(resources={"requests": {"cpu": 2}, "limits": {"cpu": "500m"}}),
        "spec.serving.resources", REQUESTS_OVER_LIMITS),
    bad("mv-resource-quantity-not-a-quantity", serving(resources={"requests": {"cpu": "lots"}}),
        "spec.serving.resources.requests.cpu", "should match"),
    bad("mv-resource-quantity-negative-string", serving(resources={"limits": {"memory": "-1Gi"}}),
        "spec.serving.resources.limits.memory", "should match"),
    bad("mv-resource-quantity-negative-int", serving(resources={"requests": {"cpu": -1}}),
        "spec.serving.resources.requests.cpu", "greater than or equal to 0"),
    bad("mv-resources-too-many-entries", serving(resources={"requests": {f"r{i}": "1" for i in range(17)}}),
        "spec.serving.resources.requests", "at most 16 items"),
    bad("mv-env-value-and-value-from",
        serving(env=[{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
        "spec.serving.env[0]", ENV_BOTH),
    bad("mv-env-duplicate-name", serving(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        "spec.serving.env[1]", "Duplicate value", '{"name":"A"}'),
    bad("mv-env-name-missing", serving(env=[{"value": "1"}]), "spec.serving.env[0].name", "Required value"),
    bad("mv-env-name-with-equals", serving(env=[{"name": "A=B", "value": "1"}]), "spec.serving.env[0].name",
        "should match"),
    bad("mv-env-too-many", serving(env=[{"name": f"E{i}", "value": "1"} for i in range(101)]),
        "spec.serving.env", "at most 100 items"),
    bad("mv-node-selector-value-too-long", serving(nodeSelector={"pool": "x" * 64}),
        "spec.serving.nodeSelector.pool", "may not be more than 63"),
    bad("mv-image-pull-policy", serving(imagePullPolicy="Sometimes"), "spec.serving.imagePullPolicy",
        "Unsupported value", '"Always"'),
    bad("mv-image-empty", serving(image=""), "spec.serving.image", "at least 1 chars long"),
    bad("mv-toleration-operator", serving(tolerations=[{"key": "gpu", "operator": "Maybe"}]),
        "spec.serving.tolerations[0].operator", "Unsupported value"),
    bad("mv-toleration-effect", serving(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "Never"}]),
        "spec.serving.tolerations[0].effect", "Unsupported value"),
    bad("mv-batching-size-zero", serving(batching={"maxBatchSize": 0}), "spec.serving.batching.maxBatchSize",
        "greater than or equal to 1"),
    bad("mv-batching-size-too-big", serving(batching={"maxBatchSize": 4097}),
        "spec.serving.batching.maxBatchSize", "less than or equal to 4096"),
    bad("mv-batching-latency-negative", serving(batching={"maxLatencyMs": -1}),
        "spec.serving.batching.maxLatencyMs", "greater than or equal to 0"),
    bad("mv-batching-latency-too-long", serving(batching={"maxLatencyMs": 1001}),
        "spec.serving.batching.maxLatencyMs", "less than or equal to 1000"),
    bad("mv-cache-redis-url-http", serving(cache={"enabled": True, "redisUrl": "http://redis:6379"}),
        "spec.serving.cache.redisUrl", BAD_REDIS),
    bad("mv-cache-redis-url-bare-host", serving(cache={"enabled": True, "redisUrl": "redis:6379"}),
        "spec.serving.cache.redisUrl", BAD_REDIS),
    bad("mv-cache-max-entries-zero", serving(cache={"maxEntries": 0}), "spec.serving.cache.maxEntries",
        "greater than or equal to 1"),
    bad("mv-cache-ttl-zero", serving(cache={"ttlSeconds": 0}), "spec.serving.cache.ttlSeconds",
        "greater than or equal to 1"),
    # --- ModelVersion: autoscaling, PDB -------------------------------------------------------
    bad("mv-autoscaling-min-over-max", mv(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 4}),
        "spec.autoscaling.minReplicas", MIN_OVER_MAX),
    bad("mv-autoscaling-min-over-default-max", mv(autoscaling={"enabled": True, "minReplicas": 6}),
        "spec.autoscaling.minReplicas", MIN_OVER_MAX),
    bad("mv-autoscaling-min-over-max-while-disabled",
        mv(autoscaling={"enabled": False, "minReplicas": 5, "maxReplicas": 4}), "spec.autoscaling.minReplicas",
        MIN_OVER_MAX),
    bad("mv-autoscaling-min-zero", mv(autoscaling={"minReplicas": 0}), "spec.autoscaling.minReplicas",
        "greater than or equal to 1"),
    bad("mv-autoscaling-max-too-many", mv(autoscaling={"maxReplicas": 1001}), "spec.autoscaling.maxReplicas",
        "less than or equal to 1000"),
    bad("mv-autoscaling-target-cpu-zero", mv(autoscaling={"targetCPUUtilizationPercentage": 0}),
        "spec.autoscaling.targetCPUUtilizationPercentage", "greater than or equal to 1"),
    bad("mv-pdb-both-set", mv(podDisruptionBudget={"enabled": True, "minAvailable": 1, "maxUnavailable": 1}),
        "spec.podDisruptionBudget", PDB_BOTH),
    bad("mv-pdb-enabled-with-neither", mv(podDisruptionBudget={"enabled": True}), "spec.podDisruptionBudget",
        PDB_NEITHER),
    bad("mv-pdb-percentage-over-100", mv(podDisruptionBudget={"enabled": True, "minAvailable": "150%"}),
        "spec.podDisruptionBudget.minAvailable", "should match"),
    bad("mv-pdb-not-a-number", mv(podDisruptionBudget={"enabled": True, "maxUnavailable": "two"}),
        "spec.podDisruptionBudget.maxUnavailable", "should match"),
    bad("mv-pdb-integer-as-string", mv(podDisruptionBudget={"enabled": True, "minAvailable": "1"}),
        "spec.podDisruptionBudget.minAvailable", "should match"),
    bad("mv-pdb-both-set-while-disabled",
        mv(podDisruptionBudget={"enabled": False, "minAvailable": 1, "maxUnavailable": 1}),
        "spec.podDisruptionBudget", PDB_BOTH),
    bad("mv-pdb-negative", mv(podDisruptionBudget={"enabled": True, "minAvailable": -1}),
        "spec.podDisruptionBudget.minAvailable", "greater than or equal to 0"),
    # --- ModelVersion: rollout ----------------------------------------------------------------
    bad("mv-rollout-steps-decreasing", mv(rollout={"steps": [50, 25, 100]}), "spec.rollout.steps", STEPS_ORDER),
    bad("mv-rollout-steps-repeated", mv(rollout={"steps": [25, 25, 100]}), "spec.rollout.steps", STEPS_ORDER),
    bad("mv-rollout-steps-not-ending-at-100", mv(rollout={"steps": [10, 50]}), "spec.rollout.steps",
        STEPS_LAST),
    bad("mv-rollout-steps-empty", mv(rollout={"steps": []}), "spec.rollout.steps", "at least 1 items"),
    bad("mv-rollout-step-zero", mv(rollout={"steps": [0, 100]}), "spec.rollout.steps[0]",
        "greater than or equal to 1"),
    bad("mv-rollout-step-over-100", mv(rollout={"steps": [10, 101]}), "spec.rollout.steps[1]",
        "less than or equal to 100"),
    bad("mv-rollout-too-many-steps", mv(rollout={"steps": list(range(80, 101))}), "spec.rollout.steps",
        "at most 20 items"),
    bad("mv-rollout-step-interval-zero", mv(rollout={"stepIntervalSeconds": 0}),
        "spec.rollout.stepIntervalSeconds", "greater than or equal to 1"),
    bad("mv-rollout-progress-deadline-too-long", mv(rollout={"progressDeadlineSeconds": 86401}),
        "spec.rollout.progressDeadlineSeconds", "less than or equal to 86400"),
    # --- ModelVersion: routing ----------------------------------------------------------------
    bad("mv-routing-without-gateway-ref", mv(routing={"hostnames": ["iris.example.com"]}),
        "spec.routing.gatewayRef", "Required value"),
    bad("mv-hostname-ip-address", mv(routing={"gatewayRef": {"name": "gw"}, "hostnames": ["10.0.0.1"]}),
        "spec.routing.hostnames[0]", "should match"),
    bad("mv-hostname-with-port", mv(routing={"gatewayRef": {"name": "gw"}, "hostnames": ["iris.example.com:80"]}),
        "spec.routing.hostnames[0]", "should match"),
    bad("mv-too-many-hostnames",
        mv(routing={"gatewayRef": {"name": "gw"}, "hostnames": [f"h{i}.example.com" for i in range(17)]}),
        "spec.routing.hostnames", "at most 16 items"),
    # --- ModelVersion: metadata, unknown fields -----------------------------------------------
    bad("mv-name-starts-with-digit", mv(name="3iris"), "metadata.name", MV_NAME),
    bad("mv-name-with-dot", mv(name="iris.v2"), "metadata.name", MV_NAME),
    bad("mv-name-too-long", mv(name="i" * 64), "metadata.name", MV_NAME),
    bad("mv-name-uppercase", mv(name="Iris"), "metadata.name", "lowercase RFC 1123 subdomain", MV_NAME),
    bad("mv-unknown-spec-field", mv(bogus=1), "unknown field", "spec.bogus", status=400),
    bad("mv-unknown-model-field", mv(model=model(version="3", stage="Production")), "unknown field",
        "spec.model.stage", status=400),
    bad("mv-unknown-serving-field", serving(gpus=1), "unknown field", "spec.serving.gpus", status=400),
    # --- ABTest -------------------------------------------------------------------------------
    bad("ab-weights-sum-under-100", ab(v("iris-a", 80), v("iris-b", 10)), "spec.variants", WEIGHTS_SUM),
    bad("ab-weights-sum-over-100", ab(v("iris-a", 90), v("iris-b", 20)), "spec.variants", WEIGHTS_SUM),
    bad("ab-weights-all-default-zero", ab(v("iris-a"), v("iris-b")), "spec.variants", WEIGHTS_SUM),
    bad("ab-second-shadow-with-weight",
        ab(v("iris-a", 90), v("iris-b", shadow=True), v("iris-c", 10, shadow=True)),
        "spec.variants[2].weight", SHADOW_WEIGHT),
    bad("ab-shadow-with-weight", ab(v("iris-a", 90), v("iris-b", 10, shadow=True)), "spec.variants[1].weight",
        SHADOW_WEIGHT),
    bad("ab-all-variants-shadow", ab(v("iris-a", shadow=True), v("iris-b", shadow=True)), "spec.variants",
        WEIGHTS_SUM),
    bad("ab-one-variant", ab(v("iris-a", 100)), "spec.variants", "at least 2 items"),
    bad("ab-eleven-variants", ab(*[v(f"m{i}", 10) for i in range(10)], v("s", shadow=True)), "spec.variants",
        "at most 10 items"),
    bad("ab-no-variants", {**ab(), "spec": {}}, "spec.variants", "Required value"),
    bad("ab-weight-over-100", ab(v("iris-a", 101), v("iris-b", 0)), "spec.variants[0].weight",
        "less than or equal to 100"),
    bad("ab-weight-negative", ab(v("iris-a", 101), v("iris-b", -1)), "spec.variants[1].weight",
        "greater than or equal to 0"),
    bad("ab-duplicate-names", ab(v("iris-a", 50, name="x"), v("iris-b", 50, name="x")), "spec.variants",
        UNIQUE_NAMES),
    bad("ab-duplicate-effective-names", ab(v("iris-a", 50, name="iris-b"), v("iris-b", 50)), "spec.variants",
        UNIQUE_NAMES),
    bad("ab-duplicate-model-versions", ab(v("iris-a", 50, name="x"), v("iris-a", 50, name="y")),
        "spec.variants", UNIQUE_MV),
    bad("ab-model-version-missing", ab({"name": "a", "weight": 50}, v("iris-b", 50)),
        "spec.variants[0].modelVersion", "Required value"),
    bad("ab-model-version-bad-name", ab(v("Iris_A", 50), v("iris-b", 50)), "spec.variants[0].modelVersion",
        "should match"),
    bad("ab-variant-name-bad", ab(v("iris-a", 50, name="A.1"), v("iris-b", 50)), "spec.variants[0].name",
        "should match"),
    bad("ab-sticky-header-with-space", ab(routing={"sticky": {"header": "x user"}}),
        "spec.routing.sticky.header", "should match"),
    bad("ab-sticky-without-header", ab(routing={"sticky": {}}), "spec.routing.sticky.header", "Required value"),
    bad("ab-pinning-header-with-colon", ab(routing={"headerPinning": {"header": "x-variant:"}}),
        "spec.routing.headerPinning.header", "should match"),
    bad("ab-gateway-ref-without-name", ab(routing={"gatewayRef": {"namespace": "infra"}}),
        "spec.routing.gatewayRef.name", "Required value"),
    bad("ab-gateway-ref-bad-namespace", ab(routing={"gatewayRef": {"name": "gw", "namespace": "Infra"}}),
        "spec.routing.gatewayRef.namespace", "should match"),
    bad("ab-hostname-uppercase", ab(routing={"gatewayRef": {"name": "gw"}, "hostnames": ["Iris.example.com"]}),
        "spec.routing.hostnames[0]", "should match"),
    bad("ab-hostname-bare-wildcard", ab(routing={"gatewayRef": {"name": "gw"}, "hostnames": ["ok.example.com", "*"]}),
        "spec.routing.hostnames[1]", "should match"),
    bad("ab-hostname-trailing-dot", ab(routing={"gatewayRef": {"name": "gw"}, "hostnames": ["iris.example.com."]}),
        "spec.routing.hostnames[0]", "should match"),
    bad("ab-too-many-hostnames",
        ab(routing={"gatewayRef": {"name": "gw"}, "hostnames": [f"h{i}.example.com" for i in range(17)]}),
        "spec.routing.hostnames", "at most 16 items"),
    bad("ab-name-starts-with-digit", ab(name="1-iris-ab"), "metadata.name", "DNS-1035 label"),
    bad("ab-name-with-dot", ab(name="iris.ab"), "metadata.name", "DNS-1035 label"),
    bad("ab-unknown-variant-field", ab(v("iris-a", 90, percent=90), v("iris-b", 10)), "unknown field",
        "spec.variants[0].percent", status=400),
    bad("ab-unknown-spec-field", ab(winner="a"), "unknown field", "spec.winner", status=400),
]

FULL_MODEL_VERSION = mv(
    name="fraud-detector",
    model={"name": "cat.schema.Fraud Detector", "alias": "prod-2024_x"},
    followAlias=True,
    replicas=3,
    registry={"trackingUri": "https://mlflow.example.com/mlflow",
              "credentialsSecretRef": {"name": "mlflow-creds"}},
    serving={
        "image": "ghcr.io/example/modelpilot-serve:1.2.3",
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "env": [{"name": "LOG_LEVEL", "value": "debug"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}],
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "batching": {"enabled": True, "maxBatchSize": 4096, "maxLatencyMs": 0},
        "cache": {"enabled": True, "maxEntries": 1, "ttlSeconds": 1, "redisUrl": "rediss://redis:6380/0"},
    },
    autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 2, "targetCPUUtilizationPercentage": 80},
    podDisruptionBudget={"enabled": True, "maxUnavailable": "25%"},
    rollout={"steps": [1, 5, 100], "stepIntervalSeconds": 30, "progressDeadlineSeconds": 86400,
             "analysis": {"enabled": True, "checks": [{"name": "error-rate", "max": 0.01}]}},
)

VALID = [
    pytest.param(mv(), id="mv-minimal-version"),
    pytest.param(mv(model=model(alias="champion"), followAlias=True), id="mv-alias-follow-alias"),
    pytest.param(mv(model=model(alias="champion")), id="mv-alias-pinned-once"),
    pytest.param(FULL_MODEL_VERSION, id="mv-full-featured"),
    pytest.param(mv(replicas=0), id="mv-scaled-to-zero"),
    pytest.param(mv(name="m" * 63, model={"name": "a" * 256, "alias": "a" * 255}), id="mv-longest-names"),
    pytest.param(mv(model=model(version="12345678901234567890")), id="mv-version-20-digits"),
    pytest.param(mv(podDisruptionBudget={"enabled": False}), id="mv-pdb-disabled-with-neither"),
    pytest.param(mv(podDisruptionBudget={"enabled": True, "minAvailable": 1}), id="mv-pdb-min-available"),
    pytest.param(mv(podDisruptionBudget={"enabled": True, "minAvailable": "0%"}), id="mv-pdb-zero-percent"),
    pytest.param(mv(rollout={"steps": [100]}), id="mv-rollout-single-step"),
    pytest.param(serving(cache={"enabled": True, "redisUrl": "unix:///run/redis.sock"}), id="mv-cache-unix-socket"),
    pytest.param(ab(), id="ab-90-10"),
    pytest.param(ab(v("iris-a", 100), v("iris-b", shadow=True),
                    routing={"gatewayRef": {"name": "gw", "namespace": "infra", "sectionName": "http"},
                             "headerPinning": {}, "sticky": {"header": "x-user-id"}},
                    analysis={"metrics": ["error_rate"], "minSamples": 500}, autoPromote=True),
                 id="ab-with-shadow-variant"),
    pytest.param(ab(v("iris-a", 50), v("iris-b", 30), v("iris-c", 20)), id="ab-three-way"),
    pytest.param(ab(routing={"gatewayRef": {"name": "gw"},
                             "hostnames": ["iris.ml.example.com", "*.models.example.com"] + [
                                 f"h{i}.example.com" for i in range(14)]}), id="ab-sixteen-hostnames"),
    pytest.param(mv(routing={"gatewayRef": {"name": "gw"}, "hostnames": ["iris.example.com"]}),
                 id="mv-gateway-with-hostnames"),
    pytest.param(mv(routing={"gatewayRef": {"name": "gw"}, "hostnames": []}), id="mv-gateway-empty-hostnames"),
    pytest.param(ab(*[v(f"m{i}", 10) for i in range(10)]), id="ab-ten-variants"),
]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def kubectl_env(dev_env: dict[str, Any]) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}


@pytest.fixture(scope="module")
def crds(dev_env: dict[str, Any], kubectl_env: dict[str, str]) -> None:
    kubectl = dev_env["binaries"]["kubectl"]
    subprocess.run([kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], env=kubectl_env,
                   check=True, capture_output=True, timeout=60)
    subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modelversions.modelpilot.io", "crd/abtests.modelpilot.io"], env=kubectl_env,
                   check=True, capture_output=True, timeout=90)


@pytest.fixture(scope="module")
def custom(dev_env: dict[str, Any], crds: None) -> client.CustomObjectsApi:
    from kubernetes import config

    return client.CustomObjectsApi(config.new_client_from_config(dev_env["exports"]["KUBECONFIG"]))


def _dry_run_create(custom: client.CustomObjectsApi, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(manifest)
    body["metadata"]["namespace"] = namespace
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[body["kind"]], body,
        dry_run="All", field_validation="Strict", _request_timeout=30)
    return cast(dict[str, Any], created)


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize(("manifest", "needles", "status"), INVALID)
def test_the_apiserver_rejects_an_invalid_object_naming_the_problem(
    custom: client.CustomObjectsApi, namespace: str, manifest: dict[str, Any], needles: tuple[str, ...],
    status: int
) -> None:
    with pytest.raises(ApiException) as excinfo:
        created = _dry_run_create(custom, namespace, manifest)
        pytest.fail(f"accepted: {json.dumps(created.get('spec'))}")
    exc = excinfo.value
    try:
        message = json.loads(exc.body or "")["message"]
    except (TypeError, ValueError, KeyError):
        message = str(exc.body)
    assert exc.status == status, message
    missing = [needle for needle in needles if needle not in message]
    assert not missing, f"{missing} not in: {message}"


@pytest.mark.parametrize("manifest", VALID)
def test_the_apiserver_accepts_a_valid_object(
    custom: client.CustomObjectsApi, namespace: str, manifest: dict[str, Any]
) -> None:
    created = _dry_run_create(custom, namespace, manifest)
    assert created["kind"] == manifest["kind"]
    assert created["metadata"]["namespace"] == namespace
    # Everything the manifest said survives admission unchanged (nothing pruned or rewritten).
    _assert_contains(created["spec"], manifest["spec"], "spec")


def _assert_contains(actual: Any, expected: Any, path: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} was dropped"
            _assert_contains(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_contains(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def test_the_apiserver_fills_in_the_documented_defaults(custom: client.CustomObjectsApi, namespace: str) -> None:
    spec = _dry_run_create(custom, namespace, mv(serving={"batching": {}, "cache": {}}, autoscaling={},
                                                 podDisruptionBudget={}, rollout={"analysis": {}}))["spec"]
    assert spec["replicas"] == 1
    assert spec["followAlias"] is False
    assert spec["serving"]["batching"] == {"enabled": True, "maxBatchSize": 64, "maxLatencyMs": 5}
    assert spec["serving"]["cache"] == {"enabled": False, "maxEntries": 10000, "ttlSeconds": 300, "redisUrl": ""}
    assert spec["autoscaling"] == {"enabled": False, "minReplicas": 1, "maxReplicas": 5,
                                   "targetCPUUtilizationPercentage": 70}
    assert spec["podDisruptionBudget"] == {"enabled": False}
    assert spec["rollout"] == {"steps": [10, 25, 50, 100], "stepIntervalSeconds": 60,
                               "progressDeadlineSeconds": 600, "analysis": {"enabled": True}}

    spec = _dry_run_create(custom, namespace, ab(v("iris-a", 100), v("iris-b", shadow=True),
                                                 routing={"headerPinning": {}}))["spec"]
    assert spec["autoPromote"] is False
    assert spec["variants"] == [{"modelVersion": "iris-a", "weight": 100, "shadow": False},
                                {"modelVersion": "iris-b", "weight": 0, "shadow": True}]
    assert spec["routing"]["headerPinning"] == {"header": "x-modelpilot-variant"}


def kstatus(body: dict[str, Any]) -> str:
    """The generic rules of kstatus (sigs.k8s.io/cli-utils/pkg/kstatus), as Flux applies them to a custom
    resource: a status.observedGeneration behind metadata.generation, or Reconciling=True, is InProgress;
    Stalled=True is Failed; anything else, including no status at all, is Current."""
    status = body.get("status") or {}
    if "observedGeneration" in status and status["observedGeneration"] != body["metadata"]["generation"]:
        return "InProgress"
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if conditions.get("Reconciling") == "True":
        return "InProgress"
    if conditions.get("Stalled") == "True":
        return "Failed"
    return "Current"


@pytest.mark.parametrize("manifest", [pytest.param(mv(name="fresh-mv"), id="ModelVersion"),
                                      pytest.param(ab(name="fresh-ab"), id="ABTest")])
def test_a_new_object_reads_as_in_progress_before_the_operator_writes_status(
    custom: client.CustomObjectsApi, namespace: str, manifest: dict[str, Any]
) -> None:
    """The CRD's status default (observedGeneration 0), applied by the real apiserver. A real create (not
    a dry run): the status subresource makes the apiserver drop any status sent with a create, and the
    default is filled in when the object is read back, so the created object and every read of it before
    the operator's first status write carry it. (If an operator runs in this session it may reconcile the
    object afterwards; only the create's own answer is asserted.)"""
    body = copy.deepcopy(manifest)
    body["metadata"]["namespace"] = namespace
    body["status"] = {"observedGeneration": 7, "phase": "Ready"}  # a client cannot claim a status on create
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[body["kind"]], body,
                                                     _request_timeout=30)
    assert created["metadata"]["generation"] == 1
    assert created["status"] == {"observedGeneration": 0}
    assert kstatus(created) == "InProgress"
    # Without the default the same object has no status, which kstatus reads as done.
    assert kstatus({**created, "status": None}) == "Current"


def test_kubectl_explain_documents_the_fields(
    dev_env: dict[str, Any], kubectl_env: dict[str, str], crds: None
) -> None:
    kubectl = dev_env["binaries"]["kubectl"]
    # The OpenAPI document the apiserver publishes for a new CRD can lag its Established condition.
    deadline = time.monotonic() + 60
    while True:
        proc = subprocess.run([kubectl, "explain", "modelversion.spec.model.alias"], env=kubectl_env,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 0 and "MLflow registered model alias" in proc.stdout:
            break
        assert time.monotonic() < deadline, proc.stdout + proc.stderr
        time.sleep(1)
    assert "FIELD: alias <string>" in proc.stdout
    assert "GROUP:      modelpilot.io" in proc.stdout
    assert "Mutually exclusive with version" in proc.stdout
    proc = subprocess.run([kubectl, "explain", "abtest.spec.variants.weight"], env=kubectl_env,
                          capture_output=True, text=True, timeout=60, check=True)
    assert "Non-shadow weights add up to 100" in " ".join(proc.stdout.split())
