"""The ModelVersion planner (``plan.model_version``) on every path, with fake time and no I/O.

Each test builds what the reconciler would have observed (``plan.Observed``), answers the planner's questions
(``plan.Need``) from a table instead of a registry, a cluster or Prometheus, and checks the plan: objects,
status, Events, retry, write-back — and which questions were asked (a steady ModelVersion asks nothing; only a
rollout reads its tracks). The reconciler that acts on these plans is tested in test_operator_paths.py.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from modelpilot.operator import api, builders, plan, rollout
from modelpilot.operator.mirroring import MirrorStyle
from modelpilot.operator.resolved import ResolvedModel
from tests.unit.rollout_world import settled

OWNER = builders.Owner(name="iris", namespace="ml", uid="uid-1")
T0 = "2026-12-01T10:00:00Z"


def at(seconds: int) -> str:
    """``T0`` plus ``seconds``, as the planner's ``now``."""
    return rollout.fmt_time(rollout.parse_time(T0) + seconds)


def model(version: str, *, alias: str = "", signature: str = '[{"name": "x"}]') -> ResolvedModel:
    return ResolvedModel(name="iris", version=version, alias=alias, run_id=f"run{version}",
                         artifact_uri=f"s3://m/{version}", source=f"runs:/run{version}/model", flavor="sklearn",
                         signature=signature, resolved_at=T0)


def observed(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, *, generation: int = 1,
             **kwargs: Any) -> plan.Observed:
    """An observation with no ABTest routing to it, known (``member_known=False`` to have the planner ask)."""
    status = status or {"observedGeneration": 0}
    kwargs.setdefault("member_known", True)
    return plan.Observed(
        owner=OWNER, generation=generation,
        spec=api.ModelVersionSpec.model_validate(spec or {"model": {"name": "iris", "version": "1"}}),
        status=status, rollout_state=api.RolloutStatus.model_validate(status.get("rollout") or {}),
        tracking_uri="http://mlflow:5000", default_image="modelpilot/serve:test", **kwargs)


class Answers:
    """What the reconciler would observe for each question, and the questions asked, in order."""

    def __init__(self, resolution: ResolvedModel | plan.Unresolved | None = None,
                 world: rollout.World | None = None,
                 analysis: tuple[str | None, list[dict[str, Any]] | None] | None = None,
                 full_model: ResolvedModel | None = None, mirror_style: MirrorStyle = MirrorStyle.REQUEST_MIRROR,
                 member: plan.Membership | None = None):
        self.resolution, self.world, self.analysis, self.member = resolution, world, analysis, member
        self.full_model, self.mirror_style = full_model, mirror_style
        self.asked: list[plan.Need] = []

    def plan(self, obs: plan.Observed, now: str) -> plan.Plan:
        for _ in range(len(plan.Needed) + 1):
            decided = plan.model_version(obs, now)
            if decided.need is None:
                return decided
            need = decided.need
            self.asked.append(need)
            assert need.what not in [n.what for n in self.asked[:-1]], f"asked twice: {need.what}"
            if need.what == plan.Needed.RESOLUTION:
                assert self.resolution is not None, "the registry was asked, and the test says it must not be"
                obs = dataclasses.replace(obs, resolution=self.resolution)
            elif need.what == plan.Needed.MEMBERSHIP:
                obs = dataclasses.replace(obs, member=self.member, member_known=True)
            elif need.what == plan.Needed.MIRROR_STYLE:
                obs = dataclasses.replace(obs, mirror_style=self.mirror_style)
            elif need.what == plan.Needed.TRACKS:
                assert self.world is not None, "the tracks were asked for"
                obs = dataclasses.replace(obs, world=self.world)
            elif need.what == plan.Needed.ANALYSIS:
                assert self.analysis is not None, "an analysis round was asked for"
                obs = dataclasses.replace(obs, analysis=self.analysis)
            else:
                obs = dataclasses.replace(obs, signature_read=True, full_model=self.full_model)
        raise AssertionError("the planner kept asking")

    @property
    def what(self) -> list[plan.Needed]:
        return [n.what for n in self.asked]


def applied(p: plan.Plan) -> dict[tuple[str, str], dict[str, Any]]:
    assert p.objects is not None
    return {(m["kind"], m["metadata"]["name"]): m for verb, m in p.objects.steps if verb == "apply"}


def deleted(p: plan.Plan) -> set[tuple[str, str]]:
    assert p.objects is not None
    return {what for verb, what in p.objects.steps if verb == "delete"}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def reasons(p: plan.Plan) -> list[str]:
    return [e.reason for e in p.events]


CANARY = {"model": {"name": "iris", "version": "2"}, "replicas": 4,
          "rollout": {"steps": [25, 50, 100], "stepIntervalSeconds": 60}}


def serving(version: str = "1", **extra: Any) -> dict[str, Any]:
    """The status of a ModelVersion that serves ``version``, Ready."""
    return {"observedGeneration": 1, "phase": "Ready", "model": model(version).as_status(),
            "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": "ok",
                            "observedGeneration": 1, "lastTransitionTime": T0}], **extra}


# ------------------------------------------------------------------------------------------ resolving


def test_a_first_reconcile_asks_the_registry_then_renders_the_version_it_pins() -> None:
    answers = Answers(resolution=model("1"))
    p = answers.plan(observed(), T0)
    assert answers.what == [plan.Needed.RESOLUTION]
    dep = applied(p)[("Deployment", "iris")]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["template"]["metadata"]["labels"][builders.VERSION_LABEL] == "1"
    assert ("Deployment", "iris-canary") in deleted(p)
    assert p.status["model"]["version"] == "1" and p.status["observedGeneration"] == 1
    assert condition(p.status, "Resolved")["status"] == "True"
    assert reasons(p) == ["Resolved"] and p.readiness and not p.retry and p.write_back is None


def test_a_pinned_version_asks_nothing_and_changes_nothing() -> None:
    first = Answers(resolution=model("1")).plan(observed(), T0)
    again = Answers()  # no registry: asking it fails the test
    p = again.plan(observed(status=first.status), at(30))
    assert again.what == [] and p.events == []
    assert applied(p) == applied(first)
    # The condition's transition time stays: nothing transitioned.
    assert condition(p.status, "Resolved")["lastTransitionTime"] == T0


def test_the_alias_poll_asks_again_and_a_moved_alias_is_said() -> None:
    spec = {"model": {"name": "iris", "alias": "champion"}}
    status = serving("1")
    status["model"]["alias"] = "champion"
    answers = Answers(resolution=model("2", alias="champion"))
    p = answers.plan(observed(spec, status, refresh=True), T0)
    assert answers.what == [plan.Needed.RESOLUTION]
    assert reasons(p) == ["Resolved", "AliasMoved"]
    assert p.status["model"]["version"] == "2" and p.status["previousModel"]["version"] == "1"
    same = Answers(resolution=model("1", alias="champion")).plan(observed(spec, status, refresh=True), T0)
    assert same.events == [] and same.status["model"]["resolvedAt"] == status["model"]["resolvedAt"]


@pytest.mark.parametrize("why, phase, stalled, retry", [
    (plan.Unresolved("RegistryUnavailable", "connection refused"), "Resolving", "False", True),
    (plan.Unresolved("ModelNotFound", "no version 9", stalled=True), "Failed", "True", True),
    (plan.Unresolved("SpecError", "Secret 'creds' not found", stalled=True), "Failed", "True", True),
])
def test_a_registry_that_cannot_answer_touches_nothing_and_says_who_must_act(
        why: plan.Unresolved, phase: str, stalled: str, retry: bool) -> None:
    p = Answers(resolution=why).plan(observed(), T0)
    assert p.objects is None and not p.readiness and p.write and p.retry is retry
    assert p.status["phase"] == phase
    assert condition(p.status, "Stalled")["status"] == stalled
    assert condition(p.status, "Reconciling")["status"] == ("False" if stalled == "True" else "True")
    assert condition(p.status, "Ready")["status"] == "False"
    assert [(e.type, e.reason) for e in p.events] == [("Warning", why.reason)]
    # The retry says nothing new: one Event per transition.
    again = Answers(resolution=why).plan(observed(status=p.status), at(10))
    assert again.events == [] and again.status["phase"] == phase


def test_a_registry_that_cannot_answer_asks_nothing_more() -> None:
    """Not even the ABTest membership: what runs is not touched, so nothing else is read (a failing read there
    would hide the registry's problem from status)."""
    answers = Answers(resolution=plan.Unresolved("RegistryUnavailable", "timeout"))
    p = answers.plan(observed(member_known=False), T0)
    assert answers.what == [plan.Needed.RESOLUTION] and p.status["phase"] == "Resolving"


def test_an_unreachable_registry_keeps_a_serving_version_ready() -> None:
    p = Answers(resolution=plan.Unresolved("RegistryUnavailable", "timeout")).plan(
        observed(status=serving("1"), refresh=True), T0)
    assert p.objects is None and p.retry
    assert condition(p.status, "Ready")["status"] == "True" and p.status["phase"] == "Ready"
    assert condition(p.status, "Resolved")["status"] == "False"


def test_a_spec_that_does_not_parse_is_said_once_and_not_retried() -> None:
    p = plan.invalid_spec({"observedGeneration": 0}, 2, T0, "spec.replicas: must be an integer")
    assert p.write and not p.retry and p.objects is None and p.status["phase"] == "Failed"
    assert condition(p.status, "Resolved")["message"] == "spec.replicas: must be an integer"
    assert reasons(p) == ["SpecError"]
    again = plan.invalid_spec(p.status, 2, at(15), "spec.replicas: must be an integer")
    assert not again.write and again.events == []


# ------------------------------------------------------------------------------------------ objects


def test_a_gateway_route_is_rendered_in_the_form_its_gateway_mirrors_in() -> None:
    spec = {"model": {"name": "iris", "version": "1"},
            "routing": {"gatewayRef": {"name": "gw"}, "hostnames": ["iris.example"]}}
    answers = Answers(resolution=model("1"), mirror_style=MirrorStyle.NGF_SNIPPETS)
    p = answers.plan(observed(spec), T0)
    assert answers.what == [plan.Needed.RESOLUTION, plan.Needed.MIRROR_STYLE]
    assert ("HTTPRoute", "iris") in applied(p) and p.status["gatewayRoute"] == "iris"
    dropped = Answers().plan(observed(status=p.status), at(5))  # the spec dropped the Gateway
    assert ("HTTPRoute", "iris") in deleted(dropped) and dropped.status["gatewayRoute"] is None


def test_an_abtest_share_sets_replicas_and_pod_labels() -> None:
    member = plan.Membership("exp", 3, False)
    answers = Answers(resolution=model("1"), member=member)
    p = answers.plan(observed(member_known=False), T0)
    assert answers.what == [plan.Needed.RESOLUTION, plan.Needed.MEMBERSHIP]
    dep = applied(p)[("Deployment", "iris")]
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["template"]["metadata"]["labels"]["modelpilot.io/abtest"] == "exp"


def test_a_new_version_without_spec_rollout_is_a_plain_rolling_update() -> None:
    spec = {"model": {"name": "iris", "version": "2"}}
    answers = Answers(resolution=model("2"))
    p = answers.plan(observed(spec, serving("1")), T0)
    assert answers.what == [plan.Needed.RESOLUTION]  # no tracks: no rollout
    assert applied(p)[("Deployment", "iris")]["spec"]["template"]["metadata"]["labels"][
        builders.VERSION_LABEL] == "2"
    assert p.status["model"]["version"] == "2" and p.status["previousModel"]["version"] == "1"
    assert "signature" not in p.status["previousModel"]


# ------------------------------------------------------------------------------------------ rollouts


def start_canary() -> tuple[plan.Plan, api.ModelVersionSpec]:
    spec = api.ModelVersionSpec.model_validate(CANARY)
    start = rollout.start(api.ModelStatus.model_validate(model("1").as_status(signature=False)),
                          api.ModelStatus.model_validate(model("2").as_status(signature=False)), spec,
                          rollout.parse_time(T0))
    answers = Answers(resolution=model("2"), world=settled(start.rollout, spec, 4))
    p = answers.plan(observed(CANARY, serving("1")), T0)
    assert answers.what == [plan.Needed.RESOLUTION, plan.Needed.TRACKS]
    return p, spec


def test_a_new_version_with_spec_rollout_starts_a_canary() -> None:
    p, _ = start_canary()
    assert reasons(p) == ["Resolved", "RolloutStarted"] and p.rollout_action == "Start"
    objs = applied(p)
    assert objs[("Deployment", "iris-canary")]["spec"]["replicas"] == 1
    assert objs[("Deployment", "iris")]["spec"]["replicas"] == 3
    assert p.status["rollout"]["phase"] == "Progressing" and p.status["rollout"]["canaryVersion"] == "2"
    assert p.status["model"]["version"] == "1"  # the stable version is what serves until promotion
    assert "signature" not in p.status["rollout"]["canaryModel"]


def converged(p: plan.Plan) -> rollout.World:
    """Both tracks as the cluster has them once it did what ``p`` applied: every replica ready."""
    objs = applied(p)

    def track(name: str) -> rollout.Track:
        dep = objs.get(("Deployment", name))
        if dep is None:
            return rollout.Track()
        replicas = int(dep["spec"]["replicas"])
        version = dep["spec"]["template"]["metadata"]["labels"][builders.VERSION_LABEL]
        return rollout.Track(replicas, replicas, True, version, True)
    return rollout.World(stable=track("iris"), canary=track("iris-canary"))


def tick(previous: plan.Plan, now: str, spec: dict[str, Any] = CANARY, annotation: str = "",
         **answers: Any) -> tuple[plan.Plan, Answers]:
    """One tick of a rollout after ``previous``: its status, and both tracks as it applied them (unless a
    ``world`` is given)."""
    obs = observed(spec, previous.status, annotation=annotation)
    answers.setdefault("world", converged(previous))
    ans = Answers(**answers)
    return ans.plan(obs, now), ans


def test_a_step_waits_its_interval_then_asks_for_analysis_and_advances_on_a_pass() -> None:
    started, _ = start_canary()
    waiting, answers = tick(started, at(30))
    assert answers.what == [plan.Needed.TRACKS] and waiting.events == [] and waiting.rollout_action == "Wait"
    passed, answers = tick(started, at(75), analysis=("Pass", []))
    assert answers.what == [plan.Needed.TRACKS, plan.Needed.ANALYSIS]
    assert answers.asked[1].window == 75 and answers.asked[1].model is not None
    assert answers.asked[1].model.version == "2" and answers.asked[1].stable is not None
    assert reasons(passed) == ["RolloutStep"] and passed.status["rollout"]["weight"] == 50
    assert applied(passed)[("Deployment", "iris-canary")]["spec"]["replicas"] == 2


def run(p: plan.Plan, start: int, spec: dict[str, Any] = CANARY, annotation: str = "", until: str = "",
        **answers: Any) -> list[plan.Plan]:
    """Ticks every 10 s from ``start`` on the tracks each plan applied, until a decision ``until`` (or 30)."""
    plans = []
    for second in range(start, start + 300, 10):
        p, _ = tick(p, at(second), spec, annotation, **answers)
        plans.append(p)
        if p.rollout_action == until:
            break
    return plans


def test_a_failed_analysis_rolls_back_and_the_rollback_writes_back() -> None:
    spec = {**CANARY, "rollout": {**CANARY["rollout"], "analysis": {"failureLimit": 0},
                                  "writeBack": {"enabled": True}}}
    typed = api.ModelVersionSpec.model_validate(spec)
    start = rollout.start(api.ModelStatus(name="iris", version="1"), api.ModelStatus(name="iris", version="2"),
                          typed, rollout.parse_time(T0))
    started = Answers(resolution=model("2"), world=settled(start.rollout, typed, 4)).plan(
        observed(spec, serving("1")), T0)
    failing = [{"check": "error-rate", "verdict": "Fail", "value": 0.5, "baseline": 0.01, "threshold": "<= 0.05",
                "samples": 100, "query": "q", "message": "error rate 0.5"}]
    rolling, _ = tick(started, at(75), spec, analysis=("Fail", failing))
    assert ("Warning", "RolledBack") in [(e.type, e.reason) for e in rolling.events]
    assert "error rate 0.5" in rolling.status["rollout"]["reason"]
    done = run(rolling, 80, spec, until="RolledBack")[-1]
    assert done.rollout_action == "RolledBack"
    assert done.write_back is not None and not done.write_back.promoted
    assert done.write_back.model.version == "2" and "modelpilot.rejected" in done.write_back.what
    assert done.status["rollout"]["phase"] == "RolledBack" and done.status["rollout"]["rejectedVersion"] == "2"
    assert done.status["model"]["version"] == "1" and ("Deployment", "iris-canary") in deleted(done)
    # The rejected version stays rejected: the stable one keeps serving, no new canary, nothing said again.
    kept, answers = tick(done, at(500), spec)
    assert answers.what == [] and kept.events == [] and ("Deployment", "iris-canary") in deleted(kept)
    # A spec that moves on to another version supersedes the rejection.
    moved = Answers(resolution=model("3")).plan(observed({"model": {"name": "iris", "version": "3"}}, done.status),
                                                at(600))
    assert moved.status["rollout"]["phase"] == "Superseded" and moved.status["model"]["version"] == "3"


def test_a_manual_promote_is_handled_once_and_reads_the_promoted_signature() -> None:
    started, _ = start_canary()
    promoting, _ = tick(started, at(10), annotation="promote/2")
    assert reasons(promoting) == ["Promoting"] and promoting.status["rollout"]["handledAction"] == "promote/2"
    full = model("2", signature='[{"name": "petal"}]')
    plans = run(promoting, 20, annotation="promote/2", until="Promoted", full_model=full)
    done = plans[-1]
    assert done.rollout_action == "Promoted", [p.rollout_action for p in plans]
    assert [p.events for p in plans[:-1]] == [[]] * (len(plans) - 1)  # the handled annotation is not redone
    assert done.status["model"]["version"] == "2" and done.status["model"]["signature"] == '[{"name": "petal"}]'
    assert done.status["previousModel"]["version"] == "1" and "signature" not in done.status["previousModel"]
    assert ("Deployment", "iris-canary") in deleted(done)
    assert applied(done)[("Deployment", "iris")]["spec"]["replicas"] == 4
    assert done.write_back is None  # not enabled in the spec
    after, answers = tick(done, at(400), annotation="promote/2")
    assert answers.what == [] and after.events == []  # promoted: steady, the registry not asked again


def test_a_promotion_whose_signature_cannot_be_read_still_promotes() -> None:
    started, _ = start_canary()
    promoting, _ = tick(started, at(10), annotation="promote")
    done = run(promoting, 20, annotation="promote", until="Promoted", full_model=None)[-1]
    assert done.rollout_action == "Promoted"
    assert done.status["model"]["version"] == "2" and done.status["model"]["signature"] == ""


def test_the_spec_back_at_the_stable_version_cancels_the_canary() -> None:
    started, _ = start_canary()
    back = {**CANARY, "model": {"name": "iris", "version": "1"}}
    p, _ = tick(started, at(20), back)
    assert reasons(p) == ["RolloutCancelled"] and "again, not the canary version 2" in p.events[0].message
    done = run(p, 30, back, until="Cancelled")[-1]
    assert done.status["model"]["version"] == "1" and ("Deployment", "iris-canary") in deleted(done)


def test_spec_rollout_removed_mid_canary_promotes_without_further_steps() -> None:
    started, _ = start_canary()
    plain = {"model": {"name": "iris", "version": "2"}, "replicas": 4}
    p, _ = tick(started, at(20), plain)
    assert p.rollout_action == "Promote" and "spec.rollout was removed" in p.events[0].message
    done = run(p, 30, plain, until="Promoted")[-1]
    assert done.status["model"]["version"] == "2"


def serving_plan(version: str, **extra: Any) -> plan.Plan:
    """A ModelVersion that serves ``version`` on 4 replicas, as its last plan left it."""
    spec = {"model": {"name": "iris", "version": version}, "replicas": 4}
    p = Answers().plan(observed(spec, serving(version, **extra)), T0)
    assert p.events == []
    return p


def test_undo_without_an_earlier_version_is_refused_once() -> None:
    spec = {"model": {"name": "iris", "version": "1"}, "replicas": 4}
    p, answers = tick(serving_plan("1"), at(5), spec, annotation="undo")
    assert answers.what == [] and reasons(p) == ["UndoImpossible"]
    assert p.status["rollout"]["handledAction"] == "undo"
    again, _ = tick(p, at(10), spec, annotation="undo")
    assert again.events == []


def test_undo_brings_the_previous_version_back_as_a_rollout_of_its_own() -> None:
    spec = {"model": {"name": "iris", "version": "2"}, "replicas": 4}
    before = serving_plan("2", previousModel=model("1").as_status(signature=False))
    p, answers = tick(before, at(5), spec, annotation="undo/2")
    assert answers.what == [plan.Needed.TRACKS] and reasons(p) == ["RolloutStarted"]
    ro = p.status["rollout"]
    assert ro["kind"] == "Undo" and ro["canaryVersion"] == "1" and ro["rejectedVersion"] == "2"
    done = run(p, 10, spec, "undo/2", until="RolledBack")[-1]
    assert done.status["model"]["version"] == "1" and done.write_back is None  # an undo writes nothing back
    # The spec still names version 2, which no longer serves: the registry is asked (its cache answers) and
    # version 2 stays rejected — no canary of it, nothing said.
    kept, answers = tick(done, at(400), spec, annotation="undo/2", resolution=model("2"))
    assert answers.what == [plan.Needed.RESOLUTION] and kept.events == []
    assert kept.status["model"]["version"] == "1" and ("Deployment", "iris-canary") in deleted(kept)


def test_a_canary_problem_is_said_once() -> None:
    started, _ = start_canary()
    sick = dataclasses.replace(converged(started), health=rollout.Health(problem="ImagePullBackOff: no such image"))
    first, _ = tick(started, at(10), world=sick)
    assert first.status["rollout"]["canaryProblem"] == "ImagePullBackOff: no such image"
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "ServingFailed")]
    again, _ = tick(first, at(20), world=sick)
    assert again.events == []
    healed, _ = tick(first, at(30))
    assert healed.status["rollout"]["canaryProblem"] is None  # null: the merge patch removes it


# ------------------------------------------------------------------------------------------ properties


def test_a_plan_is_a_function_of_what_was_observed() -> None:
    """The same observation and time give the same plan, and planning changes nothing it was given (the
    reconciler plans again from the same observation after each answer) — on the paths that edit the rollout
    record: an analysis round, a canary problem, a superseded rejection, a refused undo."""
    started, _ = start_canary()
    rejected = serving("1", rollout={"phase": "RolledBack", "rejectedVersion": "2", "canaryVersion": "2"})
    cases = [
        (dataclasses.replace(observed(CANARY, started.status), world=converged(started), analysis=("Pass", [])),
         at(75)),
        (dataclasses.replace(observed(CANARY, started.status), world=dataclasses.replace(
            converged(started), health=rollout.Health(problem="CrashLoopBackOff: exit 1"))), at(20)),
        (observed({"model": {"name": "iris", "version": "3"}}, rejected, resolution=model("3")), at(5)),
        (observed({"model": {"name": "iris", "version": "1"}}, serving("1"), annotation="undo"), at(5)),
    ]
    for obs, now in cases:
        before = (copy.deepcopy(obs.status), obs.rollout_state.model_dump())
        one, two = plan.model_version(obs, now), plan.model_version(obs, now)
        assert one.need is None and one == two
        assert (obs.status, obs.rollout_state.model_dump()) == before


def test_the_write_back_outcome_is_a_condition_and_a_failure_one_warning() -> None:
    spec = api.ModelVersionSpec.model_validate({**CANARY, "rollout": {"writeBack": {"enabled": True,
                                                                                     "promoteAlias": "prod"}}})
    wb = plan.write_back_of(spec, model("2"), promoted=True, reason="")
    assert wb is not None and wb.alias == "prod" and "@prod" in wb.what
    status = serving("1")
    assert plan.written_back(status, wb, None, T0) == []
    assert condition(status, "RegistryWriteBack")["reason"] == "Written"
    events = plan.written_back(status, wb, plan.Unresolved("Unauthorized", "401"), at(5))
    assert [(e.type, e.reason) for e in events] == [("Warning", "RegistryWriteBackFailed")]
    assert condition(status, "RegistryWriteBack")["status"] == "False"
    off = api.ModelVersionSpec.model_validate(CANARY)
    assert plan.write_back_of(off, model("2"), promoted=True, reason="") is None
