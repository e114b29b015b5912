"""Guarded canary rollout of a ModelVersion: a pure planner whose whole state lives in ``status.rollout``.

Reconcile-level logic, no I/O. ``plan()`` takes the rollout status, the typed spec
(``api.ModelVersionSpec``, read through ``settings``),
the observed world (both tracks' Deployments, the canary pods' health, a
pending manual action, an analysis round if one was due) and the time, and
returns the next rollout status, the replicas each track must have *now* and
the decision. Same inputs, same decision: a restarted operator resumes at the
same step, and whatever ticks it missed, the next one converges.

Phases: ``Progressing`` → (``Paused``) → ``Promoting`` → ``Promoted``, or
→ ``RollingBack`` → ``RolledBack`` / ``Cancelled``. The two finishing phases
exist so that no capacity hole ever opens: the surviving version is first
made ready at full size, only then is the other one removed.

Rules (each is a public failure report of a peer, see docs/rollouts.md):

* **surge first**: moving between steps, the track that grows is scaled and
  made ready before the track that shrinks is scaled down;
* **a step is judged on its own samples**: its clock (``stepStartedAt``) starts
  when its replicas are in place and ready, and analysis queries only the time
  since then (``analysis_window``);
* **pod health is a built-in check**: a canary container restart or a
  readiness change during a step fails it at once, named in the reason;
* relative checks at a step where the stable track serves no traffic (100 %)
  compare with the baseline measured at the previous step (``baselines``);
* **every rollout starts with a clean record**: fields of the previous one are
  cleared (``start`` returns every key, absent ones as ``None``).

Traffic without a Gateway is split by replica ratio: the Service selects the
pods of both tracks, so the canary's share is ``canary / (stable + canary)``.
``replica_targets`` picks counts within ±5 points of each step, temporarily
adding replicas up to ``spec.rollout.maxSurge``, and says when it cannot.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from modelpilot.operator import api, contract

#: Manual actions: ``<action>`` or ``<action>/<version>`` (promote, abort, pause, resume, undo), acted on once
#: (``contract.parse_action``).
ACTION_ANNOTATION = contract.ACTION_ANNOTATION
#: Bounds of what a rollout status keeps (the CRD's ``maxItems`` / ``maxLength`` of ``status.rollout``).
HISTORY_LIMIT = api.HISTORY_LIMIT
MEASUREMENT_LIMIT = api.MEASUREMENT_LIMIT
#: Phases in which the operator is still moving traffic or pods.
ACTIVE = ("Progressing", "Paused", "Promoting", "RollingBack")
#: Phases in which steps are taken (manual actions apply).
STEPPING = ("Progressing", "Paused")
#: How far (percentage points) the effective weight may be from the step's weight.
WEIGHT_TOLERANCE = 5.0
#: Container restarts of the canary tolerated while a step's pods come up; more roll back at once.
RESTARTS_WHILE_STARTING = 2
#: Seconds between moving all Gateway traffic off the canary and deleting it: the Gateway must have applied
#: the route first (Gateway API gives no "programmed" signal per route weight).
ROUTE_GRACE_SECONDS = 5.0
#: Every key a rollout status may carry: ``start`` sets the ones it does not use to None, so a merge
#: patch of status clears what the previous rollout left.
FIELDS = ("phase", "kind", "stableVersion", "canaryVersion", "canaryModel", "step", "weight", "effectiveWeight",
          "replicas", "weightWarning", "startedAt", "stepRequestedAt", "stepStartedAt", "canaryRestarts",
          "failures", "inconclusive", "analysis", "baselines", "history", "reason", "rejectedVersion",
          "finishedAt", "finalPhase", "canaryProblem", "shadow", "routeWeight", "routeSwitchedAt")


@dataclass(frozen=True)
class Track:
    """One track's Deployment as observed: ``replicas`` asked for, ``ready`` of the current template,
    ``settled`` when every replica runs the current template and is available, ``version`` its model."""

    replicas: int = 0
    ready: int = 0
    settled: bool = True
    version: str = ""
    exists: bool = False


@dataclass(frozen=True)
class Health:
    """The canary pods' health: total container restarts, pods not ready, the latest change of any pod's
    Ready condition (epoch seconds) and what the pods say is wrong (diagnosis), if anything."""

    restarts: int = 0
    not_ready: tuple[str, ...] = ()
    last_ready_change: float | None = None
    problem: str = ""


@dataclass(frozen=True)
class World:
    """Everything observed for one tick of the planner."""

    stable: Track
    canary: Track
    health: Health = field(default_factory=Health)
    action: str = ""
    verdict: str | None = None
    measurements: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Decision:
    """What the reconciler must do now.

    ``stable_replicas`` / ``canary_replicas``: replicas to apply to each track (``canary_replicas`` None:
    delete the canary Deployment); ``stable_model``: ``"stable"`` or ``"canary"`` — which version the stable
    Deployment runs; ``action`` names the transition (an Event is posted for all but Wait and None).
    """

    action: str  # Start | Wait | Advance | Promote | Promoted | RollBack | RolledBack | Pause | None
    rollout: dict[str, Any]
    message: str = ""
    stable_replicas: int | None = None
    canary_replicas: int | None = None
    stable_model: str = "stable"
    warning: str = ""
    #: Gateway provider: the canary's weight in the HTTPRoute now (0-100) and whether live traffic is mirrored
    #: to it (the shadow phase); None with the replica-ratio provider.
    route_weight: int | None = None
    mirror: bool = False


def parse_time(value: str) -> float:
    return contract.parse_time(value)


def fmt_time(ts: float) -> str:
    return contract.format_time(ts)


def surge_limit(total: int, value: Any) -> int:
    """``spec.rollout.maxSurge`` (an integer or ``"N%"`` of ``total``, rounded up; default 100 %) in replicas."""
    if value is None:
        value = "100%"
    if isinstance(value, str) and value.endswith("%"):
        return max(0, math.ceil(total * int(value[:-1]) / 100))
    return max(0, int(value))


@dataclass(frozen=True)
class Settings:
    """What the planner reads of a spec, with every default applied (``settings``)."""

    steps: tuple[int, ...]
    interval: float  # spec.rollout.stepIntervalSeconds
    deadline: float  # spec.rollout.progressDeadlineSeconds
    analysis: bool  # spec.rollout.analysis.enabled
    failure_limit: int
    inconclusive_limit: int
    max_surge: int | str | None  # spec.rollout.maxSurge as given (None: 100 %, see surge_limit)
    gateway: bool  # spec.routing.gatewayRef: the route, not replica ratio, sets the weight
    shadow_seconds: float


#: What an absent ``spec.rollout`` / ``spec.rollout.analysis`` means: the model's (the CRD's) defaults.
_NO_ROLLOUT = api.Rollout()
_NO_ANALYSIS = api.Analysis()
#: The operator's own defaults, for fields the CRD leaves without one. Two failing rounds, not one, roll back:
#: one noisy p99 round against a freshly started pod is not a regression (an identical model was rolled back
#: with a limit of 0).
DEFAULT_FAILURE_LIMIT = 1
DEFAULT_INCONCLUSIVE_LIMIT = 3


def settings(spec: api.ModelVersionSpec) -> Settings:
    rollout = spec.rollout or _NO_ROLLOUT
    analysis = rollout.analysis or _NO_ANALYSIS
    return Settings(
        steps=tuple(rollout.steps),
        interval=float(rollout.step_interval_seconds),
        deadline=float(rollout.progress_deadline_seconds),
        analysis=analysis.enabled,
        failure_limit=DEFAULT_FAILURE_LIMIT if analysis.failure_limit is None else analysis.failure_limit,
        inconclusive_limit=(DEFAULT_INCONCLUSIVE_LIMIT if analysis.inconclusive_limit is None
                            else analysis.inconclusive_limit),
        max_surge=rollout.max_surge,
        gateway=spec.routing is not None,
        shadow_seconds=float(rollout.shadow_seconds or 0),
    )


def replica_targets(total: int, weight: int, max_surge: int) -> tuple[int, int, bool]:
    """(stable, canary, honoured) replicas for ``weight`` % by replica ratio, never fewer than ``total``
    pods in all and at most ``total + max_surge``: the fewest pods within ±5 points of the weight, else the
    closest split (``honoured`` False). The canary always has a replica and, below 100 %, so has stable —
    so with ``total`` 1 a step below 100 % runs 2 pods whatever ``max_surge`` says."""
    total = max(total, 1)
    if weight >= 100:
        return 0, total, True
    best: tuple[float, int, int, int] | None = None
    for pods in range(max(total, 2), max(total, 2) + max_surge + 1):
        canary = min(max(1, math.floor(pods * weight / 100 + 0.5)), pods - 1)
        error = abs(100 * canary / pods - weight)
        key = (0.0 if error <= WEIGHT_TOLERANCE else error, pods, pods - canary, canary)
        if best is None or key[:2] < best[:2]:
            best = key
    assert best is not None
    _, _, stable, canary = best
    return stable, canary, abs(100 * canary / (stable + canary) - weight) <= WEIGHT_TOLERANCE


def split(total: int, weight: int, max_surge: int = 0) -> tuple[int, int]:
    """(stable, canary) replicas approximating ``weight`` % for the canary (see ``replica_targets``)."""
    stable, canary, _ = replica_targets(total, weight, max_surge)
    return stable, canary


def effective_weight(stable: int, canary: int) -> int:
    return round(100 * canary / max(stable + canary, 1))


def _history(rollout: dict[str, Any], now: float, decision: str, message: str) -> list[dict[str, Any]]:
    entry = {"time": fmt_time(now), "step": rollout.get("step", 0), "weight": rollout.get("weight", 0),
             "effectiveWeight": rollout.get("effectiveWeight"), "decision": decision,
             "message": message[:api.HISTORY_MESSAGE_LIMIT]}
    return [*(rollout.get("history") or []), entry][-HISTORY_LIMIT:]


def start(stable: dict[str, Any], canary: dict[str, Any], spec: api.ModelVersionSpec, now: float,
          kind: str = "Canary", reason: str = "", rejected: str = "") -> Decision:
    """A new rollout with a clean record: every key of ``FIELDS`` it does not set is None.

    ``kind="Undo"`` brings ``canary`` (the previous version) back; ``rejected`` is the version the spec asks
    for (by default the serving one), which stays rejected until the spec or the alias moves on."""
    cfg = settings(spec)
    weight = 100 if kind == "Undo" else cfg.steps[0]
    rollout: dict[str, Any] = dict.fromkeys(FIELDS)
    rollout.update({"phase": "Progressing", "kind": kind, "stableVersion": stable["version"],
                    "canaryVersion": canary["version"], "canaryModel": canary, "step": 0, "weight": weight,
                    "startedAt": fmt_time(now), "stepRequestedAt": fmt_time(now), "failures": 0,
                    "inconclusive": 0, "analysis": [], "baselines": {}, "history": []})
    what = (f"undo: back to version {canary['version']} from {stable['version']}" if kind == "Undo" else
            f"canary {canary['version']} against stable {stable['version']} at {weight}%")
    if kind == "Undo":
        # The spec's version (``rejected``) stays rejected until the spec or the alias moves on — unless the
        # version brought back is the spec's own (an undo of an undo): then nothing is rejected.
        rollout.update(finalPhase="RolledBack" if rejected else "Promoted", rejectedVersion=rejected or None)
    elif cfg.gateway and cfg.shadow_seconds > 0:
        rollout.update(shadow=True)  # live traffic mirrored to the canary, analysed, never answered by it
        what += f", after a {cfg.shadow_seconds:.0f}s shadow phase"
    rollout["history"] = _history(rollout, now, "Start", f"{what}{': ' + reason if reason else ''}")
    message = (f"undo started: version {canary['version']} is brought back at full size, then takes the traffic"
               if kind == "Undo" else f"canary rollout of version {canary['version']} started at {weight}%")
    return Decision("Start", rollout, message)


def _step_started(r: dict[str, Any]) -> float | None:
    value = r.get("stepStartedAt")
    return parse_time(value) if value else None


def _step_requested(r: dict[str, Any]) -> float:
    return parse_time(r.get("stepRequestedAt") or r.get("stepStartedAt") or r["startedAt"])


def targets(r: dict[str, Any], total: int, cfg: Settings) -> tuple[int, int, bool]:
    """Replicas (stable, canary) the current step asks for, and whether they honour its weight.

    With a Gateway the route sets the weight exactly: stable keeps ``total`` replicas throughout and the
    canary gets its share of them (at least one), so either can take all the traffic at any moment."""
    weight = int(r.get("weight") or 0)
    if cfg.gateway:
        return total, total if weight >= 100 else max(1, math.ceil(total * weight / 100)), True
    return replica_targets(total, weight, surge_limit(total, cfg.max_surge))


def _settled(r: dict[str, Any], world: World, stable: int, canary: int) -> bool:
    """Both tracks at these replicas, every one ready, each running its rollout's version: a canary
    Deployment still running a superseded canary version (the spec moved on mid-rollout) is not in place."""
    s, c = world.stable, world.canary
    versions = ((not s.version or s.version == str(r.get("stableVersion")))
                and (not c.version or c.version == str(r.get("canaryVersion"))))
    return (versions and s.replicas == stable and c.replicas == canary and c.exists and s.settled and c.settled
            and s.ready >= stable and c.ready >= canary)


def analysis_window(r: dict[str, Any], spec: api.ModelVersionSpec, world: World, total: int, now: float) -> int | None:
    """Seconds of this step's samples to analyse now, or None when no round is due (the step's replicas
    are not in place yet, its interval has not passed, analysis is off, or the rollout is not stepping)."""
    cfg = settings(spec)
    if r.get("phase") != "Progressing" or not cfg.analysis or world.action or r.get("kind") == "Undo":
        return None
    started = _step_started(r)
    if started is None or not _settled(r, world, *targets(r, total, cfg)[:2]):
        return None
    elapsed = now - started
    if elapsed < (cfg.shadow_seconds if r.get("shadow") else cfg.interval):
        return None
    return max(int(elapsed), 1)


def plan(rollout: dict[str, Any], spec: api.ModelVersionSpec, total: int, world: World, now: float) -> Decision:
    """One tick of the rollout: the next status, the replicas of each track now, and the decision.

    ``total`` is the replicas the ModelVersion serves with (``spec.replicas`` or its ABTest's share).
    """
    cfg = settings(spec)
    r = dict(rollout)
    if r.get("kind") == "Undo":  # back to a version that served before: no steps, no hold, no analysis
        cfg = dataclasses.replace(cfg, steps=(100,), interval=0.0, analysis=False)
    phase = r.get("phase")
    if phase == "Promoting":
        return _finish(cfg, r, world, total, now, promote=True)
    if phase == "RollingBack":
        return _finish(cfg, r, world, total, now, promote=False)
    if phase not in STEPPING:
        return Decision("None", r)
    # Manual control wins over everything else.
    if world.action == "abort":
        return _roll_back(cfg, r, world, total, now, "aborted by the user")
    if world.action == "promote":
        return _promote(cfg, r, world, total, now, "promoted by the user")
    stable, canary, honoured = targets(r, total, cfg)
    if world.action == "pause" and phase != "Paused":
        r["phase"] = "Paused"
        r["history"] = _history(r, now, "Pause", "paused by the user")
        return _hold(cfg, r, world, stable, canary, "Pause", "paused by the user")
    if world.action == "resume" and phase == "Paused":
        r.update(phase="Progressing", stepRequestedAt=fmt_time(now), stepStartedAt=None, inconclusive=0)
        r["history"] = _history(r, now, "Resume", "resumed by the user")
        return _hold(cfg, r, world, stable, canary, "Wait", "resumed by the user")
    if r["phase"] == "Paused":
        return _hold(cfg, r, world, stable, canary, "Wait", "paused")

    warning = ""
    r["weightWarning"] = None
    if not honoured:
        r["weightWarning"] = (f"step {r['step'] + 1} asks for {r['weight']}% but {stable} stable + {canary} canary "
                              f"replicas give {effective_weight(stable, canary)}%: within "
                              f"maxSurge={'100%' if cfg.max_surge is None else cfg.max_surge} no split is within ±{WEIGHT_TOLERANCE:.0f} "
                              "points (raise maxSurge or replicas, or route with a Gateway)")
        if rollout.get("weightWarning") != r["weightWarning"]:
            warning = r["weightWarning"]
    started = _step_started(r)
    if not _settled(r, world, stable, canary):
        # The step's replicas are not in place (or a pod left): its clock has not started.
        r["stepStartedAt"] = None
        restarts = world.health.restarts - int(r.get("canaryRestarts") or 0)
        if started is not None and (restarts > 0 or world.health.not_ready):
            return _roll_back(cfg, r, world, total, now, _health_failure(r, world, restarts))
        if r.get("canaryRestarts") is None:
            r["canaryRestarts"] = world.health.restarts
        elif restarts > RESTARTS_WHILE_STARTING:
            return _roll_back(cfg, r, world, total, now, _health_failure(r, world, restarts))
        if now - _step_requested(r) > cfg.deadline:
            why = (f"the canary's replicas for step {r['step'] + 1} ({r['weight']}%) were not ready within "
                   f"progressDeadlineSeconds={cfg.deadline:.0f}")
            return _roll_back(cfg, r, world, total, now, f"{why}: {world.health.problem}" if world.health.problem else why)
        return _hold(cfg, r, world, stable, canary, "Wait", f"step {r['step'] + 1}: waiting for {stable} stable + {canary} "
                     "canary replicas to be ready", warning)
    if started is None:
        # Not before the last pod became ready (seconds resolution): that change belongs to the transition.
        r["stepStartedAt"] = fmt_time(max(now, world.health.last_ready_change or 0.0))
        r["canaryRestarts"] = world.health.restarts
        return _hold(cfg, r, world, stable, canary, "Wait", f"step {r['step'] + 1} at {r['weight']}% is in place", warning)
    restarts = world.health.restarts - int(r.get("canaryRestarts") or 0)
    flapped = world.health.last_ready_change is not None and world.health.last_ready_change > started
    if restarts > 0 or flapped:
        return _roll_back(cfg, r, world, total, now, _health_failure(r, world, restarts))
    interval = cfg.shadow_seconds if r.get("shadow") else cfg.interval
    if now - started < interval:
        where = "the shadow phase" if r.get("shadow") else f"step {r['step'] + 1} ({r['weight']}%)"
        return _hold(cfg, r, world, stable, canary, "Wait", f"holding {where}", warning)
    verdict = "Pass" if not cfg.analysis else world.verdict
    measurements = world.measurements or []
    if world.measurements is not None:
        r["analysis"] = world.measurements[:MEASUREMENT_LIMIT]
    if verdict is None:
        return _hold(cfg, r, world, stable, canary, "Wait", "waiting for analysis", warning)
    if verdict == "Fail":
        r["failures"] = int(r.get("failures") or 0) + 1
        if r["failures"] > cfg.failure_limit:
            return _roll_back(cfg, r, world, total, now, "analysis failed: " + _evidence(measurements))
        r["history"] = _history(r, now, "Fail", f"analysis failed ({r['failures']} of failureLimit "
                                f"{cfg.failure_limit} tolerated): " + _evidence(measurements))
        r["stepStartedAt"] = fmt_time(now)  # the next round is judged on fresh samples
        return _hold(cfg, r, world, stable, canary, "Wait", "analysis failed; within failureLimit", warning)
    if verdict == "Hold":
        if now - _step_requested(r) > cfg.deadline:
            return _roll_back(cfg, r, world, total, now, "no data before progressDeadlineSeconds: " + _evidence(measurements))
        return _hold(cfg, r, world, stable, canary, "Wait", "holding: not enough data yet", warning)
    if verdict == "Inconclusive":
        r["inconclusive"] = int(r.get("inconclusive") or 0) + 1
        if r["inconclusive"] > cfg.inconclusive_limit:
            r["phase"] = "Paused"
            msg = "paused after too many inconclusive analyses; promote or abort"
            r["history"] = _history(r, now, "Pause", msg + ": " + _evidence(measurements))
            return _hold(cfg, r, world, stable, canary, "Pause", msg)
        r["stepStartedAt"] = fmt_time(now)
        return _hold(cfg, r, world, stable, canary, "Wait", "analysis inconclusive", warning)
    # Pass: remember the baselines (the 100 % step compares with them), then the next step or promotion.
    baselines = dict(r.get("baselines") or {})
    baselines.update({m["check"]: m["baseline"] for m in measurements
                      if m.get("baseline") is not None and not m.get("storedBaseline")})
    r["baselines"] = baselines
    steps = cfg.steps
    if r.get("shadow"):  # the canary answered mirrored traffic well: now real traffic, at the first step
        r["history"] = _history(r, now, "Pass", "shadow phase passed: " + (_evidence(measurements) or "passed"))
        r.update(shadow=False, stepRequestedAt=fmt_time(now), stepStartedAt=None, failures=0, inconclusive=0,
                 canaryRestarts=world.health.restarts)
        return _hold(cfg, r, world, stable, canary, "Advance", f"shadow phase passed; canary weight {r['weight']}%")
    if r["step"] + 1 >= len(steps) or r["weight"] >= 100:
        why = ("the previous version is ready at full size" if r.get("kind") == "Undo" else
               "every step passed analysis" if cfg.analysis else
               "every step held its interval with healthy pods (analysis disabled)")
        return _promote(cfg, r, world, total, now, why)
    held = "held its interval with healthy pods (analysis disabled)"
    r["history"] = _history(r, now, "Pass", (_evidence(measurements) or "passed") if cfg.analysis else held)
    why = "analysis passed" if cfg.analysis else f"step {r['step'] + 1} {held}"
    r.update(step=r["step"] + 1, weight=steps[r["step"] + 1], stepRequestedAt=fmt_time(now), stepStartedAt=None,
             failures=0, inconclusive=0, canaryRestarts=world.health.restarts)
    stable, canary, _ = targets(r, total, cfg)
    return _hold(cfg, r, world, stable, canary, "Advance", f"{why}; canary weight {r['weight']}%")


def _health_failure(r: dict[str, Any], world: World, restarts: int) -> str:
    h = world.health
    if restarts > 0:
        what = f"canary containers restarted {restarts} time{'s' if restarts != 1 else ''} during step {r['step'] + 1}"
    elif h.not_ready:
        what = f"canary pod {', '.join(h.not_ready[:3])} stopped being ready during step {r['step'] + 1}"
    else:
        what = f"a canary pod's readiness changed during step {r['step'] + 1}"
    message = what + (f": {h.problem}" if h.problem else "")
    check: dict[str, Any] = {"check": "pod-health", "verdict": "Fail", "value": float(restarts), "baseline": 0.0,
                             "threshold": "no restart and no readiness change during a step", "samples": None,
                             "query": "", "message": message}
    r["analysis"] = [check, *[m for m in r.get("analysis") or [] if m.get("check") != "pod-health"]][:MEASUREMENT_LIMIT]
    return "pod-health: " + message


def _hold(cfg: Settings, r: dict[str, Any], world: World, stable: int, canary: int, action: str,
          message: str, warning: str = "") -> Decision:
    """Move towards (stable, canary) replicas, surge first: the growing track is scaled and ready before the
    shrinking one is scaled down, so the ready pods never drop below what either end state has. With a
    Gateway, the route gives the canary its step's weight only once the step's canary replicas are ready
    (until then it keeps the weight it had), and in the shadow phase mirrors live traffic to it."""
    s, c = world.stable, world.canary
    canary_now = canary if canary >= c.replicas or (s.settled and s.ready >= stable and s.replicas >= stable) \
        else c.replicas
    stable_now = stable if stable >= s.replicas or (c.exists and c.settled and c.ready >= canary
                                                     and c.replicas >= canary) else s.replicas
    r["replicas"] = {"stable": stable_now, "canary": canary_now}
    if not cfg.gateway:
        r["effectiveWeight"] = effective_weight(min(s.ready, stable_now), min(c.ready, canary_now)) \
            if (s.ready or c.ready) else effective_weight(stable_now, canary_now)
        return Decision(action, r, message, stable_replicas=stable_now, canary_replicas=canary_now, warning=warning)
    if r.get("shadow"):
        route = 0
    elif _settled(r, world, stable, canary):
        route = int(r.get("weight") or 0)
    else:
        route = int(r.get("routeWeight") or 0) if c.ready > 0 else 0
    r["routeWeight"] = route
    r["effectiveWeight"] = route
    return Decision(action, r, message, stable_replicas=stable_now, canary_replicas=canary_now, warning=warning,
                    route_weight=route, mirror=bool(r.get("shadow")) and c.ready > 0)


def _evidence(measurements: list[dict[str, Any]]) -> str:
    return "; ".join(f"{m['check']}={m['value'] if m['value'] is not None else 'n/a'} "
                     f"({m['verdict']}: {m['message']})" for m in measurements)


def _roll_back(cfg: Settings, r: dict[str, Any], world: World, total: int, now: float, why: str,
               final: str = "RolledBack") -> Decision:
    """Enter ``RollingBack``: the stable version at full size first; the canary stays until it is ready."""
    r.update(phase="RollingBack", finalPhase=final, reason=why[:api.REASON_LIMIT], stepStartedAt=None,
             shadow=None)
    if final == "RolledBack":
        r["rejectedVersion"] = r["canaryVersion"]
    r["history"] = _history(r, now, "RollBack" if final == "RolledBack" else "Cancel", why)
    verb = "rolling back" if final == "RolledBack" else "cancelling"
    d = _finish(cfg, r, world, total, now, promote=False, entering=True)
    return dataclasses.replace(d, action="RollBack" if final == "RolledBack" else "Cancel",
                               message=f"{verb} version {r['canaryVersion']}: {why}")


def cancel(rollout: dict[str, Any], spec: api.ModelVersionSpec, world: World, total: int, now: float,
           why: str) -> Decision:
    """The spec no longer asks for the canary version: back to stable without a capacity hole."""
    return _roll_back(settings(spec), dict(rollout), world, total, now, why, final="Cancelled")


def promote_now(rollout: dict[str, Any], spec: api.ModelVersionSpec, world: World, total: int, now: float,
                why: str) -> Decision:
    """Finish an active rollout by promotion (e.g. ``spec.rollout`` was removed mid-rollout)."""
    return _promote(settings(spec), dict(rollout), world, total, now, why)


def _promote(cfg: Settings, r: dict[str, Any], world: World, total: int, now: float, why: str) -> Decision:
    """Enter ``Promoting``: the stable Deployment runs the canary version at full size before the canary goes."""
    undo_final = "RolledBack" if r.get("rejectedVersion") else "Promoted"
    r.update(phase="Promoting", finalPhase=undo_final if r.get("kind") == "Undo" else "Promoted", reason=why[:api.REASON_LIMIT],
             stepStartedAt=None, shadow=None)
    r["history"] = _history(r, now, "Promote", why)
    d = _finish(cfg, r, world, total, now, promote=True, entering=True)
    return dataclasses.replace(d, action="Promote", message=f"promoting version {r['canaryVersion']}: {why}")


def _finish(cfg: Settings, r: dict[str, Any], world: World, total: int, now: float, promote: bool,
            entering: bool = False) -> Decision:
    """Promoting / RollingBack: the surviving version on the stable Deployment at ``total`` replicas; once it
    runs that version and every replica is ready, traffic moves to it (with a Gateway: the route sends it
    everything, and the Gateway gets ``ROUTE_GRACE_SECONDS`` to apply that), then the canary Deployment is
    deleted and the phase is final."""
    survivor = r["canaryVersion"] if promote else r["stableVersion"]
    s = world.stable
    ready = (not entering and s.version == survivor and s.replicas == total and s.settled and s.ready >= total)
    which = "canary" if promote else "stable"
    canary_now = world.canary.replicas if world.canary.exists else None
    route = int(r.get("routeWeight") or 0) if cfg.gateway else None
    if not ready:
        r["replicas"] = {"stable": total, "canary": world.canary.replicas}
        what = "promoting" if promote else "rolling back"
        return Decision("Wait", r, f"{what}: waiting for version {survivor} at {total} ready replicas "
                        f"({s.ready if s.version == survivor else 0} now) before removing the other",
                        stable_replicas=total, canary_replicas=canary_now, stable_model=which, route_weight=route)
    if cfg.gateway and canary_now is not None:
        switched = r.get("routeSwitchedAt")
        if route or not switched:
            r.update(routeWeight=0, effectiveWeight=100 if promote else 0, routeSwitchedAt=fmt_time(now))
            return Decision("Wait", r, f"version {survivor} is ready at {total} replicas: the route sends it all "
                            "traffic; the canary goes once the Gateway applied it", stable_replicas=total,
                            canary_replicas=canary_now, stable_model=which, route_weight=0)
        if now - parse_time(switched) < ROUTE_GRACE_SECONDS:
            return Decision("Wait", r, "waiting for the Gateway to apply the route", stable_replicas=total,
                            canary_replicas=canary_now, stable_model=which, route_weight=0)
    final = r.get("finalPhase") or ("Promoted" if promote else "RolledBack")
    r.update(phase=final, finishedAt=fmt_time(now), replicas={"stable": total, "canary": 0},
             effectiveWeight=100 if promote else 0, weightWarning=None)
    if cfg.gateway:
        r["routeWeight"] = 0
    done = {"Promoted": f"promoted version {survivor}: it serves every request at {total} replicas",
            "RolledBack": f"rolled back to version {survivor}: it serves every request at {total} replicas"
            if not promote else f"undone: version {survivor} serves every request again at {total} replicas, "
            f"version {r.get('rejectedVersion')} is rejected until the spec moves on",
            "Cancelled": f"rollout of version {r['canaryVersion']} cancelled; version {survivor} serves"}[final]
    r["history"] = _history(r, now, final, done)
    return Decision(final, r, done, stable_replicas=total, canary_replicas=None, stable_model=which,
                    route_weight=0 if cfg.gateway else None)
