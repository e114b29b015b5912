"""Guarded canaries on the real local environment: real traffic, real Prometheus, real analysis.

Traffic: a thread sends predictions to the ModelVersion's Service (its ClusterIP, a new connection each), which
selects the pods of both tracks; the real node's kube-proxy balances them. Answers are counted by the
``model_version`` they carry; failures by HTTP code (only the faulty model answers 500).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from modelpilot_dev.workloads import register_faulty_model, register_iris_model, service_url, wait_for

GROUP, VERSION, PLURAL = "modelpilot.io", "v1alpha1", "modelversions"
ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [6.7, 3.0, 5.2, 2.3]}]}


class Traffic:
    """Predictions to one ModelVersion's Service (both tracks behind it), ~15 per second.

    ``answers``: 200s by the ``model_version`` they carry; ``errors``: failures by HTTP code (0 = no
    connection)."""

    def __init__(self, core: Any, namespace: str, name: str) -> None:
        self.url = f"{service_url(core.api_client, namespace, name)}/v2/models/iris/infer"
        self.stop = threading.Event()
        self.answers: dict[str, int] = {}
        self.errors: dict[int, int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = json.dumps(ROW).encode()
        while not self.stop.is_set():
            req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    version = str(json.loads(resp.read()).get("model_version", "?"))
                    self.answers[version] = self.answers.get(version, 0) + 1
            except urllib.error.HTTPError as exc:
                self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
            except OSError:
                self.errors[0] = self.errors.get(0, 0) + 1
            self.stop.wait(0.066)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _canary_mv(version: str, **rollout: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": "iris"},
            "spec": {"model": {"name": "iris", "version": version}, "replicas": 2,
                     "rollout": {"steps": [50, 100], "stepIntervalSeconds": 15, "progressDeadlineSeconds": 240,
                                 "analysis": {"interval": "30s", "minSamples": 10,
                                              "checks": [{"name": "error-rate", "maxDelta": 0.05}]},
                                 "writeBack": {"enabled": True, "promoteAlias": "champion"}, **rollout}}}


def _body(custom: Any, ns: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "iris"))


def _ready_on(custom: Any, ns: str, version: str) -> dict[str, Any] | None:
    body = _body(custom, ns)
    status = body.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    return body if ready and (status.get("model") or {}).get("version") == version else None


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


@pytest.fixture
def stable(operator: Any, custom: Any, namespace: str, iris_version: str) -> Iterator[str]:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _canary_mv(iris_version))
    wait_for(lambda: _ready_on(custom, namespace, iris_version), 180, message="the stable version Ready")
    yield iris_version


def test_a_regressing_canary_is_rolled_back_automatically_with_the_evidence(
    stable: str, dev_env: dict[str, Any], custom: Any, core: Any, apps: Any, namespace: str, metrics_port: int
) -> None:
    faulty = register_faulty_model(dev_env["exports"]["MLFLOW_TRACKING_URI"], "iris")
    with Traffic(core, namespace, "iris") as traffic:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": faulty}}})

        def rolled_back() -> Any:
            body = _body(custom, namespace)
            ro = (body.get("status") or {}).get("rollout") or {}
            return body if ro.get("phase") == "RolledBack" else None

        body = wait_for(rolled_back, 240, 1.0, "the canary to be rolled back")
    status = body["status"]
    ro = status["rollout"]
    assert ro["rejectedVersion"] == faulty and ro["stableVersion"] == stable
    (evidence,) = [m for m in ro["analysis"] if m["check"] == "error-rate"]
    assert evidence["verdict"] == "Fail" and evidence["value"] > 0.05 and evidence["samples"] >= 10
    assert f'version="{faulty}"' in evidence["query"] and evidence["threshold"] == "maxDelta=0.05"
    assert status["model"]["version"] == stable and status["phase"] == "RolledBack"
    wait_for(lambda: _condition(_body(custom, namespace), "Reconciling").get("status") == "False", 60,
             message="Reconciling=False after the rollback")
    assert [h["decision"] for h in ro["history"]][-2:] == ["RollBack", "RolledBack"]
    # The canary really served (and failed) traffic; the stable version answered throughout.
    assert traffic.errors.get(500, 0) > 0, traffic.errors
    assert traffic.answers.get(stable, 0) > 0 and set(traffic.errors) <= {500, 0}, (traffic.answers, traffic.errors)
    # Traffic is fully back on the last good version, the canary is gone.
    wait_for(lambda: not [p for p in core.list_namespaced_pod(namespace, label_selector="modelpilot.io/track=canary")
                          .items if p.metadata.deletion_timestamp is None], 60, message="canary pods gone")
    assert apps.read_namespaced_deployment("iris", namespace).spec.replicas == 2
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=iris").items
    rolled = [e for e in events if e.reason == "RolledBack"]
    assert rolled and "error-rate" in rolled[0].message and rolled[0].type == "Warning"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert f'modelpilot_operator_rollbacks_total{{name="iris",namespace="{namespace}"}} 1.0' in text
    # Rejected means rejected: later ticks do not start the same canary again.
    assert _body(custom, namespace)["status"]["rollout"]["phase"] == "RolledBack"
    # Registry write-back: the rejected version carries the reason in MLflow.
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=dev_env["exports"]["MLFLOW_TRACKING_URI"]).get_model_version("iris", faulty).tags
    assert "error-rate" in tags.get("modelpilot.rejected", "")


def test_a_healthy_canary_is_promoted_step_by_step(
    stable: str, dev_env: dict[str, Any], custom: Any, core: Any, namespace: str
) -> None:
    newer = register_iris_model(dev_env["exports"]["MLFLOW_TRACKING_URI"], "iris")
    with Traffic(core, namespace, "iris") as traffic:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": newer}}})
        seen_weights: set[int] = set()

        def promoted() -> Any:
            body = _body(custom, namespace)
            ro = (body.get("status") or {}).get("rollout") or {}
            if ro.get("phase") == "Progressing":
                seen_weights.add(int(ro.get("weight", 0)))
                assert body["status"]["phase"] == "Progressing"
                # kstatus mid-rollout: InProgress (Reconciling=True) while the stable version serves, so Flux
                # and `kubectl wait` do not take the canary for a finished rollout.
                reconciling = _condition(body, "Reconciling")
                assert reconciling.get("status") == "True", reconciling
                assert reconciling.get("reason") == "CanaryRollingOut", reconciling
            return body if ro.get("phase") == "Promoted" and _ready_on(custom, namespace, newer) else None

        body = wait_for(promoted, 240, 0.5, "the canary to be promoted")
    ro = body["status"]["rollout"]
    decisions = [h["decision"] for h in ro["history"]]
    assert decisions[0] == "Start" and "Pass" in decisions and decisions[-2:] == ["Promote", "Promoted"]
    assert 50 in seen_weights
    # Promoted: Reconciling=False once the stable Deployment serves the new version (kstatus Current).
    wait_for(lambda: _condition(_body(custom, namespace), "Reconciling").get("status") == "False", 60,
             message="Reconciling=False after the promotion")
    assert traffic.answers.get(newer, 0) > 0, traffic.answers
    assert set(traffic.errors) <= {0}, traffic.errors
    wait_for(lambda: {p.metadata.labels["modelpilot.io/version"] for p in core.list_namespaced_pod(
        namespace, label_selector="modelpilot.io/modelversion=iris").items
        if p.metadata.deletion_timestamp is None} == {newer}, 120, message="only the new version's pods")
    # Registry write-back: the promoted version now carries the alias and the tag.
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=dev_env["exports"]["MLFLOW_TRACKING_URI"])
    assert registry.get_model_version_by_alias("iris", "champion").version == newer
    assert registry.get_model_version("iris", newer).tags.get("modelpilot.promoted") == "true"


def test_manual_promote_and_abort_through_the_cli(
    operator: Any, dev_env: dict[str, Any], custom: Any, namespace: str, iris_version: str
) -> None:
    import subprocess
    import sys

    spec = _canary_mv(iris_version)
    spec["spec"]["rollout"]["stepIntervalSeconds"] = 3600  # nothing would advance on its own
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, spec)
    wait_for(lambda: _ready_on(custom, namespace, iris_version), 180, message="the stable version Ready")
    tracking = dev_env["exports"]["MLFLOW_TRACKING_URI"]
    cli = [sys.executable, "-m", "modelpilot.cli"]
    env_args = ["--kubeconfig", dev_env["exports"]["KUBECONFIG"], "-n", namespace]

    # Nothing to promote yet: a clear refusal.
    refused = subprocess.run([*cli, "promote", "iris", *env_args], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "no rollout in progress" in refused.stderr

    second = register_iris_model(tracking, "iris")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                          {"spec": {"model": {"version": second}}})
    wait_for(lambda: ((_body(custom, namespace).get("status") or {}).get("rollout") or {}).get("phase")
             == "Progressing", 120, message="the canary to start")
    done = subprocess.run([*cli, "abort", "iris", *env_args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    body = wait_for(lambda: (lambda b: b if b["status"]["rollout"]["phase"] == "RolledBack" else None)(
        _body(custom, namespace)), 60, message="the abort to roll back")
    assert body["status"]["rollout"]["reason"] == "aborted by the user"
    assert body["status"]["model"]["version"] == iris_version

    third = register_iris_model(tracking, "iris")
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                          {"spec": {"model": {"version": third}}})
    wait_for(lambda: (_body(custom, namespace)["status"].get("rollout") or {}).get("canaryVersion") == third
             and _body(custom, namespace)["status"]["rollout"]["phase"] == "Progressing", 120,
             message="the next canary to start")
    done = subprocess.run([*cli, "promote", "iris", *env_args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: _ready_on(custom, namespace, third), 180, message="the promoted version Ready")
    assert _body(custom, namespace)["status"]["rollout"]["reason"] == "promoted by the user"


def test_a_killed_operator_mid_rollout_is_resumed_by_another_at_the_same_step(
    operator: Any, operator_env: Any, dev_env: dict[str, Any], custom: Any, core: Any, namespace: str,
    iris_version: str, tmp_path: Any
) -> None:
    """A higher-priority replica runs the rollout, is SIGKILLed mid-step; the standby takes over from status."""
    import signal
    import subprocess
    import sys

    from modelpilot_dev.environment import free_port

    resumed_before = operator.logpath.read_text().count("Resuming operations")
    paused_before = operator.logpath.read_text().count("Pausing operations in favour of")
    log = (tmp_path / "leader.log").open("wb")
    leader = subprocess.Popen([sys.executable, "-m", "modelpilot.cli", "operator", "--liveness",
                               f"http://127.0.0.1:{free_port()}/healthz"],
                              env=operator_env(MODELPILOT_PRIORITY="500", MODELPILOT_METRICS_PORT="0"),
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: operator.logpath.read_text().count("Pausing operations in favour of") > paused_before, 60,
                 message="the session operator to stand by for the leader")
        spec = _canary_mv(iris_version)
        spec["spec"]["rollout"].update(steps=[50, 100], stepIntervalSeconds=20)
        spec["spec"]["rollout"]["analysis"] = {"enabled": False}  # time-based steps: this test is about state
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, spec)
        wait_for(lambda: _ready_on(custom, namespace, iris_version), 180, message="the stable version Ready")
        newer = register_iris_model(dev_env["exports"]["MLFLOW_TRACKING_URI"], "iris")
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "iris",
                                              {"spec": {"model": {"version": newer}}})
        before = wait_for(lambda: (lambda r: r if r.get("phase") == "Progressing" else None)(
            (_body(custom, namespace).get("status") or {}).get("rollout") or {}), 120, message="the canary running")
        leader.send_signal(signal.SIGKILL)  # no goodbye: its peering record must expire
        leader.wait(timeout=10)
        body = wait_for(lambda: _ready_on(custom, namespace, newer), 300, 1.0,
                        "the standby to resume and promote the canary")
    finally:
        if leader.poll() is None:
            leader.kill()
        log.close()
    ro = body["status"]["rollout"]
    assert ro["phase"] == "Promoted"
    assert ro["startedAt"] == before["startedAt"]  # resumed, not restarted
    decisions = [h["decision"] for h in ro["history"]]
    assert decisions.count("Start") == 1 and decisions[-1] == "Promoted"
    assert operator.logpath.read_text().count("Resuming operations") > resumed_before
