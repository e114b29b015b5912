"""A real Gateway API data plane on the real node: NGINX Gateway Fabric 1.6.2 with Debian's nginx.

``modelpilot dev up --node real`` installs NGF with the GatewayClass ``modelpilot`` and the Gateway
``gateway-system/public``; on the session's environment (``real_env``: its node is real) this module proves, with
requests sent through the Gateway's Service ClusterIP from inside the node's network namespace (where
kube-proxy programs ClusterIPs), that nginx — not a test — enforces an HTTPRoute:

* a 90/10 weighted rule splits 2,000 requests 90/10 within ±5 points;
* a header match ``x-modelpilot-track: canary`` sends every such request to the canary.

Backends: two one-replica Deployments of the serving image running a twenty-line ``http.server`` that answers
its own name (``BACKEND``) — the smallest real thing that says who answered. The serving image is already on
the node (no extra image to build or import), and a model server would add a model download and seconds of
start-up per pod while proving nothing more about routing.

Run it alone with ``.venv/bin/python -m pytest tests/cluster/test_gateway.py -v -s``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import realnode

pytestmark = pytest.mark.cluster

SERVE_IMAGE = "ghcr.io/modelpilot/modelpilot-serve:0.1.0"
REQUESTS = 2000
CANARY_SHARE = 0.10
TOLERANCE = 0.05
HEADER = "x-modelpilot-track"

#: A backend that answers every request with its own name, and counts what it received (``/__requests``).
ECHO = r"""
import http.server, json, os, threading
NAME, POD = os.environ["BACKEND"], os.environ.get("HOSTNAME", "")
seen = {"requests": 0}
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/__requests":
            body = json.dumps(seen).encode()
        else:
            with lock:
                seen["requests"] += 1
            body = json.dumps({"backend": NAME, "pod": POD, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


_kubectl, _in_node = realnode.kubectl, realnode.in_node  # shared with the other real-node tests


def _backend(name: str) -> list[dict[str, Any]]:
    labels = {"app": f"echo-{name}"}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"echo-{name}"},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {
                 "nodeSelector": {"modelpilot.io/node": "real"},
                 "terminationGracePeriodSeconds": 1,
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{
                     "name": "echo", "image": SERVE_IMAGE, "imagePullPolicy": "Never",
                     "command": ["python", "-c", ECHO], "env": [{"name": "BACKEND", "value": name}],
                     "ports": [{"name": "http", "containerPort": 8080}],
                     "readinessProbe": {"httpGet": {"path": "/__requests", "port": "http"}, "periodSeconds": 1},
                     "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}},
                 }],
             }}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"echo-{name}"},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ]


def _route(namespace: str, gw: dict[str, Any]) -> dict[str, Any]:
    """The shape the operator writes for a Gateway canary: a header-pinning rule first, then the weighted one."""
    parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gw["name"],
              "namespace": gw["namespace"]}
    ref = lambda name, weight: {"name": f"echo-{name}", "port": 80, "weight": weight}  # noqa: E731
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "echo", "namespace": namespace},
        "spec": {"parentRefs": [parent], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                          "headers": [{"type": "Exact", "name": HEADER, "value": "canary"}]}],
             "backendRefs": [ref("canary", 1)]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
             "backendRefs": [ref("stable", 90), ref("canary", 10)]},
        ]},
    }


def _route_accepted(env: dict[str, Any], namespace: str) -> tuple[bool, str]:
    route = json.loads(_kubectl(env, "-n", namespace, "get", "httproute", "echo", "-o", "json").stdout)
    parents = (route.get("status") or {}).get("parents") or []
    conditions = {c["type"]: c for p in parents for c in p.get("conditions") or []}
    ok = all(conditions.get(t, {}).get("status") == "True" for t in ("Accepted", "ResolvedRefs"))
    return ok, json.dumps(parents)


#: Sent inside the node's network namespace: COUNT requests on one keep-alive connection to the Gateway's
#: ClusterIP, answers counted per backend (nginx draws every request anew: split_clients on $request_id).
TRAFFIC = r"""
import http.client, json, sys
host, count, headers = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
answers, failures = {}, {}
conn = http.client.HTTPConnection(host, 80, timeout=10)
for i in range(count):
    try:
        conn.request("GET", f"/predict?i={i}", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status == 200:
            name = json.loads(body)["backend"]
            answers[name] = answers.get(name, 0) + 1
        else:
            failures[str(resp.status)] = failures.get(str(resp.status), 0) + 1
    except (OSError, http.client.HTTPException) as exc:
        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        conn.close()
        conn = http.client.HTTPConnection(host, 80, timeout=10)
print(json.dumps({"answers": answers, "failures": failures}))
"""


def _send(env: dict[str, Any], cluster_ip: str, count: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    code = f"import sys; sys.argv = ['traffic', {cluster_ip!r}, '{count}', {json.dumps(json.dumps(headers or {}))}]\n"
    return dict(json.loads(_in_node(env, code + TRAFFIC)))


@pytest.fixture(scope="module")
def echo_route(real_env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Two echo backends and the HTTPRoute on the environment's Gateway, in a namespace of their own."""
    env = real_env
    gw = env["node"]["gateway"]
    namespace = f"gw-{uuid.uuid4().hex[:6]}"
    _kubectl(env, "create", "namespace", namespace)
    items = [*_backend("stable"), *_backend("canary")]
    _kubectl(env, "-n", namespace, "apply", "-f", "-",
             input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    started = time.monotonic()
    try:
        done = _kubectl(env, "-n", namespace, "wait", "--for=condition=Available", "--timeout=120s",
                        "deploy/echo-stable", "deploy/echo-canary", check=False)
        assert done.returncode == 0, (done.stderr + _kubectl(env, "-n", namespace, "get", "pods,events",
                                                              check=False).stdout)
        _kubectl(env, "apply", "-f", "-", input=json.dumps(_route(namespace, gw)))
        applied = time.monotonic()
        deadline = applied + 60
        while True:
            ok, why = _route_accepted(env, namespace)
            if ok:
                break
            assert time.monotonic() < deadline, f"the HTTPRoute was not accepted by the Gateway: {why}"
            time.sleep(0.5)
        # Accepted is written before nginx is reloaded: wait until the Gateway answers from a backend.
        while True:
            probe = _send(env, gw["cluster_ip"], 1)
            if probe["answers"]:
                break
            assert time.monotonic() < deadline, f"the Gateway does not route to the backends yet: {probe}"
            time.sleep(0.5)
        print(f"\n[gateway] backends Available in {applied - started:.1f}s; HTTPRoute applied → routed through "
              f"nginx in {time.monotonic() - applied:.1f}s")
        yield {"namespace": namespace, "gateway": gw}
    finally:
        _kubectl(env, "delete", "namespace", namespace, "--wait=false", check=False)


def test_dev_up_installed_a_programmed_gateway(real_env: dict[str, Any]) -> None:
    gw = real_env["node"]["gateway"]
    assert (gw["class"], gw["namespace"], gw["name"]) == ("modelpilot", "gateway-system", "public")
    found = json.loads(_kubectl(real_env, "-n", "gateway-system", "get", "gateway", "public", "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in found["status"]["conditions"]}
    assert conditions.get("Accepted") == "True" and conditions.get("Programmed") == "True", conditions
    gc = json.loads(_kubectl(real_env, "get", "gatewayclass", "modelpilot", "-o", "json").stdout)
    assert {c["type"]: c["status"] for c in gc["status"]["conditions"]}.get("Accepted") == "True"
    rows = {r["name"]: r for r in real_env["environment"].status()}
    assert rows["gateway"]["healthy"], {k: rows["gateway"][k] for k in ("detail", "url")}
    # Both containers run as NGF's nginx user with no capability (the pod's securityContext is enforced by runc).
    pod = _kubectl(real_env, "-n", "nginx-gateway", "get", "pods", "-o", "jsonpath={.items[0].metadata.name}").stdout
    for container in ("nginx",):
        status = _kubectl(real_env, "-n", "nginx-gateway", "exec", pod, "-c", container, "--", "sh", "-c",
                          "id -u; grep CapEff /proc/self/status").stdout.split()
        assert status[0] == "101" and status[-1] == "0000000000000000", status


def test_weights_are_enforced_by_nginx(real_env: dict[str, Any], echo_route: dict[str, Any]) -> None:
    started = time.monotonic()
    result = _send(real_env, echo_route["gateway"]["cluster_ip"], REQUESTS)
    took = time.monotonic() - started
    answers = result["answers"]
    print(f"\n[gateway] {REQUESTS} requests through the Gateway's ClusterIP in {took:.1f}s: {answers}, "
          f"failures {result['failures']}")
    assert not result["failures"], result
    assert sum(answers.values()) == REQUESTS
    share = answers.get("canary", 0) / REQUESTS
    assert abs(share - CANARY_SHARE) <= TOLERANCE, f"canary got {share:.1%} of {REQUESTS} requests, not 10 % ± 5"
    assert answers.get("stable", 0) + answers.get("canary", 0) == REQUESTS


def test_the_header_pins_every_request_to_the_canary(real_env: dict[str, Any], echo_route: dict[str, Any]) -> None:
    result = _send(real_env, echo_route["gateway"]["cluster_ip"], 200, {HEADER: "canary"})
    print(f"\n[gateway] 200 requests with {HEADER}: canary: {result['answers']}")
    assert result["answers"] == {"canary": 200} and not result["failures"], result
    # Another value of the header is no pin: it falls through to the weighted rule.
    other = _send(real_env, echo_route["gateway"]["cluster_ip"], 50, {HEADER: "stable"})
    assert sum(other["answers"].values()) == 50 and not other["failures"], other


def test_host_processes_reach_the_gateway_at_the_node_ip(real_env: dict[str, Any],
                                                        echo_route: dict[str, Any]) -> None:
    """Host processes (a developer's curl, the demo) need no netns: the Gateway's ClusterIP (the host routes the
    environment's Service range to the node) and its NodePort on the node IP both answer."""
    gw = echo_route["gateway"]
    assert gw["url"] == f"http://{gw['cluster_ip']}"
    for url in (gw["url"], gw["node_port_url"]):
        with urllib.request.urlopen(urllib.request.Request(f"{url}/predict", headers={HEADER: "canary"}),
                                    timeout=10) as resp:
            assert json.load(resp)["backend"] == "canary", url
    assert Path(real_env["home"], "state.json").exists()


def _mirror_filter(namespace: str, shadow: str) -> dict[str, Any]:
    """Mirroring through NGF's SnippetsFilter (NGF 1.6.2 does not implement RequestMirror): nginx's ``mirror``
    in the rule's location copies each request to an internal location that proxies to the shadow's upstream.
    NGF names that upstream ``<namespace>_<service>_<port>`` and creates it because the shadow is a
    ``weight: 0`` backendRef of the rule (left out of the split)."""
    location = f"/_modelpilot_mirror/{namespace}/{shadow}"
    return {
        "apiVersion": "gateway.nginx.org/v1alpha1", "kind": "SnippetsFilter",
        "metadata": {"name": f"mirror-{shadow}", "namespace": namespace},
        "spec": {"snippets": [
            {"context": "http.server",
             "value": f"location = {location} {{ internal; proxy_set_header Host $host; "
                      f"proxy_pass http://{namespace}_{shadow}_80$request_uri; }}"},
            {"context": "http.server.location", "value": f"mirror {location}; mirror_request_body on;"},
        ]},
    }


def _requests_seen(env: dict[str, Any], namespace: str, backend: str) -> int:
    """What a backend pod received, asked at its pod IP (the host routes the node's pod range)."""
    ip = _kubectl(env, "-n", namespace, "get", "pods", "-l", f"app=echo-{backend}", "-o",
                  "jsonpath={.items[0].status.podIP}").stdout.strip()
    with urllib.request.urlopen(f"http://{ip}:8080/__requests", timeout=5) as resp:
        return int(json.load(resp)["requests"])


def test_a_shadow_gets_a_copy_of_every_request_and_clients_only_the_primary_answers(
    real_env: dict[str, Any], echo_route: dict[str, Any]
) -> None:
    env, namespace, gw = real_env, echo_route["namespace"], echo_route["gateway"]
    host = "mirror.example"
    _kubectl(env, "-n", namespace, "apply", "-f", "-",
             input=json.dumps({"apiVersion": "v1", "kind": "List", "items": _backend("shadow")}))
    done = _kubectl(env, "-n", namespace, "wait", "--for=condition=Available", "--timeout=120s",
                    "deploy/echo-shadow", check=False)
    assert done.returncode == 0, done.stderr
    parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gw["name"],
              "namespace": gw["namespace"]}
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "echo-mirror", "namespace": namespace},
        "spec": {"parentRefs": [parent], "hostnames": [host], "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "filters": [{"type": "ExtensionRef", "extensionRef": {
                "group": "gateway.nginx.org", "kind": "SnippetsFilter", "name": "mirror-echo-shadow"}}],
            "backendRefs": [{"name": "echo-stable", "port": 80, "weight": 90},
                            {"name": "echo-canary", "port": 80, "weight": 10},
                            {"name": "echo-shadow", "port": 80, "weight": 0}]}]},
    }
    _kubectl(env, "-n", namespace, "apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [_mirror_filter(namespace, "echo-shadow"), route]}))
    deadline = time.monotonic() + 60
    while True:
        found = json.loads(_kubectl(env, "-n", namespace, "get", "httproute", "echo-mirror", "-o", "json").stdout)
        conditions = {c["type"]: c for p in (found.get("status") or {}).get("parents") or []
                      for c in p.get("conditions") or []}
        probe = _send(env, gw["cluster_ip"], 1, {"Host": host})
        if conditions.get("Accepted", {}).get("status") == "True" and probe["answers"]:
            break
        assert time.monotonic() < deadline, f"the mirroring route is not served: {conditions} {probe}"
        time.sleep(0.5)
    time.sleep(1)  # the probes' copies reach the shadow too: count from here
    before = _requests_seen(env, namespace, "shadow")
    result = _send(env, gw["cluster_ip"], 200, {"Host": host})
    print(f"\n[gateway] 200 requests on the mirroring route: clients got {result['answers']}")
    assert not result["failures"], result
    assert set(result["answers"]) <= {"stable", "canary"} and sum(result["answers"].values()) == 200, result
    deadline = time.monotonic() + 10
    while (copies := _requests_seen(env, namespace, "shadow") - before) < 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"[gateway] the shadow received {copies} copies")
    assert copies == 200, f"the shadow received {copies} of 200 mirrored requests"
