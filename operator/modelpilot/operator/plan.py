"""The ModelVersion planner: from what was observed to what to do. Pure — no I/O, no clock, no logging.

The domain layer of the operator's "observe → plan → act" (docs/architecture.md): ``reconcile.Reconciler``
observes (the ModelVersion, the registry, both tracks' Deployments, Prometheus), calls ``model_version`` with
what it saw and the time, and acts on the ``Plan`` it gets back (applies and deletes, the status write, Events,
a retry). The planner asks for what it needs to know and was not told (``Need``): the registry's answer only
when nothing pinned answers the spec (or an alias poll asks), its ABTest membership once a version is known, the
Gateway's mirror form only for a spec that routes through one, both tracks only on a rollout's paths, an
analysis round only when a step's window has passed, a promoted version's signature only when a rollout ends on
it. The
reconciler observes that and plans again with the same time, so a plan is one deterministic function of its
inputs, tested without a cluster or a clock (tests/unit/test_operator_plan.py).

Also here, because every path shares them: the owned objects of one state (``desired_objects``), readiness from
a Deployment (``observe``, ``readiness_status``), kstatus conditions (``set_condition``), ABTest membership and
pod labels, and the manual actions (``pending_action``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from modelpilot.operator import abtest, api, builders, diagnosis, rollout
from modelpilot.operator.mirroring import MirrorStyle
from modelpilot.operator.resolved import ModelRef, ResolvedModel


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post against the resource: ``type`` ``Normal`` or ``Warning``, a CamelCase
    ``reason``, a ``message`` (the adapter bounds its length)."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Membership:
    """An ABTest that routes to a ModelVersion: its name, the replicas it assigns (replica-ratio provider;
    None otherwise) and whether the variant is a shadow (mirrored, so not behind the ABTest's Service)."""

    abtest: str
    replicas: int | None
    shadow: bool


def pod_labels(member: Membership | None) -> dict[str, str]:
    """Extra labels on a ModelVersion's serving pods (both tracks), from its ABTest membership."""
    return {abtest.ABTEST_LABEL: member.abtest} if member is not None and not member.shadow else {}


def memberships(test: dict[str, Any]) -> dict[str, Membership]:
    """ModelVersion name → its membership in this ABTest (the body as the API has it: its spec is parsed here,
    where an ABTest body enters a ModelVersion's reconcile or the operator's index). An ABTest whose spec does
    not parse routes to nothing; its own reconcile says why."""
    try:
        spec = api.ABTestSpec.model_validate(test.get("spec") or {})
    except ValidationError:
        return {}
    return memberships_of(test["metadata"]["name"], spec, test.get("status") or {})


def memberships_of(name: str, spec: api.ABTestSpec, status: dict[str, Any]) -> dict[str, Membership]:
    """ModelVersion name → its membership in the ABTest ``name`` with this (typed) spec and status."""
    assigned = {sv.get("modelVersion"): sv.get("replicas") for sv in status.get("variants") or []}
    replica_ratio = abtest.provider(spec) == "replicas"
    out: dict[str, Membership] = {}
    for v in abtest.variants(spec):
        replicas = assigned.get(v.model_version) if replica_ratio and not v.shadow else None
        out.setdefault(v.model_version, Membership(name, int(replicas) if replicas is not None else None, v.shadow))
    return out


@dataclass(frozen=True)
class Objects:
    """The owned objects one reconcile wants, in the order they are acted on: ``steps`` of ("apply",
    manifest) or ("delete", (kind, name)) — a delete only touches an object this ModelVersion controls — and
    ``gateway_route``, the value of ``status.gatewayRoute`` (``KEEP``: leave it as it is)."""

    steps: tuple[tuple[str, Any], ...]
    gateway_route: str | None


KEEP = "<keep>"


def desired_objects(owner: builders.Owner, spec: api.ModelVersionSpec, stable: ResolvedModel, member: Membership | None,
                    tracking_uri: str, default_image: str, *, had_gateway_route: bool,
                    stable_replicas: int | None = None, canary: tuple[ResolvedModel, int] | None = None,
                    route_weight: int = 0, mirror: bool = False,
                    mirror_style: MirrorStyle = MirrorStyle.REQUEST_MIRROR) -> Objects:
    """Every owned object of a ModelVersion for one state, for every path (first deployment, rolling update,
    canary step, promote, rollback, rejected version, undo). Pure.

    ``stable``: the version the stable track serves; ``stable_replicas``: its replicas when a rollout splits
    them (else the ABTest's assignment, else ``spec.replicas``); ``canary``: the canary's version and replicas
    (None: no canary Deployment); ``route_weight`` / ``mirror``: the Gateway canary's weight and shadow phase;
    ``mirror_style``: the form the spec's Gateway mirrors in (observed by the ``gateways`` adapter: on NGINX
    Gateway Fabric a SnippetsFilter, applied before the route that references it and deleted after the route
    that no longer does);
    ``had_gateway_route``: whether status names an HTTPRoute a previous spec made (deleted when the spec has
    no Gateway any more). Pod labels come from ``member`` on both tracks, so an ABTest member's pods never
    drop out of its Service. Order: the canary first, then the stable track and its companions, then routing.
    """
    steps: list[tuple[str, Any]] = []
    canary_name = builders.deployment_name(owner, "canary")
    labels = pod_labels(member)
    if canary is None:
        steps.append(("delete", ("Deployment", canary_name)))
    else:
        steps.append(("apply", builders.build_deployment(owner, spec, canary[0], tracking_uri, default_image,
                                                         track="canary", replicas=canary[1],
                                                         extra_pod_labels=labels)))
    companions = builders.build_all(owner, spec, stable, tracking_uri, default_image)
    if stable_replicas is None and member is not None:
        stable_replicas = member.replicas
    companions["Deployment"] = builders.build_deployment(owner, spec, stable, tracking_uri, default_image,
                                                         track="stable", replicas=stable_replicas,
                                                         extra_pod_labels=labels)
    for kind, manifest in companions.items():
        steps.append(("delete", (kind, owner.name)) if manifest is None else ("apply", manifest))
    route: str | None = KEEP
    if builders.gateway_routing(spec):
        for track in ("stable", "canary"):
            steps.append(("apply", builders.build_service(owner, stable, track, named=True)))
        mirrors = builders.canary_mirrors(owner, stable, mirror, canary is not None, mirror_style)
        steps.extend(("apply", manifest) for manifest in mirrors.objects)
        steps.append(("apply", builders.build_canary_route(owner, spec, stable, route_weight, mirror,
                                                           canary is not None, mirror_style)))
        if mirror_style == MirrorStyle.NGF_SNIPPETS and not mirrors.objects:
            # Only for an NGF class: elsewhere the SnippetsFilter CRD may not exist at all.
            steps.append(("delete", ("SnippetsFilter", builders.canary_mirror_filter_name(owner))))
        route = owner.name
    elif had_gateway_route:
        steps.append(("delete", ("HTTPRoute", owner.name)))
        steps.extend(("delete", ("Service", f"{owner.name}-{track}")) for track in ("stable", "canary"))
        route = None
    return Objects(steps=tuple(steps), gateway_route=route)


#: The alias write-back sets when ``spec.rollout.writeBack.promoteAlias`` is not given (the CRD has no default).
DEFAULT_PROMOTE_ALIAS = "champion"


def spec_errors(exc: ValidationError, root: str = "spec") -> str:
    """A validation error as ``spec.rollout.steps[0]: <what is wrong>``, one clause per field (a field that
    fails every member of a union, e.g. an integer or a ``"N%"`` string, is one clause)."""
    found: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        where = root
        for part in error["loc"]:
            if isinstance(part, int):
                where += f"[{part}]"
            elif part in _UNION_MEMBERS:
                continue  # pydantic names the union member tried; the field is the same
            else:
                where += f".{part}" if part.isidentifier() else f"[{part!r}]"
        found.setdefault(where, []).append(str(error["msg"]))
    return "; ".join(f"{where}: {' or '.join(msgs)}" for where, msgs in found.items())


#: The names pydantic puts in an error's location for the member of a union it tried (``int | str``).
_UNION_MEMBERS = frozenset({"int", "str", "float", "bool", "constrained-int", "constrained-str",
                            "constrained-float"})


def set_condition(conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str,
                  generation: int, now: str) -> list[dict[str, Any]]:
    """Replace one condition, keeping ``lastTransitionTime`` when its status did not change."""
    old = next((c for c in conditions if c.get("type") == kind), None)
    changed = old is None or old.get("status") != status
    new = {"type": kind, "status": status, "reason": reason, "message": message[:1000] or reason,
           "observedGeneration": generation,
           "lastTransitionTime": now if changed else old.get("lastTransitionTime", now)}  # type: ignore[union-attr]
    return [c for c in conditions if c.get("type") != kind] + [new]


def readiness_conditions(conditions: list[dict[str, Any]], ready: bool, reason: str, message: str, generation: int,
                         now: str, stalled: bool = False) -> list[dict[str, Any]]:
    """``Ready`` with the kstatus conditions that agree with it, for both kinds: Ready → ``Reconciling`` and
    ``Stalled`` False (kstatus Current); not Ready and coming by itself → ``Reconciling=True`` (InProgress); not
    Ready until someone acts (``stalled``) → ``Stalled=True`` (Failed). One reason and message for all three.
    (ABTests carried ``Ready`` alone once: kstatus then read every reconciled ABTest as Current, so Flux reported
    an experiment whose variants never served.)"""
    conditions = set_condition(conditions, "Ready", "True" if ready else "False", reason, message, generation, now)
    conditions = set_condition(conditions, "Reconciling", "False" if ready or stalled else "True", reason, message,
                               generation, now)
    return set_condition(conditions, "Stalled", "True" if stalled else "False", reason, message, generation, now)


def model_ref(spec: api.ModelVersionSpec) -> ModelRef:
    model = spec.model
    return ModelRef(name=model.name, version=model.version or "", alias=model.alias or "")


def pinned(status: dict[str, Any], ref: ModelRef) -> ResolvedModel | None:
    """The version pinned in status, if it still answers the spec's reference."""
    model = status.get("model") or {}
    if not model.get("version") or model.get("name") != ref.name:
        return None
    if ref.version and model["version"] != ref.version:
        return None
    if ref.alias and model.get("alias") != ref.alias:
        return None
    return ResolvedModel(
        name=model["name"], version=model["version"], alias=model.get("alias", ""), run_id=model.get("runId", ""),
        artifact_uri=model.get("artifactUri", ""), source=model.get("source", ""), flavor=model.get("flavor", ""),
        signature=model.get("signature", ""), resolved_at=model.get("resolvedAt", ""),
        signature_inputs=model.get("signatureInputs"), signature_truncated=bool(model.get("signatureTruncated")),
    )


def _model_status(model: ResolvedModel) -> api.ModelStatus:
    """A resolved version as the rollout records it (``canaryModel``): without the signature, held once in
    ``status.model``. An unknown resolution time (a status written without one) is left out, not written
    as ``""``, which is no time."""
    record = model.as_status(signature=False)
    if not record.get("resolvedAt"):
        del record["resolvedAt"]
    return api.ModelStatus.model_validate(record)


def _model_dict(model: api.ModelStatus | None) -> dict[str, Any]:
    """A typed ``ModelStatus`` as ``pinned`` reads one (the status' own field names)."""
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True) if model is not None else {}


def observe(deployment: dict[str, Any] | None) -> dict[str, Any]:
    """Readiness of the serving Deployment as (phase, ready?, reason, message, replicas, readyReplicas)."""
    if deployment is None:
        return {"phase": "Deploying", "ready": False, "reason": "DeploymentMissing",
                "message": "the serving Deployment does not exist yet", "replicas": 0, "readyReplicas": 0,
                "stalled": False}
    meta, dstatus, dspec = deployment.get("metadata", {}), deployment.get("status") or {}, deployment.get("spec", {})
    desired = int(dspec.get("replicas", 1) if dspec.get("replicas") is not None else 1)
    updated = int(dstatus.get("updatedReplicas") or 0)
    available = int(dstatus.get("availableReplicas") or 0)
    ready_replicas = int(dstatus.get("readyReplicas") or 0)
    total = int(dstatus.get("replicas") or 0)
    current = int(dstatus.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    progressing: dict[str, Any] = next((c for c in dstatus.get("conditions") or []
                                        if c.get("type") == "Progressing"), {})
    base = {"replicas": total, "readyReplicas": ready_replicas}
    if progressing.get("reason") == "ProgressDeadlineExceeded":  # Kubernetes gave up on it: Stalled
        return {**base, "phase": "Degraded" if ready_replicas else "Failed", "ready": available >= desired > 0,
                "stalled": True,
                "reason": "ProgressDeadlineExceeded",
                "message": progressing.get("message", "the Deployment did not progress before its deadline")}
    if current and updated == desired and available == desired and total == desired:
        return {**base, "phase": "Ready", "ready": True, "stalled": False, "reason": "Available",
                "message": f"{available}/{desired} replicas serve the model"}
    return {**base, "phase": "Deploying", "ready": False, "stalled": False, "reason": "RollingOut",
            "message": f"rolling out: {updated}/{desired} replicas updated, {available} available, {total} running"}


def readiness_status(status: dict[str, Any], generation: int,
                     deployment: dict[str, Any] | None, now: str,
                     pods: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[Event]]:
    """Status fields and transition Events that follow from the Deployment's state.

    ``pods`` (listed only while the Deployment is not fully available) explain why: the first
    informative container problem becomes reason ``ServingFailed`` with the pod's message, phase
    ``Degraded`` while a replica is ready, else ``Retrying`` while the kubelet restarts the pods
    (``Reconciling=True``) and ``Failed`` once the Deployment's progress deadline has passed (``Stalled=True``),
    and one Warning Event per distinct problem.
    """
    seen = observe(deployment)
    conditions = list(status.get("conditions") or [])
    was_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    was_stalled = any(c.get("type") == "Stalled" and c.get("status") == "True" for c in conditions)
    old: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    old_problem = str(old.get("message") or "") if old.get("reason") == diagnosis.REASON else ""
    problem = diagnosis.serving_problem(pods or []) if not seen["ready"] else None
    same = False
    if problem is not None:
        message = problem.message
        same = bool(old_problem) and diagnosis.same_problem(old_problem, message)
        if same and problem.reason == "ImagePullBackOff":
            message = old_problem  # keep the pull error ErrImagePull reported; the back-off adds nothing
        seen.update(reason=diagnosis.REASON, message=message,
                    phase="Degraded" if seen["readyReplicas"] else "Failed" if seen["stalled"] else "Retrying")
    conditions = readiness_conditions(conditions, bool(seen["ready"]), seen["reason"], seen["message"], generation,
                                      now, stalled=bool(seen["stalled"]))
    canary = canary_reconciling(status)
    if canary is not None:
        # The stable version still serves (Ready may stay True), but the spec's version is not rolled out
        # yet: kstatus must read InProgress until the canary is promoted or rolled back.
        conditions = set_condition(conditions, "Reconciling", "True", canary[0], canary[1], generation, now)
    # One Event per transition: a Warning only when something is wrong, and only one saying it.
    events: list[Event] = []
    explained = (seen["stalled"] and not was_stalled) or (problem is not None and not same)
    if seen["ready"] and not was_ready:
        events.append(Event("Normal", "Ready", seen["message"]))
    elif was_ready and not seen["ready"] and not explained:
        if seen["readyReplicas"] > 0:  # an ordinary rolling update: older pods still serve
            events.append(Event("Normal", "RollingOut", seen["message"]))
        else:
            events.append(Event("Warning", "NotReady", seen["message"]))
    if seen["stalled"] and not was_stalled:
        events.append(Event("Warning", "ProgressDeadlineExceeded", seen["message"]))
    if problem is not None and not same:
        events.append(Event("Warning", diagnosis.REASON, seen["message"]))
    new = {"phase": seen["phase"], "replicas": seen["replicas"], "readyReplicas": seen["readyReplicas"],
           "conditions": conditions}
    return new, events


def canary_reconciling(status: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) of ``Reconciling=True`` while a canary rollout is active (Progressing or Paused);
    None once it was promoted, rolled back or cancelled, or when there is none."""
    ro = status.get("rollout") or {}
    if ro.get("phase") not in rollout.ACTIVE:
        return None
    where = (f"canary version {ro.get('canaryVersion', '?')} at {ro.get('effectiveWeight', ro.get('weight', 0))}%, "
             f"version {ro.get('stableVersion', '?')} serves the rest")
    if ro.get("phase") == "Paused":
        return "CanaryPaused", f"{where}; paused: promote or abort it (modelpilot promote|abort)"
    if ro.get("phase") == "Promoting":
        return "Promoting", (f"promoting version {ro.get('canaryVersion', '?')}: bringing it to full size on the "
                             "stable Deployment before the canary is removed")
    if ro.get("phase") == "RollingBack":
        return "RollingBack", (f"rolling back to version {ro.get('stableVersion', '?')}: bringing it to full size "
                               f"before the canary is removed ({ro.get('reason') or ''})")
    return "CanaryRollingOut", f"{where}; waiting for promotion or rollback"


READINESS_CONDITIONS = ("Ready", "Reconciling", "Stalled")


def pending_action(value: str, ro: api.RolloutStatus, status: dict[str, Any]) -> str:
    """The manual action the annotation value asks for and that was not handled yet, or "".

    The value is ``<action>`` or ``<action>/<version>`` (what ``modelpilot promote|undo`` writes): promote,
    abort, pause and resume apply to a stepping rollout (with a version, only to that canary); ``undo``
    applies when no rollout is active (with a version, only while that version serves). A value is acted
    on once: the handled value is kept in ``status.rollout.handledAction`` and carried into later rollouts.
    """
    action, _, version = value.strip().partition("/")
    if not value or value.strip() == ro.handled_action:
        return ""
    if action == "undo":
        serving = (status.get("model") or {}).get("version")
        if ro.phase in rollout.ACTIVE or not serving:
            return ""
        return "" if version and version != serving else action
    if action not in ("promote", "abort", "pause", "resume") or ro.phase not in rollout.STEPPING:
        return ""
    if version and version != ro.canary_version:
        return ""
    return action


#: What ``pending_action`` reads of ``status.rollout`` (``handlers`` parses only these, on every watch event).
ACTION_FIELDS = ("phase", "canaryVersion", "handledAction")


def rollout_patch(ro: api.RolloutStatus, stored: dict[str, Any] | None = None) -> dict[str, Any]:
    """``status.rollout`` as it is written (a JSON merge patch): every field that is *set*, None included — a
    null removes the stored field, a field left out keeps it. Fields of ``stored`` (the rollout as read) that
    ``ro`` does not set any more are written as null, so they are removed too."""
    out = ro.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return {**dict.fromkeys(stored), **out} if stored else out


def replace_action(world: rollout.World, action: str) -> rollout.World:
    return dataclasses.replace(world, action=action)


def _timestamp(value: Any) -> float:
    """Epoch seconds of an API timestamp: ``2026-01-05T10:00:00Z`` as served, or the client's rendering of it
    (a ``datetime``, or ISO text with ``+00:00``)."""
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def pod_health(pods: list[dict[str, Any]]) -> rollout.Health:
    """The canary pods' health for the planner: restarts summed over containers, pods not ready (ignoring
    those being deleted), the latest change of a Ready condition, and the diagnosis of what is wrong."""
    restarts, not_ready, last = 0, [], None
    for pod in pods:
        meta, pstatus = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        restarts += sum(int(c.get("restartCount") or 0) for c in pstatus.get("containerStatuses") or [])
        ready: dict[str, Any] = next((c for c in pstatus.get("conditions") or [] if c.get("type") == "Ready"), {})
        if ready.get("status") != "True":
            not_ready.append(str(meta.get("name", "?")))
        if ready.get("lastTransitionTime"):
            changed = _timestamp(ready["lastTransitionTime"])
            last = changed if last is None else max(last, changed)
    problem = diagnosis.serving_problem(pods)
    return rollout.Health(restarts=restarts, not_ready=tuple(not_ready), last_ready_change=last,
                          problem=problem.message if problem else "")


def rollout_phase(status: dict[str, Any]) -> str:
    """The resource phase, where a canary rollout overrides what the stable Deployment says."""
    ro = status.get("rollout") or {}
    if ro.get("phase") in rollout.ACTIVE:
        return "Progressing"
    if ro.get("phase") == "RolledBack" and ro.get("rejectedVersion") != (status.get("model") or {}).get("version"):
        return "RolledBack"
    return str(status.get("phase") or "Pending")


# ---------------------------------------------------------------------------- the planner


class Needed(StrEnum):
    """What the planner needs observed before it can plan."""

    RESOLUTION = "resolution"  # the registry's answer to the spec's reference (``Observed.resolution``)
    MEMBERSHIP = "membership"  # the ABTest that routes to it, if any (``Observed.member``)
    MIRROR_STYLE = "mirror_style"  # the form the spec's Gateway mirrors in (``Observed.mirror_style``)
    TRACKS = "tracks"  # both tracks' Deployments and the canary pods' health (``Observed.world``)
    ANALYSIS = "analysis"  # one analysis round over the step's window (``Observed.analysis``)
    SIGNATURE = "signature"  # the promoted version's signature, best effort (``Observed.full_model``)


@dataclass(frozen=True)
class Need:
    """One observation the planner asks for. For ``ANALYSIS``: the window (seconds), the canary and stable
    versions and the rollout record the round is measured against; for ``SIGNATURE``: the version."""

    what: Needed
    window: int = 0
    model: ResolvedModel | None = None
    stable: ResolvedModel | None = None
    rollout: api.RolloutStatus | None = None


@dataclass(frozen=True)
class Unresolved:
    """Why no version could be resolved: ``reason`` (``ModelNotFound``, ``SpecError``, ``RegistryUnavailable``)
    and ``message``. ``stalled``: only someone's action fixes it (register the version, fix the spec, create the
    Secret); ``invalid``: the spec does not parse, so only a new spec (a reconcile of its own) can, and it is not
    retried."""

    reason: str
    message: str
    stalled: bool = False
    invalid: bool = False


@dataclass(frozen=True)
class WriteBack:
    """A registry write-back to do once the objects are applied (``spec.rollout.writeBack``): set ``alias`` on
    ``model`` and tag it promoted, or tag it rejected with ``reason``; ``what`` says it in words."""

    model: ResolvedModel
    promoted: bool
    alias: str
    reason: str
    what: str


@dataclass(frozen=True)
class Observed:
    """What the reconciler saw of one ModelVersion and its world.

    ``status`` and ``rollout_state`` (``status.rollout``) as read (parsed once, ``reconcile.rollout_status``);
    ``annotation``: the action annotation's value, stripped; ``refresh``: the alias poll asks MLflow again even
    with a version pinned. The rest starts unobserved and is filled in as the planner asks (``Need``): ``member``
    (the ABTest routing to it, with ``member_known``; a caller that knows it better than the index, the ABTest
    reconciler, gives it at once), ``resolution`` (a version, or why none), ``mirror_style``, ``world``,
    ``analysis`` (verdict and measurements), ``full_model`` with ``signature_read`` (the read was tried; None
    when it failed)."""

    owner: builders.Owner
    generation: int
    spec: api.ModelVersionSpec
    status: dict[str, Any]
    rollout_state: api.RolloutStatus
    tracking_uri: str
    default_image: str
    annotation: str = ""
    refresh: bool = False
    member: Membership | None = None
    member_known: bool = False
    resolution: ResolvedModel | Unresolved | None = None
    mirror_style: MirrorStyle | None = None
    world: rollout.World | None = None
    analysis: tuple[str | None, list[dict[str, Any]] | None] | None = None
    full_model: ResolvedModel | None = None
    signature_read: bool = False


@dataclass
class Plan:
    """What to do for one ModelVersion, in order: act on ``objects`` (None: touch nothing owned), do the
    ``write_back``, then write ``status`` — with readiness judged on the stable Deployment as acted on
    (``readiness``), else as it is (``write``), else not at all — and post ``events``. ``retry``: ask again with
    back-off, saying ``message``. ``need``: observe this and plan again (nothing else is set).
    ``rollout_action`` / ``rollout_state``: a rollout tick's decision, for the operator's metrics."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    objects: Objects | None = None
    readiness: bool = False
    write: bool = False
    retry: bool = False
    message: str = ""
    write_back: WriteBack | None = None
    rollout_action: str = ""
    rollout_state: api.RolloutStatus | None = None
    need: Need | None = None


def asking(what: Needed, **details: Any) -> Plan:
    """A plan that is a question: observe ``what`` and plan again."""
    return Plan(need=Need(what, **details))


def first_reconcile(status: dict[str, Any]) -> bool:
    """The ModelVersion has never been reconciled (the CRD defaults status to ``observedGeneration: 0``, so an
    empty status is never seen): nothing it owns exists but what its first reconcile applies."""
    return not status.get("observedGeneration") and not status.get("model")


def invalid_spec(status: dict[str, Any], generation: int, now: str, message: str) -> Plan:
    """A spec that does not parse: the ``SpecError`` path (``Resolved=False`` naming each field, one Warning
    Event; ``Ready=False``, ``Stalled=True`` and phase ``Failed`` when nothing serves yet), nothing applied or
    deleted. Said already for this generation (a rollout tick, an alias poll): nothing is written again."""
    old: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Resolved"), {})
    if (status.get("observedGeneration") == generation and old.get("status") == "False"
            and old.get("reason") == "SpecError" and old.get("message") == message[:1000]):
        return Plan(status=dict(status), message=message)
    serving = bool((status.get("model") or {}).get("version"))
    return unresolved(status, None, generation, now, Unresolved("SpecError", message, stalled=True, invalid=True),
                      keep=serving)


def unresolved(status: dict[str, Any], ref: ModelRef | None, generation: int, now: str, why: Unresolved,
               keep: bool) -> Plan:
    """The registry could not answer, or the spec cannot work: say why, touch nothing that runs, ask for a
    retry — but for a spec that does not parse (``why.invalid``), which only a spec change (a reconcile of its
    own) can fix. With nothing pinned (``keep`` False), the phase says who must act (kstatus): MLflow
    unreachable or failing is ``Resolving`` (``Reconciling=True``: it comes back by itself); a model or version
    MLflow does not have, a credentials Secret missing or incomplete, or a spec that does not parse is ``Failed``
    (``Stalled=True``, ``Reconciling=False``: someone has to register the version, fix the spec or create the
    Secret — so Argo CD and Flux report it instead of waiting). All but the last are still retried with
    back-off, so registering the version later recovers it without an edit. One Warning Event per reason."""
    status = dict(status)
    reason, message = why.reason, why.message
    conditions = set_condition(list(status.get("conditions") or []), "Resolved", "False", reason, message,
                               generation, now)
    if not keep:
        # Nothing pinned for this spec: the resource is not Ready. What already runs stays untouched.
        conditions = readiness_conditions(conditions, False, reason, message, generation, now, stalled=why.stalled)
        status["phase"] = "Failed" if why.stalled else "Resolving"
    old: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Resolved"), {})
    repeated = old.get("status") == "False" and old.get("reason") == reason  # a retry: said already
    if why.invalid:  # a spec edited into another unreadable one is news; a retry it is not
        repeated = repeated and old.get("message") == (message[:1000] or reason)
    status.update({"conditions": conditions, "observedGeneration": generation})
    said = f"cannot resolve {ref}: {message}" if ref is not None else f"the spec cannot be read: {message}"
    return Plan(status=status, events=[] if repeated else [Event("Warning", reason, said)], write=True,
                retry=not why.invalid, message=message)


def model_version(obs: Observed, now: str) -> Plan:
    """Plan one reconcile of a ModelVersion: from ``obs`` at ``now`` (``%Y-%m-%dT%H:%M:%SZ``) to the objects it
    owns, its new status and Events — or a ``Need`` when something must be observed first.

    The version served is the one pinned in ``status.model`` while it answers the spec (during a rollout, the
    canary's, the newest answer); the registry is asked only when none does or ``obs.refresh``. A registry that
    cannot answer never touches what runs (``unresolved``). Then: a first deployment, nothing changed, or a
    plain rolling update (no ``spec.rollout``: the Deployment's own rolling update keeps every replica serving)
    renders the objects for that version; anything else is a rollout tick (``_rollout_tick``)."""
    spec, generation = obs.spec, obs.generation
    status = dict(obs.status)
    ref = model_ref(spec)
    # Never changed in place: a plan may be made again from the same ``obs`` (each change below makes a copy).
    ro = obs.rollout_state
    events: list[Event] = []
    current = pinned(status, ref)  # the stable version, when it still answers the spec
    known_canary = pinned({"model": _model_dict(ro.canary_model)}, ref) if ro.canary_model else None
    # While a rollout is active its canary is the newest answer to the spec's reference: with an alias both
    # the pinned stable version and the canary answer it, and the canary is where the alias points. (Taking
    # the stable one cancelled and restarted every alias-triggered canary on each tick.)
    if ro.phase in rollout.ACTIVE and ro.kind != api.RolloutKind.UNDO:
        model = known_canary or current
    else:
        model = current or known_canary
    if model is None or obs.refresh:
        if obs.resolution is None:
            return asking(Needed.RESOLUTION)
        if isinstance(obs.resolution, Unresolved):
            return unresolved(status, ref, generation, now, obs.resolution,
                              keep=(current or known_canary) is not None)
        model = obs.resolution
        if current is not None and model.version == current.version:
            model = current  # same version: keep the original resolution time and provenance
        elif known_canary is not None and model.version == known_canary.version:
            model = known_canary
        elif not _said(status, "Resolved", "True", _resolved_message(ref, model)):
            # New to this resource (not, e.g., the version an undo took back from, asked again on each run).
            what = f"{ref} → version {model.version} (run {model.run_id or 'unknown'})"
            events.append(Event("Normal", "Resolved", f"resolved {what}"))
            stable = status.get("model") or {}
            if ref.alias and stable.get("version") and stable.get("alias") == ref.alias:
                events.append(Event("Normal", "AliasMoved", f"alias @{ref.alias} moved from version "
                                    f"{stable['version']} to {model.version}; rolling out"))
    if not obs.member_known:
        return asking(Needed.MEMBERSHIP)  # the same pod labels and replicas on every path
    if spec.routing is not None and obs.mirror_style is None:
        return asking(Needed.MIRROR_STYLE)  # a route is rendered: in the form its Gateway mirrors in
    stable_model = pinned(status, ModelRef(ref.name, version=str((status.get("model") or {}).get("version", ""))))
    status.update({"observedGeneration": generation,
                   "conditions": set_condition(list(status.get("conditions") or []), "Resolved", "True",
                                               "Resolved", _resolved_message(ref, model), generation, now)})
    assigned = obs.member.replicas if obs.member else None  # an ABTest's replica-ratio share, if any
    total = int(assigned if assigned is not None else spec.replicas) or 1
    rejected = (ro.phase == api.RolloutPhase.ROLLED_BACK and ro.rejected_version == model.version
                and stable_model is not None and stable_model.version != model.version)
    undo = pending_action(obs.annotation, ro, status) == "undo" and stable_model is not None
    if stable_model is not None and (ro.phase in rollout.ACTIVE or rejected or undo or (
            api.given(spec.rollout) and model.version != stable_model.version)):
        plan = _rollout_tick(obs, status, ro, stable_model, model, total, rollout.parse_time(now), now)
        plan.events[:0] = events
        return plan
    if ro.phase == api.RolloutPhase.ROLLED_BACK and ro.rejected_version != model.version:
        ro = ro.model_copy(update={"phase": api.RolloutPhase.SUPERSEDED})  # the spec moved on from the rejection
        status["rollout"] = rollout_patch(ro)
    objects = _objects(obs, status, model)
    if stable_model is not None and stable_model.version != model.version:
        status["previousModel"] = stable_model.as_status(signature=False)
    status["model"] = model.as_status()
    return Plan(status=status, events=events, objects=objects, readiness=True)


def _resolved_message(ref: ModelRef, model: ResolvedModel) -> str:
    """The ``Resolved=True`` condition's message."""
    return f"{ref} is version {model.version}"


def _said(status: dict[str, Any], kind: str, value: str, message: str) -> bool:
    """Whether ``status`` has condition ``kind`` at ``value`` with ``message`` already (one Event per transition)."""
    return any(c.get("type") == kind and c.get("status") == value and c.get("message") == message
               for c in status.get("conditions") or [])


def _objects(obs: Observed, status: dict[str, Any], stable: ResolvedModel, **kwargs: Any) -> Objects:
    """``desired_objects`` for this observation; ``status.gatewayRoute`` follows the route it renders."""
    objects = desired_objects(obs.owner, obs.spec, stable, obs.member, obs.tracking_uri, obs.default_image,
                              had_gateway_route=bool(status.get("gatewayRoute")),
                              mirror_style=obs.mirror_style or MirrorStyle.REQUEST_MIRROR, **kwargs)
    if objects.gateway_route != KEEP:
        status["gatewayRoute"] = objects.gateway_route
    return objects


#: A rollout decision's Event (type, reason), by ``rollout.Decision.action``.
_DECISION_EVENTS = {"Start": ("Normal", "RolloutStarted"), "Advance": ("Normal", "RolloutStep"),
                    "Promote": ("Normal", "Promoting"), "Promoted": ("Normal", "Promoted"),
                    "RollBack": ("Warning", "RolledBack"), "RolledBack": ("Normal", "RollbackComplete"),
                    "Cancel": ("Normal", "RolloutCancelled"), "Pause": ("Warning", "RolloutPaused")}


def _rollout_tick(obs: Observed, status: dict[str, Any], ro: api.RolloutStatus, stable: ResolvedModel,
                  candidate: ResolvedModel, total: int, now: float, now_text: str) -> Plan:
    """One tick of a guarded rollout (``stable`` serves, ``candidate`` answers the spec): the rollout planner's
    decision (``rollout.plan``) for both tracks as observed, the objects for it, ``status.rollout`` written
    once. A rejected version keeps the stable one serving; an ``undo`` rolls back to ``status.previousModel``
    as a canary of its own; a manual action is handled once."""
    spec = obs.spec
    stored = status.get("rollout") or {}  # as read: its fields a new rollout does not set are removed
    action = pending_action(obs.annotation, ro, status)
    handled = obs.annotation if action else ro.handled_action
    if ro.phase == api.RolloutPhase.ROLLED_BACK and ro.rejected_version == candidate.version and action != "undo":
        # Rejected: keep serving the stable version until the spec or the alias points elsewhere.
        objects = _objects(obs, status, stable)
        status["model"] = stable.as_status()
        return Plan(status=status, objects=objects, readiness=True)
    stepping = ro.phase in rollout.STEPPING
    undoing = ro.kind == api.RolloutKind.UNDO
    undo = action == "undo" and ro.phase not in rollout.ACTIVE
    previous = api.ModelStatus.model_validate(status.get("previousModel") or {}) if undo else api.ModelStatus()
    if undo and (not previous.version or previous.version == stable.version):
        ro = ro.model_copy(update={"handled_action": handled})
        status["rollout"] = rollout_patch(ro)
        return Plan(status=status, objects=_objects(obs, status, stable), readiness=True,
                    events=[Event("Warning", "UndoImpossible", f"nothing to undo: no earlier version than "
                                  f"{stable.version} is recorded in status.previousModel")])
    if obs.world is None:
        return asking(Needed.TRACKS)
    world = obs.world
    if undo:
        # The spec's version stays rejected (usually the serving one; after an earlier rollback the spec may
        # still name the version that was rolled back), so the undo is not followed by a new canary of it.
        start = rollout.start(_model_status(stable), previous, spec, now, kind="Undo",
                              reason="requested with modelpilot undo",
                              rejected="" if candidate.version == previous.version else candidate.version)
        decision = _started(start, spec, total, world, now)
    elif not stepping and ro.phase in rollout.ACTIVE:
        decision = rollout.plan(ro, spec, total, world, now)  # Promoting / RollingBack: finish first
    elif stepping and not undoing and candidate.version == stable.version:
        decision = rollout.cancel(ro, spec, world, total, now, f"the spec asks for version {stable.version} "
                                  f"again, not the canary version {ro.canary_version}")
    elif stepping and not undoing and not api.given(spec.rollout):
        decision = rollout.promote_now(ro, spec, world, total, now, "spec.rollout was removed: the spec's version "
                                       "is rolled out without further steps")
    elif not stepping or (not undoing and ro.canary_version != candidate.version):
        start = rollout.start(_model_status(stable), _model_status(candidate), spec, now)
        decision = _started(start, spec, total, world, now)
    else:
        window = rollout.analysis_window(ro, spec, replace_action(world, action), total, now)
        verdict, measurements = None, None
        if window is not None:
            if obs.analysis is None:
                return asking(Needed.ANALYSIS, window=window, model=canary_model(ro, candidate), stable=stable,
                              rollout=ro.model_copy(deep=True))
            verdict, measurements = obs.analysis
        world = dataclasses.replace(world, action=action, verdict=verdict, measurements=measurements)
        decision = rollout.plan(ro, spec, total, world, now)
    ro = decision.rollout  # the planner's own copy
    if handled:
        ro.handled_action = handled
    events = canary_problem(ro, ro.canary_version or candidate.version, world.health.problem)
    kind = _DECISION_EVENTS.get(decision.action)
    if kind:
        events.append(Event(kind[0], kind[1], decision.message))
    if decision.warning:
        events.append(Event("Warning", "WeightNotHonoured", decision.warning))
    status["rollout"] = rollout_patch(ro, stored)  # fields the decision no longer sets are removed
    canary = canary_model(ro, candidate)
    survivor = canary if decision.stable_model == "canary" else stable
    ended = decision.action in ("Promoted", "RolledBack", "Cancelled")
    if ended and survivor.version != stable.version and not survivor.signature:
        # A canary's copy in ``status.rollout`` holds no signature (a status holds one): read it again.
        if not obs.signature_read:
            return asking(Needed.SIGNATURE, model=survivor)
        if obs.full_model is not None and obs.full_model.version == survivor.version:
            full = obs.full_model
            survivor = dataclasses.replace(survivor, signature=full.signature, signature_inputs=full.signature_inputs,
                                           signature_truncated=full.signature_truncated,
                                           flavor=survivor.flavor or full.flavor)
    objects = _objects(obs, status, survivor, stable_replicas=decision.stable_replicas,
                       canary=None if decision.canary_replicas is None else (canary, decision.canary_replicas),
                       route_weight=decision.route_weight or 0, mirror=decision.mirror)
    status["model"] = stable.as_status()
    write_back = None
    if ended:
        if survivor.version != stable.version:
            status["previousModel"] = stable.as_status(signature=False)
            status["model"] = survivor.as_status()
        if ro.kind != api.RolloutKind.UNDO and decision.action in ("Promoted", "RolledBack"):
            write_back = write_back_of(spec, canary, promoted=decision.action == "Promoted", reason=ro.reason or "")
    return Plan(status=status, events=events, objects=objects, readiness=True, write_back=write_back,
                rollout_action=decision.action, rollout_state=ro)


def _started(start: rollout.Decision, spec: api.ModelVersionSpec, total: int, world: rollout.World,
             now: float) -> rollout.Decision:
    """A new rollout's first tick: its record from ``start``, its replicas from the planner."""
    first = rollout.plan(start.rollout, spec, total, world, now)
    return dataclasses.replace(first, action="Start", message=start.message)


def canary_model(ro: api.RolloutStatus, fallback: ResolvedModel) -> ResolvedModel:
    """The canary track's model, from the rollout record (for an undo it is the previous version)."""
    record = _model_dict(ro.canary_model)
    model = pinned({"model": record}, ModelRef(str(record.get("name") or fallback.name),
                                                version=str(record.get("version") or "")))
    return model or fallback


def canary_problem(ro: api.RolloutStatus, version: str, problem: str) -> list[Event]:
    """Record why the canary's pods do not become ready in ``ro.canary_problem`` (the stable version still
    serves, so ``Ready`` is not touched) and give one Warning Event per distinct problem. Sets ``ro``'s field."""
    old = ro.canary_problem or ""
    ro.canary_problem = None  # status is merge-patched: null removes it
    if not problem or ro.phase not in rollout.STEPPING:
        return []
    same = bool(old) and diagnosis.same_problem(old, problem)
    ro.canary_problem = old if same and "ImagePullBackOff" in problem else problem
    return [] if same else [Event("Warning", diagnosis.REASON, f"canary version {version}: {ro.canary_problem}")]


def write_back_of(spec: api.ModelVersionSpec, model: ResolvedModel, promoted: bool, reason: str) -> WriteBack | None:
    """The registry write-back a promotion or rollback of ``model`` asks for (``spec.rollout.writeBack``, opt-in;
    None when off)."""
    wb = spec.rollout.write_back if spec.rollout is not None else None
    if wb is None or not wb.enabled:
        return None
    alias = wb.promote_alias or DEFAULT_PROMOTE_ALIAS
    what = (f"set @{alias} on {model.name} version {model.version} and tagged it modelpilot.promoted"
            if promoted else f"tagged {model.name} version {model.version} modelpilot.rejected")
    return WriteBack(model=model, promoted=promoted, alias=alias, reason=reason[:500], what=what)


def written_back(status: dict[str, Any], wb: WriteBack, failure: Unresolved | None, now: str) -> list[Event]:
    """The outcome of a write-back in ``status`` (the ``RegistryWriteBack`` condition, set in place) and its
    Event: never fatal (the rollout decision stands), never silent (a failure is one Warning Event)."""
    generation = int(status.get("observedGeneration") or 1)
    conditions = list(status.get("conditions") or [])
    if failure is None:
        status["conditions"] = set_condition(conditions, "RegistryWriteBack", "True", "Written", wb.what,
                                             generation, now)
        return []
    message = f"registry write-back failed (wanted: {wb.what}): {failure.message}"
    status["conditions"] = set_condition(conditions, "RegistryWriteBack", "False", failure.reason, message,
                                         generation, now)
    return [Event("Warning", "RegistryWriteBackFailed", message)]
