"""Reconcile decisions that need no cluster: conditions, pinning, readiness, settings, registry faults."""

from __future__ import annotations

import httpx
import pytest

from modelpilot.operator import plan, reconcile
from modelpilot.operator.registry import ModelRef, Registry, RegistryNotFound, RegistryUnavailable
from modelpilot.operator.settings import OperatorSettings, SettingsError
from tests.unit.kstatus import kstatus


def test_condition_keeps_its_transition_time_while_status_is_unchanged() -> None:
    first = plan.set_condition([], "Ready", "False", "RollingOut", "0/1", 1, "t1")
    same = plan.set_condition(first, "Ready", "False", "RollingOut", "0/1 still", 2, "t2")
    flipped = plan.set_condition(same, "Ready", "True", "Available", "1/1", 2, "t3")
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "t3" and len(flipped) == 1


def test_pinned_version_is_kept_until_the_reference_changes() -> None:
    status = {"model": {"name": "iris", "version": "3", "alias": "champion", "runId": "r"}}
    assert plan.pinned(status, ModelRef("iris", alias="champion")).version == "3"  # type: ignore[union-attr]
    assert plan.pinned(status, ModelRef("iris", alias="challenger")) is None
    assert plan.pinned(status, ModelRef("iris", version="4")) is None
    assert plan.pinned(status, ModelRef("other", alias="champion")) is None
    assert plan.pinned({}, ModelRef("iris", version="3")) is None


def _deployment(replicas: int, available: int, updated: int, gen: int = 2, observed: int = 2,
                progressing: str = "NewReplicaSetAvailable") -> dict:  # type: ignore[type-arg]
    return {"metadata": {"generation": gen}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                       "availableReplicas": available, "readyReplicas": available,
                       "conditions": [{"type": "Progressing", "reason": progressing, "message": "m"}]}}


def test_readiness_follows_the_deployment() -> None:
    assert plan.observe(_deployment(2, 2, 2))["ready"] is True
    assert plan.observe(_deployment(2, 1, 2))["phase"] == "Deploying"
    assert plan.observe(_deployment(2, 2, 1))["ready"] is False  # old pods still serving
    assert plan.observe(_deployment(2, 2, 2, gen=3, observed=2))["ready"] is False  # not yet seen
    # Past its progress deadline the Deployment is stalled: Failed when no pod serves, Degraded while some do.
    stalled = plan.observe(_deployment(2, 0, 1, progressing="ProgressDeadlineExceeded"))
    assert stalled["stalled"] is True and stalled["phase"] == "Failed"
    stalled = plan.observe(_deployment(2, 1, 1, progressing="ProgressDeadlineExceeded"))
    assert stalled["stalled"] is True and stalled["phase"] == "Degraded"
    assert plan.observe(None)["reason"] == "DeploymentMissing"


def test_readiness_transitions_post_events_once() -> None:
    status, events = plan.readiness_status({}, 1, _deployment(1, 1, 1, 1, 1), "t")
    assert [e.reason for e in events] == ["Ready"]
    again, events = plan.readiness_status(status, 1, _deployment(1, 1, 1, 1, 1), "t2")
    assert events == []
    kinds = {c["type"]: c["status"] for c in again["conditions"]}
    assert kinds == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    _, events = plan.readiness_status(again, 1, _deployment(1, 0, 1, 1, 1), "t3")
    assert [e.reason for e in events] == ["NotReady"]


def test_settings_are_validated_with_the_variable_named() -> None:
    assert OperatorSettings.from_env({}).mlflow.tracking_uri == ""
    s = OperatorSettings.from_env({"MLFLOW_TRACKING_URI": "http://m:5000/", "MODELPILOT_NAMESPACES": "a, b"})
    assert s.mlflow.tracking_uri == "http://m:5000" and s.kubernetes.namespaces == ("a", "b")
    with pytest.raises(SettingsError, match="MODELPILOT_MLFLOW_TRACKING_URI"):
        OperatorSettings.from_env({"MODELPILOT_MLFLOW_TRACKING_URI": "file:///tmp/mlruns"})
    with pytest.raises(SettingsError, match="MODELPILOT_ALIAS_POLL_SECONDS='x' is not a number"):
        OperatorSettings.from_env({"MODELPILOT_ALIAS_POLL_SECONDS": "x"})
    with pytest.raises(SettingsError, match="at least 1"):
        OperatorSettings.from_env({"MODELPILOT_ALIAS_POLL_SECONDS": "0"})


def test_settings_come_in_documented_groups_with_separate_timeouts() -> None:
    """MLflow and Prometheus have their own timeouts; the preferred variable wins over its older or generic
    name; empty variables count as unset; a bad value names its variable, whatever the group."""
    s = OperatorSettings.from_env({"MODELPILOT_MLFLOW_TIMEOUT_SECONDS": "2", "MODELPILOT_PROMETHEUS_TIMEOUT_SECONDS": "7",
                                   "MODELPILOT_MLFLOW_TRACKING_URI": "http://a:5000", "MLFLOW_TRACKING_URI": "http://b:5000",
                                   "MODELPILOT_PRIORITY": "", "MODELPILOT_WORKERS": "8"})
    assert (s.mlflow.timeout_seconds, s.prometheus.timeout_seconds) == (2.0, 7.0)
    assert s.mlflow.tracking_uri == "http://a:5000" and s.kubernetes.priority is None and s.kubernetes.workers == 8
    assert OperatorSettings.from_env({"MODELPILOT_REGISTRY_TIMEOUT_SECONDS": "3"}).mlflow.timeout_seconds == 3.0
    defaults = OperatorSettings.from_env({})
    assert defaults.schedule.rollout_tick_seconds == 5.0 and defaults.endpoints.metrics_port == 8080
    assert defaults.kubernetes.peering == "modelpilot" and defaults.serving_image.startswith("ghcr.io/modelpilot/")
    for variable, value, message in (("MODELPILOT_PROMETHEUS_URL", "prom:9090", "must be an http(s) URL"),
                                     ("MODELPILOT_WORKERS", "0", "must be at least 1"),
                                     ("MODELPILOT_PRIORITY", "high", "is not an integer"),
                                     ("MODELPILOT_PROMETHEUS_TIMEOUT_SECONDS", "soon", "is not a number")):
        with pytest.raises(SettingsError) as err:
            OperatorSettings.from_env({variable: value})
        assert str(err.value).startswith(f"{variable}={value!r}") and message in str(err.value), str(err.value)
    with pytest.raises(Exception):  # frozen: one settings object for the process's life
        defaults.mlflow.timeout_seconds = 1.0  # type: ignore[misc]


def test_an_unreachable_registry_is_unavailable_not_missing() -> None:
    with Registry("http://127.0.0.1:9", timeout=1) as registry:  # port 9 (discard): nothing listens
        with pytest.raises(RegistryUnavailable, match="unreachable"):
            registry.resolve(ModelRef("iris", version="1"))


def test_registry_5xx_and_4xx_are_classified() -> None:
    # Fault injection at the HTTP boundary: a real MLflow cannot be made to answer 503 on demand.
    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="overloaded")

    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"})

    with Registry("http://mlflow", transport=httpx.MockTransport(failing)) as registry:
        with pytest.raises(RegistryUnavailable, match="HTTP 503"):
            registry.resolve(ModelRef("iris", version="1"))
    with Registry("http://mlflow", transport=httpx.MockTransport(missing)) as registry:
        with pytest.raises(RegistryNotFound, match="no such model"):
            registry.resolve(ModelRef("iris", alias="champion"))


def test_no_tracking_uri_is_a_clear_error() -> None:
    with pytest.raises(RegistryUnavailable, match="spec.registry.trackingUri"):
        Registry("")


def test_a_canary_reads_reconciling_until_promoted_or_rolled_back() -> None:
    from modelpilot.operator import api, rollout

    ready = _deployment(2, 2, 2, 1, 1)  # the stable Deployment: fully available the whole time
    spec = api.ModelVersionSpec.model_validate({"model": {"name": "iris", "version": "2"},
                                                "rollout": {"steps": [50, 100]}})
    started = rollout.start(api.ModelStatus(name="iris", version="1"), api.ModelStatus(name="iris", version="2"),
                            spec, 1_800_000_000.0).rollout
    ro = plan.rollout_patch(started)  # status.rollout as written
    status, _ = plan.readiness_status({}, 1, ready, "t0")
    assert kstatus({**status, "observedGeneration": 1}) == "Current"
    for phase, reason in (("Progressing", "CanaryRollingOut"), ("Paused", "CanaryPaused")):
        during = {**status, "observedGeneration": 1, "rollout": {**ro, "phase": phase, "effectiveWeight": 50}}
        new, events = plan.readiness_status(during, 1, ready, "t1")
        kinds = {c["type"]: c for c in new["conditions"]}
        assert kinds["Ready"]["status"] == "True"  # the stable version serves
        assert kinds["Reconciling"]["status"] == "True" and kinds["Reconciling"]["reason"] == reason
        assert "canary version 2 at 50%" in kinds["Reconciling"]["message"]
        assert kstatus({**during, **new}) == "InProgress"
        assert events == []  # Ready did not change: no Event
        during = {**during, **new}
    for phase in ("Promoted", "RolledBack"):
        after = {**during, "rollout": {**ro, "phase": phase}}
        new, _ = plan.readiness_status(after, 1, ready, "t2")
        kinds = {c["type"]: c for c in new["conditions"]}
        assert kinds["Reconciling"]["status"] == "False" and kinds["Reconciling"]["reason"] == "Available"
        assert kstatus({**after, **new}) == "Current"


def test_settings_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator reads os.environ: a comma-separated list there is split, not parsed as JSON (it was, once:
    every operator watching named namespaces exited at start)."""
    monkeypatch.setenv("MODELPILOT_NAMESPACES", "team-a,team-b")
    monkeypatch.setenv("MODELPILOT_WORKERS", "3")
    s = OperatorSettings.from_env()
    assert s.kubernetes.namespaces == ("team-a", "team-b") and s.kubernetes.workers == 3
    assert OperatorSettings.from_env({}).kubernetes.namespaces == ()  # a given mapping is the only source


def test_an_empty_peering_runs_standalone() -> None:
    """MODELPILOT_PEERING="" means standalone (the chart with one replica, tests, a second operator started after
    one was killed). Read as "unset", it became peering "modelpilot": a fresh operator waited for the killed
    one's peering record to expire (~60 s) before doing anything (tests/cluster/test_cold_start.py caught it)."""
    assert OperatorSettings.from_env({"MODELPILOT_PEERING": ""}).kubernetes.peering == ""
    assert OperatorSettings.from_env({}).kubernetes.peering == "modelpilot"
    assert OperatorSettings.from_env({"MODELPILOT_PRIORITY": ""}).kubernetes.priority is None  # still unset


def test_the_rollout_status_is_parsed_once_and_written_back_as_a_merge_patch() -> None:
    """``reconcile.rollout_status`` / ``rollout_patch``: what was read is written back field for field (nulls,
    which remove a field, and fields of a newer operator included); fields a new record does not set are
    written as null; a field that does not parse is left out, not fatal."""
    from modelpilot.operator import api, contract

    stored = {"phase": "Progressing", "stepStartedAt": "2026-01-05T10:00:00Z", "reason": None,
              "history": [{"time": "2026-01-05T09:59:00Z", "step": 0, "weight": 10, "effectiveWeight": None,
                           "decision": "Start", "message": "m"}], "fromANewerOperator": {"x": 1}}
    ro = reconcile.rollout_status({"rollout": stored})
    assert ro.phase is api.RolloutPhase.PROGRESSING and ro.history and ro.history[0].effective_weight is None
    assert ro.step_started_at and ro.step_started_at.timestamp() == contract.parse_time("2026-01-05T10:00:00Z")
    assert plan.rollout_patch(ro) == stored
    fresh = api.RolloutStatus(phase=api.RolloutPhase.PROMOTED)
    assert plan.rollout_patch(fresh, stored) == {"phase": "Promoted", "stepStartedAt": None, "reason": None,
                                                      "history": None, "fromANewerOperator": None}
    assert plan.rollout_patch(reconcile.rollout_status({})) == {}
    odd = reconcile.rollout_status({"rollout": {"phase": "Progressing", "step": "two", "weight": 10}})
    assert odd.phase == "Progressing" and odd.weight == 10 and "step" not in odd.model_fields_set


def test_the_action_filter_parses_only_what_it_reads() -> None:
    from modelpilot.operator import handlers

    body = {"metadata": {"annotations": {"modelpilot.io/rollout-action": "promote/2"}},
            "status": {"model": {"version": "1"}, "rollout": {"phase": "Progressing", "canaryVersion": "2",
                                                             "history": "not even a list"}}}
    assert handlers._action_pending(body)  # type: ignore[arg-type]
    body["status"]["rollout"]["handledAction"] = "promote/2"  # type: ignore[index]
    assert not handlers._action_pending(body)  # type: ignore[arg-type]
