"""The real node's Gateway API implementation: NGINX Gateway Fabric 1.6.2 with Debian's nginx.

Part of the local environment (``modelpilot dev up --node real``). Pure builders of the manifests ``up`` applies
after the node is Ready (``environment._await_real_node``), and the reading of a Gateway's status; no I/O here.

What runs, and why so:

* **one pod** ``nginx-gateway/nginx-gateway`` on the real node, two containers as in NGF's own deployment:
  ``nginx-gateway`` (the control plane, ``static-mode``: watches Gateway API objects, writes nginx's
  configuration into shared emptyDirs, reloads nginx with SIGHUP and checks the new config version on a unix
  socket) and ``nginx`` (Debian bookworm's nginx-light + njs, the data plane). They share the process
  namespace (NGF reads ``/var/run/nginx/nginx.pid`` and ``/proc/<pid>/task/<pid>/children``).
* **tighter than NGF's manifest**: both containers run as NGF's nginx user (101:1001), so NGF may signal nginx
  without ``CAP_KILL``; nginx binds port 80 without ``CAP_NET_BIND_SERVICE`` because the pod sets the
  namespaced sysctl ``net.ipv4.ip_unprivileged_port_start=0``. Every capability dropped, read-only root
  filesystems, no privilege escalation, the runtime's seccomp profile.
* **GatewayClass** ``modelpilot`` with an ``NginxProxy`` (``disableHTTP2``: NGF writes ``http2 on;`` otherwise,
  which nginx 1.22 does not know; ``ipFamily: ipv4``: the node's pods have no IPv6) and one **Gateway**
  ``gateway-system/public`` (the one ``examples/abtest-gateway-shadow.yaml`` names), an HTTP listener on port
  80 that takes routes from every namespace.
* **Services**: ``nginx-gateway`` (the data plane; ClusterIP inside the node, NodePort ``HTTP_NODE_PORT`` on
  the node IP, which host processes reach directly) and ``nginx-gateway-health`` (NGF's ``/readyz`` on
  ``HEALTH_NODE_PORT``, the ``gateway`` row of ``modelpilot dev status``).
* NGF runs with leader election and product telemetry off (one replica, nothing leaves the machine). With
  ``snippets=True`` it also accepts ``SnippetsFilter`` objects (raw nginx configuration from routes: how the
  local environment mirrors traffic, since NGF 1.6.2 does not implement ``RequestMirror``).
"""

from __future__ import annotations

from typing import Any

NGF_NAMESPACE = "nginx-gateway"
NGF_NAME = "nginx-gateway"
#: NGF checks that its controller name lives under its own domain.
CONTROLLER_NAME = "gateway.nginx.org/nginx-gateway-controller"
GATEWAY_CLASS = "modelpilot"
NGINX_PROXY = "modelpilot"
GATEWAY_NAMESPACE = "gateway-system"
GATEWAY_NAME = "public"
HTTP_PORT = 80
HEALTH_PORT = 8081
METRICS_PORT = 9113
#: Fixed NodePorts (the node's namespace is the environment's own, so two environments never collide).
HTTP_NODE_PORT = 30080
HEALTH_NODE_PORT = 30081
#: NGF's uid/gid in its images; the pod's two containers share it (see the module docstring).
UID, GID = 101, 1001
_LABELS = {"app.kubernetes.io/name": NGF_NAME, "app.kubernetes.io/instance": NGF_NAME}
#: The emptyDirs NGF writes and nginx reads (paths are constants in NGF 1.6.2).
_SHARED = {"nginx-conf": "/etc/nginx/conf.d", "nginx-stream-conf": "/etc/nginx/stream-conf.d",
           "nginx-main-includes": "/etc/nginx/main-includes", "nginx-secrets": "/etc/nginx/secrets",
           "nginx-includes": "/etc/nginx/includes", "nginx-run": "/var/run/nginx"}


def _rbac(snippets: bool) -> list[dict[str, Any]]:
    """NGF 1.6.2's ClusterRole (deploy/default), without leases (no leader election here)."""
    nginx_org = ["nginxproxies", "clientsettingspolicies", "observabilitypolicies", "upstreamsettingspolicies"]
    nginx_status = ["nginxgateways/status", "clientsettingspolicies/status", "observabilitypolicies/status",
                    "upstreamsettingspolicies/status"]
    if snippets:
        nginx_org.append("snippetsfilters")
        nginx_status.append("snippetsfilters/status")
    rules = [
        {"apiGroups": [""], "resources": ["namespaces", "services", "secrets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        {"apiGroups": ["gateway.networking.k8s.io"],
         "resources": ["gatewayclasses", "gateways", "httproutes", "referencegrants", "grpcroutes"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["gateway.networking.k8s.io"],
         "resources": ["httproutes/status", "gateways/status", "gatewayclasses/status", "grpcroutes/status"],
         "verbs": ["update"]},
        {"apiGroups": ["gateway.nginx.org"], "resources": ["nginxgateways"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["gateway.nginx.org"], "resources": nginx_org, "verbs": ["list", "watch"]},
        {"apiGroups": ["gateway.nginx.org"], "resources": nginx_status, "verbs": ["update"]},
        # NGF reads the Gateway API CRDs' bundle-version annotation (it runs "best effort" on v1.4.1).
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["list", "watch"]},
    ]
    name = f"modelpilot:{NGF_NAME}"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NGF_NAME, "namespace": NGF_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": NGF_NAME, "namespace": NGF_NAMESPACE}]},
    ]


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def _field(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def deployment(ngf_image: str, nginx_image: str, node_name: str, snippets: bool = False) -> dict[str, Any]:
    """NGF's control plane and nginx in one pod on the real node (images imported there, never pulled)."""
    shared = [{"name": name, "mountPath": path} for name, path in _SHARED.items()]
    args = ["static-mode", f"--gateway-ctlr-name={CONTROLLER_NAME}", f"--gatewayclass={GATEWAY_CLASS}",
            f"--service={NGF_NAME}", f"--health-port={HEALTH_PORT}", f"--metrics-port={METRICS_PORT}",
            # One replica; nothing is reported outside the machine.
            "--leader-election-disable", "--product-telemetry-disable"]
    if snippets:
        args.append("--snippets-filters")
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NGF_NAME, "namespace": NGF_NAMESPACE, "labels": dict(_LABELS)},
        "spec": {"replicas": 1, "selector": {"matchLabels": dict(_LABELS)}, "template": {
            "metadata": {"labels": dict(_LABELS),
                         # NGF's metrics (its own and nginx's stub_status), scraped by the real-node job.
                         "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}},
            "spec": {
                "serviceAccountName": NGF_NAME,
                "shareProcessNamespace": True,
                "terminationGracePeriodSeconds": 10,
                "nodeSelector": {"modelpilot.io/node": "real", "kubernetes.io/hostname": node_name},
                "securityContext": {
                    "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": GID, "fsGroup": GID,
                    "seccompProfile": {"type": "RuntimeDefault"},
                    # A safe, namespaced sysctl: port 80 for nginx without a capability.
                    "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]},
                "containers": [
                    {"name": "nginx-gateway", "image": ngf_image, "imagePullPolicy": "Never", "args": args,
                     "env": [{"name": "POD_IP", **_field("status.podIP")},
                             {"name": "POD_NAMESPACE", **_field("metadata.namespace")},
                             {"name": "POD_NAME", **_field("metadata.name")},
                             {"name": "POD_UID", **_field("metadata.uid")}],
                     "ports": [{"name": "metrics", "containerPort": METRICS_PORT},
                               {"name": "health", "containerPort": HEALTH_PORT}],
                     # Ready once NGF has configured nginx successfully.
                     "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 1},
                     "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                     "securityContext": _container_security(),
                     "volumeMounts": shared},
                    {"name": "nginx", "image": nginx_image, "imagePullPolicy": "Never",
                     "ports": [{"name": "http", "containerPort": HTTP_PORT}],
                     "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
                     "securityContext": _container_security(),
                     # Debian's nginx keeps its temporary files (request bodies, proxy buffers) under /var/lib/nginx.
                     "volumeMounts": [*shared, {"name": "nginx-lib", "mountPath": "/var/lib/nginx"}]},
                ],
                "volumes": [{"name": name, "emptyDir": {}} for name in (*_SHARED, "nginx-lib")],
            }}},
    }


def manifests(ngf_image: str, nginx_image: str, node_name: str, snippets: bool = False) -> list[dict[str, Any]]:
    """Everything after NGF's CRDs: namespaces, RBAC, the pod, its Services, GatewayClass, NginxProxy, Gateway."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NGF_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        *_rbac(snippets),
        deployment(ngf_image, nginx_image, node_name, snippets),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": NGF_NAME, "namespace": NGF_NAMESPACE,
                                                             "labels": dict(_LABELS)},
         "spec": {"type": "NodePort", "selector": dict(_LABELS),
                  "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "nodePort": HTTP_NODE_PORT}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{NGF_NAME}-health", "namespace": NGF_NAMESPACE,
                                                             "labels": dict(_LABELS)},
         "spec": {"type": "NodePort", "selector": dict(_LABELS),
                  "ports": [{"name": "health", "port": HEALTH_PORT, "targetPort": "health",
                             "nodePort": HEALTH_NODE_PORT}]}},
        {"apiVersion": "gateway.nginx.org/v1alpha1", "kind": "NginxProxy", "metadata": {"name": NGINX_PROXY},
         "spec": {"disableHTTP2": True, "ipFamily": "ipv4"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
         "spec": {"controllerName": CONTROLLER_NAME,
                  "parametersRef": {"group": "gateway.nginx.org", "kind": "NginxProxy", "name": NGINX_PROXY}}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
         "spec": {"gatewayClassName": GATEWAY_CLASS,
                  "listeners": [{"name": "http", "port": HTTP_PORT, "protocol": "HTTP",
                                 "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
    ]


def crd_names(documents: list[dict[str, Any]]) -> list[str]:
    """The names of the CRDs among parsed YAML documents (to wait until each is Established)."""
    return [d["metadata"]["name"] for d in documents if d and d.get("kind") == "CustomResourceDefinition"]


def programmed(gateway: dict[str, Any]) -> tuple[bool, str]:
    """Whether a Gateway is Programmed for its current generation, and a one-line why (for messages)."""
    status = gateway.get("status") or {}
    generation = (gateway.get("metadata") or {}).get("generation")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    found = conditions.get("Programmed")
    if found is None:
        return False, "no Programmed condition yet (is the NGF pod running?)"
    current = generation is None or found.get("observedGeneration") in (None, generation)
    ok = found.get("status") == "True" and current
    why = f"Programmed={found.get('status')} {found.get('reason', '')}: {found.get('message', '')}".strip()
    if not current:
        why += f" (observed generation {found.get('observedGeneration')}, current {generation})"
    return ok, why
