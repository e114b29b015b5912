"""The resource verbs and the status view (``kubectl modelpilot status NAME``), without a cluster.

The view is a pure function of the resource; the verbs' apiserver calls are exercised by the cluster tests
(tests/cluster/test_rollout.py) and the demo.
"""

from __future__ import annotations

import subprocess
import sys

from rollout_world import settled

from modelpilot import kubectl
from modelpilot.operator import api, plan, rollout

T0 = 1_800_000_000.0
SPEC = {"model": {"name": "iris", "version": "3"}, "replicas": 4,
        "rollout": {"steps": [25, 50, 100], "stepIntervalSeconds": 30}}
TYPED = api.ModelVersionSpec.model_validate(SPEC)  # what the reconciler hands the planner


def _body(ro: dict | None = None) -> dict:  # type: ignore[type-arg]
    status = {"phase": "Progressing", "replicas": 4, "readyReplicas": 4,
              "model": {"name": "iris", "version": "2", "runId": "r2"}, "previousModel": {"version": "1"},
              "conditions": [{"type": "Ready", "status": "True", "message": "4/4 replicas serve the model"}]}
    if ro is not None:
        status["rollout"] = ro
    return {"metadata": {"name": "iris", "namespace": "ml"}, "spec": SPEC, "status": status}


def test_the_view_shows_versions_step_weights_checks_and_history() -> None:
    r = rollout.start(api.ModelStatus(name="iris", version="2"), api.ModelStatus(name="iris", version="3"), TYPED,
                      T0).rollout
    r = rollout.plan(r, TYPED, 4, settled(r, TYPED, stable_version="2", canary_version="3"), T0).rollout
    measurements = [{"check": "error-rate", "verdict": "Pass", "value": 0.0, "baseline": 0.0,
                     "threshold": "maxDelta=0.01", "samples": 120.0, "message": "within threshold"},
                    {"check": "latency-p99", "verdict": "Pass", "value": 0.0123, "baseline": 0.011,
                     "threshold": "maxRatio=1.5, slack=0.05", "samples": 120.0, "message": "within threshold"}]
    r = rollout.plan(r, TYPED, 4, settled(r, TYPED, verdict="Pass", measurements=measurements, stable_version="2",
                                         canary_version="3"), T0 + 31).rollout
    text = kubectl.render(_body(plan.rollout_patch(r)), now=T0 + 40)  # status.rollout as written
    assert "Serving:       version 2 (run r2), 4/4 ready" in text
    assert "Rollout:       Progressing (canary of version 3 against 2)" in text
    assert "Step:        2 of 3 (25% → 50% → 100%)" in text
    assert "Weight:      50% requested" in text
    assert "waiting for the step's replicas to be ready" in text
    assert "latency-p99  0.0123  0.011     maxRatio=1.5, slack=0.05  120      Pass" in text
    history = text.split("History:")[1]
    assert "Start" in history and "Pass" in history
    assert "modelpilot undo iris brings it back" in text


def test_the_view_of_a_resource_without_a_rollout() -> None:
    text = kubectl.render(_body(), now=T0)
    assert "Rollout:       none yet" in text and "Phase:         Progressing" in text


def test_the_kubectl_plugin_offers_only_the_resource_verbs() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys; from modelpilot.cli import kubectl_plugin; "
                          "sys.argv = ['kubectl-modelpilot', '--help']; kubectl_plugin()"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    for verb in kubectl.VERBS:
        assert f"    {verb} " in out.stdout
    for hidden in ("operator", "serve", "dev", "demo"):
        assert f"    {hidden} " not in out.stdout


def test_each_verb_is_refused_or_sent_by_the_rollout_phase(monkeypatch: object) -> None:
    """Which phase takes which verb: step actions while Progressing/Paused, undo when nothing is active, and
    neither while a rollout finishes (Promoting/RollingBack) — with a message saying why."""
    import argparse
    import sys as _sys
    import types

    from kubernetes import client, config

    patched: list[dict] = []  # type: ignore[type-arg]

    class FakeCustom:
        def __init__(self, body: dict) -> None:  # type: ignore[type-arg]
            self.body = body

        def get_namespaced_custom_object(self, *args: object) -> dict:  # type: ignore[type-arg]
            return self.body

        def patch_namespaced_custom_object(self, *args: object) -> None:
            patched.append(args[-1])  # type: ignore[arg-type]

    def verdict(verb: str, phase: str | None) -> int:
        body = _body({"phase": phase, "canaryVersion": "3"} if phase else None)
        setattr(config, "new_client_from_config", lambda *a, **k: None)
        setattr(client, "CustomObjectsApi", lambda api: FakeCustom(body))
        return kubectl.run(argparse.Namespace(verb=verb, name="iris", namespace="ml", kubeconfig=None))

    saved = (config.new_client_from_config, client.CustomObjectsApi)  # a boundary no cluster stands behind here
    try:
        for phase in ("Progressing", "Paused"):
            assert verdict("abort", phase) == 0 and verdict("undo", phase) == 1
        for phase in ("Promoting", "RollingBack"):
            assert verdict("abort", phase) == 1 and verdict("promote", phase) == 1 and verdict("undo", phase) == 1
        for phase in ("Promoted", "RolledBack", None):
            assert verdict("abort", phase) == 1 and verdict("undo", phase) == 0
    finally:
        config.new_client_from_config, client.CustomObjectsApi = saved
    assert patched[0] == {"metadata": {"annotations": {"modelpilot.io/rollout-action": "abort/3"}}}
    assert patched[-1] == {"metadata": {"annotations": {"modelpilot.io/rollout-action": "undo/2"}}}
    del _sys, types
