"""`helm install` of charts/modelpilot into the local environment gives a working operator under its RBAC.

The chart's operator pod runs on the real node from the operator image built
here from the project's Dockerfile, authenticated with the projected
ServiceAccount token the kubelet mounts — so every API call it makes is checked
by the real apiserver against the chart's RBAC. Its log is read with `kubectl logs`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelpilot_dev.workloads import wait_for

REPO = Path(__file__).resolve().parents[2]
RELEASE, SYSTEM = "mp", "modelpilot-system"
GROUP, VERSION = "modelpilot.io", "v1alpha1"


def _env(dev_env: dict[str, Any]) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}


def _run(dev_env: dict[str, Any], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=_env(dev_env), capture_output=True, text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def release(operator: Any, dev_env: dict[str, Any]) -> Iterator[dict[str, Any]]:
    paused_before = operator.logpath.read_text().count("Pausing operations in favour of")
    helm, kubectl = dev_env["binaries"]["helm"], dev_env["binaries"]["kubectl"]
    extra_env = [{"name": "MODELPILOT_PEERING", "value": "modelpilot"},
                 # Above the session's own operator (priority 100), which stands by meanwhile.
                 {"name": "MODELPILOT_PRIORITY", "value": "1000"}]
    proc = _run(dev_env, helm, "install", RELEASE, str(REPO / "charts" / "modelpilot"), "-n", SYSTEM,
                "--create-namespace", "--skip-crds", "--wait", "--timeout", "240s",
                "--set", f"mlflow.trackingUri={dev_env['exports']['MLFLOW_TRACKING_URI']}",
                "--set", f"prometheus.url={dev_env['exports']['PROMETHEUS_URL']}",
                "--set-json", f"extraEnv={json.dumps(extra_env)}", check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    try:
        yield {"name": RELEASE, "paused_before": paused_before}
    finally:
        _run(dev_env, helm, "uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "120s", check=False)
        _run(dev_env, kubectl, "delete", "namespace", SYSTEM, "--wait=false", check=False)


def test_helm_install_runs_the_operator_under_its_own_service_account(
    release: dict[str, Any], operator: Any, dev_env: dict[str, Any], core: Any, custom: Any, namespace: str,
    iris_version: str
) -> None:
    (pod,) = [p for p in core.list_namespaced_pod(SYSTEM).items if p.metadata.deletion_timestamp is None]
    account = pod.spec.service_account_name
    assert account and account != "default"
    assert pod.spec.node_name == dev_env["node"]["name"] and pod.status.pod_ip
    # The kubelet's projected ServiceAccount token (bound, expiring), the only credential the pod has.
    projected = [s for v in pod.spec.volumes or [] if v.projected for s in v.projected.sources or []
                 if s.service_account_token]
    assert projected and projected[0].service_account_token.expiration_seconds
    (container,) = pod.spec.containers
    assert container.image.startswith("ghcr.io/modelpilot/modelpilot-operator:")

    # The chart's operator takes over (higher priority); the session's operator stands by.
    wait_for(lambda: operator.logpath.read_text().count("Pausing operations in favour of")
             > release["paused_before"], 120, message="the session operator to pause")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": "iris"},
        "spec": {"model": {"name": "iris", "version": iris_version}}})

    def ready() -> bool:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", "iris")
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (body.get("status") or {}).get("conditions") or [])

    wait_for(ready, 180, 1.0, "the ModelVersion Ready, reconciled by the helm-installed operator")
    log = _run(dev_env, dev_env["binaries"]["kubectl"], "logs", "-n", SYSTEM, pod.metadata.name).stdout
    assert "reconciled generation" in log, log[-3000:]
    # No RBAC refusal of the operator's own identity (other Forbidden answers, e.g. posting an Event
    # into a namespace being deleted, are not about permissions).
    assert f'User "system:serviceaccount:{SYSTEM}:{account}" cannot' not in log


@pytest.mark.parametrize("verb,resource,namespace_arg,expected", [
    ("patch", "modelversions.modelpilot.io/status", None, "yes"),
    ("create", "deployments.apps", None, "yes"),
    ("create", "httproutes.gateway.networking.k8s.io", None, "yes"),
    ("get", "secrets", "kube-system", "yes"),       # credentials Secrets named by ModelVersions
    ("list", "secrets", "kube-system", "no"),       # …but it cannot enumerate them
    ("watch", "secrets", None, "no"),
    ("list", "pods", None, "yes"),                  # why serving pods are not ready (status only)
    ("create", "pods", None, "no"),
    ("create", "pods/exec", None, "no"),
    ("delete", "nodes", None, "no"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, "no"),
    ("patch", "modelversions.modelpilot.io", None, "no"),  # only status is written: no annotation, no spec
    ("patch", "abtests.modelpilot.io/status", None, "yes"),
    ("*", "*", None, "no"),
])
def test_the_chart_rbac_allows_what_the_operator_needs_and_nothing_else(
    release: dict[str, Any], dev_env: dict[str, Any], core: Any, verb: str, resource: str, namespace_arg: str | None,
    expected: str
) -> None:
    (pod,) = [p for p in core.list_namespaced_pod(SYSTEM).items if p.metadata.deletion_timestamp is None]
    subject = f"system:serviceaccount:{SYSTEM}:{pod.spec.service_account_name}"
    # "TYPE/NAME" would name an object; the status subresource is asked for with --subresource.
    kind, _, subresource = resource.partition("/")
    args = [dev_env["binaries"]["kubectl"], "auth", "can-i", verb, kind, "--as", subject]
    args += ["--subresource", subresource] if subresource else []
    args += ["-n", namespace_arg] if namespace_arg else ["-A"]
    proc = _run(dev_env, *args, check=False)
    assert proc.stdout.strip() == expected, (verb, resource, proc.stdout, proc.stderr)
