"""Pure builders: a ModelVersion's typed spec (+ the registry's answer) → Deployment, Service, HPA, PDB manifests.

Layer 3 of the operator: no I/O, no clock, no randomness — the same input
always gives the same manifest, so reconcile can apply them idempotently and
tests check them without a cluster. The spec comes parsed (``api.ModelVersionSpec``,
validated once where reconcile reads the body), so its defaults are the model's.

Contract with the serving image (``modelpilot serve``): env ``MODEL_URI``
(always the pinned ``models:/name/version``), ``MLFLOW_TRACKING_URI``,
``MODEL_NAME``, ``MODEL_VERSION``, ``MODEL_VARIANT``; port 8080 named ``http``;
port 8081 named ``grpc`` (Open Inference Protocol gRPC);
``/v2/health/ready`` and ``/v2/health/live``; ``/metrics``; the reason of a
final failure in the termination message (``/dev/termination-log``, policy
``FallbackToLogsOnError``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from modelpilot.operator import api, contract, mirroring
from modelpilot.operator.mirroring import MirrorStyle
from modelpilot.operator.resolved import ResolvedModel

# The contract's names (modelpilot.operator.contract), under the names the rest of the operator uses.
API_GROUP = contract.GROUP
API_VERSION = contract.API_VERSION
SERVING_PORT = contract.SERVING_PORT
# The default of the server's MODELPILOT_SERVE_GRPC_PORT (`modelpilot serve` listens there unless told
# otherwise). The number lives on both sides of the contract: the operator never imports the server.
GRPC_PORT = contract.GRPC_PORT
SELECTOR_LABEL = contract.SELECTOR_LABEL
#: Seconds a deleted serving pod keeps serving before SIGTERM (see build_deployment).
PRESTOP_SLEEP_SECONDS = 5
#: Request header that pins a request to a track of a Gateway-routed canary (``canary`` or ``stable``).
TRACK_HEADER = contract.TRACK_HEADER
VERSION_LABEL = contract.VERSION_LABEL  # on the pod template: the model version a track's pods serve
TRACK_LABEL = contract.TRACK_LABEL  # stable | canary; the Service selects both, so replicas split traffic
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}}
# What an absent ``spec.serving`` / ``spec.rollout`` means: every field at the model's (the CRD's) default.
_NO_SERVING = api.Serving()
_NO_ROLLOUT = api.Rollout()

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The ModelVersion the manifests belong to (for owner references and names)."""

    name: str
    namespace: str
    uid: str
    kind: str = "ModelVersion"


def label_value(value: str) -> str:
    """A string made safe for a label value (≤ 63 chars, alphanumeric ends, ``-_.`` inside)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63]
    return cleaned.strip("-_.")


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def labels(owner: Owner, model: ResolvedModel) -> dict[str, str]:
    """Labels on every object; the pod template's also carry the version so a new one rolls out."""
    return {
        "app.kubernetes.io/name": label_value(model.name) or "model",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "modelpilot",
        contract.MANAGED_BY_LABEL: contract.MANAGED_BY,
        "app.kubernetes.io/version": label_value(model.version),
        SELECTOR_LABEL: owner.name,
        contract.MODEL_LABEL: label_value(model.name),
        VERSION_LABEL: label_value(model.version),
        contract.RUN_ID_LABEL: label_value(model.run_id),
    }


def provenance(model: ResolvedModel, tracking_uri: str) -> dict[str, str]:
    """Annotations saying exactly what a pod serves and where it came from (no timestamps: they would roll pods)."""
    return {
        contract.MODEL_NAME_ANNOTATION: model.name,
        contract.MODEL_VERSION_ANNOTATION: model.version,
        contract.MODEL_URI_ANNOTATION: model.model_uri,
        contract.RUN_ID_ANNOTATION: model.run_id,
        contract.ARTIFACT_URI_ANNOTATION: model.artifact_uri,
        contract.SOURCE_ANNOTATION: model.source,
        contract.FLAVOR_ANNOTATION: model.flavor,
        contract.TRACKING_URI_ANNOTATION: tracking_uri,
        **({contract.ALIAS_ANNOTATION: model.alias} if model.alias else {}),
    }


def _meta(owner: Owner, name: str, model: ResolvedModel) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": labels(owner, model),
            "ownerReferences": [owner_reference(owner)]}


def _serving_env(spec: api.ModelVersionSpec, owner: Owner, model: ResolvedModel,
                 tracking_uri: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_MODEL_URI, "value": model.model_uri},
        {"name": contract.ENV_TRACKING_URI, "value": tracking_uri},
        {"name": contract.ENV_MODEL_NAME, "value": model.name},
        {"name": contract.ENV_MODEL_VERSION, "value": model.version},
        {"name": contract.ENV_MODEL_VARIANT, "value": owner.name},
    ]
    secret = spec.registry.credentials_secret_ref if spec.registry is not None else None
    if secret is not None:
        # optional: a Secret may carry username/password or a token, not necessarily both.
        for key in contract.CREDENTIAL_KEYS:
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key,
                                                                    "optional": True}}})
    serving = spec.serving
    if serving is None:
        return env
    batching = serving.batching
    if api.given(batching):
        env += [
            {"name": contract.ENV_BATCHING, "value": "true" if batching.enabled else "false"},
            {"name": contract.ENV_MAX_BATCH_SIZE, "value": str(batching.max_batch_size)},
            {"name": contract.ENV_MAX_BATCH_LATENCY_MS, "value": str(batching.max_latency_ms)},
        ]
    cache = serving.cache
    if api.given(cache):
        env += [
            {"name": contract.ENV_CACHE, "value": "true" if cache.enabled else "false"},
            {"name": contract.ENV_CACHE_MAX_ENTRIES, "value": str(cache.max_entries)},
            {"name": contract.ENV_CACHE_TTL_SECONDS, "value": str(cache.ttl_seconds)},
        ]
        if cache.redis_url:
            env.append({"name": contract.ENV_CACHE_REDIS_URL, "value": cache.redis_url})
    # The user's own env comes last so it can override a default on purpose.
    env += [_env_var(e) for e in serving.env or ()]
    return env


# Pod fields the spec passes through, written back in the Kubernetes shape: only the keys the spec gives, in the
# order the API server delivers a body in (keys sorted), so a manifest is the same, to the byte, as when these
# were the body's own dicts; enums as their plain strings (a manifest holds JSON values only).

def _env_var(e: api.EnvVar) -> dict[str, Any]:
    out: dict[str, Any] = {"name": e.name}
    if e.value is not None:
        out["value"] = e.value
    if e.value_from is not None:
        out["valueFrom"] = e.value_from
    return out


def _toleration(t: api.Toleration) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if t.effect is not None:
        out["effect"] = t.effect.value
    if t.key is not None:
        out["key"] = t.key
    if t.operator is not None:
        out["operator"] = t.operator.value
    if t.toleration_seconds is not None:
        out["tolerationSeconds"] = t.toleration_seconds
    if t.value is not None:
        out["value"] = t.value
    return out


def _resources(r: api.Resources | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r is None:
        return out
    if r.limits is not None:
        out["limits"] = r.limits
    if r.requests is not None:
        out["requests"] = r.requests
    return out


def deployment_name(owner: Owner, track: str = "stable") -> str:
    return owner.name if track == "stable" else f"{owner.name}-{track}"


def build_deployment(owner: Owner, spec: api.ModelVersionSpec, model: ResolvedModel, tracking_uri: str,
                     default_image: str, *, track: str = "stable", replicas: int | None = None,
                     extra_pod_labels: dict[str, str] | None = None) -> Manifest:
    """The serving Deployment of one track: secure by default, probed on the server's own health endpoints.

    ``replicas`` overrides ``spec.replicas`` while a canary splits traffic by replica ratio.
    """
    serving = spec.serving or _NO_SERVING
    pod_labels = {**labels(owner, model), TRACK_LABEL: track, **(extra_pod_labels or {})}
    container: dict[str, Any] = {
        "name": "server",
        "image": serving.image or default_image,
        "imagePullPolicy": (serving.image_pull_policy or api.ImagePullPolicy.IF_NOT_PRESENT).value,
        "args": list(contract.SERVE_ARGS),
        "ports": [{"name": contract.SERVING_PORT_NAME, "containerPort": SERVING_PORT, "protocol": "TCP"},
                  {"name": contract.GRPC_PORT_NAME, "containerPort": GRPC_PORT, "protocol": "TCP"}],
        "env": _serving_env(spec, owner, model, tracking_uri),
        "resources": _resources(serving.resources) or DEFAULT_RESOURCES,
        "readinessProbe": {"httpGet": {"path": contract.READY_PATH, "port": contract.SERVING_PORT_NAME},
                           "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": contract.LIVE_PATH, "port": contract.SERVING_PORT_NAME},
                          "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        # The server writes why it can never serve to /dev/termination-log before the liveness probe
        # restarts it; a crash that writes nothing leaves the end of its log there instead. Either way the
        # reason lands in the pod's lastState.terminated.message, which the operator puts in status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # The model is downloaded at start; with a read-only root it needs a writable scratch space.
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        # A deleted pod keeps serving for a few seconds before SIGTERM: its endpoint is withdrawn at once, but
        # kube-proxy and Gateways take a moment to stop sending to it, and a server that stopped listening in
        # that moment fails requests (promote, rollback and scale-down would each drop some).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        "terminationGracePeriodSeconds": 30,
        "automountServiceAccountToken": False,  # the server never talks to the Kubernetes API
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if serving.node_selector:
        pod_spec["nodeSelector"] = serving.node_selector
    if serving.tolerations:
        pod_spec["tolerations"] = [_toleration(t) for t in serving.tolerations]
    if serving.affinity:
        pod_spec["affinity"] = serving.affinity
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": {SELECTOR_LABEL: owner.name, TRACK_LABEL: track}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": (spec.rollout or _NO_ROLLOUT).progress_deadline_seconds,
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    **provenance(model, tracking_uri),
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(SERVING_PORT),
                    "prometheus.io/path": contract.METRICS_PATH,
                },
            },
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    elif not (spec.autoscaling is not None and spec.autoscaling.enabled):
        # With autoscaling on, replicas is left out so the HPA owns it and the operator never fights it.
        deployment_spec["replicas"] = spec.replicas
    meta = _meta(owner, deployment_name(owner, track), model)
    meta["labels"][TRACK_LABEL] = track
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": deployment_spec}


def gateway_routing(spec: api.ModelVersionSpec) -> bool:
    """Whether the ModelVersion routes through a Gateway (``spec.routing.gatewayRef``, required in ``routing``)."""
    return spec.routing is not None


def build_service(owner: Owner, model: ResolvedModel, track: str = "", named: bool = False) -> Manifest:
    """The ModelVersion's Service ``<name>``: both tracks' pods (replica-ratio canaries split traffic by
    ready replicas behind it), or only ``track``'s. ``named`` gives the per-track Service ``<name>-<track>``
    a Gateway routes to. With a Gateway the main Service selects the stable track only, so in-cluster
    clients that bypass the Gateway never reach a canary beyond its weight."""
    selector = {SELECTOR_LABEL: owner.name, **({TRACK_LABEL: track} if track else {})}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(owner, f"{owner.name}-{track}" if named else owner.name, model),
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                           # h2c: the Kubernetes / Gateway API name for cleartext HTTP/2 (what gRPC
                           # without TLS is), so meshes and gateways proxy it as HTTP/2, not HTTP/1.
                           {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                            "appProtocol": "kubernetes.io/h2c"}]},
    }


def canary_mirrors(owner: Owner, model: ResolvedModel, mirror: bool, canary_active: bool,
                   style: MirrorStyle) -> mirroring.Mirrors:
    """The canary's shadow phase (``mirror`` while a canary runs) in the Gateway's ``style``: what the route's
    default rule gets, and the SnippetsFilter ``<name>-mirror-<name>-canary`` to apply before it (NGINX Gateway
    Fabric); nothing outside the shadow phase."""
    return mirroring.render(style, _meta(owner, owner.name, model),
                            [f"{owner.name}-canary"] if mirror and canary_active else [])


def canary_mirror_filter_name(owner: Owner) -> str:
    """The SnippetsFilter a ModelVersion's shadow phase renders on NGINX Gateway Fabric (deleted after it)."""
    return mirroring.filter_name(owner.name, f"{owner.name}-canary")


def build_canary_route(owner: Owner, spec: api.ModelVersionSpec, model: ResolvedModel, canary_weight: int,
                       mirror: bool, canary_active: bool,
                       style: MirrorStyle = MirrorStyle.REQUEST_MIRROR) -> Manifest:
    """The HTTPRoute of a Gateway-routed ModelVersion (``spec.routing.gatewayRef``): the default rule sends
    ``canary_weight`` % to ``<name>-canary`` and the rest to ``<name>-stable``, exactly; with ``mirror`` (the
    shadow phase) live traffic is also copied to the canary, whose answers are dropped — in the form the
    Gateway implements (``style``; on NGINX Gateway Fabric the route references ``canary_mirrors(...).objects``).
    While a canary runs, the header ``x-modelpilot-track: canary|stable`` pins a request to a track (QA). The
    route matches ``spec.routing.hostnames`` when given (its ``spec.hostnames``), every hostname otherwise."""
    assert spec.routing is not None, "build_canary_route needs spec.routing"
    gateway = spec.routing.gateway_ref
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name

    def ref(track: str, weight: int | None = None) -> dict[str, Any]:
        backend: dict[str, Any] = {"kind": "Service", "name": f"{owner.name}-{track}", "port": 80}
        if weight is not None:
            backend["weight"] = weight
        return backend

    rules: list[dict[str, Any]] = []
    if canary_active:
        rules = [{"matches": [{"headers": [{"type": "Exact", "name": TRACK_HEADER, "value": track}]}],
                  "backendRefs": [ref(track)]} for track in ("canary", "stable")]
    default: dict[str, Any] = {"backendRefs": [ref("stable", 100 - canary_weight)]}
    if canary_active:
        default["backendRefs"].append(ref("canary", canary_weight))
    mirroring.add_to_rule(default, canary_mirrors(owner, model, mirror, canary_active, style))
    rules.append(default)
    route_spec: dict[str, Any] = {"parentRefs": [parent], "rules": rules}
    if spec.routing.hostnames:  # absent or empty: no hostnames, the route matches every hostname of the listener
        route_spec["hostnames"] = list(spec.routing.hostnames)
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": _meta(owner, owner.name, model), "spec": route_spec}


def build_hpa(owner: Owner, spec: api.ModelVersionSpec, model: ResolvedModel) -> Manifest | None:
    autoscaling = spec.autoscaling
    if autoscaling is None or not autoscaling.enabled:
        return None
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(owner, owner.name, model),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": autoscaling.target_cpu_utilization_percentage}}}],
        },
    }


def build_pdb(owner: Owner, spec: api.ModelVersionSpec, model: ResolvedModel) -> Manifest | None:
    pdb = spec.pod_disruption_budget
    if pdb is None or not pdb.enabled:
        return None
    # maxUnavailable wins when both are given (the CRD's CEL allows only one); neither: one pod always stays.
    budget: dict[str, Any] = ({"maxUnavailable": pdb.max_unavailable} if pdb.max_unavailable is not None else
                              {"minAvailable": pdb.min_available if pdb.min_available is not None else 1})
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(owner, owner.name, model),
        "spec": {"selector": {"matchLabels": {SELECTOR_LABEL: owner.name}}, **budget},
    }


def build_all(owner: Owner, spec: api.ModelVersionSpec, model: ResolvedModel, tracking_uri: str,
              default_image: str) -> dict[str, Manifest | None]:
    """Every object a ModelVersion owns, by kind; ``None`` means "must not exist"."""
    return {
        "Deployment": build_deployment(owner, spec, model, tracking_uri, default_image),
        "Service": build_service(owner, model, "stable" if gateway_routing(spec) else ""),
        "HorizontalPodAutoscaler": build_hpa(owner, spec, model),
        "PodDisruptionBudget": build_pdb(owner, spec, model),
    }
