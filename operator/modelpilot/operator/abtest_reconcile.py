"""Reconcile logic for ABTest: routing, the variants' live figures, and the statistical verdict.

Layer 2 of the operator (beside ``reconcile``). The ABTest never writes the
variants' Deployments itself: it records the replicas each variant should
have in its status and asks the ModelVersion reconciler to apply them, so each
Deployment keeps exactly one writer.

The spec is parsed once, where ``ABTestReconciler.reconcile`` reads the body,
into ``api.ABTestSpec``; ``plan`` and the builders take it typed (``status``
stays a dict). One that does not parse is ``Ready=False`` with reason
``SpecError`` naming each field, and one Warning Event; nothing is applied.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from modelpilot.operator import abtest, analysis, api, mirroring
from modelpilot.operator.kube import KubeError
from modelpilot.operator.logs import about
from modelpilot.operator.mirroring import MirrorStyle
from modelpilot.operator.prometheus import PrometheusError
from modelpilot.operator.plan import (Event, Membership, memberships_of, readiness_conditions, set_condition,
                                     spec_errors)
from modelpilot.operator.reconcile import KeyedLocks, Reconciler, Result, now_iso

log = logging.getLogger(__name__)

#: 4xx answers that come back by themselves: unauthorised (a token being rotated), timeout, conflict, throttling.
_TRANSIENT = frozenset({401, 408, 409, 429})

#: What an absent ``spec.routing`` means (no Gateway, no pinning, no stickiness).
_NO_ROUTING = api.ABTestRouting()
#: A variant ModelVersion's ``spec.replicas`` when not given (the model's default, as the CRD's).
_MV_REPLICAS: int = api.ModelVersionSpec.model_fields["replicas"].default

FIGURES = {
    "requests": "sum(increase(modelpilot_requests_total{{{sel}}}[{interval}]))",
    "errors": 'sum(increase(modelpilot_requests_total{{{sel},code=~"5.."}}[{interval}]))',
    "p99": ("histogram_quantile(0.99, sum by (le) "
            "(rate(modelpilot_request_duration_seconds_bucket{{{sel}}}[{interval}])))"),
    "correct": 'sum(increase(modelpilot_feedback_total{{{sel},outcome="correct"}}[{interval}]))',
    "feedback": "sum(increase(modelpilot_feedback_total{{{sel}}}[{interval}]))",
}


class ABTestReconciler:
    def __init__(self, models: Reconciler) -> None:
        self.models = models
        self.kube = models.kube
        self.settings = models.settings
        # One reconcile at a time per ABTest (the spec handler and the ticker's figures), each on a fresh read:
        # a figures refresh that read the spec before an edit and applied its route after the edit's reconcile
        # put the old route back (found by tests/cluster/test_gateway.py: a shadow made a serving variant kept
        # its mirror filter, whose SnippetsFilter the newer reconcile had deleted). Not the ModelVersions'
        # locks: an ABTest and a ModelVersion may share a name, and this one re-reconciles ModelVersions.
        self._lock = KeyedLocks()
        # Posts a variant's reconcile result (its Events: a replica change can make it NotReady, then Ready) against
        # the ModelVersion it read; wired by the operator's core, left None by tools and tests that post nothing.
        self.post_variant: Callable[[dict[str, Any], Result], Awaitable[None]] | None = None
        # Has a ModelVersion reconciled on its own, retried until it succeeds (``OperatorCore.request_reconcile``:
        # namespace, name, why); wired by the core, left None by tools and tests that reconcile no ModelVersion.
        self.request_reconcile: Callable[[str, str, str], None] | None = None

    async def reconcile(self, body: dict[str, Any], measure: bool = True) -> Result:
        """Reconcile the ABTest as it is now: ``body`` names it (and is the answer when it is gone); it is read
        again under its lock and ``reconcile_read`` decides on that."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        async with self._lock(namespace, name):
            fresh = await self.kube.read_abtest(namespace, name)
            if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                return Result(status=dict(body.get("status") or {}))
            return await self.reconcile_read(fresh, measure)

    async def reconcile_read(self, body: dict[str, Any], measure: bool = True) -> Result:
        """Observe (the variants' ModelVersions, their figures when ``measure``), ``plan``, act (apply the
        routing, write status, re-reconcile the variants whose replicas changed)."""
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        now = now_iso()
        try:
            # Parsed once, here: plan() and the builders read the typed spec and the model's defaults.
            spec = api.ABTestSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            unread = invalid_spec(body, spec_errors(exc), now)
            if unread.status != (body.get("status") or {}):  # said already for this generation: not again
                await self.kube.patch_status(namespace, name, unread.status, plural="abtests")
            return Result(status=unread.status, events=unread.events, message=unread.message)
        vs = abtest.variants(spec)
        bodies = {v.model_version: await self.kube.read_model_version(namespace, v.model_version) for v in vs}
        complete = all(b is not None for b in bodies.values())
        # Prometheus is asked over a synchronous client: off the event loop.
        figures = await self.models.off_loop(self._figures, namespace, name, vs, spec) if measure and complete else {}
        gateway = spec.routing.gateway_ref if spec.routing is not None else None
        # Asked only for a route that is rendered (cached per Gateway, shared with the ModelVersions).
        style = (await self.models.mirror_styles.of(gateway, namespace) if gateway is not None and complete
                 else MirrorStyle.REQUEST_MIRROR)
        decided = plan(body, spec, bodies, figures, now, measure, style)
        try:
            for manifest in decided.apply:
                await self.kube.apply(manifest)
            # After the route that no longer references them.
            for kind, obj in decided.delete:
                await self.kube.delete_owned(kind, namespace, obj, meta["uid"])
        except KubeError as exc:
            decided = routing_failed(decided, str(exc), int(meta.get("generation") or 1), now,
                                     refused=400 <= exc.status < 500 and exc.status not in _TRANSIENT)
        await self.kube.patch_status(namespace, name, decided.status, plural="abtests")
        # The variants' Deployments follow the replicas just recorded (one writer per Deployment).
        for mv, member in decided.members.items():
            try:
                # The membership just written, not the index's: its watch event may not have come yet.
                await self._posted(await self.models.reconcile_latest(namespace, mv, member=member))
            except KubeError as exc:
                about(log, namespace, name).warning("re-applying ModelVersion %s: %s", mv, exc)
        # Variants the spec no longer has still carry this ABTest's pod label and replica share: each is reconciled
        # with its membership as the index has it now, and retried until that succeeds (the status just written no
        # longer names them, so no later run of this ABTest would).
        if self.request_reconcile is not None:
            for mv in dropped_variants(body, decided.status):
                self.request_reconcile(namespace, mv, f"no longer a variant of ABTest {name}")
        return Result(status=decided.status, events=warnings_not_said(decided.events, body.get("status") or {}),
                      retry=decided.retry, message=decided.message)

    async def _posted(self, done: tuple[Result, dict[str, Any]] | None) -> None:
        if done is not None and self.post_variant is not None:
            await self.post_variant(done[1], done[0])

    def _figures(self, namespace: str, name: str, vs: list[abtest.Variant],
                 spec: api.ABTestSpec) -> dict[str, dict[str, Any]]:
        """Each variant's figures over ``spec.analysis.interval`` from Prometheus; {} when it cannot tell."""
        if not self.settings.prometheus.url:
            return {}
        # spec.analysis is free-form in the CRD (and the model): its defaults are the operator's.
        interval = str((spec.analysis or {}).get("interval", "5m"))
        try:
            prom = self.models.prometheus()
        except PrometheusError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        try:
            for v in vs:
                sel = f'namespace="{namespace}",variant="{v.model_version}"'
                values = {k: prom.scalar(q.format(sel=sel, interval=interval)) for k, q in FIGURES.items()}
                requests = values["requests"] or 0.0
                out[v.name] = {
                    "requests": int(round(requests)),
                    "errorRate": round((values["errors"] or 0.0) / requests, 6) if requests else None,
                    "p99LatencySeconds": round(values["p99"], 6) if values["p99"] is not None else None,
                    "accuracy": (round((values["correct"] or 0.0) / values["feedback"], 6)
                                 if values["feedback"] else None),
                    "_errors": values["errors"] or 0.0, "_correct": values["correct"] or 0.0,
                    "_feedback": values["feedback"] or 0.0,
                }
        except PrometheusError as exc:
            about(log, namespace, name).warning("ABTest figures: %s", exc)
            return {}
        return out



def compare(vs: list[abtest.Variant], figures: dict[str, dict[str, Any]], spec: api.ABTestSpec) -> dict[str, Any]:
    """Two-proportion test between the control (first variant) and each challenger.

    The success measure is accuracy from ground-truth feedback when both arms have feedback, the share
    of non-5xx answers otherwise. Pure: ``figures`` (from ``ABTestReconciler._figures``) is not changed.
    """
    cfg = spec.analysis or {}  # free-form (see _figures)
    alpha = float(cfg.get("significance", 0.05))
    minimum = int(cfg.get("minSamples", 100))
    serving = [v for v in vs if not v.shadow and v.name in figures]
    if len(serving) < 2:
        return {}
    control = serving[0]
    best: dict[str, Any] = {}
    for challenger in serving[1:]:
        a, b = figures[control.name], figures[challenger.name]
        if a["_feedback"] and b["_feedback"]:
            metric = "accuracy"
            result = analysis.two_proportion_test(a["_correct"], a["_feedback"], b["_correct"], b["_feedback"],
                                                  alpha, minimum)
        else:
            metric = "success-rate"
            result = analysis.two_proportion_test(a["requests"] - a["_errors"], a["requests"],
                                                  b["requests"] - b["_errors"], b["requests"], alpha, minimum)
        result = {**result, "metric": metric, "control": control.name, "challenger": challenger.name,
                  "significance": alpha}
        result["winner"] = {"A": control.name, "B": challenger.name}.get(result["decision"], "")
        if not best or (result["winner"] and not best.get("winner")):
            best = result
    return best


@dataclass
class ABTestPlan:
    """What one ABTest reconcile decided, before anything is written: the routing objects to apply, in order,
    then those to delete (kind, name: only if the ABTest owns them), the status to write (routing assumed
    applied; ``routing_failed`` says otherwise), Events, and the variants' ModelVersions to re-reconcile with
    the membership this status gives them (replica-ratio provider)."""

    apply: list[dict[str, Any]]
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    members: dict[str, Membership | None] = field(default_factory=dict)
    retry: bool = False
    message: str = ""
    provider: str = ""
    delete: list[tuple[str, str]] = field(default_factory=list)


def plan(body: dict[str, Any], spec: api.ABTestSpec, bodies: dict[str, dict[str, Any] | None],
         figures: dict[str, dict[str, Any]], now: str, measure: bool,
         mirror_style: MirrorStyle = MirrorStyle.REQUEST_MIRROR) -> ABTestPlan:
    """The ABTest's next state from what was observed. Pure (no I/O, time passed in).

    ``body``: the ABTest as read (metadata, status); ``spec``: its spec, parsed; ``bodies``: each variant's
    ModelVersion (None when missing); ``figures``: each variant's live figures by variant name ({} when not
    measured or Prometheus could not tell: the previous figures and comparison stay); ``measure``: a periodic
    refresh (variants are re-reconciled only when their replicas change) rather than a spec change (all of
    them are); ``mirror_style``: the form the Gateway mirrors in (observed by the ``gateways`` adapter). On
    NGINX Gateway Fabric each shadow variant is a SnippetsFilter applied before the route, and those of the
    shadows the last status names that the spec no longer has are deleted after it.
    """
    meta = body["metadata"]
    status = copy.deepcopy(dict(body.get("status") or {}))
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    generation = int(meta.get("generation") or 1)
    events: list[Event] = []
    vs = abtest.variants(spec)
    conditions = list(status.get("conditions") or [])
    missing = [mv for mv, b in bodies.items() if b is None]
    if missing:
        message = f"ModelVersion(s) not found in {namespace}: {', '.join(missing)}"
        conditions = readiness_conditions(conditions, False, "ModelVersionMissing", message, generation, now)
        status.update(conditions=conditions, observedGeneration=generation, phase="Pending")
        return ABTestPlan(apply=[], status=status, events=[Event("Warning", "ModelVersionMissing", message)],
                          retry=True, message=message)

    weights = {v.name: v.weight for v in vs if not v.shadow}
    winner = status.get("winner") or ""
    if spec.auto_promote and winner in weights:
        weights = {n: (100 if n == winner else 0) for n in weights}
    prov = abtest.provider(spec)
    routing_msg = ""
    prune: list[str] = []  # SnippetsFilters of shadows no longer mirrored
    manifests = [abtest.build_service(name, namespace, uid)]
    routing = spec.routing or _NO_ROUTING
    if prov == "replicas":
        # One field of each variant's ModelVersion: read from its body, not parsed (a validation per variant on
        # every refresh for one integer); its default is the model's.
        own = {mv: int(((b or {}).get("spec") or {}).get("replicas", _MV_REPLICAS)) for mv, b in bodies.items()}
        split = abtest.replica_split(vs, own, weights)
        effective = abtest.effective_weights(vs, split)
        # An empty headerPinning (never from the API server, which writes the default header in) asks for nothing.
        unsupported = [k for k, part in (("headerPinning", routing.header_pinning), ("sticky", routing.sticky))
                       if api.given(part)] + (["hostnames"] if routing.hostnames else [])
        if unsupported or any(v.shadow for v in vs):
            routing_msg = ("replica-ratio routing cannot honour " +
                           ", ".join(unsupported + (["shadow mirroring"] if any(v.shadow for v in vs) else [])) +
                           "; name a Gateway in spec.routing.gatewayRef")
    else:
        split, effective = {}, weights
        mirrors = abtest.mirrors(name, namespace, uid, vs, mirror_style)
        manifests.extend(mirrors.objects)
        manifests.append(abtest.build_httproute(name, namespace, uid, spec, vs, effective, mirror_style))
        if mirror_style == MirrorStyle.NGF_SNIPPETS:  # elsewhere the SnippetsFilter CRD may not exist
            rendered = {m["metadata"]["name"] for m in mirrors.objects}
            earlier = {mirroring.filter_name(name, str(sv.get("modelVersion")))
                      for sv in status.get("variants") or [] if sv.get("shadow") and sv.get("modelVersion")}
            prune = sorted(earlier - rendered)
        if routing.sticky is not None:
            routing_msg = ("sticky assignment needs Gateway API session persistence (experimental "
                           "channel), which this route does not request; requests are split by weight")

    previous = {sv.get("name"): sv for sv in status.get("variants") or []}
    variant_status = []
    for v in vs:
        mv_status = (bodies[v.model_version] or {}).get("status") or {}
        row: dict[str, Any] = {"name": v.name, "modelVersion": v.model_version, "shadow": v.shadow,
                               "version": (mv_status.get("model") or {}).get("version", ""),
                               "weight": 0 if v.shadow else effective.get(v.name, 0)}
        if v.model_version in split:
            row["replicas"] = split[v.model_version]
        figs = figures.get(v.name) or {k: previous.get(v.name, {}).get(k) for k in
                                       ("requests", "errorRate", "p99LatencySeconds", "accuracy")}
        row.update({k: val for k, val in figs.items() if val is not None and not k.startswith("_")})
        variant_status.append(row)
    status["variants"] = variant_status
    status["split"] = abtest.split_text(vs, effective)
    comparison = compare(vs, figures, spec) if figures else status.get("comparison")
    if comparison:
        status["comparison"] = comparison
        decided = comparison.get("winner") or ""
        if decided and decided != winner:
            events.append(Event("Normal", "WinnerDeclared", f"variant {decided} wins: {comparison['message']}"))
            status["winner"] = decided
    all_ready = all(any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in ((b or {}).get("status") or {}).get("conditions") or []) for b in bodies.values())
    if not all_ready:
        conditions = readiness_conditions(conditions, False, "VariantsNotReady",
                               "waiting for every variant's ModelVersion to be Ready", generation, now)
    else:
        conditions = readiness_conditions(conditions, True, "Routing", f"{prov} routing applied: {status['split']}",
                               generation, now)
    conditions = set_condition(conditions, "RoutingLimited", "True" if routing_msg else "False",
                               "Unsupported" if routing_msg else "None", routing_msg or "all requested routing "
                               "features are applied", generation, now)
    status["conditions"] = conditions
    status["observedGeneration"] = generation
    status["phase"] = ("Promoted" if spec.auto_promote and status.get("winner") else
                       "Concluded" if status.get("winner") else "Running" if all_ready else "Pending")
    members: dict[str, Membership | None] = {}
    if prov == "replicas":
        # Only the variants whose share changed, or all of them on a spec change — not on every refresh.
        before = {v.get("modelVersion"): v.get("replicas") for v in (body.get("status") or {}).get("variants") or []}
        after = {v.get("modelVersion"): v.get("replicas") for v in status.get("variants") or []}
        written = memberships_of(meta["name"], spec, status)
        members = {mv: written.get(mv) for mv in bodies if not (measure and before.get(mv) == after.get(mv))}
    return ABTestPlan(apply=manifests, status=status, events=events, members=members, message=routing_msg,
                      provider=prov, delete=[("SnippetsFilter", n) for n in prune])


def invalid_spec(body: dict[str, Any], message: str, now: str) -> ABTestPlan:
    """The plan for an ABTest whose spec does not parse (the API server validated it, so an object stored
    before the schema or written around it): nothing to apply, ``Ready=False`` with reason ``SpecError``
    naming each field, phase ``Failed``, one Warning Event — none of it again for the same problem of the same
    generation (the status as it was: nothing to write). Routing already applied stays; no retry, since only a
    new spec can fix it and a new spec is a reconcile of its own."""
    meta = body["metadata"]
    status = copy.deepcopy(dict(body.get("status") or {}))
    generation = int(meta.get("generation") or 1)
    old: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    stalled = any(c.get("type") == "Stalled" and c.get("status") == "True" for c in status.get("conditions") or [])
    said = old.get("status") == "False" and old.get("reason") == "SpecError" and old.get("message") == message[:1000]
    # Said already, unless before ABTests carried kstatus conditions (no Stalled yet: written again, no Event).
    if said and stalled and status.get("observedGeneration") == generation:
        return ABTestPlan(apply=[], status=status, message=message)
    status["conditions"] = readiness_conditions(list(status.get("conditions") or []), False, "SpecError", message,
                                                generation, now, stalled=True)
    status.update(observedGeneration=generation, phase=api.ABTestPhase.FAILED.value)
    events = [] if said else [Event("Warning", "SpecError", f"the spec cannot be read: {message}")]
    return ABTestPlan(apply=[], status=status, events=events, message=message)


def dropped_variants(body: dict[str, Any], status: dict[str, Any]) -> list[str]:
    """ModelVersions the ABTest's status named as variants before this run (``body``) and ``status`` (after it)
    no longer names, sorted."""
    def named(s: dict[str, Any]) -> set[str]:
        return {str(v["modelVersion"]) for v in s.get("variants") or [] if v.get("modelVersion")}

    return sorted(named(body.get("status") or {}) - named(status))


def warnings_not_said(events: list[Event], previous: dict[str, Any]) -> list[Event]:
    """``events`` less each Warning that the ABTest's status (``previous``, as read before this run) already
    says: ``Ready=False`` with the same reason and message. A problem that persists (a variant's ModelVersion
    missing, routing the API refuses) is re-planned on every periodic run; its Warning is posted once, when it
    starts or changes — one Event per transition, as for ModelVersions."""
    ready: dict[str, Any] = next((c for c in previous.get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("status") != "False":
        return events
    return [e for e in events if not (e.type == "Warning" and e.reason == ready.get("reason")
                                      and ready.get("message") in (e.message, e.message[:1000]))]


def routing_failed(decided: ABTestPlan, error: str, generation: int, now: str, refused: bool = False) -> ABTestPlan:
    """The plan after its routing could not be applied: not Ready with the API's message, a Warning, a retry.
    ``refused``: the API refused it (a 4xx other than a conflict or throttling: an invalid route, a Gateway API
    CRD not installed, RBAC), which someone has to fix (``Stalled=True``); else it comes back by itself
    (``Reconciling=True``)."""
    status = dict(decided.status)
    conditions = readiness_conditions(list(status.get("conditions") or []), False, "RoutingFailed", error,
                                      generation, now, stalled=refused)
    status["conditions"] = set_condition(conditions, "RoutingLimited", "False", "Unsupported", error, generation,
                                         now)
    return dataclasses.replace(decided, status=status, retry=True, message=error,
                               events=decided.events + [Event("Warning", "RoutingFailed", error)])
