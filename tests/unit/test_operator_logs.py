"""The operator's own log lines about one resource name it (``[namespace/name] …``), as kopf's per-object
logger does: a line from the ticker or a reconciler's helper that does not is of no use among hundreds of
ModelVersions.

The Kubernetes side is ``test_operator_paths.FakeKube`` (the adapter's stand-in), with faults injected at that
boundary where a real apiserver cannot be made to refuse on demand (pods forbidden, a read that fails); MLflow is
the real registry adapter over ``httpx.MockTransport``; Prometheus is the real client against a closed port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

import test_operator_paths as paths
from modelpilot.operator import abtest, abtest_reconcile, api
from modelpilot.operator.core import OperatorCore
from modelpilot.operator.kube import KubeError
from modelpilot.operator.logs import about
from modelpilot.operator.settings import OperatorSettings


def _lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The operator's own warnings (kopf's and libraries' lines are not the subject here)."""
    return [r for r in caplog.records if r.name.startswith("modelpilot.") and r.levelno >= logging.WARNING]


def _names(records: list[logging.LogRecord], resource: str) -> None:
    assert records, "nothing was logged"
    for r in records:
        assert r.getMessage().startswith(f"[{resource}] "), r.getMessage()
        assert getattr(r, "resource", None) == resource, r.getMessage()


class _PodsForbidden(paths.FakeKube):
    """The serving Deployment has pods that are not ready, and listing pods is forbidden (RBAC without pods)."""

    def deployment_now(self, name: str) -> dict[str, Any] | None:
        dep = super().deployment_now(name)
        if dep is not None:
            dep["status"].update(availableReplicas=0, readyReplicas=0)
        return dep

    async def list_pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
        raise KubeError('pods is forbidden: User "system:serviceaccount:x:modelpilot" cannot list pods')


class _Unreadable(paths.FakeKube):
    async def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise KubeError("GET modelversions/other: 500 etcdserver: request timed out")


def test_a_succeeding_and_a_failing_reconcile_name_their_model_version(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    # Succeeds (status written, nothing to retry) with a warning: why the pods are not ready cannot be told.
    kube = _PodsForbidden(paths.mv_body("1"))
    result = paths.run(kube, paths.reconciler(kube, paths.mlflow({"1": "run1"})))
    assert not result.retry and kube.body["status"]["model"]["version"] == "1"
    _names(_lines(caplog), "ml/iris")
    assert "cannot tell why the pods are not ready" in _lines(caplog)[0].getMessage()

    # Fails: the ticker's reconcile of another ModelVersion cannot read it; one line, the next tick retries.
    caplog.clear()
    core = OperatorCore(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"}),
                        _Unreadable(paths.mv_body("1")))  # type: ignore[arg-type]
    failed = asyncio.run(core.measured_or_logged("ml", "other", refresh=False))
    assert failed is not None and failed.retry
    _names(_lines(caplog), "ml/other")
    assert "etcdserver: request timed out" in _lines(caplog)[0].getMessage()


def test_a_refused_write_back_names_its_model_version(caplog: pytest.LogCaptureFixture) -> None:
    kube, rec, _ = paths._secured_canary(write_status=403)
    paths._edit(kube, action="abort")
    caplog.set_level(logging.WARNING)
    paths.run(kube, rec)
    paths.run(kube, rec)
    assert kube.body["status"]["rollout"]["phase"] == "RolledBack"
    _names(_lines(caplog), "ml/iris")
    assert any("registry write-back failed" in r.getMessage() for r in _lines(caplog))


def test_a_rollout_record_that_does_not_parse_names_its_model_version(caplog: pytest.LogCaptureFixture) -> None:
    from modelpilot.operator import reconcile

    caplog.set_level(logging.WARNING)
    ro = reconcile.rollout_status({"rollout": {"phase": "Progressing", "step": "two"}}, "ml", "iris")
    assert ro.phase == api.RolloutPhase.PROGRESSING
    _names(_lines(caplog), "ml/iris")


def test_abtest_figures_that_cannot_be_read_name_the_abtest(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port nothing listens on: Prometheus refuses the connection
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"},
                                   prometheus={"url": f"http://127.0.0.1:{port}", "timeout_seconds": 2})
    kube = paths.FakeKube(paths.mv_body("1"))
    models = paths.reconciler(kube, paths.mlflow({"1": "run1"}))
    models.settings = settings
    tests = abtest_reconcile.ABTestReconciler(models)
    spec = api.ABTestSpec.model_validate({"variants": [{"name": "a", "modelVersion": "iris", "weight": 50},
                                                       {"name": "b", "modelVersion": "iris-b", "weight": 50}]})
    caplog.set_level(logging.WARNING)
    assert tests._figures("ml", "iris-ab", abtest.variants(spec), spec) == {}
    _names(_lines(caplog), "ml/iris-ab")


def test_the_prefix_is_kopfs_and_extra_fields_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    about(logging.getLogger("modelpilot.operator.test"), "ml", "iris").info("x %s", 1, extra={"step": 2})
    (record,) = caplog.records
    assert (record.getMessage(), getattr(record, "resource"), getattr(record, "step")) == ("[ml/iris] x 1",
                                                                                          "ml/iris", 2)
