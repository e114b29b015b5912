"""Reconcile logic for ModelVersion: decide what should exist, apply it, and say so in status.

Layer 2 of the operator, between the kopf handlers and the builders/adapters.
The rules that keep production safe live here:

* a version is resolved in MLflow once and pinned in ``status.model``; it is
  resolved again only when the spec changes or, with ``followAlias``, when the
  alias poll asks — so a restarted operator keeps serving exactly what it served;
* a registry that is unreachable or does not know the model never touches what
  runs: the Deployment is left as it is, ``Ready=False`` says why, and the
  caller retries with back-off;
* status is written through the status subresource with kstatus conditions
  (``Ready``, ``Reconciling``, ``Stalled``) carrying ``observedGeneration``.

The spec is parsed once, where ``Reconciler.reconcile`` reads the body, into
``api.ModelVersionSpec``; everything below it (builders, the rollout planner,
analysis) takes that typed spec. A spec that does not parse (the API server
validated it, so only an object stored before the schema or written around it)
takes the ``SpecError`` path: ``Resolved=False`` naming the field, one Warning
Event, nothing applied. ``status.rollout`` is parsed once as well (``rollout_status`` → ``api.RolloutStatus``,
which the planner takes and returns) and serialized once, where status is written (``rollout_patch``); the rest
of ``status`` is a plain dict, and the readiness refresh reads the rollout's phase from it without a parse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from modelpilot.operator import abtest, analysis, api, builders, contract, diagnosis, rollout
from modelpilot.operator.gateways import MirrorStyles
from modelpilot.operator.kube import Kube, KubeError, KubeUnavailable
from modelpilot.operator.logs import about
from modelpilot.operator.metrics import OperatorMetrics
from modelpilot.operator.mirroring import MirrorStyle
from modelpilot.operator.prometheus import Prometheus, PrometheusError
from modelpilot.operator.registry import (
    Credentials,
    ModelRef,
    Registries,
    Registry,
    RegistryError,
    RegistryFactory,
    RegistryNotFound,
    RegistryUnauthorized,
    ResolvedModel,
)
from modelpilot.operator.settings import OperatorSettings

ACTION_ANNOTATION = contract.ACTION_ANNOTATION
_log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Result:
    """What one reconcile decided: the status written, Events to post, whether to retry."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    retry: bool = False
    message: str = ""
    involved: dict[str, Any] | None = None
    """The resource as read, for posting the Events against (when the caller has no body of its own)."""


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


#: Threads for the synchronous MLflow and Prometheus clients (each call bounded by its own timeout).
BLOCKING_THREADS = 32
T = TypeVar("T")

#: The alias write-back sets when ``spec.rollout.writeBack.promoteAlias`` is not given (the CRD has no default).
DEFAULT_PROMOTE_ALIAS = "champion"
#: How old the stable Deployment's apply answer may be to judge readiness on; older and not ready: read again.
STALE_APPLY_SECONDS = 1.0


class SpecError(Exception):
    """The spec is valid for the schema but cannot work (e.g. a missing credentials Secret key)."""


class InvalidSpec(SpecError):
    """The spec does not parse with the typed API (``api``): the message names each field. Only a new spec
    can fix it, and a new spec is a reconcile of its own, so it is not retried."""


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


# ---------------------------------------------------------------------------- pure helpers


def set_condition(conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str,
                  generation: int, now: str) -> list[dict[str, Any]]:
    """Replace one condition, keeping ``lastTransitionTime`` when its status did not change."""
    old = next((c for c in conditions if c.get("type") == kind), None)
    changed = old is None or old.get("status") != status
    new = {"type": kind, "status": status, "reason": reason, "message": message[:1000] or reason,
           "observedGeneration": generation,
           "lastTransitionTime": now if changed else old.get("lastTransitionTime", now)}  # type: ignore[union-attr]
    return [c for c in conditions if c.get("type") != kind] + [new]


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


def readiness_view(deployment: dict[str, Any]) -> dict[str, Any]:
    """The part of a Deployment its ModelVersion's readiness is judged on (``observe``, ``pods_of``, which copy
    is newer): metadata, ``spec.replicas`` and ``spec.selector``, and status — not the pod template. A reconcile
    keeps its stable Deployment's apply answer while the rest of its objects are applied, seconds in a burst
    (a Service waits for the ClusterIP allocator): hundreds of full copies were most of the operator's peak."""
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    return {"apiVersion": deployment.get("apiVersion"), "kind": deployment.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "generation", "resourceVersion",
                                              "labels", "ownerReferences") if k in meta},
            "spec": {k: spec[k] for k in ("replicas", "selector") if k in spec},
            "status": deployment.get("status") or {}}


def resource_version(obj: dict[str, Any] | None) -> int | None:
    """An object's ``metadata.resourceVersion`` as a number, to tell which of two copies of one object is newer;
    None when absent or not a number. Kubernetes calls it opaque, but every apiserver backed by etcd writes the
    etcd revision there, and each use here falls back to a read when it is not a number."""
    value = ((obj or {}).get("metadata") or {}).get("resourceVersion")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _observed_key(deployment: dict[str, Any] | None) -> tuple[Any, ...]:
    """What readiness is judged on in a Deployment: its generation and the status counts and conditions."""
    if deployment is None:
        return ()
    dstatus = deployment.get("status") or {}
    return ((deployment.get("metadata") or {}).get("generation"), (deployment.get("spec") or {}).get("replicas"),
            *(dstatus.get(k) for k in ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas",
                                       "availableReplicas")),
            tuple((c.get("type"), c.get("status"), c.get("reason")) for c in dstatus.get("conditions") or []))


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
    conditions = set_condition(conditions, "Ready", "True" if seen["ready"] else "False", seen["reason"],
                               seen["message"], generation, now)
    conditions = set_condition(conditions, "Reconciling", "False" if seen["ready"] or seen["stalled"] else "True",
                               seen["reason"], seen["message"], generation, now)
    conditions = set_condition(conditions, "Stalled", "True" if seen["stalled"] else "False", seen["reason"],
                               seen["message"], generation, now)
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


def rollout_status(status: dict[str, Any], namespace: str = "", name: str = "") -> api.RolloutStatus:
    """``status.rollout`` as the planner takes it: parsed once, where a body enters a reconcile.

    The API server validated what it stores against the CRD, so this parses; should a field not (an object
    stored before the field was declared, written by hand), that field is left out and logged — the rest of
    the state still resumes, and the field is not written back (a merge patch leaves it as stored). The line
    names the ModelVersion ``namespace/name``."""
    raw = status.get("rollout") or {}
    try:
        return api.RolloutStatus.model_validate(raw)
    except ValidationError as exc:
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        about(_log, namespace, name).warning("status.rollout: ignoring fields that do not parse: %s",
                                             spec_errors(exc, "status.rollout"))
        return api.RolloutStatus.model_validate({k: v for k, v in raw.items() if k not in bad})


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


# ---------------------------------------------------------------------------- the reconciler


class KeyedLocks:
    """One ``asyncio.Lock`` per key (``(namespace, name)``), held only while someone uses or awaits it.

    The map keeps its locks weakly: a lock lives as long as a coroutine holds it or waits for it (the
    ``async with`` keeps it referenced), then its entry goes. Kept strongly, a lock outlived its resource
    whenever an event for it came after the deletion (the garbage collector's Deployment deletions refresh
    their ModelVersion's readiness after it is gone) — one lock and key per ModelVersion ever deleted, and a
    high-water mark the allocator kept after every burst (benchmarks/README.md). Callable from any thread.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._guard = threading.Lock()

    def __call__(self, namespace: str, name: str) -> asyncio.Lock:
        """The lock of ``namespace/name``: the same object for every caller while any of them holds it."""
        with self._guard:
            lock = self._locks.get((namespace, name))
            if lock is None:
                lock = self._locks[(namespace, name)] = asyncio.Lock()
            return lock

    def __len__(self) -> int:
        """Locks in use or awaited now."""
        with self._guard:
            return len(self._locks)


class Reconciler:
    """Reconciles ModelVersions with one settings object, one Kubernetes adapter and a registry factory."""

    def __init__(self, settings: OperatorSettings, kube: Kube, registry_factory: RegistryFactory | None = None,
                 metrics: OperatorMetrics | None = None):
        self.settings = settings
        self.kube = kube
        self.metrics = metrics or OperatorMetrics()  # rollout and analysis figures (the core's, when it made this)
        # One reconcile at a time per ModelVersion, whichever path asks (kopf handlers, the ticker, an ABTest):
        # with each one reading the resource afresh inside the lock, no reconcile decides on a status another
        # one has already moved past (a stale one could redo a canary step).
        self.lock = KeyedLocks()
        self._locks_guard = threading.Lock()  # the maps below
        # The stable Deployment's observed state behind the readiness last written for each ModelVersion: a
        # Deployment event that shows the same state cannot change it, so it reads nothing (most events are
        # the controller's own bookkeeping). Only a hint — every write is judged on fresh reads.
        self._written: dict[tuple[str, str], tuple[Any, ...]] = {}
        # ... and that Deployment's resourceVersion: an event that delivers an older copy (kopf queues an object's
        # events while its handler runs) is not judged again, so it cannot undo a newer verdict.
        self._written_rv: dict[tuple[str, str], int] = {}
        # The newest copy of each ModelVersion known without asking: from its watch events (``note``) and the
        # answers to this operator's own status writes. A readiness refresh starts from it instead of a GET (two
        # per ModelVersion in a burst); its write is conditional on that copy's resourceVersion, so a stale copy
        # costs one 409 and a read, never a wrong status.
        self._bodies: dict[tuple[str, str], dict[str, Any]] = {}
        # One pooled client and version cache per (tracking URI, credentials), kept across reconciles.
        self.registries = Registries(registry_factory or (
            lambda uri, creds: Registry(uri, creds, timeout=settings.mlflow.timeout_seconds)))
        # The synchronous MLflow and Prometheus clients run here, not on the event loop, and not on asyncio's
        # default pool (6 threads on 2 cores), where a hung MLflow would queue every reconcile behind it.
        self.blocking = ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="modelpilot-io")
        # Which ABTest routes to a ModelVersion: the operator wires a kopf index here (handlers._startup);
        # without one (unit tests, tools) the ABTests are listed.
        self.membership_lookup: Callable[[str, str], Membership | None] | None = None
        # The form each Gateway mirrors in (its class's controller), cached per Gateway: asked only when a
        # route is rendered, shared with the ABTest reconciler.
        self.mirror_styles = MirrorStyles(kube)
        self._prometheus: Prometheus | None = None  # one pooled client, made on first use (``prometheus``)

    def prometheus(self) -> Prometheus:
        """The one pooled Prometheus client (``MODELPILOT_PROMETHEUS_URL``, ``MODELPILOT_PROMETHEUS_TIMEOUT_SECONDS``)
        every canary analysis and ABTest comparison queries through, made on first use; raises
        ``PrometheusError`` when no URL is set. Callable from any thread (the queries run on ``blocking``)."""
        with self._locks_guard:
            if self._prometheus is None:
                self._prometheus = Prometheus(self.settings.prometheus.url,
                                              timeout=self.settings.prometheus.timeout_seconds)
            return self._prometheus

    def close(self) -> None:
        """Close the pooled clients (MLflow's and Prometheus')."""
        self.registries.close()
        with self._locks_guard:
            prom, self._prometheus = self._prometheus, None
        if prom is not None:
            prom.close()

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the reconciler's own threads (a blocking HTTP call), awaited."""
        return await asyncio.get_running_loop().run_in_executor(self.blocking, functools.partial(fn, *args))

    def tracking_uri(self, spec: api.ModelVersionSpec) -> str:
        own = spec.registry.tracking_uri if spec.registry is not None else None
        return (own or self.settings.mlflow.tracking_uri).rstrip("/")

    async def credentials(self, namespace: str, spec: api.ModelVersionSpec) -> Credentials:
        secret = spec.registry.credentials_secret_ref if spec.registry is not None else None
        if secret is None:
            return Credentials()
        ref = secret.name
        try:
            data = await self.kube.secret_data(namespace, ref)
        except KubeUnavailable:
            raise  # the apiserver is down: retried as such, not blamed on the spec
        except KubeError as exc:
            raise SpecError(f"spec.registry.credentialsSecretRef: {exc}") from exc
        creds = Credentials(username=data.get("MLFLOW_TRACKING_USERNAME", ""),
                            password=data.get("MLFLOW_TRACKING_PASSWORD", ""),
                            token=data.get("MLFLOW_TRACKING_TOKEN", ""))
        if not (creds.token or creds.username):
            raise SpecError(f"spec.registry.credentialsSecretRef: Secret {ref!r} has neither "
                            "MLFLOW_TRACKING_TOKEN nor MLFLOW_TRACKING_USERNAME")
        return creds

    async def registry(self, namespace: str, spec: api.ModelVersionSpec) -> Registry:
        """The pooled registry for this spec's tracking URI and credentials (raises ``SpecError``,
        ``KubeUnavailable`` reading the credentials Secret, ``RegistryUnavailable`` without a URI)."""
        return self.registries.get(self.tracking_uri(spec), await self.credentials(namespace, spec))

    async def resolve(self, namespace: str, spec: api.ModelVersionSpec) -> ResolvedModel:
        registry, ref = await self.registry(namespace, spec), model_ref(spec)
        # The registry's HTTP client is synchronous (pooled, cached, single-flight): off the event loop, unless
        # the answer is in its cache (a thread hop per reconcile was a tenth of the CPU at 200 creates).
        hit = registry.resolve_cached(ref)
        return hit if hit is not None else await self.off_loop(registry.resolve, ref)

    def forget(self, namespace: str, name: str, uid: str = "") -> None:
        """A ModelVersion is gone: drop what is known about it and what the adapter knew about its objects (by
        its ``uid``). Its lock goes by itself once nobody holds it (``KeyedLocks``)."""
        with self._locks_guard:
            self._written.pop((namespace, name), None)
            self._written_rv.pop((namespace, name), None)
            self._bodies.pop((namespace, name), None)
        if uid:
            self.kube.forget_owner(uid)

    def note(self, body: dict[str, Any]) -> None:
        """Keep ``body`` (a ModelVersion as a watch event or a write's answer delivered it) as its newest known
        copy, unless a newer one is known already."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        rv = resource_version(body)
        with self._locks_guard:
            known = self._bodies.get(key)
            if rv is None:
                self._bodies.pop(key, None)  # cannot be ordered: the next refresh reads
            elif known is None or rv > (resource_version(known) or 0):
                self._bodies[key] = body

    def known_body(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The newest copy of a ModelVersion known without asking (``note``); None once it is gone."""
        with self._locks_guard:
            return self._bodies.get((namespace, name))

    def _unnote(self, namespace: str, name: str) -> None:
        with self._locks_guard:
            self._bodies.pop((namespace, name), None)

    def _remember(self, namespace: str, name: str, deployment: dict[str, Any] | None) -> None:
        rv = resource_version(deployment)
        with self._locks_guard:
            self._written[(namespace, name)] = _observed_key(deployment)
            if rv is None:
                self._written_rv.pop((namespace, name), None)
            else:
                self._written_rv[(namespace, name)] = rv

    def _older_than_written(self, namespace: str, name: str, deployment: dict[str, Any]) -> bool:
        """True when readiness was last written from a newer copy of this Deployment than ``deployment``."""
        rv = resource_version(deployment)
        with self._locks_guard:
            written = self._written_rv.get((namespace, name))
        return rv is not None and written is not None and rv < written

    def readiness_unchanged(self, namespace: str, name: str, deployment: dict[str, Any]) -> bool:
        """True when this stable Deployment (as an event delivered it) shows the state the ModelVersion's
        readiness was last written from, so refreshing it would change nothing."""
        with self._locks_guard:
            return self._written.get((namespace, name)) == _observed_key(deployment)

    async def reconcile_latest(self, namespace: str, name: str, *, refresh: bool = False,
                               member: Membership | None | Literal["look up"] = "look up",
                               seen: dict[str, Any] | None = None) -> tuple[Result, dict[str, Any]] | None:
        """Reconcile the ModelVersion as it is now (read inside its lock); None when it no longer exists.
        Returns the result and the body it started from (Events are posted against it). ``member``: see
        ``reconcile``. ``seen``: the body a watch event delivered; when it shows a ModelVersion this operator
        has never written status for (a create), it is used as read — nothing else writes a status before the
        first reconcile, and its write is conditional on that body's resourceVersion anyway (one read fewer
        per create)."""
        async with self.lock(namespace, name):
            written = (seen or {}).get("status") or {}
            if seen is not None and not written.get("observedGeneration") and not written.get("model"):
                body: dict[str, Any] | None = seen
            else:
                body = await self.kube.read_model_version(namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return None
            return await self.reconcile(body, refresh=refresh, member=member), body

    async def reconcile(self, body: dict[str, Any], *, refresh: bool = False,
                  member: Membership | None | Literal["look up"] = "look up") -> Result:
        """Bring one ModelVersion's objects in line with its spec.

        ``refresh`` asks MLflow again even when a version is pinned (the alias poll). ``member`` is its ABTest
        membership when the caller knows it better than the index (the ABTest reconciler, which has just
        written the replicas it assigns); by default it is looked up.
        """
        meta = body["metadata"]
        status = dict(body.get("status") or {})
        name, namespace, generation = meta["name"], meta["namespace"], int(meta.get("generation") or 1)
        now = now_iso()
        try:
            # Parsed once, here: everything below reads the typed spec and the model's defaults.
            spec = api.ModelVersionSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            return await self._invalid_spec(namespace, name, status, generation, now, spec_errors(exc))
        owner = builders.Owner(name=name, namespace=namespace, uid=meta["uid"])
        ref = model_ref(spec)
        events: list[Event] = []
        current = pinned(status, ref)  # the stable version, when it still answers the spec
        ro = rollout_status(status, namespace, name)  # parsed once; written back (rollout_patch) only where it changes
        known_canary = pinned({"model": _model_dict(ro.canary_model)}, ref) if ro.canary_model else None
        # While a rollout is active its canary is the newest answer to the spec's reference: with an alias both
        # the pinned stable version and the canary answer it, and the canary is where the alias points. (Taking
        # the stable one cancelled and restarted every alias-triggered canary on each tick.)
        if ro.phase in rollout.ACTIVE and ro.kind != api.RolloutKind.UNDO:
            model = known_canary or current
        else:
            model = current or known_canary
        if model is None or refresh:
            try:
                model = await self.resolve(namespace, spec)
            except (RegistryError, SpecError) as exc:
                return await self._unresolved(namespace, name, status, ref, generation, now, exc,
                                        keep=(current or known_canary) is not None)
            if current is not None and model.version == current.version:
                model = current  # same version: keep the original resolution time and provenance
            elif known_canary is not None and model.version == known_canary.version:
                model = known_canary
            else:
                what = f"{ref} → version {model.version} (run {model.run_id or 'unknown'})"
                events.append(Event("Normal", "Resolved", f"resolved {what}"))
                stable = status.get("model") or {}
                if ref.alias and stable.get("version") and stable.get("alias") == ref.alias:
                    events.append(Event("Normal", "AliasMoved", f"alias @{ref.alias} moved from version "
                                        f"{stable['version']} to {model.version}; rolling out"))
        assert model is not None
        stable_model = pinned(status, ModelRef(ref.name, version=str((status.get("model") or {}).get("version", ""))))
        conditions = set_condition(list(status.get("conditions") or []), "Resolved", "True", "Resolved",
                                   f"{ref} is version {model.version}", generation, now)
        status.update({"observedGeneration": generation, "conditions": conditions})

        canary_enabled = api.given(spec.rollout)
        applied: dict[str, Any] | None = None
        written = body.get("status") or {}
        if not written.get("observedGeneration") and not written.get("model"):
            # Never reconciled (the CRD defaults status to ``observedGeneration: 0``, so "no status" is never seen): nothing owned by this uid exists yet but what this reconcile applies, so the
            # optional objects are not read only to find them absent (3 reads fewer per new ModelVersion).
            # The one gap — an operator that applied one and died before any status write, and a spec that
            # dropped it meanwhile — is closed when an operator next starts and resumes it with status written.
            for kind, obj in (("Deployment", builders.deployment_name(owner, "canary")),
                              ("HorizontalPodAutoscaler", name), ("PodDisruptionBudget", name),
                              ("HTTPRoute", name), ("Service", f"{name}-stable"), ("Service", f"{name}-canary"),
                              ("SnippetsFilter", builders.canary_mirror_filter_name(owner))):
                self.kube.assume_absent(kind, namespace, obj, owner.uid)
        if member == "look up":  # the same pod labels and replicas on every path
            member = await self.abtest_membership(namespace, name)
        assigned = member.replicas if member else None  # an ABTest's replica-ratio share, if any
        total = int(assigned if assigned is not None else spec.replicas) or 1
        rejected = (ro.phase == api.RolloutPhase.ROLLED_BACK and ro.rejected_version == model.version
                    and stable_model is not None and stable_model.version != model.version)
        undo = self._pending_action(body, ro, status) == "undo" and stable_model is not None
        if stable_model is not None and (ro.phase in rollout.ACTIVE or rejected or undo or (
                canary_enabled and model.version != stable_model.version)):
            events += await self._canary(owner, spec, status, ro, stable_model, model, body, now, member, total)
        else:
            # First deployment, nothing changed, or a plain rolling update (no spec.rollout): the Deployment's own
            # rolling update (maxSurge 1, maxUnavailable 0) keeps every replica serving.
            if ro.phase == api.RolloutPhase.ROLLED_BACK and ro.rejected_version != model.version:
                ro.phase = api.RolloutPhase.SUPERSEDED  # the spec moved on from the rejected version
                status["rollout"] = rollout_patch(ro)
            applied = await self._objects(owner, spec, status, model, member)
            if stable_model is not None and stable_model.version != model.version:
                status["previousModel"] = stable_model.as_status(signature=False)
            status["model"] = model.as_status()
        # The apply's answer is the Deployment as it is now (status included): no second read on that path.
        deployment = applied if applied is not None else await self.kube.read_deployment(namespace, name)
        status, ready_events = await self._write_readiness(namespace, name, status, generation, deployment, now,
                                                     await self.pods_of(namespace, deployment), first=body)
        return Result(status=status, events=events + ready_events)

    async def _write_readiness(self, namespace: str, name: str, status: dict[str, Any],
                         generation: int, deployment: dict[str, Any] | None, now: str,
                         pods: list[dict[str, Any]] | None,
                         first: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Event]]:
        """Write status with readiness judged against the readiness conditions last *written*, not those of an
        older body: a Deployment event's refresh may have written and posted the same transition meanwhile.
        The write only lands on the version it was judged against (``first``, the body this reconcile read
        under its lock, then a fresh read after a conflict), so each readiness transition posts one Event."""
        out, events = status, list[Event]()
        for attempt in range(3):
            fresh = first if attempt == 0 and first is not None else await self.kube.read_model_version(namespace, name)
            if fresh is None:
                return status, []  # deleted meanwhile: nothing to report on
            latest = {c.get("type"): c for c in (fresh.get("status") or {}).get("conditions") or []
                      if c.get("type") in READINESS_CONDITIONS}
            base = {**status, "conditions": [c for c in status.get("conditions") or []
                                             if c.get("type") not in latest] + list(latest.values())}
            new, events = readiness_status(base, generation, deployment, now, pods)
            out = {**base, **new}
            out["phase"] = rollout_phase(out)
            answer = await self.kube.patch_status(namespace, name, out,
                                                  resource_version=fresh["metadata"].get("resourceVersion"))
            if answer:
                self._remember(namespace, name, deployment)
                self._note_answer(answer)
                return out, events
        self._note_answer(await self.kube.patch_status(namespace, name, out))  # still contended: read just now
        return out, events

    def _note_answer(self, answer: Any) -> None:
        """A status write's answer is the ModelVersion as it is now: the newest known copy."""
        if isinstance(answer, dict) and answer.get("metadata"):
            self.note(answer)

    async def pods_of(self, namespace: str, deployment: dict[str, Any] | None) -> list[dict[str, Any]] | None:
        """The pods of a serving Deployment that is not fully available (to say why); None otherwise."""
        if deployment is None or observe(deployment)["ready"]:
            return None
        if not int((deployment.get("status") or {}).get("replicas") or 0):
            return None  # no pod yet (just created or scaled to 0): nothing a pod could explain
        selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not selector:
            return None
        try:
            return await self.kube.list_pods(namespace, selector)
        except KubeError as exc:  # e.g. RBAC without pods: say less, but keep reconciling
            # The stable Deployment is named after its ModelVersion.
            about(_log, namespace, deployment["metadata"]["name"]).warning(
                "cannot tell why the pods are not ready: %s", exc)
            return None

    # ------------------------------------------------------------------ canary

    async def abtest_membership(self, namespace: str, name: str) -> Membership | None:
        """(ABTest name, replicas it assigns or None, shadow?) when an ABTest routes to this ModelVersion:
        from the operator's index of ABTests when wired, else by listing them."""
        if self.membership_lookup is not None:
            # The index says which ABTest (kept current by its watch); the ABTest itself is read now, because
            # the index can trail the replicas that ABTest has just assigned by a watch event.
            known = self.membership_lookup(namespace, name)
            if known is None:
                return None
            test = await self.kube.read_abtest(namespace, known.abtest)
            return memberships(test).get(name) if test is not None else None
        found = sorted((m for test in await self.kube.list_abtests(namespace) for m in memberships(test).items()
                        if m[0] == name), key=lambda m: m[1].abtest)
        return found[0][1] if found else None

    async def _objects(self, owner: builders.Owner, spec: api.ModelVersionSpec, status: dict[str, Any],
                       stable: ResolvedModel, member: Membership | None, **kwargs: Any) -> dict[str, Any] | None:
        """Plan the owned objects (``desired_objects``, pure) and act on them; ``status.gatewayRoute`` follows.
        Returns the stable Deployment as its apply answered (None if it was not applied)."""
        if spec.routing is not None:  # a route is rendered: in the form its Gateway mirrors in
            kwargs["mirror_style"] = await self.mirror_styles.of(spec.routing.gateway_ref, owner.namespace)
        objects = desired_objects(owner, spec, stable, member, self.tracking_uri(spec), self.settings.serving_image,
                                  had_gateway_route=bool(status.get("gatewayRoute")), **kwargs)
        applied: dict[str, Any] | None = None
        applied_at = 0.0
        # Each manifest is let go once applied: a create's Deployment manifest was held while its Service waited
        # seconds at the ClusterIP allocator, for 200 creates at once (benchmarks/README.md).
        steps, gateway_route = list(objects.steps), objects.gateway_route
        del objects
        steps.reverse()
        while steps:
            verb, what = steps.pop()
            if verb == "delete":
                await self.kube.delete_owned(what[0], owner.namespace, what[1], owner.uid)
                continue
            stable = what["kind"] == "Deployment" and what["metadata"]["name"] == owner.name
            answer = await self.kube.apply(what)
            del what
            if stable:
                applied = readiness_view(answer) if isinstance(answer, dict) and answer.get("kind") == "Deployment" \
                    else None
                applied_at = time.monotonic()
            del answer  # not kept while the next object's apply is awaited
        if applied is not None and not observe(applied)["ready"] \
                and time.monotonic() - applied_at > STALE_APPLY_SECONDS:
            # The objects applied after it took a while (a burst of Services waits on the apiserver's
            # ClusterIP allocator, one at a time): the Deployment has moved on since its apply answered, so
            # readiness is judged on a fresh read — one write instead of a second refresh round after it.
            applied = await self.kube.read_deployment(owner.namespace, owner.name)
        if gateway_route != KEEP:
            status["gatewayRoute"] = gateway_route
        return applied

    async def _canary(self, owner: builders.Owner, spec: api.ModelVersionSpec, status: dict[str, Any],
                      ro: api.RolloutStatus, stable: ResolvedModel, candidate: ResolvedModel, body: dict[str, Any],
                      now_text: str, member: Membership | None, total: int) -> list[Event]:
        """One tick of a guarded rollout: observe both tracks, plan (``rollout.plan``, pure), act. ``ro`` is
        ``status.rollout`` as parsed (``rollout_status``); the new one is written once, at the end."""
        events: list[Event] = []
        now = rollout.parse_time(now_text)
        stored = status.get("rollout") or {}  # as read: its fields a new rollout does not set are removed
        world = await self._observe_tracks(owner)
        action = self._pending_action(body, ro, status)
        handled = self._annotation(body) if action else ro.handled_action
        if ro.phase == api.RolloutPhase.ROLLED_BACK and ro.rejected_version == candidate.version \
                and action != "undo":
            # Rejected: keep serving the stable version until the spec or the alias points elsewhere.
            await self._objects(owner, spec, status, stable, member)
            status["model"] = stable.as_status()
            return events
        stepping = ro.phase in rollout.STEPPING
        undoing = ro.kind == api.RolloutKind.UNDO
        if action == "undo" and ro.phase not in rollout.ACTIVE:
            previous = api.ModelStatus.model_validate(status.get("previousModel") or {})
            if not previous.version or previous.version == stable.version:
                ro = ro.model_copy(update={"handled_action": handled})
                status["rollout"] = rollout_patch(ro)
                await self._objects(owner, spec, status, stable, member)
                return [Event("Warning", "UndoImpossible", f"nothing to undo: no earlier version than "
                              f"{stable.version} is recorded in status.previousModel")]
            # The spec's version stays rejected (usually the serving one; after an earlier rollback the spec may
            # still name the version that was rolled back), so the undo is not followed by a new canary of it.
            start = rollout.start(_model_status(stable), previous, spec, now, kind="Undo",
                                  reason="requested with modelpilot undo",
                                  rejected="" if candidate.version == previous.version else candidate.version)
            decision = self._started(start, spec, total, world, now)
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
            decision = self._started(start, spec, total, world, now)
        else:
            canary_model = self._canary_model(ro, candidate)
            window = rollout.analysis_window(ro, spec, replace_action(world, action), total, now)
            # Prometheus is asked over a synchronous client: off the event loop.
            verdict, measurements = (await self.off_loop(self._analyse, owner, spec, stable, canary_model,
                                                             window, ro)
                                     if window is not None else (None, None))
            world = dataclasses.replace(world, action=action, verdict=verdict, measurements=measurements)
            decision = rollout.plan(ro, spec, total, world, now)
        ro = decision.rollout  # the planner's own copy
        if handled:
            ro.handled_action = handled
        events += self._canary_problem(ro, ro.canary_version or candidate.version, world.health.problem)
        kind = {"Start": ("Normal", "RolloutStarted"), "Advance": ("Normal", "RolloutStep"),
                "Promote": ("Normal", "Promoting"), "Promoted": ("Normal", "Promoted"),
                "RollBack": ("Warning", "RolledBack"), "RolledBack": ("Normal", "RollbackComplete"),
                "Cancel": ("Normal", "RolloutCancelled"), "Pause": ("Warning", "RolloutPaused")}.get(decision.action)
        if kind:
            events.append(Event(kind[0], kind[1], decision.message))
        if decision.warning:
            events.append(Event("Warning", "WeightNotHonoured", decision.warning))
        status["rollout"] = rollout_patch(ro, stored)  # fields the decision no longer sets are removed
        self.metrics.observe_rollout(owner.namespace, owner.name, decision.action, ro)
        canary_model = self._canary_model(ro, candidate)
        survivor = canary_model if decision.stable_model == "canary" else stable
        if decision.action in ("Promoted", "RolledBack", "Cancelled") and survivor.version != stable.version:
            survivor = await self._with_signature(owner, spec, survivor)
        await self._objects(owner, spec, status, survivor, member, stable_replicas=decision.stable_replicas,
                      canary=None if decision.canary_replicas is None else (canary_model, decision.canary_replicas),
                      route_weight=decision.route_weight or 0, mirror=decision.mirror)
        status["model"] = stable.as_status()
        if decision.action in ("Promoted", "RolledBack", "Cancelled"):
            if survivor.version != stable.version:
                status["previousModel"] = stable.as_status(signature=False)
                status["model"] = survivor.as_status()
            if ro.kind != api.RolloutKind.UNDO and decision.action in ("Promoted", "RolledBack"):
                events += await self._write_back(owner, spec, status, canary_model,
                                           promoted=decision.action == "Promoted", reason=ro.reason or "",
                                           now=now_text)
        return events

    @staticmethod
    def _started(start: rollout.Decision, spec: api.ModelVersionSpec, total: int, world: rollout.World,
                 now: float) -> rollout.Decision:
        """A new rollout's first tick: its record from ``start``, its replicas from the planner."""
        first = rollout.plan(start.rollout, spec, total, world, now)
        return dataclasses.replace(first, action="Start", message=start.message)

    @staticmethod
    def _canary_model(ro: api.RolloutStatus, fallback: ResolvedModel) -> ResolvedModel:
        """The canary track's model, from the rollout record (for an undo it is the previous version)."""
        record = _model_dict(ro.canary_model)
        model = pinned({"model": record}, ModelRef(str(record.get("name") or fallback.name),
                                                    version=str(record.get("version") or "")))
        return model or fallback

    async def _observe_tracks(self, owner: builders.Owner) -> rollout.World:
        """Both tracks' Deployments and the canary pods' health, as the planner reads them."""
        tracks = []
        for track in ("stable", "canary"):
            dep = await self.kube.read_deployment(owner.namespace, builders.deployment_name(owner, track))
            if dep is None:
                tracks.append(rollout.Track())
                continue
            dstatus, dspec = dep.get("status") or {}, dep.get("spec") or {}
            current = int(dstatus.get("observedGeneration") or 0) >= int(dep["metadata"].get("generation") or 0)
            ready = min(int(dstatus.get("updatedReplicas") or 0), int(dstatus.get("availableReplicas") or 0))
            template = ((dspec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            tracks.append(rollout.Track(
                replicas=int(dspec["replicas"]) if dspec.get("replicas") is not None else 1,
                ready=ready if current else 0, settled=bool(observe(dep)["ready"]) and current,
                version=str(template.get(builders.VERSION_LABEL, "")), exists=True))
        health = rollout.Health()
        if tracks[1].exists:
            try:
                pods = await self.kube.list_pods(owner.namespace, {builders.SELECTOR_LABEL: owner.name,
                                                              builders.TRACK_LABEL: "canary"})
            except KubeError as exc:  # e.g. RBAC without pods: health is then judged on the Deployment only
                about(_log, owner.namespace, owner.name).warning("cannot read the canary pods: %s", exc)
                pods = []
            health = pod_health(pods)
        return rollout.World(stable=tracks[0], canary=tracks[1], health=health)

    async def _with_signature(self, owner: builders.Owner, spec: api.ModelVersionSpec,
                              model: ResolvedModel) -> ResolvedModel:
        """The promoted version with its signature: a canary's copy in ``status.rollout`` has none (a status
        holds one signature), so it is read again from MLflow — best effort, the promotion does not wait on it."""
        if model.signature:
            return model
        try:
            # A copy that asks for this version (same registry and credentials); not validated again.
            pinned_spec = spec.model_copy(update={"model": api.ModelRef(name=model.name, version=model.version)})
            full = await self.resolve(owner.namespace, pinned_spec)
        except (RegistryError, SpecError) as exc:
            about(_log, owner.namespace, owner.name).warning("signature of %s version %s: %s", model.name,
                                                             model.version, exc)
            return model
        return dataclasses.replace(model, signature=full.signature, signature_inputs=full.signature_inputs,
                                   signature_truncated=full.signature_truncated, flavor=model.flavor or full.flavor)

    @staticmethod
    def _canary_problem(ro: api.RolloutStatus, version: str, problem: str) -> list[Event]:
        """Record why the canary's pods do not become ready in ``status.rollout.canaryProblem`` (the stable
        version still serves, so ``Ready`` is not touched) and post one Warning Event per distinct problem."""
        old = ro.canary_problem or ""
        ro.canary_problem = None  # status is merge-patched: null removes it
        if not problem or ro.phase not in rollout.STEPPING:
            return []
        same = bool(old) and diagnosis.same_problem(old, problem)
        ro.canary_problem = old if same and "ImagePullBackOff" in problem else problem
        return [] if same else [Event("Warning", diagnosis.REASON, f"canary version {version}: {ro.canary_problem}")]

    @staticmethod
    def _annotation(body: dict[str, Any]) -> str:
        return str(((body.get("metadata") or {}).get("annotations") or {}).get(ACTION_ANNOTATION, "")).strip()

    def _pending_action(self, body: dict[str, Any], ro: api.RolloutStatus, status: dict[str, Any]) -> str:
        return pending_action(self._annotation(body), ro, status)

    def _analyse(self, owner: builders.Owner, spec: api.ModelVersionSpec, stable: ResolvedModel,
                 candidate: ResolvedModel, step_seconds: int,
                 ro: api.RolloutStatus) -> tuple[str, list[dict[str, Any]]]:
        """One analysis round over this step's samples only. At a step where the stable version serves no
        traffic (100 %), relative checks compare with the baselines of earlier steps, or — for a check no
        earlier step measured — with the stable version's value just before the rollout started."""
        try:
            cfg = analysis.Settings.from_spec(spec.rollout.analysis if spec.rollout is not None else None)
        except analysis.AnalysisSpecError as exc:
            return "Inconclusive", [{"check": "spec", "verdict": "Error", "value": None, "baseline": None,
                                     "threshold": "", "samples": None, "query": "", "message": str(exc)}]
        try:
            prom = self.prometheus()
        except PrometheusError as exc:
            return "Inconclusive", [{"check": "prometheus", "verdict": "Error", "value": None, "baseline": None,
                                     "threshold": "", "samples": None, "query": "", "message": str(exc)}]
        stable_idle = (ro.weight or 0) >= 100
        started = ro.started_at.timestamp() if ro.started_at else None
        results = analysis.measure(
            prom.scalar, cfg, analysis.Target(owner.namespace, owner.name, candidate.version),
            analysis.Target(owner.namespace, owner.name, stable.version), step_seconds=step_seconds,
            stored_baselines=dict(ro.baselines or {}) if stable_idle else None,
            baseline_query=(lambda q: prom.scalar(q, at=started)) if stable_idle and started else None)
        for m in results:
            self.metrics.observe_measurement(owner.namespace, owner.name, m)
        return analysis.overall(results, cfg.no_data), [m.as_status() for m in results]

    async def _write_back(self, owner: builders.Owner, spec: api.ModelVersionSpec, status: dict[str, Any],
                          model: ResolvedModel, promoted: bool, reason: str, now: str) -> list[Event]:
        """Opt-in registry write-back (``spec.rollout.writeBack``), with the same credentials Secret as
        resolution. Never fatal (the rollout decision stands), but never silent: the outcome is the
        ``RegistryWriteBack`` condition, and a failure is one Warning Event."""
        wb = spec.rollout.write_back if spec.rollout is not None else None
        if wb is None or not wb.enabled:
            return []
        alias = wb.promote_alias or DEFAULT_PROMOTE_ALIAS
        what = (f"set @{alias} on {model.name} version {model.version} and tagged it modelpilot.promoted"
                if promoted else f"tagged {model.name} version {model.version} modelpilot.rejected")
        generation = int(status.get("observedGeneration") or 1)
        try:
            registry = await self.registry(owner.namespace, spec)
            if promoted:
                await self.off_loop(registry.set_alias, model.name, alias, model.version)
                await self.off_loop(registry.set_tag, model.name, model.version, "modelpilot.promoted", "true")
            else:
                await self.off_loop(registry.set_tag, model.name, model.version, "modelpilot.rejected",
                                        reason[:500])
        except (RegistryError, SpecError) as exc:
            why = ("Unauthorized" if isinstance(exc, RegistryUnauthorized) else "SpecError"
                   if isinstance(exc, SpecError) else "RegistryNotFound" if isinstance(exc, RegistryNotFound)
                   else "RegistryUnavailable")
            message = f"registry write-back failed (wanted: {what}): {exc}"
            about(_log, owner.namespace, owner.name).warning("%s", message)
            status["conditions"] = set_condition(list(status.get("conditions") or []), "RegistryWriteBack", "False",
                                                 why, message, generation, now)
            return [Event("Warning", "RegistryWriteBackFailed", message)]
        status["conditions"] = set_condition(list(status.get("conditions") or []), "RegistryWriteBack", "True",
                                             "Written", what, generation, now)
        return []

    async def _unresolved(self, namespace: str, name: str, status: dict[str, Any], ref: ModelRef | None,
                          generation: int, now: str, exc: Exception, keep: bool) -> Result:
        """The registry could not answer, or the spec cannot work: say why, touch nothing that runs, ask for a
        retry — but for a spec that does not parse (``InvalidSpec``, ``ref`` None), which only a spec change
        (a reconcile of its own) can fix. With nothing pinned, the phase says who must act (kstatus): MLflow
        unreachable or failing is ``Resolving`` (``Reconciling=True``: it comes back by itself); a model or
        version MLflow does not have, a credentials Secret missing or incomplete, or a spec that does not parse
        is ``Failed`` (``Stalled=True``, ``Reconciling=False``: someone has to register the version, fix the
        spec or create the Secret — so Argo CD and Flux report it instead of waiting). All but the last are still
        retried with back-off, so registering the version later recovers it without an edit."""
        not_found = isinstance(exc, RegistryNotFound)
        invalid = isinstance(exc, InvalidSpec)
        stalled = not_found or isinstance(exc, SpecError)  # InvalidSpec included
        reason = "ModelNotFound" if not_found else "SpecError" if isinstance(exc, SpecError) else "RegistryUnavailable"
        message = str(exc)
        conditions = set_condition(list(status.get("conditions") or []), "Resolved", "False", reason, message,
                                   generation, now)
        if not keep:
            # Nothing pinned for this spec: the resource is not Ready. What already runs stays untouched.
            conditions = set_condition(conditions, "Ready", "False", reason, message, generation, now)
            conditions = set_condition(conditions, "Reconciling", "False" if stalled else "True", reason, message,
                                       generation, now)
            conditions = set_condition(conditions, "Stalled", "True" if stalled else "False", reason, message,
                                       generation, now)
            status["phase"] = "Failed" if stalled else "Resolving"
        old: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Resolved"), {})
        repeated = old.get("status") == "False" and old.get("reason") == reason  # a retry: said already
        if invalid:  # a spec edited into another unreadable one is news; a retry it is not
            repeated = repeated and old.get("message") == (message[:1000] or reason)
        status.update({"conditions": conditions, "observedGeneration": generation})
        await self.kube.patch_status(namespace, name, status)
        said = f"cannot resolve {ref}: {message}" if ref is not None else f"the spec cannot be read: {message}"
        events = [] if repeated else [Event("Warning", reason, said)]
        return Result(status=status, events=events, retry=not invalid, message=message)

    async def _invalid_spec(self, namespace: str, name: str, status: dict[str, Any], generation: int, now: str,
                            message: str) -> Result:
        """A spec that does not parse: the ``SpecError`` path (``Resolved=False`` naming each field, one Warning
        Event; ``Ready=False``, ``Stalled=True`` and phase ``Failed`` when nothing serves yet), nothing applied or
        deleted. Said already for this generation (a rollout tick, an alias poll): nothing is written again."""
        old: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Resolved"), {})
        if (status.get("observedGeneration") == generation and old.get("status") == "False"
                and old.get("reason") == "SpecError" and old.get("message") == message[:1000]):
            return Result(status=status, message=message)
        serving = bool((status.get("model") or {}).get("version"))
        return await self._unresolved(namespace, name, status, None, generation, now, InvalidSpec(message),
                                      keep=serving)

    async def refresh_readiness(self, namespace: str, name: str,
                                deployment: dict[str, Any] | None = None) -> Result | None:
        """Update the ModelVersion's readiness from its Deployment and, while it is not available, its pods.
        Deployment events call this with the Deployment they delivered; the ticker, while a ModelVersion is not
        Ready, without one (then it is read now; a crash-looping pod changes no Deployment field, so no
        Deployment event would tell; pods are not watched).

        It starts from the newest copy of the ModelVersion it knows (``note``), else reads it. An event's
        Deployment older than the one readiness was last written from is not judged again (a newer verdict
        stands; the newer events follow). The write lands only on the ModelVersion's version it started from;
        on a conflict (kopf's own annotation patch, mostly) it reads the ModelVersion again and retries.
        Dropping it was how a ModelVersion stayed not Ready for good: its Deployment had settled, so no later
        event came (tests/cluster/test_cold_start.py)."""
        if deployment is not None and resource_version(deployment) is None:
            deployment = None  # cannot be ordered against what was written: read it
        if deployment is not None and self._older_than_written(namespace, name, deployment):
            return None
        for attempt in range(5):
            body = self.known_body(namespace, name) if attempt == 0 else None
            if body is None:
                body = await self.kube.read_model_version(namespace, name)
            if body is None:
                return None
            status = dict(body.get("status") or {})
            if not status.get("model"):
                return None  # not reconciled yet; the reconcile handler writes the first status
            generation = int(body["metadata"].get("generation") or 1)
            if deployment is None:
                deployment = await self.kube.read_deployment(namespace, name)
            new, events = readiness_status(status, int(status.get("observedGeneration") or generation),
                                           deployment, now_iso(), await self.pods_of(namespace, deployment))
            new["phase"] = rollout_phase({**status, **new})
            changed = {k: v for k, v in new.items() if status.get(k) != v}
            if changed:
                answer = await self.kube.patch_status(namespace, name, new,
                                                      resource_version=body["metadata"].get("resourceVersion"))
                if not answer:
                    self._unnote(namespace, name)
                    continue  # written meanwhile: judge again on what is there now
                self._note_answer(answer)
            self._remember(namespace, name, deployment)
            return Result(status={**status, **new}, events=events, involved=body)
        return None  # still contended after 5 rounds: the ticker re-checks a ModelVersion that is not Ready
