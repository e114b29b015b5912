"""Fixtures for the end-to-end suite: any cluster the kubeconfig names, with the chart installed.

Environment (e2e/run.sh sets it):
  KUBECONFIG              the cluster (the local environment, or kind)
  MLFLOW_TRACKING_URI     MLflow as the test runner reaches it (to register models)
  PROMETHEUS_URL          Prometheus as the test runner reaches it
  E2E_SERVICE_ACCESS      `cluster-ip` (the local environment: the host routes its Service range to the
                          real node) or `port-forward` (kind: `kubectl port-forward svc/…`)
Traffic goes to a Service, never to a pod the test picked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise pytest.UsageError(f"e2e needs {name}; run the suite through e2e/run.sh")
    return value


@pytest.fixture(scope="session")
def api() -> Any:
    return config.new_client_from_config(_required("KUBECONFIG"))


@pytest.fixture(scope="session")
def tracking_uri() -> str:
    return _required("MLFLOW_TRACKING_URI")


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    return _required("PROMETHEUS_URL")


@pytest.fixture(scope="session")
def core(api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def custom(api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


class ServiceAccess:
    """``host:port`` of a Service: its ClusterIP where the runner can route to it, else a port-forward."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.mode = os.environ.get("E2E_SERVICE_ACCESS", "port-forward")
        self.forwards: dict[str, tuple[subprocess.Popen[str], str]] = {}

    def address(self, namespace: str, service: str) -> str:
        if self.mode == "cluster-ip":
            spec = self.core.read_namespaced_service(service, namespace).spec
            return f"{spec.cluster_ip}:80"
        key = f"{namespace}/{service}"
        if key not in self.forwards:
            kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
            proc = subprocess.Popen([kubectl, "port-forward", "-n", namespace, f"svc/{service}", ":80"],
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert match, f"kubectl port-forward said: {line!r}"
            self.forwards[key] = (proc, f"127.0.0.1:{match.group(1)}")
        return self.forwards[key][1]

    def close(self) -> None:
        for proc, _ in self.forwards.values():
            proc.terminate()


@pytest.fixture(scope="session")
def services(core: client.CoreV1Api) -> Iterator[ServiceAccess]:
    access = ServiceAccess(core)
    yield access
    access.close()
