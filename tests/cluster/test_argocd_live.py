"""The Argo CD health checks, run by a real Lua interpreter on status taken live from the local environment."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from modelpilot_dev.workloads import wait_for

_spec = importlib.util.spec_from_file_location(
    "argocd_harness", Path(__file__).resolve().parents[1] / "unit" / "test_argocd_health.py")
assert _spec and _spec.loader
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)  # the same JSON→Lua harness the unit tests use

G, V = "modelpilot.io", "v1alpha1"


def _get(custom: Any, ns: str, plural: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(G, V, ns, plural, name))


def test_live_model_version_and_abtest_health(operator: Any, custom: Any, namespace: str, iris_version: str) -> None:
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", {
        "apiVersion": f"{G}/{V}", "kind": "ModelVersion", "metadata": {"name": "iris"},
        "spec": {"model": {"name": "iris", "version": iris_version}}})
    healthy = wait_for(lambda: (lambda h: h if h[0] == "Healthy" else None)(
        harness.health(harness.MV_HEALTH, _get(custom, namespace, "modelversions", "iris"))), 180, 1.0,
        "Healthy from the live ModelVersion")
    assert healthy[0] == "Healthy"

    custom.create_namespaced_custom_object(G, V, namespace, "abtests", {
        "apiVersion": f"{G}/{V}", "kind": "ABTest", "metadata": {"name": "ab"},
        "spec": {"variants": [{"name": "a", "modelVersion": "iris", "weight": 50},
                              {"name": "b", "modelVersion": "missing", "weight": 50}]}})
    degraded = wait_for(lambda: (lambda h: h if h[0] == "Degraded" else None)(
        harness.health(harness.AB_HEALTH, _get(custom, namespace, "abtests", "ab"))), 60, 1.0,
        "Degraded from the live ABTest with a missing variant")
    assert "missing" in degraded[1]

    custom.patch_namespaced_custom_object(G, V, namespace, "modelversions", "iris",
                                          {"spec": {"model": {"version": "999"}}})
    broken = wait_for(lambda: (lambda h: h if h[0] == "Degraded" else None)(
        harness.health(harness.MV_HEALTH, _get(custom, namespace, "modelversions", "iris"))), 60, 1.0,
        "Degraded from the live ModelVersion pointing at a version MLflow does not have")
    assert "999" in broken[1]
