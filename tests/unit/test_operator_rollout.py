"""The rollout planner with fake time: same status + same observations → same decision (restart safety),
every path, and the rules from peers' failure reports (surge first, per-step samples, pod health, clean
records). ``rollout_world.Cluster`` plays two Deployments that follow the decisions."""

from __future__ import annotations

from typing import Any

import pytest
from rollout_world import Cluster, not_ready, settled, spec_of

from modelpilot.operator import api, plan, rollout

FIELDS: dict[str, Any] = {"replicas": 4, "rollout": {"steps": [25, 50, 100], "stepIntervalSeconds": 30,
                                                    "progressDeadlineSeconds": 300}}
SPEC = spec_of(FIELDS)
STABLE = api.ModelStatus(name="iris", version="1")
CANARY = api.ModelStatus(name="iris", version="2")
FAIL = [{"check": "error-rate", "verdict": "Fail", "value": 0.3, "baseline": 0.0, "message": "0.3 > baseline 0 + 0.01"}]
PASS = [{"check": "latency-p99", "verdict": "Pass", "value": 0.01, "baseline": 0.008, "message": "within threshold"}]
T0 = 1_800_000_000.0


def dump(r: api.RolloutStatus) -> dict[str, Any]:
    """A rollout status as the reconciler writes it (``plan.rollout_patch``)."""
    return r.model_dump(mode="json", by_alias=True, exclude_unset=True)


def started(spec: api.ModelVersionSpec = SPEC) -> api.RolloutStatus:
    return rollout.start(STABLE, CANARY, spec, T0).rollout


def in_place(spec: api.ModelVersionSpec = SPEC, at: float = T0) -> api.RolloutStatus:
    """A rollout whose first step's replicas are ready: its clock started at ``at``."""
    r = started(spec)
    d = rollout.plan(r, spec, 4, settled(r, spec), at)
    assert dump(d.rollout)["stepStartedAt"] == rollout.fmt_time(at)
    return d.rollout


def test_start_records_everything_needed_to_resume_and_nothing_of_the_last_rollout() -> None:
    r = started()
    assert r.phase == "Progressing" and r.step == 0 and r.weight == 25
    assert r.stable_version == "1" and r.canary_version == "2" and r.canary_model == CANARY
    assert r.history and r.history[0].decision == "Start"
    # Every field a rollout can carry is present, so a merge patch clears what the previous rollout left
    # (reason, rejectedVersion and finishedAt stayed on the next rollout).
    assert set(rollout.FIELDS) <= set(dump(r))
    assert r.reason is None and r.rejected_version is None and dump(r)["finishedAt"] is None


def test_a_step_clock_starts_only_when_its_replicas_are_ready() -> None:
    r = started()
    waiting = rollout.plan(r, SPEC, 4, not_ready(r, SPEC), T0 + 100)
    assert waiting.action == "Wait" and dump(waiting.rollout)["stepStartedAt"] is None
    assert rollout.analysis_window(waiting.rollout, SPEC, not_ready(r, SPEC), 4, T0 + 200) is None
    ready = rollout.plan(waiting.rollout, SPEC, 4, settled(r, SPEC), T0 + 110)
    assert dump(ready.rollout)["stepStartedAt"] == rollout.fmt_time(T0 + 110)
    # Analysis covers this step only: 30 s after it started the window is 30 s, not the 1m interval.
    assert rollout.analysis_window(ready.rollout, SPEC, settled(r, SPEC), 4, T0 + 125) is None
    assert rollout.analysis_window(ready.rollout, SPEC, settled(r, SPEC), 4, T0 + 140) == 30


def test_a_step_is_held_for_its_interval_then_advanced_on_pass() -> None:
    r = in_place()
    assert rollout.plan(r, SPEC, 4, settled(r, SPEC, verdict="Pass"), T0 + 10).action == "Wait"
    d = rollout.plan(r, SPEC, 4, settled(r, SPEC, verdict="Pass", measurements=PASS), T0 + 31)
    assert d.action == "Advance" and d.rollout.step == 1 and d.rollout.weight == 50
    assert dump(d.rollout)["stepStartedAt"] is None and d.rollout.baselines == {"latency-p99": 0.008}
    r2 = rollout.plan(d.rollout, SPEC, 4, settled(d.rollout, SPEC), T0 + 40).rollout
    d2 = rollout.plan(r2, SPEC, 4, settled(r2, SPEC, verdict="Pass"), T0 + 71)
    assert d2.action == "Advance" and d2.rollout.weight == 100
    r3 = rollout.plan(d2.rollout, SPEC, 4, settled(d2.rollout, SPEC), T0 + 80).rollout
    d3 = rollout.plan(r3, SPEC, 4, settled(r3, SPEC, verdict="Pass"), T0 + 111)
    assert d3.action == "Promote" and d3.rollout.phase == "Promoting"
    assert d3.canary_replicas == 4 and d3.stable_replicas == 4 and d3.stable_model == "canary"


def test_the_same_inputs_give_the_same_decision_so_a_restart_never_applies_a_step_twice() -> None:
    r = in_place()
    world = settled(r, SPEC, verdict="Pass")
    first = rollout.plan(r, SPEC, 4, world, T0 + 31)
    again = rollout.plan(r, SPEC, 4, world, T0 + 31)
    assert first == again
    # A restarted operator reads the advanced status: the new step's clock has not even started.
    assert rollout.plan(first.rollout, SPEC, 4, settled(r, SPEC, verdict="Pass"), T0 + 32).action == "Wait"


def test_one_failed_round_is_tolerated_by_default_and_a_second_rolls_back_with_the_evidence() -> None:
    r = in_place()
    d = rollout.plan(r, SPEC, 4, settled(r, SPEC, verdict="Fail", measurements=FAIL), T0 + 31)
    assert d.action == "Wait" and d.rollout.failures == 1
    assert dump(d.rollout)["stepStartedAt"] == rollout.fmt_time(T0 + 31)  # the next round uses fresh samples only
    d2 = rollout.plan(d.rollout, SPEC, 4, settled(r, SPEC, verdict="Fail", measurements=FAIL), T0 + 62)
    assert d2.action == "RollBack" and d2.rollout.phase == "RollingBack"
    assert d2.rollout.rejected_version == "2" and "error-rate=0.3" in d2.message
    assert d2.rollout.history[-1].decision == "RollBack"


def test_failure_limit_zero_rolls_back_on_the_first_failure() -> None:
    spec = spec_of({**FIELDS, "rollout": {**FIELDS["rollout"], "analysis": {"failureLimit": 0}}})
    r = in_place(spec)
    assert rollout.plan(r, spec, 4, settled(r, spec, verdict="Fail", measurements=FAIL), T0 + 31).action == "RollBack"


def test_a_canary_that_never_becomes_ready_rolls_back_at_the_deadline_with_the_reason() -> None:
    r = started()
    world = not_ready(r, SPEC, problem="pod iris-canary-x: model server failed")
    assert rollout.plan(r, SPEC, 4, world, T0 + 299).action == "Wait"
    d = rollout.plan(r, SPEC, 4, world, T0 + 301)
    assert d.action == "RollBack" and "not ready within progressDeadlineSeconds" in d.message
    assert d.rollout.reason.endswith(": pod iris-canary-x: model server failed")


def test_a_crash_looping_canary_rolls_back_before_the_deadline_naming_the_restarts() -> None:
    r = rollout.plan(started(), SPEC, 4, not_ready(started(), SPEC), T0 + 1).rollout  # restarts baseline 0
    assert rollout.plan(r, SPEC, 4, not_ready(r, SPEC, restarts=2), T0 + 20).action == "Wait"
    d = rollout.plan(r, SPEC, 4, not_ready(r, SPEC, restarts=3, problem="model server keeps crashing"), T0 + 40)
    assert d.action == "RollBack" and "restarted 3 times" in d.message and "keeps crashing" in d.message
    assert d.rollout.analysis[0].check == "pod-health"


@pytest.mark.parametrize("analysis_enabled", [True, False])
def test_a_restart_during_a_step_fails_it_even_when_every_metric_passes(analysis_enabled: bool) -> None:
    spec = spec_of({**FIELDS, "rollout": {**FIELDS["rollout"], "analysis": {"enabled": analysis_enabled}}})
    r = in_place(spec)
    d = rollout.plan(r, spec, 4, settled(r, spec, verdict="Pass", restarts=1), T0 + 31)
    assert d.action == "RollBack" and d.message.endswith("canary containers restarted 1 time during step 1")


def test_a_readiness_flap_between_ticks_fails_the_step() -> None:
    r = in_place()
    d = rollout.plan(r, SPEC, 4, settled(r, SPEC, verdict="Pass", last_ready_change=T0 + 12), T0 + 31)
    assert d.action == "RollBack" and "readiness changed during step 1" in d.message


def test_with_analysis_disabled_a_step_advances_on_time_with_healthy_pods_only() -> None:
    spec = spec_of({**FIELDS, "rollout": {**FIELDS["rollout"], "analysis": {"enabled": False}}})
    r = in_place(spec)
    assert rollout.analysis_window(r, spec, settled(r, spec), 4, T0 + 31) is None
    assert rollout.plan(r, spec, 4, settled(r, spec), T0 + 31).action == "Advance"


def test_no_data_holds_until_the_deadline() -> None:
    r = in_place()
    assert rollout.plan(r, SPEC, 4, settled(r, SPEC, verdict="Hold"), T0 + 100).action == "Wait"
    assert rollout.plan(r, SPEC, 4, settled(r, SPEC, verdict="Hold"), T0 + 301).action == "RollBack"


def test_too_many_inconclusive_rounds_pause_instead_of_guessing() -> None:
    r = in_place()
    for i in range(4):
        d = rollout.plan(r, SPEC, 4, settled(r, SPEC, verdict="Inconclusive"), T0 + 31 * (i + 1))
        r = d.rollout
    assert d.action == "Pause" and r.phase == "Paused"
    assert rollout.plan(r, SPEC, 4, settled(r, SPEC, verdict="Pass"), T0 + 500).action == "Wait"  # stays paused


@pytest.mark.parametrize("action,expected", [("abort", "RollBack"), ("promote", "Promote"), ("pause", "Pause")])
def test_manual_actions(action: str, expected: str) -> None:
    r = in_place()
    assert rollout.plan(r, SPEC, 4, settled(r, SPEC, action=action), T0 + 1).action == expected


def test_resume_after_pause_restarts_the_step_clock() -> None:
    r = in_place()
    paused = rollout.plan(r, SPEC, 4, settled(r, SPEC, action="pause"), T0 + 1).rollout
    resumed = rollout.plan(paused, SPEC, 4, settled(r, SPEC, action="resume"), T0 + 2).rollout
    assert resumed.phase == "Progressing" and dump(resumed)["stepStartedAt"] is None


@pytest.mark.parametrize("total,weight,surge,expected", [
    (4, 25, 4, (3, 1, True)), (4, 50, 4, (2, 2, True)), (4, 100, 4, (0, 4, True)),
    (4, 10, 4, (6, 1, True)),       # 14 %: within 5 points with the fewest pods (3 more than asked)
    (2, 10, 2, (3, 1, False)),      # the closest within the surge limit, said to be off
    (2, 10, 8, (6, 1, True)), (10, 10, 0, (9, 1, True)), (1, 50, 1, (1, 1, True)),
])
def test_replica_targets_honour_each_step_within_5_points_or_say_so(
        total: int, weight: int, surge: int, expected: tuple[int, int, bool]) -> None:
    assert rollout.replica_targets(total, weight, surge) == expected


def test_a_weight_that_cannot_be_honoured_is_a_warning_once_and_in_status() -> None:
    spec = spec_of({"replicas": 2, "rollout": {"steps": [10, 100], "maxSurge": 2}})
    r = started(spec)
    first = rollout.plan(r, spec, 2, not_ready(r, spec, total=2), T0 + 1)
    assert "asks for 10% but 3 stable + 1 canary replicas give 25%" in first.warning
    assert first.rollout.weight_warning == first.warning
    assert rollout.plan(first.rollout, spec, 2, not_ready(r, spec, total=2), T0 + 2).warning == ""


def run(cluster: Cluster, spec: api.ModelVersionSpec, verdicts: dict[int, str], until: str, action_at: dict[int, str]
        | None = None, ticks: int = 200) -> list[rollout.Decision]:
    """Tick the planner against ``cluster`` every 5 s until a decision ``until``; verdicts by step."""
    r = rollout.start(STABLE, CANARY, spec, T0).rollout
    decisions = []
    for i in range(ticks):
        now = T0 + 5 * i
        world = cluster.world(action=(action_at or {}).get(i, ""))
        if rollout.analysis_window(r, spec, world, cluster.total, now) is not None:
            world = cluster.world(verdict=verdicts.get(r.step, "Pass"), measurements=PASS)
        d = rollout.plan(r, spec, cluster.total, world, now)
        decisions.append(d)
        cluster.apply(d)
        cluster.tick()
        r = d.rollout
        if d.action == until:
            return decisions
    raise AssertionError(f"no {until} after {ticks} ticks: {[d.action for d in decisions][-10:]}")


@pytest.mark.parametrize("total", [1, 2, 4, 5])
def test_a_whole_promotion_never_has_fewer_ready_pods_than_replicas(total: int) -> None:
    spec = spec_of({"replicas": total, "rollout": {"steps": [10, 25, 50, 100], "stepIntervalSeconds": 30}})
    cluster = Cluster(total)
    decisions = run(cluster, spec, {}, until="Promoted")
    assert min(cluster.ready_history) >= total
    # The canary went only after the stable Deployment ran the new version at full size.
    assert decisions[-1].canary_replicas is None and cluster.stable_runs == "2"
    assert [d.action for d in decisions if d.action not in ("Wait",)] == \
        ["Advance", "Advance", "Advance", "Promote", "Promoted"]


@pytest.mark.parametrize("fail_at_step,action", [(3, None), (1, None), (None, "abort")])
def test_rollback_and_abort_at_any_step_never_open_a_capacity_hole(fail_at_step: int | None, action: str | None) -> None:
    spec = spec_of({"replicas": 4, "rollout": {"steps": [10, 25, 50, 100], "stepIntervalSeconds": 30,
                                              "analysis": {"failureLimit": 0}}})
    cluster = Cluster(4)
    verdicts = {fail_at_step: "Fail"} if fail_at_step is not None else {}
    decisions = run(cluster, spec, verdicts, until="RolledBack", action_at={20: action} if action else None)
    assert min(cluster.ready_history) >= 4
    assert cluster.canary is None and cluster.stable_runs == "1" and len(cluster.stable) == 4
    back = next(d for d in decisions if d.action == "RollBack")
    assert back.canary_replicas is not None  # the canary stays until the stable track is ready again


def test_steps_scale_the_growing_track_first() -> None:
    cluster = Cluster(4, start_ticks=3)
    spec = spec_of({"replicas": 4, "rollout": {"steps": [50, 100], "stepIntervalSeconds": 10}})
    r = rollout.start(STABLE, CANARY, spec, T0).rollout
    d = rollout.plan(r, spec, 4, cluster.world(), T0)
    assert (d.stable_replicas, d.canary_replicas) == (4, 2)  # canary up first, stable kept at 4


def test_undo_brings_the_previous_version_back_at_full_size_before_it_takes_the_traffic() -> None:
    spec = spec_of({"replicas": 3})
    cluster = Cluster(3, stable_version="3", canary_version="2")
    cluster.stable_runs = "3"
    r = rollout.start(api.ModelStatus(name="iris", version="3"), api.ModelStatus(name="iris", version="2"), spec, T0,
                      kind="Undo",
                      rejected="3").rollout
    assert r.weight == 100 and r.rejected_version == "3"
    for i in range(50):
        d = rollout.plan(r, spec, 3, cluster.world(), T0 + 5 * i)
        cluster.apply(d)
        cluster.tick()
        r = d.rollout
        if d.action == "RolledBack":
            break
    assert d.action == "RolledBack" and r.phase == "RolledBack" and cluster.stable_runs == "2"
    assert min(cluster.ready_history) >= 3 and "undone" in d.message


def test_history_is_bounded() -> None:
    spec = spec_of({**FIELDS, "rollout": {**FIELDS["rollout"], "analysis": {"failureLimit": 100}}})
    r = in_place(spec)
    for i in range(40):
        r = rollout.plan(r, spec, 4, settled(r, spec, verdict="Fail", measurements=FAIL), T0 + 31 * (i + 1)).rollout
    assert len(r.history) == rollout.HISTORY_LIMIT


def test_a_rounds_measurements_and_the_reason_are_bounded_as_the_crd_bounds_them() -> None:
    """``status.rollout.analysis`` has ``maxItems``, ``reason`` and ``history[].message`` a ``maxLength``: a
    status over them would be refused by the API server, so the planner cuts them."""
    many = [{**FAIL[0], "check": f"c{i}", "message": "x" * 2000} for i in range(30)]
    spec = spec_of({**FIELDS, "rollout": {**FIELDS["rollout"], "analysis": {"failureLimit": 0}}})
    r = in_place(spec)
    d = rollout.plan(r, spec, 4, settled(r, spec, verdict="Fail", measurements=many), T0 + 31)
    assert d.action == "RollBack" and len(d.rollout.analysis) == rollout.MEASUREMENT_LIMIT == 21
    assert len(d.rollout.reason) == api.REASON_LIMIT
    assert all(len(h.message) <= api.HISTORY_MESSAGE_LIMIT for h in d.rollout.history or [])
    # A failed pod-health check comes first and the round's checks after it, within the bound.
    r = in_place(spec)
    r = rollout.plan(r, spec, 4, settled(r, spec, verdict="Inconclusive", measurements=many), T0 + 31).rollout
    crashed = rollout.plan(r, spec, 4, settled(r, spec, restarts=1), T0 + 40)
    assert crashed.action == "RollBack"
    assert len(crashed.rollout.analysis) == rollout.MEASUREMENT_LIMIT
    assert crashed.rollout.analysis[0].check == "pod-health"
    promoted = rollout.promote_now(r, spec, settled(r, spec), 4, T0 + 41, "y" * 5000)
    assert len(promoted.rollout.reason) == api.REASON_LIMIT


@pytest.mark.parametrize("stamp", ["2026-11-30T02:09:18Z", "2026-11-30T02:09:18+00:00"])
def test_pod_health_reads_restarts_readiness_and_either_timestamp_rendering(stamp: str) -> None:
    from modelpilot.operator.plan import pod_health

    def pod(name: str, ready: str, restarts: int, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if deleting:
            meta["deletionTimestamp"] = stamp
        return {"metadata": meta, "status": {
            "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": stamp}],
            "containerStatuses": [{"name": "server", "ready": ready == "True", "restartCount": restarts}]}}

    health = pod_health([pod("a", "True", 1), pod("b", "False", 2), pod("c", "False", 9, deleting=True)])
    assert health.restarts == 3 and health.not_ready == ("b",)
    assert health.last_ready_change == rollout.parse_time("2026-11-30T02:09:18Z")


def test_a_canary_deployment_still_running_a_superseded_version_is_not_in_place() -> None:
    """The spec moved on mid-rollout: the new rollout's first tick sees the old canary Deployment at the right
    size; taking it for the new canary started the step's clock, and the new pods' start-up then read as a
    readiness flap and rolled the new version back at once."""
    r = rollout.start(STABLE, api.ModelStatus(name="iris", version="3"), SPEC, T0).rollout
    old_canary = settled(r, SPEC, canary_version="2")  # the superseded canary's pods, ready
    d = rollout.plan(r, SPEC, 4, old_canary, T0)
    assert dump(d.rollout)["stepStartedAt"] is None and d.action == "Wait"
    starting = not_ready(d.rollout, SPEC)  # the new version's pods come up
    assert rollout.plan(d.rollout, SPEC, 4, starting, T0 + 2).action == "Wait"


def test_undoing_an_undo_rejects_nothing() -> None:
    r = rollout.start(api.ModelStatus(name="iris", version="1"), api.ModelStatus(name="iris", version="2"), spec_of({}),
                      T0, kind="Undo",
                      rejected="").rollout
    assert r.rejected_version is None and r.final_phase == "Promoted"
