"""Guarded canary rollout of a ModelVersion: a pure planner whose whole state lives in ``status.rollout``.

Reconcile-level logic, no I/O. ``plan()`` takes the rollout status (``api.RolloutStatus``), the typed
spec (``api.ModelVersionSpec``, read through ``settings``),
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
  cleared (``start`` sets every field of ``FIELDS``, unused ones to ``None``).

The state is the typed ``api.RolloutStatus``, the model of the CRD's ``status.rollout``: the reconciler parses
it once where a body enters and serializes it once where status is written (``reconcile.rollout_status`` /
``rollout_patch``). A pydantic model rather than a frozen dataclass because it *is* the CRD's schema (checked
by ``test_api_contract``) and because it tracks which fields are set: under a JSON merge patch a field written
as null is removed and a field left out is kept, and ``exclude_unset`` keeps exactly that distinction. The
functions here never change the status they are given: ``plan``, ``cancel`` and ``promote_now`` work on a
shallow copy (every nested value is replaced, never changed in place) and the decision carries it.

Traffic without a Gateway is split by replica ratio: the Service selects the
pods of both tracks, so the canary's share is ``canary / (stable + canary)``.
``replica_targets`` picks counts within ±5 points of each step, temporarily
adding replicas up to ``spec.rollout.maxSurge``, and says when it cannot.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from modelpilot.operator import api, contract

#: Manual actions: ``<action>`` or ``<action>/<version>`` (promote, abort, pause, resume, undo), acted on once
#: (``contract.parse_action``).
ACTION_ANNOTATION = contract.ACTION_ANNOTATION
#: Bounds of what a rollout status keeps (the CRD's ``maxItems`` / ``maxLength`` of ``status.rollout``).
HISTORY_LIMIT = api.HISTORY_LIMIT
MEASUREMENT_LIMIT = api.MEASUREMENT_LIMIT
_P = api.RolloutPhase
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
#: Every field (by its status name) ``start`` sets, the ones it does not use to None, so a merge patch of
#: status clears what the previous rollout left (``handledAction`` is carried over by the reconciler).
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
    rollout: api.RolloutStatus
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


def _at(ts: float) -> datetime:
    """A time to record in the rollout status: whole seconds, as ``contract.TIME_FORMAT`` writes it, so a time
    read back after a restart is the one the planner decided on."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(microsecond=0)


def _history(rollout: api.RolloutStatus, now: float, decision: str, message: str) -> list[api.HistoryEntry]:
    entry = api.HistoryEntry(time=_at(now), step=rollout.step or 0, weight=rollout.weight or 0,
                             effective_weight=rollout.effective_weight, decision=decision,
                             message=message[:api.HISTORY_MESSAGE_LIMIT])
    return [*(rollout.history or []), entry][-HISTORY_LIMIT:]


#: ``FIELDS`` by their Python names (what ``start`` sets to None first).
_FIELD_NAMES = tuple(name for name, f in api.RolloutStatus.model_fields.items() if f.alias in FIELDS)


def start(stable: api.ModelStatus, canary: api.ModelStatus, spec: api.ModelVersionSpec, now: float,
          kind: str = "Canary", reason: str = "", rejected: str = "") -> Decision:
    """A new rollout with a clean record: every field of ``FIELDS`` it does not use is set to None.

    ``kind="Undo"`` brings ``canary`` (the previous version) back; ``rejected`` is the version the spec asks
    for (by default the serving one), which stays rejected until the spec or the alias moves on."""
    cfg = settings(spec)
    weight = 100 if kind == "Undo" else cfg.steps[0]
    rollout = api.RolloutStatus(**dict.fromkeys(_FIELD_NAMES))
    rollout.phase = api.RolloutPhase.PROGRESSING
    rollout.kind = api.RolloutKind(kind)
    rollout.stable_version, rollout.canary_version, rollout.canary_model = stable.version, canary.version, canary
    rollout.step, rollout.weight = 0, weight
    rollout.started_at = rollout.step_requested_at = _at(now)
    rollout.failures, rollout.inconclusive, rollout.analysis, rollout.baselines, rollout.history = 0, 0, [], {}, []
    what = (f"undo: back to version {canary.version} from {stable.version}" if kind == "Undo" else
            f"canary {canary.version} against stable {stable.version} at {weight}%")
    if kind == "Undo":
        # The spec's version (``rejected``) stays rejected until the spec or the alias moves on — unless the
        # version brought back is the spec's own (an undo of an undo): then nothing is rejected.
        rollout.final_phase = api.RolloutOutcome.ROLLED_BACK if rejected else api.RolloutOutcome.PROMOTED
        rollout.rejected_version = rejected or None
    elif cfg.gateway and cfg.shadow_seconds > 0:
        rollout.shadow = True  # live traffic mirrored to the canary, analysed, never answered by it
        what += f", after a {cfg.shadow_seconds:.0f}s shadow phase"
    rollout.history = _history(rollout, now, "Start", f"{what}{': ' + reason if reason else ''}")
    message = (f"undo started: version {canary.version} is brought back at full size, then takes the traffic"
               if kind == "Undo" else f"canary rollout of version {canary.version} started at {weight}%")
    return Decision("Start", rollout, message)


def _step_started(r: api.RolloutStatus) -> float | None:
    return r.step_started_at.timestamp() if r.step_started_at else None


def _step_requested(r: api.RolloutStatus) -> float:
    when = r.step_requested_at or r.step_started_at or r.started_at
    assert when is not None, "a rollout status without startedAt"
    return when.timestamp()


def targets(r: api.RolloutStatus, total: int, cfg: Settings) -> tuple[int, int, bool]:
    """Replicas (stable, canary) the current step asks for, and whether they honour its weight.

    With a Gateway the route sets the weight exactly: stable keeps ``total`` replicas throughout and the
    canary gets its share of them (at least one), so either can take all the traffic at any moment."""
    weight = r.weight or 0
    if cfg.gateway:
        return total, total if weight >= 100 else max(1, math.ceil(total * weight / 100)), True
    return replica_targets(total, weight, surge_limit(total, cfg.max_surge))


def _settled(r: api.RolloutStatus, world: World, stable: int, canary: int) -> bool:
    """Both tracks at these replicas, every one ready, each running its rollout's version: a canary
    Deployment still running a superseded canary version (the spec moved on mid-rollout) is not in place."""
    s, c = world.stable, world.canary
    versions = ((not s.version or s.version == str(r.stable_version))
                and (not c.version or c.version == str(r.canary_version)))
    return (versions and s.replicas == stable and c.replicas == canary and c.exists and s.settled and c.settled
            and s.ready >= stable and c.ready >= canary)


def analysis_window(r: api.RolloutStatus, spec: api.ModelVersionSpec, world: World, total: int,
                    now: float) -> int | None:
    """Seconds of this step's samples to analyse now, or None when no round is due (the step's replicas
    are not in place yet, its interval has not passed, analysis is off, or the rollout is not stepping)."""
    cfg = settings(spec)
    if r.phase != _P.PROGRESSING or not cfg.analysis or world.action or r.kind == api.RolloutKind.UNDO:
        return None
    started = _step_started(r)
    if started is None or not _settled(r, world, *targets(r, total, cfg)[:2]):
        return None
    elapsed = now - started
    if elapsed < (cfg.shadow_seconds if r.shadow else cfg.interval):
        return None
    return max(int(elapsed), 1)


def plan(rollout: api.RolloutStatus, spec: api.ModelVersionSpec, total: int, world: World, now: float) -> Decision:
    """One tick of the rollout: the next status, the replicas of each track now, and the decision.

    ``total`` is the replicas the ModelVersion serves with (``spec.replicas`` or its ABTest's share).
    ``rollout`` is not changed: the decision carries a copy.
    """
    cfg = settings(spec)
    r = rollout.model_copy()
    if r.kind == api.RolloutKind.UNDO:  # back to a version that served before: no steps, no hold, no analysis
        cfg = dataclasses.replace(cfg, steps=(100,), interval=0.0, analysis=False)
    phase = r.phase
    if phase == _P.PROMOTING:
        return _finish(cfg, r, world, total, now, promote=True)
    if phase == _P.ROLLING_BACK:
        return _finish(cfg, r, world, total, now, promote=False)
    if phase not in STEPPING:
        return Decision("None", r)
    # Manual control wins over everything else.
    if world.action == "abort":
        return _roll_back(cfg, r, world, total, now, "aborted by the user")
    if world.action == "promote":
        return _promote(cfg, r, world, total, now, "promoted by the user")
    stable, canary, honoured = targets(r, total, cfg)
    if world.action == "pause" and phase != _P.PAUSED:
        r.phase = _P.PAUSED
        r.history = _history(r, now, "Pause", "paused by the user")
        return _hold(cfg, r, world, stable, canary, "Pause", "paused by the user")
    if world.action == "resume" and phase == _P.PAUSED:
        r.phase, r.step_requested_at, r.step_started_at, r.inconclusive = _P.PROGRESSING, _at(now), None, 0
        r.history = _history(r, now, "Resume", "resumed by the user")
        return _hold(cfg, r, world, stable, canary, "Wait", "resumed by the user")
    if r.phase == _P.PAUSED:
        return _hold(cfg, r, world, stable, canary, "Wait", "paused")

    step, weight = r.step or 0, r.weight or 0
    warning = ""
    r.weight_warning = None
    if not honoured:
        r.weight_warning = (f"step {step + 1} asks for {weight}% but {stable} stable + {canary} canary "
                            f"replicas give {effective_weight(stable, canary)}%: within "
                            f"maxSurge={'100%' if cfg.max_surge is None else cfg.max_surge} no split is within "
                            f"±{WEIGHT_TOLERANCE:.0f} points (raise maxSurge or replicas, or route with a Gateway)")
        if rollout.weight_warning != r.weight_warning:
            warning = r.weight_warning
    started = _step_started(r)
    if not _settled(r, world, stable, canary):
        # The step's replicas are not in place (or a pod left): its clock has not started.
        r.step_started_at = None
        restarts = world.health.restarts - (r.canary_restarts or 0)
        if started is not None and (restarts > 0 or world.health.not_ready):
            return _roll_back(cfg, r, world, total, now, _health_failure(r, world, restarts))
        if r.canary_restarts is None:
            r.canary_restarts = world.health.restarts
        elif restarts > RESTARTS_WHILE_STARTING:
            return _roll_back(cfg, r, world, total, now, _health_failure(r, world, restarts))
        if now - _step_requested(r) > cfg.deadline:
            why = (f"the canary's replicas for step {step + 1} ({weight}%) were not ready within "
                   f"progressDeadlineSeconds={cfg.deadline:.0f}")
            return _roll_back(cfg, r, world, total, now,
                              f"{why}: {world.health.problem}" if world.health.problem else why)
        return _hold(cfg, r, world, stable, canary, "Wait", f"step {step + 1}: waiting for {stable} stable + "
                     f"{canary} canary replicas to be ready", warning)
    if started is None:
        # Not before the last pod became ready (seconds resolution): that change belongs to the transition.
        r.step_started_at = _at(max(now, world.health.last_ready_change or 0.0))
        r.canary_restarts = world.health.restarts
        return _hold(cfg, r, world, stable, canary, "Wait", f"step {step + 1} at {weight}% is in place", warning)
    restarts = world.health.restarts - (r.canary_restarts or 0)
    flapped = world.health.last_ready_change is not None and world.health.last_ready_change > started
    if restarts > 0 or flapped:
        return _roll_back(cfg, r, world, total, now, _health_failure(r, world, restarts))
    interval = cfg.shadow_seconds if r.shadow else cfg.interval
    if now - started < interval:
        where = "the shadow phase" if r.shadow else f"step {step + 1} ({weight}%)"
        return _hold(cfg, r, world, stable, canary, "Wait", f"holding {where}", warning)
    verdict = "Pass" if not cfg.analysis else world.verdict
    # The round's measurements enter the status here, parsed once (the evidence quotes every one of them).
    measurements = [api.Measurement.model_validate(m) for m in world.measurements or []]
    if world.measurements is not None:
        r.analysis = measurements[:MEASUREMENT_LIMIT]
    if verdict is None:
        return _hold(cfg, r, world, stable, canary, "Wait", "waiting for analysis", warning)
    if verdict == "Fail":
        r.failures = (r.failures or 0) + 1
        if r.failures > cfg.failure_limit:
            return _roll_back(cfg, r, world, total, now, "analysis failed: " + _evidence(measurements))
        r.history = _history(r, now, "Fail", f"analysis failed ({r.failures} of failureLimit "
                             f"{cfg.failure_limit} tolerated): " + _evidence(measurements))
        r.step_started_at = _at(now)  # the next round is judged on fresh samples
        return _hold(cfg, r, world, stable, canary, "Wait", "analysis failed; within failureLimit", warning)
    if verdict == "Hold":
        if now - _step_requested(r) > cfg.deadline:
            return _roll_back(cfg, r, world, total, now,
                              "no data before progressDeadlineSeconds: " + _evidence(measurements))
        return _hold(cfg, r, world, stable, canary, "Wait", "holding: not enough data yet", warning)
    if verdict == "Inconclusive":
        r.inconclusive = (r.inconclusive or 0) + 1
        if r.inconclusive > cfg.inconclusive_limit:
            r.phase = _P.PAUSED
            msg = "paused after too many inconclusive analyses; promote or abort"
            r.history = _history(r, now, "Pause", msg + ": " + _evidence(measurements))
            return _hold(cfg, r, world, stable, canary, "Pause", msg)
        r.step_started_at = _at(now)
        return _hold(cfg, r, world, stable, canary, "Wait", "analysis inconclusive", warning)
    # Pass: remember the baselines (the 100 % step compares with them), then the next step or promotion.
    baselines = dict(r.baselines or {})
    baselines.update({m.check: m.baseline for m in measurements if m.baseline is not None and not m.stored_baseline})
    r.baselines = baselines
    steps = cfg.steps
    if r.shadow:  # the canary answered mirrored traffic well: now real traffic, at the first step
        r.history = _history(r, now, "Pass", "shadow phase passed: " + (_evidence(measurements) or "passed"))
        r.shadow, r.step_requested_at, r.step_started_at = False, _at(now), None
        r.failures, r.inconclusive, r.canary_restarts = 0, 0, world.health.restarts
        return _hold(cfg, r, world, stable, canary, "Advance", f"shadow phase passed; canary weight {weight}%")
    if step + 1 >= len(steps) or weight >= 100:
        why = ("the previous version is ready at full size" if r.kind == api.RolloutKind.UNDO else
               "every step passed analysis" if cfg.analysis else
               "every step held its interval with healthy pods (analysis disabled)")
        return _promote(cfg, r, world, total, now, why)
    held = "held its interval with healthy pods (analysis disabled)"
    r.history = _history(r, now, "Pass", (_evidence(measurements) or "passed") if cfg.analysis else held)
    why = "analysis passed" if cfg.analysis else f"step {step + 1} {held}"
    r.step, r.weight, r.step_requested_at, r.step_started_at = step + 1, steps[step + 1], _at(now), None
    r.failures, r.inconclusive, r.canary_restarts = 0, 0, world.health.restarts
    stable, canary, _ = targets(r, total, cfg)
    return _hold(cfg, r, world, stable, canary, "Advance", f"{why}; canary weight {r.weight}%")


def _health_failure(r: api.RolloutStatus, world: World, restarts: int) -> str:
    h = world.health
    step = (r.step or 0) + 1
    if restarts > 0:
        what = f"canary containers restarted {restarts} time{'s' if restarts != 1 else ''} during step {step}"
    elif h.not_ready:
        what = f"canary pod {', '.join(h.not_ready[:3])} stopped being ready during step {step}"
    else:
        what = f"a canary pod's readiness changed during step {step}"
    message = what + (f": {h.problem}" if h.problem else "")
    check = api.Measurement(check="pod-health", verdict=api.CheckVerdict.FAIL, value=float(restarts), baseline=0.0,
                            threshold="no restart and no readiness change during a step", samples=None, query="",
                            message=message)
    r.analysis = [check, *[m for m in r.analysis or [] if m.check != "pod-health"]][:MEASUREMENT_LIMIT]
    return "pod-health: " + message


def _hold(cfg: Settings, r: api.RolloutStatus, world: World, stable: int, canary: int, action: str,
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
    r.replicas = api.TrackReplicas(stable=stable_now, canary=canary_now)
    if not cfg.gateway:
        r.effective_weight = effective_weight(min(s.ready, stable_now), min(c.ready, canary_now)) \
            if (s.ready or c.ready) else effective_weight(stable_now, canary_now)
        return Decision(action, r, message, stable_replicas=stable_now, canary_replicas=canary_now, warning=warning)
    if r.shadow:
        route = 0
    elif _settled(r, world, stable, canary):
        route = r.weight or 0
    else:
        route = (r.route_weight or 0) if c.ready > 0 else 0
    r.route_weight = route
    r.effective_weight = route
    return Decision(action, r, message, stable_replicas=stable_now, canary_replicas=canary_now, warning=warning,
                    route_weight=route, mirror=bool(r.shadow) and c.ready > 0)


def _evidence(measurements: list[api.Measurement]) -> str:
    return "; ".join(f"{m.check}={m.value if m.value is not None else 'n/a'} "
                     f"({m.verdict}: {m.message})" for m in measurements)


def _roll_back(cfg: Settings, r: api.RolloutStatus, world: World, total: int, now: float, why: str,
               final: api.RolloutOutcome = api.RolloutOutcome.ROLLED_BACK) -> Decision:
    """Enter ``RollingBack``: the stable version at full size first; the canary stays until it is ready."""
    r.phase, r.final_phase, r.reason, r.step_started_at, r.shadow = (_P.ROLLING_BACK, final,
                                                                     why[:api.REASON_LIMIT], None, None)
    rolled_back = final == api.RolloutOutcome.ROLLED_BACK
    if rolled_back:
        r.rejected_version = r.canary_version
    r.history = _history(r, now, "RollBack" if rolled_back else "Cancel", why)
    verb = "rolling back" if rolled_back else "cancelling"
    d = _finish(cfg, r, world, total, now, promote=False, entering=True)
    return dataclasses.replace(d, action="RollBack" if rolled_back else "Cancel",
                               message=f"{verb} version {r.canary_version}: {why}")


def cancel(rollout: api.RolloutStatus, spec: api.ModelVersionSpec, world: World, total: int, now: float,
           why: str) -> Decision:
    """The spec no longer asks for the canary version: back to stable without a capacity hole."""
    return _roll_back(settings(spec), rollout.model_copy(), world, total, now, why,
                      final=api.RolloutOutcome.CANCELLED)


def promote_now(rollout: api.RolloutStatus, spec: api.ModelVersionSpec, world: World, total: int, now: float,
                why: str) -> Decision:
    """Finish an active rollout by promotion (e.g. ``spec.rollout`` was removed mid-rollout)."""
    return _promote(settings(spec), rollout.model_copy(), world, total, now, why)


def _promote(cfg: Settings, r: api.RolloutStatus, world: World, total: int, now: float, why: str) -> Decision:
    """Enter ``Promoting``: the stable Deployment runs the canary version at full size before the canary goes."""
    undo_final = api.RolloutOutcome.ROLLED_BACK if r.rejected_version else api.RolloutOutcome.PROMOTED
    r.phase, r.reason, r.step_started_at, r.shadow = _P.PROMOTING, why[:api.REASON_LIMIT], None, None
    r.final_phase = undo_final if r.kind == api.RolloutKind.UNDO else api.RolloutOutcome.PROMOTED
    r.history = _history(r, now, "Promote", why)
    d = _finish(cfg, r, world, total, now, promote=True, entering=True)
    return dataclasses.replace(d, action="Promote", message=f"promoting version {r.canary_version}: {why}")


def _finish(cfg: Settings, r: api.RolloutStatus, world: World, total: int, now: float, promote: bool,
            entering: bool = False) -> Decision:
    """Promoting / RollingBack: the surviving version on the stable Deployment at ``total`` replicas; once it
    runs that version and every replica is ready, traffic moves to it (with a Gateway: the route sends it
    everything, and the Gateway gets ``ROUTE_GRACE_SECONDS`` to apply that), then the canary Deployment is
    deleted and the phase is final."""
    survivor = r.canary_version if promote else r.stable_version
    s = world.stable
    ready = (not entering and s.version == survivor and s.replicas == total and s.settled and s.ready >= total)
    which = "canary" if promote else "stable"
    canary_now = world.canary.replicas if world.canary.exists else None
    route = (r.route_weight or 0) if cfg.gateway else None
    if not ready:
        r.replicas = api.TrackReplicas(stable=total, canary=world.canary.replicas)
        what = "promoting" if promote else "rolling back"
        return Decision("Wait", r, f"{what}: waiting for version {survivor} at {total} ready replicas "
                        f"({s.ready if s.version == survivor else 0} now) before removing the other",
                        stable_replicas=total, canary_replicas=canary_now, stable_model=which, route_weight=route)
    if cfg.gateway and canary_now is not None:
        switched = r.route_switched_at
        if route or not switched:
            r.route_weight, r.effective_weight, r.route_switched_at = 0, 100 if promote else 0, _at(now)
            return Decision("Wait", r, f"version {survivor} is ready at {total} replicas: the route sends it all "
                            "traffic; the canary goes once the Gateway applied it", stable_replicas=total,
                            canary_replicas=canary_now, stable_model=which, route_weight=0)
        if now - switched.timestamp() < ROUTE_GRACE_SECONDS:
            return Decision("Wait", r, "waiting for the Gateway to apply the route", stable_replicas=total,
                            canary_replicas=canary_now, stable_model=which, route_weight=0)
    final = r.final_phase or (api.RolloutOutcome.PROMOTED if promote else api.RolloutOutcome.ROLLED_BACK)
    r.phase, r.finished_at = _P(final.value), _at(now)
    r.replicas = api.TrackReplicas(stable=total, canary=0)
    r.effective_weight, r.weight_warning = 100 if promote else 0, None
    if cfg.gateway:
        r.route_weight = 0
    done = {"Promoted": f"promoted version {survivor}: it serves every request at {total} replicas",
            "RolledBack": f"rolled back to version {survivor}: it serves every request at {total} replicas"
            if not promote else f"undone: version {survivor} serves every request again at {total} replicas, "
            f"version {r.rejected_version} is rejected until the spec moves on",
            "Cancelled": f"rollout of version {r.canary_version} cancelled; version {survivor} serves"}[final.value]
    r.history = _history(r, now, final.value, done)
    return Decision(final.value, r, done, stable_replicas=total, canary_replicas=None, stable_model=which,
                    route_weight=0 if cfg.gateway else None)
