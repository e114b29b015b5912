"""The Argo CD health checks (Lua) for ModelVersion and ABTest, run by a real Lua interpreter.

Argo CD runs ``health.lua`` with the live object in the global ``obj`` and reads the
returned ``hs`` table (``status``, ``message``). This test does the same with lua5.4
(installed by scripts/bootstrap.sh): each sample object is converted from JSON to a
Lua table literal here, the script is loaded with ``obj`` set, and the answer is
asserted. Numbers are written as floats, as Argo CD's JSON-to-Lua conversion
(gopher-lua, float64 numbers) hands them over, so "25.0%" formatting bugs show.

The status samples are built with the operator's own status code (set_condition,
readiness_status, rollout_phase, the rollout state machine, abtest.split_text) so
they have the shapes the operator really writes.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpilot.operator import abtest, api, plan, rollout

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "charts" / "modelpilot" / "argocd"
MV_HEALTH = CHECKS / "modelpilot.io" / "ModelVersion" / "health.lua"
AB_HEALTH = CHECKS / "modelpilot.io" / "ABTest" / "health.lua"
NOW = "2026-01-05T10:00:00Z"
T0 = rollout.parse_time(NOW)


# ----------------------------------------------------------------------------- the harness


def lua_literal(value: Any) -> str:
    """A JSON value as a Lua table literal (null → absent key, numbers as floats like Argo CD's)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"not JSON: {value}")
        return repr(float(value))
    if isinstance(value, str):
        out = []
        for ch in value.encode("utf-8"):
            c = chr(ch)
            out.append(c if (32 <= ch < 127 and c not in '"\\') else f"\\{ch:03d}")
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value if v is not None) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}"
                               for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"not JSON: {value!r}")


HARNESS = """\
obj = {obj}
local check = assert(loadfile({script}))
local hs = check()
assert(type(hs) == "table", "the health script must return a table")
assert(type(hs.status) == "string", "hs.status must be a string")
assert(type(hs.message) == "string", "hs.message must be a string")
io.write(hs.status, "\\n", hs.message)
"""


def lua() -> str:
    path = shutil.which("lua5.4")
    assert path, "lua5.4 is missing: run scripts/bootstrap.sh (it apt-installs lua5.4) or `apt-get install lua5.4`"
    return path


def health(script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    json.dumps(obj)  # the samples must be plain JSON, as Argo CD sees them
    code = HARNESS.format(obj=lua_literal(obj), script=lua_literal(str(script)))
    proc = subprocess.run([lua(), "-"], input=code, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"lua failed:\n{proc.stderr}"
    status, _, message = proc.stdout.partition("\n")
    return status, message


def test_the_harness_round_trips_json_through_lua() -> None:
    sample = {"s": 'quote " back\\slash\nnewline ünï', "n": 3, "f": 0.25, "b": False, "l": [1, "x"],
              "nested": {"k": None}}
    code = (f"local t = {lua_literal(sample)}\n"
            "io.write(t.s, '|', math.type(t.n), '|', t.f, '|', tostring(t.b), '|', #t.l, '|', tostring(t.nested.k))")
    out = subprocess.run([lua(), "-"], input=code, capture_output=True, text=True, check=True).stdout
    assert out == 'quote " back\\slash\nnewline ünï|float|0.25|false|2|nil'


# ----------------------------------------------------------------------------- samples


def _deployment(replicas: int, available: int, progressing: str = "NewReplicaSetAvailable") -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": available, "readyReplicas": available,
                       "conditions": [{"type": "Progressing", "reason": progressing,
                                       "message": f'ReplicaSet "iris-7d9" {progressing}'}]}}


SPEC: dict[str, Any] = {"model": {"name": "iris", "alias": "champion"}, "followAlias": True, "replicas": 4,
                        "rollout": {"steps": [10, 25, 50, 100], "stepIntervalSeconds": 60}}
TYPED = api.ModelVersionSpec.model_validate(SPEC)  # what the reconciler hands the planner
STABLE = {"name": "iris", "version": "3", "alias": "champion", "runId": "r3", "flavor": "sklearn"}
CANARY = {"name": "iris", "version": "4", "alias": "champion", "runId": "r4", "flavor": "sklearn"}
#: ``status.model`` as written, and as the planner takes it (a rollout's ``canaryModel``).
STABLE_MODEL, CANARY_MODEL = api.ModelStatus.model_validate(STABLE), api.ModelStatus.model_validate(CANARY)
FAIL = [{"check": "error-rate", "verdict": "Fail", "value": 0.31, "baseline": 0.0,
         "message": "0.31 > baseline 0 + 0.01"}]


def model_version(status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion",
                           "metadata": {"name": "iris", "namespace": "models", "generation": generation},
                           "spec": copy.deepcopy(SPEC)}
    if status is not None:
        obj["status"] = status
    return obj


def ready_status(generation: int = 2, deployment: dict[str, Any] | None = None) -> dict[str, Any]:
    """What reconcile() writes once the stable Deployment serves: Resolved + readiness conditions + phase."""
    status: dict[str, Any] = {"model": dict(STABLE, resolvedAt=NOW), "observedGeneration": generation}
    status["conditions"] = plan.set_condition([], "Resolved", "True", "Resolved",
                                                   "iris@champion is version 3", generation, NOW)
    new, _ = plan.readiness_status(status, generation,
                                        deployment if deployment is not None else _deployment(4, 4), NOW)
    status.update(new)
    status["phase"] = plan.rollout_phase(status)
    return status


def with_rollout(status: dict[str, Any], ro: dict[str, Any]) -> dict[str, Any]:
    """``status`` as readiness left it (no rollout yet), then the rollout and the phase reconcile() derives."""
    status = copy.deepcopy(status)
    status["rollout"] = ro
    status["phase"] = plan.rollout_phase(status)
    return status


def settled(r: api.RolloutStatus, spec: api.ModelVersionSpec, verdict: str | None = None,
            measurements: list[dict[str, Any]] | None = None, action: str = "") -> rollout.World:
    """Both tracks at the step's replicas, all ready. (Not rollout_world.settled: tests/cluster/test_argocd_live.py
    loads this module by path, where the unit tests' directory is not importable.)"""
    s, c, _ = rollout.targets(r, 4, rollout.settings(spec))
    return rollout.World(stable=rollout.Track(s, s, True, "3", True), canary=rollout.Track(c, c, True, "4", True),
                         action=action, verdict=verdict, measurements=measurements)


def canary_at_step_two() -> dict[str, Any]:
    """``status.rollout`` as written (``plan.rollout_patch``) at step two."""
    started = rollout.start(STABLE_MODEL, CANARY_MODEL, TYPED, T0).rollout
    started = rollout.plan(started, TYPED, 4, settled(started, TYPED), T0).rollout
    advanced = rollout.plan(started, TYPED, 4, settled(started, TYPED, verdict="Pass"), T0 + 61).rollout
    assert advanced.step == 1 and advanced.weight == 25
    stable, canary, _ = rollout.targets(advanced, 4, rollout.settings(TYPED))
    return {**plan.rollout_patch(advanced), "effectiveWeight": rollout.effective_weight(stable, canary)}


def rolled_back() -> dict[str, Any]:
    """Step two fails its analysis twice (the default failureLimit tolerates one), then the stable version is
    back at full size and the canary is removed."""
    r = api.RolloutStatus.model_validate(canary_at_step_two())
    r = rollout.plan(r, TYPED, 4, settled(r, TYPED), T0 + 65).rollout
    for at in (T0 + 130, T0 + 195):
        r = rollout.plan(r, TYPED, 4, settled(r, TYPED, verdict="Fail", measurements=FAIL), at).rollout
    assert r.phase == "RollingBack"
    back = rollout.World(stable=rollout.Track(4, 4, True, "3", True), canary=rollout.Track(1, 1, True, "4", True))
    return plan.rollout_patch(rollout.plan(r, TYPED, 4, back, T0 + 200).rollout)


def unresolved_status(reason: str, message: str, invalid: bool = False, generation: int = 2) -> dict[str, Any]:
    """What the planner writes when nothing is pinned yet (``plan.unresolved``, keep=False): an unreachable
    registry is in progress; a model MLflow does not have, an unusable Secret or a spec that does not parse
    (``invalid``) is stalled."""
    why = plan.Unresolved(reason, message, stalled=invalid or reason != "RegistryUnavailable", invalid=invalid)
    return plan.unresolved({"observedGeneration": 0}, None, generation, NOW, why, keep=False).status


# ----------------------------------------------------------------------------- ModelVersion


def test_model_version_ready_is_healthy() -> None:
    status, message = health(MV_HEALTH, model_version(ready_status()))
    assert status == "Healthy"
    assert message == "Serving iris version 3: 4/4 replicas serve the model"


def test_model_version_still_serving_while_the_registry_is_down_is_healthy_with_a_note() -> None:
    s = ready_status()
    s["conditions"] = plan.set_condition(s["conditions"], "Resolved", "False", "RegistryUnavailable",
                                         "MLflow at http://mlflow:5000 is unreachable", 2, NOW)
    status, message = health(MV_HEALTH, model_version(s))
    assert status == "Healthy"
    assert message.endswith("(registry: MLflow at http://mlflow:5000 is unreachable)")


def test_model_version_rolling_out_its_deployment_is_progressing() -> None:
    status, message = health(MV_HEALTH, model_version(ready_status(deployment=_deployment(4, 1))))
    assert (status, message) == ("Progressing", "rolling out: 4/4 replicas updated, 1 available, 4 running")


def test_model_version_with_a_canary_in_progress_reports_step_and_weight() -> None:
    s = with_rollout(ready_status(), canary_at_step_two())
    assert s["phase"] == "Progressing"
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in s["conditions"])  # stable still serves
    status, message = health(MV_HEALTH, model_version(s))
    assert status == "Progressing"
    assert message == "Canary rollout: canary version 4 against stable 3 at 25%, step 2 of 4"


def test_model_version_paused_canary_is_suspended() -> None:
    at_two = api.RolloutStatus.model_validate(canary_at_step_two())
    paused = rollout.plan(at_two, TYPED, 4, settled(at_two, TYPED, action="pause"), T0 + 70).rollout
    assert paused.phase == "Paused"
    status, message = health(MV_HEALTH, model_version(with_rollout(ready_status(), plan.rollout_patch(paused))))
    assert status == "Suspended"
    assert message.startswith("Canary rollout paused: canary version 4 against stable 3 at 25%, step 2 of 4")


def test_model_version_rolled_back_is_degraded_with_the_reason() -> None:
    rolled = rolled_back()
    assert rolled["phase"] == "RolledBack"
    s = with_rollout(ready_status(), rolled)
    assert s["phase"] == "RolledBack"
    status, message = health(MV_HEALTH, model_version(s))
    assert status == "Degraded"
    assert message.startswith("Rolled back version 4 (version 3 keeps serving): analysis failed: error-rate=0.31")


def test_model_version_after_the_spec_moved_past_a_rejected_version_is_healthy_again() -> None:
    rolled = rolled_back()
    s = with_rollout(ready_status(), {**rolled, "phase": "Superseded"})
    assert health(MV_HEALTH, model_version(s))[0] == "Healthy"
    # The rejected version became the stable one (e.g. the spec pinned it on purpose): rollout_phase says Ready.
    stable_is_rejected = ready_status()
    stable_is_rejected["model"]["version"] = "4"
    s = with_rollout(stable_is_rejected, rolled)
    assert s["phase"] == "Ready"
    assert health(MV_HEALTH, model_version(s))[0] == "Healthy"


def test_model_version_whose_model_is_not_found_is_degraded() -> None:
    """Someone has to register the version or fix the spec (the operator still retries in the background): a
    sync reports it at once instead of waiting for a Progressing that never ends."""
    s = unresolved_status("ModelNotFound", "registered model 'iris' has no alias 'champion'")
    assert health(MV_HEALTH, model_version(s)) == ("Degraded", "registered model 'iris' has no alias 'champion'")


def test_model_version_waiting_for_the_registry_is_progressing() -> None:
    s = unresolved_status("RegistryUnavailable", "MLflow at http://mlflow:5000 is unreachable")
    assert health(MV_HEALTH, model_version(s)) == ("Progressing", "MLflow at http://mlflow:5000 is unreachable")


def test_model_version_whose_spec_cannot_be_read_is_degraded() -> None:
    s = unresolved_status("SpecError", "spec.rollout.steps[0]: Input should be less than or equal to 100",
                          invalid=True)
    assert health(MV_HEALTH, model_version(s)) == ("Degraded",
                                                   "spec.rollout.steps[0]: Input should be less than or equal to 100")


def test_model_version_stalled_deployment_is_degraded() -> None:
    s = ready_status(deployment=_deployment(4, 0, progressing="ProgressDeadlineExceeded"))
    assert s["phase"] == "Failed"  # nothing serves
    status, message = health(MV_HEALTH, model_version(s))
    assert status == "Degraded" and "ProgressDeadlineExceeded" in message
    s = ready_status(deployment=_deployment(4, 2, progressing="ProgressDeadlineExceeded"))
    assert s["phase"] == "Degraded"  # half of it serves
    status, message = health(MV_HEALTH, model_version(s))
    assert status == "Degraded" and "ProgressDeadlineExceeded" in message


def test_model_version_with_a_stale_generation_is_progressing_whatever_the_status_says() -> None:
    obj = model_version(ready_status(generation=2), generation=3)
    status, message = health(MV_HEALTH, obj)
    assert status == "Progressing"
    assert message == "Waiting for the operator to observe generation 3 (status describes generation 2)"


def test_model_version_without_status_is_progressing() -> None:
    assert health(MV_HEALTH, model_version(None))[0] == "Progressing"


# ----------------------------------------------------------------------------- ABTest


VARIANTS = [abtest.Variant("control", "iris-a", 50, False), abtest.Variant("challenger", "iris-b", 50, False)]


def ab_test(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ABTest",
                           "metadata": {"name": "iris-ab", "namespace": "models", "generation": generation},
                           "spec": {"variants": [{"name": v.name, "modelVersion": v.model_version,
                                                  "weight": v.weight} for v in VARIANTS]}}
    if status is not None:
        obj["status"] = status
    return obj


def ab_status(ready: str, reason: str, message: str, *, winner: str = "", phase: str = "Running",
              limited: str = "", stalled: bool = False) -> dict[str, Any]:
    """An ABTest's status as its reconcile writes it (conditions through the operator's own
    ``plan.readiness_conditions``, split text, winner, phase)."""
    conditions = plan.readiness_conditions([], ready == "True", reason, message, 1, NOW, stalled=stalled)
    conditions = plan.set_condition(conditions, "RoutingLimited", "True" if limited else "False",
                                    "Unsupported" if limited else "None",
                                    limited or "all requested routing features are applied", 1, NOW)
    status: dict[str, Any] = {"conditions": conditions, "observedGeneration": 1, "phase": phase,
                              "split": abtest.split_text(VARIANTS, {"control": 50, "challenger": 50}),
                              "variants": [{"name": v.name, "modelVersion": v.model_version, "weight": 50,
                                            "replicas": 2, "requests": 1200} for v in VARIANTS]}
    if winner:
        status["winner"] = winner
    return status


def test_abtest_ready_is_healthy_with_split_and_winner() -> None:
    ready = ab_status("True", "Routing", "replicas routing applied: control=50,challenger=50")
    assert health(AB_HEALTH, ab_test(ready)) == ("Healthy", "Split control=50,challenger=50")
    status, message = health(AB_HEALTH, ab_test(ab_status("True", "Routing", "ok", winner="challenger",
                                                          phase="Concluded")))
    assert (status, message) == ("Healthy", "Split control=50,challenger=50; winner: challenger")


def test_abtest_with_limited_routing_is_healthy_and_says_so() -> None:
    limited = "replica-ratio routing cannot honour headerPinning; name a Gateway in spec.routing.gatewayRef"
    status, message = health(AB_HEALTH, ab_test(ab_status("True", "Routing", "ok", limited=limited)))
    assert status == "Healthy" and message.endswith(f"(limited: {limited})")


def test_abtest_missing_model_version_is_degraded() -> None:
    msg = "ModelVersion(s) not found in models: iris-b"
    s = ab_status("False", "ModelVersionMissing", msg, phase="Pending")
    assert health(AB_HEALTH, ab_test(s)) == ("Degraded", msg)


def test_abtest_routing_failure_is_degraded() -> None:
    msg = 'httproutes.gateway.networking.k8s.io "iris-ab" is forbidden'
    assert health(AB_HEALTH, ab_test(ab_status("False", "RoutingFailed", msg))) == ("Degraded", msg)


def test_abtest_that_someone_must_fix_is_degraded() -> None:
    """``Stalled=True``: a spec that does not parse (which the reason-based rule read as Progressing), or a route
    the API refused."""
    msg = "spec.variants[0].weight: Input should be less than or equal to 100"
    s = ab_status("False", "SpecError", msg, phase="Failed", stalled=True)
    assert health(AB_HEALTH, ab_test(s)) == ("Degraded", msg)


def test_abtest_waiting_for_variants_is_progressing() -> None:
    s = ab_status("False", "VariantsNotReady", "waiting for every variant's ModelVersion to be Ready", phase="Pending")
    assert health(AB_HEALTH, ab_test(s)) == ("Progressing", "waiting for every variant's ModelVersion to be Ready")
    assert health(AB_HEALTH, ab_test(None))[0] == "Progressing"
    assert health(AB_HEALTH, ab_test(ab_status("True", "Routing", "ok"), generation=2))[0] == "Progressing"


# ----------------------------------------------------------------------------- docs stay in sync


def test_the_documented_argocd_cm_snippet_carries_the_same_scripts() -> None:
    snippet = yaml.safe_load((CHECKS / "argocd-cm.yaml").read_text())
    data = snippet["data"]
    assert data["resource.customizations.health.modelpilot.io_ModelVersion"] == MV_HEALTH.read_text()
    assert data["resource.customizations.health.modelpilot.io_ABTest"] == AB_HEALTH.read_text()


@pytest.mark.parametrize("script", [MV_HEALTH, AB_HEALTH], ids=["ModelVersion", "ABTest"])
def test_scripts_avoid_lua_5_3_only_syntax(script: Path) -> None:
    """Argo CD runs gopher-lua (Lua 5.1): no integer division, bit operators or goto."""
    code = "\n".join(line.split("--", 1)[0] for line in script.read_text().splitlines())
    for token in ("//", "goto ", "<<", ">>", " & ", " | ", "~ ", "math.tointeger", "utf8."):
        assert token not in code, f"{script.name} uses {token.strip()!r}, which Lua 5.1 lacks"
