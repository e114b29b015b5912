"""The Kubernetes adapter when the apiserver cannot be reached: a classified error, never a urllib3 traceback.

A real ``kubernetes`` client pointed at a closed local port (bound, then closed, so nothing listens there):
the same connection errors an operator sees while its apiserver is down or restarting.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import kopf
import pytest
from kubernetes import client

from modelpilot.operator import handlers
from modelpilot.operator.kube import Kube, KubeError, KubeUnavailable
from modelpilot.operator.reconcile import Reconciler
from modelpilot.operator.settings import OperatorSettings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def down() -> Kube:
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{_closed_port()}"
    config.retries = 0  # one connection attempt per call: the test needs no retries to prove the point
    return Kube(client.ApiClient(config), timeout=2)


BODY: dict[str, Any] = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion",
                        "metadata": {"name": "iris", "namespace": "ml", "uid": "u", "generation": 1},
                        "spec": {"model": {"name": "iris", "version": "1"}}}


@pytest.mark.parametrize("call", [
    lambda k: k.read_model_version("ml", "iris"),
    lambda k: k.read_deployment("ml", "iris"),
    lambda k: k.list_abtests("ml"),
    lambda k: k.list_pods("ml", {"a": "b"}),
    lambda k: k.patch_status("ml", "iris", {"phase": "Ready"}),
    lambda k: k.secret_data("ml", "creds"),
    lambda k: k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "iris", "namespace": "ml"}}),
    lambda k: k.delete_owned("Deployment", "ml", "iris", "u"),
], ids=["read_model_version", "read_deployment", "list_abtests", "list_pods", "patch_status", "secret_data",
        "apply", "delete_owned"])
def test_every_adapter_call_classifies_a_connection_failure(down: Kube, call: Any) -> None:
    with pytest.raises(KubeUnavailable) as excinfo:
        call(down)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, KubeError)  # callers retry it like any API error
    assert down.host in message and "unreachable" in message and "connection refused" in message, message


def test_the_handler_backs_off_with_one_line(down: Kube, caplog: pytest.LogCaptureFixture) -> None:
    settings = OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"},
                                       schedule={"retry_delay_seconds": 10})
    memo = handlers.configure(settings, down)
    logger = logging.getLogger("test")
    # The create/update handler: a kopf TemporaryError with exponential back-off (kopf logs it as one line).
    with pytest.raises(kopf.TemporaryError) as excinfo:
        handlers.reconcile_model_version(body=BODY, retry=2, memo=memo)  # type: ignore[arg-type]
    assert excinfo.value.delay == 40.0
    assert "Kubernetes API" in str(excinfo.value) and "unreachable" in str(excinfo.value)
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__
    # A periodic run (canary tick) and a readiness refresh: no exception escapes, one warning line each,
    # without a traceback.
    with caplog.at_level(logging.WARNING):
        memo.core.tick("rollout", "ml", "iris")
        memo.core.refresh("ml", "iris", logger)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2 and all(r.exc_info is None for r in lines)
    assert all("unreachable" in r.getMessage() for r in lines)
    memo.core.stop()


class _Resource:
    """The dynamic client's resource, faked at its call boundary: counts the reads the adapter makes."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.gets = 0

    def get(self, name: str, namespace: str, **_: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        self.gets += 1
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return type("Raw", (), {"data": json.dumps(self.objects[name]).encode()})()

    def delete(self, name: str, namespace: str, **_: Any) -> None:
        self.objects.pop(name, None)

    def server_side_apply(self, body: dict[str, Any], name: str, **_: Any) -> Any:
        self.objects[name] = body
        return type("Raw", (), {"data": json.dumps(body).encode()})()


def test_owned_objects_known_absent_are_not_read_again_until_applied(down: Kube) -> None:
    fake = _Resource()
    down._resource = lambda kind: fake  # type: ignore[method-assign]  # noqa: SLF001 — the boundary under test
    assert not down.delete_owned("HorizontalPodAutoscaler", "ml", "iris", "u") and fake.gets == 1
    assert not down.delete_owned("HorizontalPodAutoscaler", "ml", "iris", "u") and fake.gets == 1  # remembered
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "iris", "namespace": "ml", "ownerReferences": [{"uid": "u"}]}}
    down.apply(hpa)  # applied again: no longer known absent
    assert down.delete_owned("HorizontalPodAutoscaler", "ml", "iris", "u") and fake.gets == 2
    assert "iris" not in fake.objects
    assert not down.delete_owned("HorizontalPodAutoscaler", "ml", "iris", "u") and fake.gets == 2  # deleted it
    down.assume_absent("PodDisruptionBudget", "ml", "iris", "u")
    assert not down.delete_owned("PodDisruptionBudget", "ml", "iris", "u") and fake.gets == 2
    down.forget_owner("ml", "iris")  # the ModelVersion is gone: its entries go too
    assert not down.delete_owned("PodDisruptionBudget", "ml", "iris", "u") and fake.gets == 3
