"""A real Gateway API data plane on the real node: NGINX Gateway Fabric 1.6.2 with Debian's nginx.

``modelpilot dev up --node real`` installs NGF with the GatewayClass ``modelpilot`` and the Gateway
``gateway-system/public``; on the session's environment (``real_env``: its node is real) this module proves, with
requests sent from this host to the Gateway's Service ClusterIP (the host routes the environment's Service range
to the node, whose kube-proxy balances it, as for any client in the cluster), that nginx — not a test — enforces
an HTTPRoute:

* a 90/10 weighted rule splits 2,000 requests 90/10 within ±5 points;
* a header match ``x-modelpilot-track: canary`` sends every such request to the canary;
* mirroring through a SnippetsFilter copies every request to a shadow whose answers never reach clients — as
  a hand-written route, and as the operator renders it for an ABTest's shadow variant (the operator running
  against this environment, two ModelVersions' model servers on the real node);
* ``spec.routing.hostnames``: two Gateway-routed ModelVersions on the shared Gateway, each with its own hostname,
  answer only their own host's requests, and a third host gets 404.

Backends: two one-replica Deployments of the serving image running a twenty-line ``http.server`` that answers
its own name (``BACKEND``) — the smallest real thing that says who answered. The serving image is already on
the node (no extra image to build or import), and a model server would add a model download and seconds of
start-up per pod while proving nothing more about routing.

Run it alone with ``.venv/bin/python -m pytest tests/cluster/test_gateway.py -v -s``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import realnode
from modelpilot_dev.workloads import LARGE_FLOWER, post_json

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


_kubectl = realnode.kubectl  # shared with the other real-node tests


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


def _send(url: str, count: int, headers: dict[str, str] | None = None, *, path: str = "/predict",
          body: Any = None, key: str = "backend") -> dict[str, Any]:
    """COUNT requests from this host to the Gateway at ``url`` (its ClusterIP), answers counted by ``key`` of each
    JSON answer (an echo backend's name, a model server's ``model_version``), failures by status or error. A new
    connection each: nginx draws every request anew anyway (split_clients on $request_id)."""
    answers: dict[str, int] = {}
    failures: dict[str, int] = {}
    for _ in range(count):
        try:
            name = str(post_json(url + path, {} if body is None else body, headers=headers)[key])
            answers[name] = answers.get(name, 0) + 1
        except urllib.error.HTTPError as exc:
            failures[str(exc.code)] = failures.get(str(exc.code), 0) + 1
        except (OSError, ValueError, KeyError) as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
    return {"answers": answers, "failures": failures}


def _infer(url: str, path: str, count: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """COUNT v2 inference requests (one large flower) through the Gateway, answers counted by model version."""
    return _send(url, count, headers, path=path, body=LARGE_FLOWER, key="model_version")


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
            probe = _send(gw["url"], 1)
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


# --------------------------------------------------------------------------- the operator's mirroring on NGF

def _served(env: dict[str, Any], namespace: str, mv: str) -> int:
    """Inference requests one ModelVersion's pod answered: ``modelpilot_requests_total`` on its /metrics, asked
    at the pod IP (the host routes the node's pod range)."""
    ip = _kubectl(env, "-n", namespace, "get", "pods", "-l", f"modelpilot.io/modelversion={mv}", "-o",
                  "jsonpath={.items[0].status.podIP}").stdout.strip()
    with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("modelpilot_requests_total{")))


def _get(env: dict[str, Any], namespace: str, what: str) -> dict[str, Any] | None:
    found = _kubectl(env, "-n", namespace, "get", what, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _wait(what: str, probe: Any, timeout: float, why: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s: {why()}"
        time.sleep(1)


def test_the_operator_mirrors_an_abtest_shadow_through_an_ngf_snippets_filter(real_env: dict[str, Any],
                                                                             operator: Any) -> None:
    """The operator against the real node's NGF: an ABTest with a shadow variant is rendered as an HTTPRoute
    referencing a SnippetsFilter (NGF 1.6.2 has no RequestMirror); clients get only the serving variant's
    answers while the shadow's pod receives a copy of each request; the shadow made a serving variant deletes
    the SnippetsFilter. Runs before the echo routes exist: a route without hostnames on the same Gateway
    would tie with this one on ``/`` and the older would win."""
    from modelpilot_dev.workloads import register_iris_model

    env, gw = real_env, real_env["node"]["gateway"]
    # The session's operator (tests/cluster/conftest.py: CRDs applied, the operator running as a host process).
    operator_log = Path(operator.logpath)

    def log_tail() -> str:
        return operator_log.read_text(errors="replace")[-3000:] if operator_log.exists() else "(no operator log)"

    tracking = env["exports"]["MLFLOW_TRACKING_URI"]
    primary, shadow = register_iris_model(tracking, "iris-mirror"), register_iris_model(tracking, "iris-mirror")
    namespace = f"mir-{uuid.uuid4().hex[:6]}"
    _kubectl(env, "create", "namespace", namespace)

    def model_version(name: str, version: str) -> dict[str, Any]:
        return {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"model": {"name": "iris-mirror", "version": version}, "replicas": 1,
                         # MLflow as the pods reach it: at the host side of the node's veth.
                         "registry": {"trackingUri": f"http://{env['node']['host_ip']}:{env['ports']['mlflow']}"},
                         "serving": {"image": SERVE_IMAGE, "imagePullPolicy": "Never",
                                     "nodeSelector": {"modelpilot.io/node": "real"}}}}

    test = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ABTest", "metadata": {"name": "iris",
                                                                                  "namespace": namespace},
            "spec": {"variants": [{"name": "primary", "modelVersion": "iris-a", "weight": 100},
                                  {"name": "shadow", "modelVersion": "iris-s", "shadow": True}],
                     "routing": {"gatewayRef": {"name": gw["name"], "namespace": gw["namespace"]}}}}
    filter_name = "iris-mirror-iris-s"
    started = time.monotonic()
    _kubectl(env, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        model_version("iris-a", primary), model_version("iris-s", shadow), test]}))
    try:
        def ready() -> bool:
            found = _get(env, namespace, "abtest/iris") or {}
            return any(c["type"] == "Ready" and c["status"] == "True"
                       for c in (found.get("status") or {}).get("conditions") or [])

        _wait("the ABTest Ready (both ModelVersions serving on the real node)", ready, 300,
              lambda: json.dumps((_get(env, namespace, "abtest/iris") or {}).get("status"))[:1500]
              + _kubectl(env, "-n", namespace, "get", "pods,modelversions", check=False).stdout + log_tail())
        route = _get(env, namespace, "httproute/iris")
        snippets = _get(env, namespace, f"snippetsfilter/{filter_name}")
        assert route is not None and snippets is not None, log_tail()
        default = route["spec"]["rules"][-1]
        assert default["filters"] == [{"type": "ExtensionRef", "extensionRef": {
            "group": "gateway.nginx.org", "kind": "SnippetsFilter", "name": filter_name}}], default
        assert [(r["name"], r["weight"]) for r in default["backendRefs"]] == [("iris-a", 100), ("iris-s", 0)]
        assert snippets["metadata"]["ownerReferences"][0]["kind"] == "ABTest"

        def accepted() -> bool:
            found = _get(env, namespace, "httproute/iris") or {}
            conditions = {c["type"]: c["status"] for p in (found.get("status") or {}).get("parents") or []
                          for c in p.get("conditions") or []}
            return conditions.get("Accepted") == "True" and conditions.get("ResolvedRefs") == "True"

        path = "/v2/models/iris-mirror/infer"
        _wait("the HTTPRoute Accepted by NGF", accepted, 60,
              lambda: json.dumps((_get(env, namespace, "httproute/iris") or {}).get("status")))
        _wait("the Gateway answering from the primary", lambda: _infer(gw["url"], path, 1)["answers"],
              60, lambda: json.dumps(_infer(gw["url"], path, 1)))
        print(f"\n[gateway] ModelVersions, ABTest applied → routed and mirrored through NGF in "
              f"{time.monotonic() - started:.1f}s")
        time.sleep(1)  # the probes' copies reach the shadow too: count from here
        before = _served(env, namespace, "iris-s"), _served(env, namespace, "iris-a")
        count = 100
        result = _infer(gw["url"], path, count)
        print(f"[gateway] {count} inference requests through the operator's route: clients got {result}")
        assert not result["failures"] and result["answers"] == {primary: count}, result
        _wait("every copy at the shadow", lambda: _served(env, namespace, "iris-s") - before[0] >= count, 15,
              lambda: f"{_served(env, namespace, 'iris-s') - before[0]} copies")
        copies = _served(env, namespace, "iris-s") - before[0]
        print(f"[gateway] the shadow's pod answered {copies} copies (its answers dropped by nginx)")
        assert copies == count and _served(env, namespace, "iris-a") - before[1] == count

        # The shadow becomes a serving variant: the operator deletes the SnippetsFilter it no longer renders.
        test["spec"]["variants"] = [{"name": "primary", "modelVersion": "iris-a", "weight": 90},
                                    {"name": "shadow", "modelVersion": "iris-s", "weight": 10}]
        _kubectl(env, "apply", "-f", "-", input=json.dumps(test))
        _wait("the SnippetsFilter deleted", lambda: _get(env, namespace, f"snippetsfilter/{filter_name}") is None,
              60, log_tail)
        default = (_get(env, namespace, "httproute/iris") or {})["spec"]["rules"][-1]
        assert "filters" not in default and [r["weight"] for r in default["backendRefs"]] == [90, 10], default
    finally:
        # The route goes first and is waited for: the echo routes after this test share the Gateway's "/".
        _kubectl(env, "-n", namespace, "delete", "abtest", "iris", "--ignore-not-found", check=False)
        _kubectl(env, "-n", namespace, "delete", "httproute", "iris", "--ignore-not-found", "--timeout=60s",
                 check=False)
        _kubectl(env, "delete", "namespace", namespace, "--wait=false", check=False)


def test_two_model_versions_on_one_gateway_answer_only_their_own_hostnames(real_env: dict[str, Any],
                                                                        operator: Any) -> None:
    """``spec.routing.hostnames`` through the real Gateway: two Gateway-routed ModelVersions (two versions of one
    model, so each answer names who gave it) on the shared ``gateway-system/public`` with different hostnames;
    requests for ``a.example`` reach only the first, ``b.example`` only the second, and a third hostname matches
    no route (404). Runs before the echo routes exist: their route has no hostnames and would match any host."""
    from modelpilot_dev.workloads import register_iris_model

    env, gw = real_env, real_env["node"]["gateway"]
    operator_log = Path(operator.logpath)
    tracking = env["exports"]["MLFLOW_TRACKING_URI"]
    first, second = register_iris_model(tracking, "iris-hosts"), register_iris_model(tracking, "iris-hosts")
    hosts = {"iris-host-a": ("a.example", first), "iris-host-b": ("b.example", second)}
    namespace = f"host-{uuid.uuid4().hex[:6]}"
    _kubectl(env, "create", "namespace", namespace)

    def model_version(name: str) -> dict[str, Any]:
        host, version = hosts[name]
        return {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"model": {"name": "iris-hosts", "version": version}, "replicas": 1,
                         "registry": {"trackingUri": f"http://{env['node']['host_ip']}:{env['ports']['mlflow']}"},
                         "serving": {"image": SERVE_IMAGE, "imagePullPolicy": "Never",
                                     "nodeSelector": {"modelpilot.io/node": "real"}},
                         "routing": {"gatewayRef": {"name": gw["name"], "namespace": gw["namespace"]},
                                     "hostnames": [host]}}}

    def why() -> str:
        log = operator_log.read_text(errors="replace")[-2000:] if operator_log.exists() else "(no operator log)"
        return _kubectl(env, "-n", namespace, "get", "pods,modelversions,httproutes", check=False).stdout + log

    started = time.monotonic()
    _kubectl(env, "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                         "items": [model_version(n) for n in hosts]}))
    path = "/v2/models/iris-hosts/infer"
    try:
        def served() -> bool:
            for name, (host, _) in hosts.items():
                route = _get(env, namespace, f"httproute/{name}") or {}
                conditions = {c["type"]: c["status"] for p in (route.get("status") or {}).get("parents") or []
                              for c in p.get("conditions") or []}
                if route.get("spec", {}).get("hostnames") != [host] or conditions.get("Accepted") != "True":
                    return False
                if not _infer(gw["url"], path, 1, {"Host": host})["answers"]:
                    return False
            return True

        _wait("both ModelVersions served through the Gateway on their hostnames", served, 300, why)
        print(f"\n[gateway] two ModelVersions applied → served on their own hostnames in "
              f"{time.monotonic() - started:.1f}s")
        for name, (host, version) in hosts.items():
            result = _infer(gw["url"], path, 50, {"Host": host})
            print(f"[gateway] 50 requests for {host}: {result}")
            assert result == {"answers": {version: 50}, "failures": {}}, (name, result)
        other = _infer(gw["url"], path, 5, {"Host": "c.example"})
        assert other == {"answers": {}, "failures": {"404": 5}}, other
        # register_iris_model logs explicit requirements: the serving image has every one, at its version.
        request = urllib.request.Request(f"{gw['url']}/v2/models/iris-hosts", headers={"Host": "a.example"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            meta = json.load(resp)["parameters"]
        assert meta["missing_requirements"] == [] and meta["mismatched_requirements"] == [], meta
    finally:
        # The routes go first and are waited for: later tests share the Gateway.
        _kubectl(env, "-n", namespace, "delete", "modelversions", *hosts, "--ignore-not-found", check=False)
        _kubectl(env, "-n", namespace, "wait", "--for=delete", *(f"httproute/{n}" for n in hosts), "--timeout=60s",
                 check=False)
        _kubectl(env, "delete", "namespace", namespace, "--wait=false", check=False)


def test_weights_are_enforced_by_nginx(real_env: dict[str, Any], echo_route: dict[str, Any]) -> None:
    started = time.monotonic()
    result = _send(echo_route["gateway"]["url"], REQUESTS)
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
    result = _send(echo_route["gateway"]["url"], 200, {HEADER: "canary"})
    print(f"\n[gateway] 200 requests with {HEADER}: canary: {result['answers']}")
    assert result["answers"] == {"canary": 200} and not result["failures"], result
    # Another value of the header is no pin: it falls through to the weighted rule.
    other = _send(echo_route["gateway"]["url"], 50, {HEADER: "stable"})
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
        probe = _send(gw["url"], 1, {"Host": host})
        if conditions.get("Accepted", {}).get("status") == "True" and probe["answers"]:
            break
        assert time.monotonic() < deadline, f"the mirroring route is not served: {conditions} {probe}"
        time.sleep(0.5)
    time.sleep(1)  # the probes' copies reach the shadow too: count from here
    before = _requests_seen(env, namespace, "shadow")
    result = _send(gw["url"], 200, {"Host": host})
    print(f"\n[gateway] 200 requests on the mirroring route: clients got {result['answers']}")
    assert not result["failures"], result
    assert set(result["answers"]) <= {"stable", "canary"} and sum(result["answers"].values()) == 200, result
    deadline = time.monotonic() + 10
    while (copies := _requests_seen(env, namespace, "shadow") - before) < 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"[gateway] the shadow received {copies} copies")
    assert copies == 200, f"the shadow received {copies} of 200 mirrored requests"
