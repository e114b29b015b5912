"""Mirroring in the form the route's Gateway implements: pure renderers (no I/O).

Part of the operator's pure domain, used by both route renderers (``abtest.build_httproute`` for shadow
variants, ``builders.build_canary_route`` for a canary's shadow phase). Which form a Gateway takes is an
observed fact — its GatewayClass's ``controllerName`` — read and cached by the ``gateways`` adapter and passed
in as a ``MirrorStyle``; nothing here asks the cluster.

* ``REQUEST_MIRROR`` (any conformant implementation): Gateway API's standard ``RequestMirror`` filter on the
  rule, one per mirrored Service.
* ``NGF_SNIPPETS`` (NGINX Gateway Fabric, ``gateway.nginx.org/nginx-gateway-controller``): NGF 1.6 does not
  implement ``RequestMirror`` — a route with it is answered with 500 — so each mirror is a ``SnippetsFilter``
  (``gateway.nginx.org/v1alpha1``; NGF must run with ``--snippets-filters``) that puts nginx's ``mirror`` into
  the rule's location, referenced by an ``ExtensionRef`` filter on the rule, with the mirrored Service as a
  ``weight: 0`` backendRef of that rule: NGF only creates an upstream for a Service a rule references, and
  weight 0 leaves it out of the split. The form is the one ``tests/cluster/test_gateway.py`` measures on a
  real NGF.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

#: The controllerName of NGINX Gateway Fabric's GatewayClasses.
NGF_CONTROLLER = "gateway.nginx.org/nginx-gateway-controller"
SNIPPETS_FILTER_GROUP = "gateway.nginx.org"
SNIPPETS_FILTER_API_VERSION = f"{SNIPPETS_FILTER_GROUP}/v1alpha1"
SNIPPETS_FILTER_KIND = "SnippetsFilter"
#: The nginx location each SnippetsFilter's copies go through (internal: no client can request it).
_LOCATION_PREFIX = "/_modelpilot_mirror"
_MAX_NAME = 253


class MirrorStyle(StrEnum):
    """How a route on a given Gateway mirrors traffic."""

    REQUEST_MIRROR = "RequestMirror"
    NGF_SNIPPETS = "SnippetsFilter"


def style_of(controller_name: str | None) -> MirrorStyle:
    """The mirror style of a GatewayClass with this ``spec.controllerName`` (None: unknown, the standard)."""
    return MirrorStyle.NGF_SNIPPETS if controller_name == NGF_CONTROLLER else MirrorStyle.REQUEST_MIRROR


def filter_name(route: str, service: str) -> str:
    """The SnippetsFilter of ``route`` mirroring to ``service``: ``<route>-mirror-<service>``, deterministic, so a
    reconcile that no longer renders it knows what to delete. Beyond 253 characters it is cut and ends with a
    hash of the whole name (still deterministic, still unique)."""
    name = f"{route}-mirror-{service}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:_MAX_NAME - 11].rstrip('-.')}-{digest}"


@dataclass(frozen=True)
class Mirrors:
    """What mirroring to some Services adds: ``filters`` and ``backend_refs`` (weight 0) on the rule, and
    ``objects`` to apply before the route (the SnippetsFilters it references)."""

    filters: tuple[dict[str, Any], ...] = ()
    backend_refs: tuple[dict[str, Any], ...] = ()
    objects: tuple[dict[str, Any], ...] = ()


def render(style: MirrorStyle, route_meta: dict[str, Any], services: Sequence[str], port: int = 80) -> Mirrors:
    """Mirroring of one rule of the route with metadata ``route_meta`` (name, namespace, labels, owner
    references: the SnippetsFilters are labelled and owned like the route) to each of ``services``."""
    if not services:
        return Mirrors()
    if style == MirrorStyle.REQUEST_MIRROR:
        return Mirrors(filters=tuple({"type": "RequestMirror", "requestMirror": {"backendRef": {
            "kind": "Service", "name": s, "port": port}}} for s in services))
    route = route_meta["name"]
    return Mirrors(
        filters=tuple({"type": "ExtensionRef", "extensionRef": {
            "group": SNIPPETS_FILTER_GROUP, "kind": SNIPPETS_FILTER_KIND, "name": filter_name(route, s)}}
            for s in services),
        # NGF creates an upstream only for a Service a rule references; weight 0 keeps it out of the split.
        backend_refs=tuple({"kind": "Service", "name": s, "port": port, "weight": 0} for s in services),
        objects=tuple(snippets_filter(route_meta, s, port) for s in services))


def snippets_filter(route_meta: dict[str, Any], service: str, port: int = 80) -> dict[str, Any]:
    """The SnippetsFilter copying each request of the rule that references it to ``service``.

    nginx's ``mirror`` in the rule's location sends a copy to an internal location that proxies to the
    Service's upstream, which NGF names ``<namespace>_<service>_<port>``; the copy's answer is dropped. NGF
    writes one nginx server block per hostname (routes without ``hostnames`` share the listener's), and a rule's
    ``http.server`` snippet goes into each block holding that rule's location, so the internal location sits
    beside the location that mirrors to it. Its path names the route and Service, so two routes in one block
    never define the same location."""
    route, namespace = route_meta["name"], route_meta["namespace"]
    name = filter_name(route, service)
    location = f"{_LOCATION_PREFIX}/{namespace}/{route}/{service}"
    meta = {k: v for k, v in route_meta.items() if k in ("labels", "ownerReferences")}
    return {
        "apiVersion": SNIPPETS_FILTER_API_VERSION, "kind": SNIPPETS_FILTER_KIND,
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {"snippets": [
            {"context": "http.server",
             "value": f"location = {location} {{ internal; proxy_set_header Host $host; "
                      f"proxy_pass http://{namespace}_{service}_{port}$request_uri; }}"},
            {"context": "http.server.location", "value": f"mirror {location}; mirror_request_body on;"},
        ]},
    }


def add_to_rule(rule: dict[str, Any], mirrors: Mirrors) -> None:
    """Put ``mirrors`` on ``rule``: its filters, and the weight-0 backendRefs of Services the rule does not
    reference yet (a canary in its shadow phase already is one, at weight 0)."""
    if mirrors.filters:
        rule["filters"] = [*rule.get("filters", []), *mirrors.filters]
    present = {r["name"] for r in rule.get("backendRefs", [])}
    extra = [r for r in mirrors.backend_refs if r["name"] not in present]
    if extra:
        rule["backendRefs"] = [*rule.get("backendRefs", []), *extra]
