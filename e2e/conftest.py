"""Fixtures for the end-to-end suite: any cluster the kubeconfig names, with the chart installed.

Environment (e2e/run.sh sets it):
  KUBECONFIG              the cluster (the local environment, or kind)
  MLFLOW_TRACKING_URI     MLflow as the test runner reaches it (to register models)
  PROMETHEUS_URL          Prometheus as the test runner reaches it
Pods are reached through their `dev.modelpilot.io/address` annotation on the local
environment, and through `kubectl port-forward` anywhere else.
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


class PodAccess:
    """host:port of a pod's server: the local environment's loopback address, or a port-forward."""

    def __init__(self) -> None:
        self.forwards: dict[str, tuple[subprocess.Popen[str], str]] = {}

    def address(self, pod: Any) -> str:
        annotated = (pod.metadata.annotations or {}).get("dev.modelpilot.io/address")
        if annotated:
            return str(annotated)
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        if key not in self.forwards:
            kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
            proc = subprocess.Popen([kubectl, "port-forward", "-n", pod.metadata.namespace,
                                     f"pod/{pod.metadata.name}", ":8080"], stdout=subprocess.PIPE, text=True)
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
def pods() -> Iterator[PodAccess]:
    access = PodAccess()
    yield access
    access.close()
