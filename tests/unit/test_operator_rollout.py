"""The canary state machine: same status + same observations → same decision (restart safety), with fake time."""

from __future__ import annotations

from typing import Any

import pytest

from modelpilot.operator import rollout

SPEC: dict[str, Any] = {"replicas": 4, "rollout": {"steps": [25, 50, 100], "stepIntervalSeconds": 30,
                                                  "progressDeadlineSeconds": 300}}
STABLE = {"name": "iris", "version": "1"}
CANARY = {"name": "iris", "version": "2"}
FAIL = [{"check": "error-rate", "verdict": "Fail", "value": 0.3, "message": "0.3 > baseline 0 + 0.01"}]
T0 = 1_800_000_000.0


def started() -> dict[str, Any]:
    return rollout.start(STABLE, CANARY, SPEC, T0).rollout


def test_start_records_everything_needed_to_resume() -> None:
    r = started()
    assert r["phase"] == "Progressing" and r["step"] == 0 and r["weight"] == 25
    assert r["stableVersion"] == "1" and r["canaryVersion"] == "2" and r["canaryModel"] == CANARY
    assert r["history"][0]["decision"] == "Start"


def test_a_step_is_held_for_its_interval_then_advanced_on_pass() -> None:
    r = started()
    assert rollout.step(r, SPEC, T0 + 10, True, "Pass", []).action == "Wait"
    d = rollout.step(r, SPEC, T0 + 31, True, "Pass", [])
    assert d.action == "Advance" and d.rollout["step"] == 1 and d.rollout["weight"] == 50
    d2 = rollout.step(d.rollout, SPEC, T0 + 62, True, "Pass", [])
    assert d2.action == "Advance" and d2.rollout["weight"] == 100
    d3 = rollout.step(d2.rollout, SPEC, T0 + 93, True, "Pass", [])
    assert d3.action == "Promote" and d3.rollout["phase"] == "Promoted"


def test_the_same_inputs_give_the_same_decision_so_a_restart_never_applies_a_step_twice() -> None:
    r = started()
    first = rollout.step(r, SPEC, T0 + 31, True, "Pass", [])
    again = rollout.step(r, SPEC, T0 + 31, True, "Pass", [])
    assert first == again
    # A restarted operator reads the advanced status: the new step is held for a full interval again.
    assert rollout.step(first.rollout, SPEC, T0 + 32, True, "Pass", []).action == "Wait"


def test_a_failed_analysis_rolls_back_with_the_evidence() -> None:
    d = rollout.step(started(), SPEC, T0 + 31, True, "Fail", FAIL)
    assert d.action == "RollBack" and d.rollout["phase"] == "RolledBack" and d.rollout["rejectedVersion"] == "2"
    assert "error-rate=0.3" in d.message and d.rollout["analysis"] == FAIL
    assert d.rollout["history"][-1]["decision"] == "RollBack"


def test_failure_limit_allows_a_retry() -> None:
    spec = {**SPEC, "rollout": {**SPEC["rollout"], "analysis": {"failureLimit": 1}}}
    d = rollout.step(started(), spec, T0 + 31, True, "Fail", FAIL)
    assert d.action == "Wait" and d.rollout["failures"] == 1
    assert rollout.step(d.rollout, spec, T0 + 62, True, "Fail", FAIL).action == "RollBack"


def test_a_canary_that_never_becomes_ready_rolls_back_at_the_deadline() -> None:
    r = started()
    assert rollout.step(r, SPEC, T0 + 299, False, None, None).action == "Wait"
    d = rollout.step(r, SPEC, T0 + 301, False, None, None)
    assert d.action == "RollBack" and "not ready within progressDeadlineSeconds" in d.message


def test_no_data_holds_until_the_deadline() -> None:
    r = started()
    assert rollout.step(r, SPEC, T0 + 100, True, "Hold", []).action == "Wait"
    assert rollout.step(r, SPEC, T0 + 301, True, "Hold", []).action == "RollBack"


def test_too_many_inconclusive_rounds_pause_instead_of_guessing() -> None:
    r = started()
    for i in range(4):
        d = rollout.step(r, SPEC, T0 + 31 * (i + 1), True, "Inconclusive", [])
        r = d.rollout
    assert d.action == "Pause" and r["phase"] == "Paused"
    assert rollout.step(r, SPEC, T0 + 500, True, "Pass", []).action == "Wait"  # paused stays paused


@pytest.mark.parametrize("action,expected", [("abort", "RollBack"), ("promote", "Promote"), ("pause", "Pause")])
def test_manual_actions(action: str, expected: str) -> None:
    assert rollout.step(started(), SPEC, T0 + 1, True, None, None, action).action == expected


def test_resume_after_pause() -> None:
    paused = rollout.step(started(), SPEC, T0 + 1, True, None, None, "pause").rollout
    resumed = rollout.step(paused, SPEC, T0 + 2, True, None, None, "resume")
    assert resumed.rollout["phase"] == "Progressing"


@pytest.mark.parametrize("total,weight,expected", [
    (4, 25, (3, 1)), (4, 50, (2, 2)), (4, 100, (0, 4)), (2, 10, (1, 1)), (1, 10, (1, 1)), (10, 10, (9, 1)),
])
def test_replica_ratio_split(total: int, weight: int, expected: tuple[int, int]) -> None:
    assert rollout.split(total, weight) == expected


def test_history_is_bounded() -> None:
    r = started()
    for i in range(40):
        r = rollout.step(r, {**SPEC, "rollout": {**SPEC["rollout"], "analysis": {"failureLimit": 100}}},
                         T0 + 31 * (i + 1), True, "Fail", FAIL).rollout
    assert len(r["history"]) == rollout.HISTORY_LIMIT
