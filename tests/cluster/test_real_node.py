"""The real node (``modelpilot dev up --node real``): real containers, real Service routing.

Runs on the session's environment, whose one node is real (containerd + runc, kubelet and kube-proxy in a
network namespace; images built here from the project's Dockerfiles), and proves on it:

* the node registers and is Ready, with its own node IP on the veth;
* a serving pod from the serving image, as uid 10001 on a read-only root filesystem with every capability
  dropped (the securityContext the operator writes), downloads a model registered in the environment's
  MLflow — reached from inside the pod at the host side of the veth — and becomes Ready;
* a request to the Service's ClusterIP (sent from inside the node's network namespace, as a pod's
  neighbour would) is answered, and kube-proxy's iptables rules spread requests over both replicas;
* pods reach the apiserver through the ``kubernetes`` Service with their ServiceAccount token, but nothing
  outside the machine;
* ``kubectl logs`` and ``kubectl exec`` work against the pod.

Nothing is skipped: a machine that lacks something fails with the missing piece named. Run it alone with
``.venv/bin/python -m pytest tests/cluster/test_real_node.py -v``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import realnode

pytestmark = pytest.mark.cluster

REPLICAS = 2
READY_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def core(real_env: dict[str, Any]) -> Any:
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(real_env["exports"]["KUBECONFIG"]))


_kubectl, _in_node = realnode.kubectl, realnode.in_node  # shared with the other real-node tests


def _why_not_ready(env: dict[str, Any], namespace: str) -> str:
    pods = _kubectl(env, "-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
    events = _kubectl(env, "-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout
    kubelet_log = Path(env["home"]) / "logs" / "kubelet.log"
    tail = "\n".join(kubelet_log.read_text(errors="replace").splitlines()[-15:]) if kubelet_log.exists() else ""
    return f"pods:\n{pods}\nevents:\n{events[-3000:]}\nkubelet log:\n{tail}"


def _requests_served(pod_ip: str) -> float:
    with urllib.request.urlopen(f"http://{pod_ip}:8080/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(r'^modelpilot_requests_total\{[^}]*code="200"[^}]*\} (\S+)$',
                                                      text, re.M))


def test_node_is_ready_with_its_own_ip(real_env: dict[str, Any], core: Any) -> None:
    node = real_env["node"]
    found = core.read_node(node["name"])
    ready = next((c for c in found.status.conditions or [] if c.type == "Ready"), None)
    assert ready is not None and ready.status == "True", f"node {node['name']} not Ready: {ready}"
    addresses = {a.type: a.address for a in found.status.addresses}
    assert addresses.get("InternalIP") == node["node_ip"]
    assert found.status.node_info.container_runtime_version.startswith("containerd://")
    assert found.status.node_info.kubelet_version == "v1.36.3"
    rows = {r["name"]: r for r in real_env["environment"].status()}
    for name in ("node", "containerd", "kube-proxy"):
        assert rows[name]["healthy"], f"{name} is not healthy: {rows[name]}"
    # The node-side address of MLflow answers from the host too (one URL for host processes and pods).
    with urllib.request.urlopen(f"{node['endpoints']['mlflow']}/health", timeout=5) as resp:
        assert resp.status == 200


def test_serving_pod_behind_a_cluster_ip(real_env: dict[str, Any], core: Any) -> None:
    from modelpilot_dev.workloads import register_iris_model

    env = real_env
    node = env["node"]
    mlflow_port = env["ports"]["mlflow"]
    version = register_iris_model(env["exports"]["MLFLOW_TRACKING_URI"], "iris-real")
    namespace = f"rn-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    labels = {"app": "iris-real"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "iris-real", "namespace": namespace},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": labels}, "template": {
            # The annotations the operator writes; Prometheus scrapes the pod IP through ordinary discovery.
            "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                                                           "prometheus.io/path": "/metrics"}},
            "spec": {
                "nodeSelector": {"modelpilot.io/node": "real"},
                # The pod-level securityContext the operator writes (builders.build_deployment).
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                    "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "server", "image": "ghcr.io/modelpilot/modelpilot-serve:0.1.0",
                    "imagePullPolicy": "Never",
                    # MLflow is reached from the pod at the host side of the node's veth.
                    "args": ["serve", "--model-uri", f"models:/iris-real/{version}",
                             "--tracking-uri", f"http://{node['host_ip']}:{mlflow_port}"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                                       "periodSeconds": 1, "failureThreshold": 3},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            }}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "iris-real", "namespace": namespace},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    created = time.monotonic()
    proc = subprocess.run([env["binaries"]["kubectl"], "--kubeconfig", env["exports"]["KUBECONFIG"], "apply", "-f",
                           "-"], input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                   "items": [deployment, service]}),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    try:
        # ---- Ready, with real containers
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            pods = core.list_namespaced_pod(namespace, label_selector="app=iris-real").items
            ready = [p for p in pods if p.status.pod_ip and any(
                c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
            if len(ready) == REPLICAS:
                break
            assert time.monotonic() < deadline, (
                f"{len(ready)}/{REPLICAS} serving pods Ready after {READY_TIMEOUT:.0f}s on the real node\n"
                + _why_not_ready(env, namespace))
            time.sleep(1)
        print(f"\n[real node] Deployment applied → {REPLICAS}/{REPLICAS} pods Ready in "
              f"{time.monotonic() - created:.1f}s (model downloaded from MLflow inside the pods)")
        assert all(p.spec.node_name == node["name"] for p in ready)
        pod_ips = sorted(p.status.pod_ip for p in ready)
        assert all(ip.startswith(node["pod_cidr"].rsplit(".", 2)[0] + ".") for ip in pod_ips), pod_ips

        # ---- the securityContext is enforced by runc, not just written down
        pod = ready[0].metadata.name
        uid = _kubectl(env, "-n", namespace, "exec", pod, "--", "id", "-u").stdout.strip()
        assert uid == "10001"
        touched = _kubectl(env, "-n", namespace, "exec", pod, "--", "sh", "-c", "touch /probe 2>&1; echo rc=$?",
                           check=False)
        assert "Read-only file system" in touched.stdout and "rc=1" in touched.stdout, touched.stdout
        caps = _kubectl(env, "-n", namespace, "exec", pod, "--", "sh", "-c", "grep CapEff /proc/self/status").stdout
        assert caps.split()[-1] == "0000000000000000", caps

        # ---- kubectl logs
        logs = _kubectl(env, "-n", namespace, "logs", pod).stdout
        assert "model ready" in logs, logs[-2000:]

        # ---- kubectl port-forward (apiserver → kubelet → containerd's stream server → the pod's netns)
        forward = subprocess.Popen([env["binaries"]["kubectl"], "--kubeconfig", env["exports"]["KUBECONFIG"], "-n",
                                    namespace, "port-forward", f"pod/{pod}", ":8080"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            assert forward.stdout is not None
            import select

            readable, _, _ = select.select([forward.stdout], [], [], 30)
            line = forward.stdout.readline() if readable else "(nothing within 30 s)"
            match = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert match, f"kubectl port-forward printed {line!r}; stderr: {forward.stderr.read() if forward.poll() is not None and forward.stderr else ''}"
            with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/v2/health/ready", timeout=10) as resp:
                assert resp.status == 200
        finally:
            forward.terminate()
            forward.wait(timeout=10)

        # ---- the ClusterIP, balanced by kube-proxy
        cluster_ip = core.read_namespaced_service("iris-real", namespace).spec.cluster_ip
        # kube-proxy programs both endpoints into the node's iptables (DNAT to each pod IP).
        deadline = time.monotonic() + 30
        while True:
            rules = subprocess.run(["ip", "netns", "exec", node["netns"], "iptables", "-w", "5", "-t", "nat", "-S"],
                                   capture_output=True, text=True, timeout=30).stdout
            if all(f"--to-destination {ip}:8080" in rules for ip in pod_ips):
                break
            assert time.monotonic() < deadline, (
                f"kube-proxy did not program both endpoints of {cluster_ip} within 30s:\n"
                + "\n".join(r for r in rules.splitlines() if namespace in r))
            time.sleep(0.5)
        before = {ip: _requests_served(ip) for ip in pod_ips}
        body = {"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
                                    "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}}
        out = _in_node(env, f"""
import json, urllib.request
answers = set()
for _ in range(60):
    req = urllib.request.Request("http://{cluster_ip}/invocations", data={json.dumps(json.dumps(body))}.encode(),
                                 headers={{"Content-Type": "application/json"}})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        answers.add(resp.read().decode())
print(json.dumps(sorted(answers)))
""")
        answers = json.loads(out)
        assert answers == [json.dumps({"predictions": [0, 2]}, separators=(",", ":"))] or all(
            json.loads(a)["predictions"] == [0, 2] for a in answers), answers
        after = {ip: _requests_served(ip) for ip in pod_ips}
        served = {ip: after[ip] - before[ip] for ip in pod_ips}
        assert sum(served.values()) == 60, served
        counters = subprocess.run(["ip", "netns", "exec", node["netns"], "iptables", "-w", "5", "-t", "nat", "-L",
                                   "-v", "-n"], capture_output=True, text=True, timeout=30).stdout
        assert all(n >= 5 for n in served.values()), (
            f"kube-proxy did not spread 60 requests: {served}\n"
            + "\n".join(r for r in counters.splitlines() if namespace in r))

        # ---- Prometheus (on the host) scrapes both pods at their pod IPs, found by Kubernetes discovery
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(f"{env['exports']['PROMETHEUS_URL']}/api/v1/targets?state=active",
                                        timeout=5) as resp:
                targets = json.load(resp)["data"]["activeTargets"]
            up = {t["labels"].get("pod_ip") for t in targets
                  if t["labels"].get("namespace") == namespace and t["health"] == "up"
                  and t["scrapeUrl"].startswith(tuple(f"http://{ip}:8080/" for ip in pod_ips))}
            if up >= set(pod_ips):
                break
            assert time.monotonic() < deadline, (
                f"Prometheus does not scrape both pods at their pod IPs within 60s: "
                + json.dumps([{k: t[k] for k in ("scrapeUrl", "health", "lastError")} for t in targets
                              if t["labels"].get("namespace") == namespace]))
            time.sleep(2)

        # ---- from inside a pod: the apiserver through the `kubernetes` Service, nothing outside the machine
        kubernetes_ip = node["kubernetes_service_ip"]
        probe = _kubectl(env, "-n", namespace, "exec", pod, "--", "python", "-c", """
import json, socket, ssl, sys, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
req = urllib.request.Request("https://%s/version" % sys.argv[1], headers={"Authorization": "Bearer " + open(sa + "token").read()})
print("apiserver:", json.load(urllib.request.urlopen(req, context=ctx, timeout=5))["gitVersion"])
# Cluster DNS (CoreDNS on the node): full and short Service names
print("dns:", socket.gethostbyname("iris-real.%s.svc.cluster.local" % open(sa + "namespace").read()),
      socket.gethostbyname("iris-real"), socket.gethostbyname("kubernetes.default"))
s = socket.socket(); s.settimeout(3)
try:
    s.connect(("203.0.113.7", 80)); print("outside: connected")
except OSError as exc:
    print("outside: blocked", exc)
""", kubernetes_ip, timeout=60).stdout
        assert "apiserver: v1.36.3" in probe, probe
        assert f"dns: {cluster_ip} {cluster_ip} {kubernetes_ip}" in probe, probe
        assert "outside: blocked" in probe, probe
    finally:
        core.delete_namespace(namespace)
