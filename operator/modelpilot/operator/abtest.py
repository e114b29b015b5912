"""ABTest: pure routing builders and decisions (no I/O).

Reconcile-level helpers for the ABTest resource: one stable endpoint in front of
two or more ModelVersions, split by weight through one of two providers. They
read the typed spec (``api.ABTestSpec``), parsed once where the ABTest
reconciler reads the body:

* **replica ratio** (bare clusters, the default): the stable Service selects
  every variant's pods through the label ``modelpilot.io/abtest: <name>``, and
  each ModelVersion's replicas are set so replicas approximate the weights. The
  total is the sum of the variants' own ``spec.replicas``; a variant gets
  ``round(total × weight / 100)`` replicas, at least one when its weight is
  above 0 and none at 0 % — a 0 % variant receives no traffic at all. With N
  total replicas the split quantises to multiples of 100/N %; the effective
  weights are reported in status. Header pinning, stickiness and mirroring
  need a Gateway.
* **Gateway API**: an HTTPRoute on the named Gateway with weighted backendRefs
  (the variants' own Services), one rule per variant matching the pinning
  header, and a mirror per shadow variant on the default rule, in the form the
  Gateway implements (``mirroring``: a RequestMirror filter, or on NGINX Gateway
  Fabric a SnippetsFilter ``<abtest>-mirror-<modelversion>`` the route references);
  ``routing.hostnames``, when given, are the route's ``spec.hostnames``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelpilot.operator import api, contract, mirroring
from modelpilot.operator.mirroring import MirrorStyle

API_VERSION = contract.API_VERSION
ABTEST_LABEL = contract.ABTEST_LABEL
_NO_PINNING = api.HeaderPinning()


@dataclass(frozen=True)
class Variant:
    """One arm as the routing uses it: ``name`` is the spec's, or its ModelVersion's when the spec names none."""

    name: str
    model_version: str
    weight: int
    shadow: bool


def variants(spec: api.ABTestSpec) -> list[Variant]:
    return [Variant(name=v.name or v.model_version, model_version=v.model_version, weight=v.weight, shadow=v.shadow)
            for v in spec.variants]


def provider(spec: api.ABTestSpec) -> str:
    return "gateway" if spec.routing is not None and spec.routing.gateway_ref is not None else "replicas"


def replica_split(vs: list[Variant], replicas: dict[str, int], weights: dict[str, int] | None = None) -> dict[str, int]:
    """Replicas per ModelVersion approximating the weights (replica-ratio provider)."""
    serving = [v for v in vs if not v.shadow]
    total = max(sum(max(replicas.get(v.model_version, 1), 0) for v in serving), 1)
    out: dict[str, int] = {}
    for v in serving:
        weight = (weights or {}).get(v.name, v.weight)
        out[v.model_version] = 0 if weight <= 0 else max(1, round(total * weight / 100))
    return out


def effective_weights(vs: list[Variant], split: dict[str, int]) -> dict[str, int]:
    total = sum(split.values()) or 1
    return {v.name: round(100 * split.get(v.model_version, 0) / total) for v in vs if not v.shadow}


def split_text(vs: list[Variant], weights: dict[str, int]) -> str:
    return ",".join(f"{v.name}=shadow" if v.shadow else f"{v.name}={weights.get(v.name, 0)}" for v in vs)


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": contract.ABTEST_KIND, "name": name, "uid": uid, "controller": True,
            "blockOwnerDeletion": True}


def build_service(name: str, namespace: str, uid: str) -> dict[str, Any]:
    """The stable endpoint: selects every non-shadow variant's pods (replica ratio splits the traffic)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner_reference(name, uid)],
                     "labels": {"app.kubernetes.io/managed-by": "modelpilot", ABTEST_LABEL: name}},
        "spec": {"type": "ClusterIP", "selector": {ABTEST_LABEL: name},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }


def _route_meta(name: str, namespace: str, uid: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "ownerReferences": [owner_reference(name, uid)],
            "labels": {"app.kubernetes.io/managed-by": "modelpilot", ABTEST_LABEL: name}}


def shadows(vs: list[Variant]) -> list[str]:
    """The Services the default rule mirrors to (each shadow variant's ModelVersion's, once)."""
    return list(dict.fromkeys(v.model_version for v in vs if v.shadow))


def mirrors(name: str, namespace: str, uid: str, vs: list[Variant], style: MirrorStyle) -> mirroring.Mirrors:
    """The shadow variants' mirroring in ``style``: what the route's default rule gets, and the SnippetsFilters
    to apply before it (NGINX Gateway Fabric)."""
    return mirroring.render(style, _route_meta(name, namespace, uid), shadows(vs))


def build_httproute(name: str, namespace: str, uid: str, spec: api.ABTestSpec, vs: list[Variant],
                    weights: dict[str, int], style: MirrorStyle = MirrorStyle.REQUEST_MIRROR) -> dict[str, Any]:
    """HTTPRoute with weighted backendRefs, pinning rules and mirrors for shadow variants (in ``style``: the
    SnippetsFilters it then references are ``mirrors(...).objects``), for ``routing.hostnames`` when given."""
    routing = spec.routing
    assert routing is not None and routing.gateway_ref is not None, "the Gateway provider needs routing.gatewayRef"
    gateway = routing.gateway_ref
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    # The model's default header (contract.VARIANT_HEADER) when headerPinning names none, or is not there.
    header = (routing.header_pinning or _NO_PINNING).header

    def ref(v: Variant, weight: int | None = None) -> dict[str, Any]:
        backend: dict[str, Any] = {"kind": "Service", "name": v.model_version, "port": 80}
        if weight is not None:
            backend["weight"] = weight
        return backend

    serving = [v for v in vs if not v.shadow]
    # Pinning rules come first (more specific matches win) and are always present: they cost
    # nothing and let QA reach one variant with a header.
    rules: list[dict[str, Any]] = [
        {"matches": [{"headers": [{"type": "Exact", "name": header, "value": v.name}]}], "backendRefs": [ref(v)]}
        for v in serving
    ]
    default: dict[str, Any] = {"backendRefs": [ref(v, weights.get(v.name, 0)) for v in serving]}
    mirroring.add_to_rule(default, mirrors(name, namespace, uid, vs, style))
    rules.append(default)
    route_spec: dict[str, Any] = {"parentRefs": [parent], "rules": rules}
    if routing.hostnames:  # absent or empty: no hostnames, the route matches every hostname of the listener
        route_spec["hostnames"] = list(routing.hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": _route_meta(name, namespace, uid),
        "spec": route_spec,
    }


def pick_backend(route: dict[str, Any], headers: dict[str, str], draw: float) -> str:
    """Which Service a request goes to under an HTTPRoute (the data plane a Gateway would run).

    ``draw`` is a number in [0, 1). Used by tests and the demo to send traffic exactly as the
    route says, since no Gateway implementation runs locally.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    for rule in route["spec"]["rules"]:
        matches = rule.get("matches") or []
        if matches and not any(all(lowered.get(h["name"].lower()) == h["value"] for h in m.get("headers", []))
                               for m in matches):
            continue
        refs = rule["backendRefs"]
        total = sum(r.get("weight", 1) for r in refs)
        if total <= 0:
            break
        point = draw * total
        for backend in refs:
            point -= backend.get("weight", 1)
            if point < 0:
                return str(backend["name"])
        return str(refs[-1]["name"])
    raise LookupError("no rule of the route matches the request")
