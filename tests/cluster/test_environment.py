"""The local environment is real: real control plane, a real node running the serving image, real Prometheus.

Each test talks to what the session's environment started; nothing here is
mocked. Serving pods are containers on the real node (containerd + runc, the
kubelet's probes, restarts and termination messages); traffic goes to Services.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from modelpilot_dev.workloads import post_json, serving_deployment, service_url, wait_for

REPO = Path(__file__).resolve().parents[2]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def _pods(core: Any, namespace: str, name: str) -> list[Any]:
    return core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/name={name}").items


def _is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def _container_pids(pod: Any) -> list[int]:
    """Host pids of a pod's running containers (the node's processes are visible from the host): every process
    in the cgroup runc made for a container ID the kubelet reports in the pod's status."""
    ids = [c.container_id.split("://", 1)[1] for c in pod.status.container_statuses or [] if c.container_id]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(f"/{cid}\n" in cgroups for cid in ids):
            found.append(int(entry.name))
    return found


def _deploy(apps: Any, namespace: str, dev_env: dict[str, Any], name: str, model_uri: str,
            replicas: int) -> None:
    manifest = serving_deployment(name, model_uri, dev_env["exports"]["MLFLOW_TRACKING_URI"], replicas=replicas)
    apps.create_namespaced_deployment(namespace, manifest)


def _service(core: Any, namespace: str, name: str) -> str:
    """A ClusterIP Service in front of the Deployment ``name``; its URL."""
    core.create_namespaced_service(namespace, {
        "metadata": {"name": name}, "spec": {"selector": {"app.kubernetes.io/name": name},
                                             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    return str(service_url(core.api_client, namespace, name))


def test_three_replicas_are_available_only_when_three_containers_answer_ready(
    dev_env: dict[str, Any], core: Any, apps: Any, namespace: str, iris_version: str
) -> None:
    _deploy(apps, namespace, dev_env, "iris", f"models:/iris/{iris_version}", 3)
    url = _service(core, namespace, "iris")
    deadline = time.monotonic() + 180
    available = 0
    while time.monotonic() < deadline:
        available = apps.read_namespaced_deployment("iris", namespace).status.available_replicas or 0
        if available == 3:
            break
        time.sleep(0.5)
    assert available == 3, "deployment never became 3/3 available"
    pods = _pods(core, namespace, "iris")
    assert len(pods) == 3 and all(_is_ready(p) for p in pods)
    assert {p.spec.node_name for p in pods} == {dev_env["node"]["name"]}
    # Each pod has its own IP from the node's pod range and its own container processes.
    assert len({p.status.pod_ip for p in pods}) == 3
    assert all(p.status.pod_ip.startswith(dev_env["node"]["pod_cidr"].rsplit(".", 1)[0] + ".") for p in pods)
    assert all(_container_pids(p) for p in pods)
    # And the Service answers real predictions from the registered model (kube-proxy picks a pod each time).
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [6.7, 3.0, 5.2, 2.3]}]}
    for _ in range(6):
        answer = post_json(f"{url}/v2/models/iris/infer", body)
        assert answer["outputs"][0]["data"] == [2]  # a virginica flower


def test_a_model_that_cannot_load_never_becomes_available(
    dev_env: dict[str, Any], core: Any, apps: Any, namespace: str
) -> None:
    _deploy(apps, namespace, dev_env, "broken", "models:/no-such-model/1", 1)
    pod = wait_for(lambda: next((p for p in _pods(core, namespace, "broken") if p.status.container_statuses
                                 and p.status.container_statuses[0].state.running), None), 120,
                   message="the pod's container to run")
    kubectl = dev_env["binaries"]["kubectl"]
    env = {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}

    def load_failed() -> bool:
        # The server's own answer, asked inside its container (`kubectl exec`), as its readiness probe sees it.
        proc = subprocess.run([kubectl, "exec", "-n", namespace, pod.metadata.name, "--", "python", "-c",
                               "import urllib.request, urllib.error\n"
                               "try: urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2)\n"
                               "except urllib.error.HTTPError as e: print(e.code, e.read().decode())"],
                              env=env, capture_output=True, text=True, timeout=60)
        out = proc.stdout.lower()
        return out.startswith("503") and ("no-such-model" in out or "not found" in out)

    # The container is up, has tried to load, and says why it is not ready.
    wait_for(load_failed, 120, 1.0, "the server to report its load failure")
    # Several readiness periods later the pod is still unready and nothing is available.
    time.sleep(3)
    pod = core.read_namespaced_pod(pod.metadata.name, namespace)
    assert not _is_ready(pod)
    assert pod.status.phase == "Running"
    dep = apps.read_namespaced_deployment("broken", namespace)
    assert not dep.status.available_replicas
    assert _container_pids(pod)


def test_deleting_a_pod_stops_its_container_and_the_replicaset_replaces_it(
    dev_env: dict[str, Any], core: Any, apps: Any, namespace: str, iris_version: str
) -> None:
    _deploy(apps, namespace, dev_env, "iris", f"models:/iris/{iris_version}", 1)
    wait_for(lambda: (apps.read_namespaced_deployment("iris", namespace).status.available_replicas or 0) == 1,
             180, message="1/1 available")
    (old,) = _pods(core, namespace, "iris")
    old_pids = _container_pids(old)
    assert old_pids
    core.delete_namespaced_pod(old.metadata.name, namespace)
    wait_for(lambda: not _container_pids(old), 30, message=f"the container processes {old_pids} to stop")

    def replaced() -> Any:
        pods = [p for p in _pods(core, namespace, "iris") if p.metadata.name != old.metadata.name]
        return pods[0] if pods and _is_ready(pods[0]) else None

    new = wait_for(replaced, 180, message="a ready replacement pod")
    assert _container_pids(new)
    wait_for(lambda: not [p for p in _pods(core, namespace, "iris") if p.metadata.name == old.metadata.name], 30,
             message="the old pod object to be gone")


def test_a_crashed_container_shows_as_a_restart(
    dev_env: dict[str, Any], core: Any, apps: Any, namespace: str, iris_version: str
) -> None:
    _deploy(apps, namespace, dev_env, "iris", f"models:/iris/{iris_version}", 1)
    wait_for(lambda: (apps.read_namespaced_deployment("iris", namespace).status.available_replicas or 0) == 1,
             180, message="1/1 available")
    (pod,) = _pods(core, namespace, "iris")
    pids = _container_pids(pod)
    assert pids
    for pid in pids:  # a crash: SIGKILL from outside, as the kernel's OOM killer would
        os.kill(pid, signal.SIGKILL)

    def restarted() -> Any:
        current = core.read_namespaced_pod(pod.metadata.name, namespace)
        statuses = current.status.container_statuses or []
        return current if statuses and statuses[0].restart_count >= 1 and _is_ready(current) else None

    current = wait_for(restarted, 180, message="the kubelet to restart the container and the pod to be ready again")
    last = current.status.container_statuses[0].last_state.terminated
    assert last is not None and last.exit_code != 0
    assert set(_container_pids(current)).isdisjoint(pids)


def _exiting(name: str, script: str, policy: str = "File") -> dict[str, Any]:
    """A Deployment whose container (the serving image, on the real node) runs ``script`` and exits."""
    labels = {"app.kubernetes.io/name": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
                         "containers": [{"name": "server", "image": "ghcr.io/modelpilot/modelpilot-serve:0.1.0",
                                         "command": ["/bin/sh", "-c", script],
                                         "terminationMessagePolicy": policy}]}}}}


def test_a_terminated_container_leaves_its_termination_message_in_last_state(
    dev_env: dict[str, Any], core: Any, apps: Any, namespace: str
) -> None:
    lines = 'i=0; while [ $i -lt 100 ]; do echo "line $i"; i=$((i+1)); done'
    apps.create_namespaced_deployment(namespace, _exiting(
        "writes", f'{lines}; printf "last words" > /dev/termination-log; exit 3'))
    apps.create_namespaced_deployment(namespace, _exiting("logs", f"{lines}; exit 2", "FallbackToLogsOnError"))
    apps.create_namespaced_deployment(namespace, _exiting("quiet", f"{lines}; exit 2"))

    def terminated(name: str) -> Any:
        for pod in _pods(core, namespace, name):
            for status in pod.status.container_statuses or []:
                if status.last_state and status.last_state.terminated:
                    return status.last_state.terminated
        return None

    written = wait_for(lambda: terminated("writes"), 60, message="the first run of 'writes' to end")
    assert written.message == "last words" and written.exit_code == 3 and written.reason == "Error"
    # An empty file and FallbackToLogsOnError: the end of the run's log (80 lines at most), as the kubelet does.
    logged = wait_for(lambda: terminated("logs"), 60, message="the first run of 'logs' to end")
    assert logged.message.splitlines() == [f"line {i}" for i in range(20, 100)] and logged.exit_code == 2
    # The default policy (File) with an empty file: no message.
    quiet = wait_for(lambda: terminated("quiet"), 60, message="the first run of 'quiet' to end")
    assert not quiet.message and quiet.exit_code == 2
    # Each start gets a fresh file: the next run's message is its own, not appended to the last one.
    def second_run() -> Any:
        statuses = [s for p in _pods(core, namespace, "writes") for s in p.status.container_statuses or []]
        return statuses[0] if statuses and statuses[0].restart_count >= 2 else None

    assert wait_for(second_run, 60, message="a second run of 'writes' to end").last_state.terminated.message == \
        "last words"


def test_prometheus_scrapes_pods_at_their_pod_ip_with_their_labels(
    dev_env: dict[str, Any], core: Any, apps: Any, namespace: str, iris_version: str
) -> None:
    _deploy(apps, namespace, dev_env, "iris", f"models:/iris/{iris_version}", 1)
    prom = dev_env["exports"]["PROMETHEUS_URL"]

    def target() -> Any:
        status, body = _get(f"{prom}/api/v1/targets?state=active")
        if status != 200:
            return None
        for t in json.loads(body)["data"]["activeTargets"]:
            if t["labels"].get("namespace") == namespace and t["health"] == "up":
                return t
        return None

    found = wait_for(target, 120, 1.0, "Prometheus to scrape the pod")
    (pod,) = _pods(core, namespace, "iris")
    assert found["scrapeUrl"].startswith(f"http://{pod.status.pod_ip}:8080/")
    assert found["labels"]["pod"] == pod.metadata.name
    assert found["labels"]["app_kubernetes_io_name"] == "iris"
    # The sample really came from the process: `up` for that pod is 1 in a PromQL query.
    status, body = _get(f"{prom}/api/v1/query?query=up%7Bnamespace%3D%22{namespace}%22%7D")
    result = json.loads(body)["data"]["result"]
    assert status == 200 and result and result[0]["value"][1] == "1"


def test_kubectl_works_with_the_written_kubeconfig(dev_env: dict[str, Any]) -> None:
    env = {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}
    out = subprocess.run([dev_env["binaries"]["kubectl"], "get", "nodes", "-o", "json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    nodes = json.loads(out)["items"]
    assert [n["metadata"]["name"] for n in nodes] == [dev_env["node"]["name"]]  # one real node, nothing simulated
    assert all(any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
               for n in nodes)
    version = subprocess.run([dev_env["binaries"]["kubectl"], "version", "-o", "json"], env=env,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(version)["serverVersion"]["gitVersion"].startswith("v1.36.")


def test_the_apiserver_rejects_an_object_that_violates_a_crd_schema(
    dev_env: dict[str, Any], namespace: str
) -> None:
    kubectl = dev_env["binaries"]["kubectl"]
    env = {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}
    subprocess.run([kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], env=env, check=True,
                   capture_output=True, timeout=60)
    wait_for(lambda: subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=20s",
                                     "crd/modelversions.modelpilot.io"], env=env, capture_output=True,
                                    timeout=60).returncode == 0, 120, 1.0, "the CRD to be Established")
    bad = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion",
           "metadata": {"name": "bad", "namespace": namespace},
           "spec": {"model": {"name": "iris", "version": "3", "alias": "champion"}, "replicas": -1}}
    proc = subprocess.run([kubectl, "create", "-f", "-"], input=yaml.safe_dump(bad), env=env, text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode != 0
    assert "replicas" in proc.stderr
    assert "version" in proc.stderr and "alias" in proc.stderr
    good = {**bad, "metadata": {"name": "good", "namespace": namespace},
            "spec": {"model": {"name": "iris", "version": "3"}, "replicas": 1}}
    proc = subprocess.run([kubectl, "create", "-f", "-"], input=yaml.safe_dump(good), env=env, text=True,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
