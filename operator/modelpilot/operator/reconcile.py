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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
import logging
from typing import Any

from modelpilot.operator import abtest, analysis, builders, diagnosis, metrics, rollout
from modelpilot.operator.kube import Kube, KubeError, KubeUnavailable
from modelpilot.operator.prometheus import Prometheus, PrometheusError
from modelpilot.operator.registry import (
    Credentials,
    ModelRef,
    Registry,
    RegistryError,
    RegistryNotFound,
    RegistryUnauthorized,
    ResolvedModel,
)
from modelpilot.operator.settings import OperatorSettings

RegistryFactory = Callable[[str, Credentials], Registry]
ACTION_ANNOTATION = "modelpilot.io/rollout-action"


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


class SpecError(Exception):
    """The spec is valid for the schema but cannot work (e.g. a missing credentials Secret key)."""


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


def model_ref(spec: dict[str, Any]) -> ModelRef:
    model = spec.get("model") or {}
    return ModelRef(name=model.get("name", ""), version=str(model.get("version") or ""),
                    alias=model.get("alias") or "")


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


def observe(deployment: dict[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any]:
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
    progressing = next((c for c in dstatus.get("conditions") or [] if c.get("type") == "Progressing"), {})
    base = {"replicas": total, "readyReplicas": ready_replicas}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return {**base, "phase": "Degraded", "ready": available >= desired > 0, "stalled": True,
                "reason": "ProgressDeadlineExceeded",
                "message": progressing.get("message", "the Deployment did not progress before its deadline")}
    if current and updated == desired and available == desired and total == desired:
        return {**base, "phase": "Ready", "ready": True, "stalled": False, "reason": "Available",
                "message": f"{available}/{desired} replicas serve the model"}
    return {**base, "phase": "Deploying", "ready": False, "stalled": False, "reason": "RollingOut",
            "message": f"rolling out: {updated}/{desired} replicas updated, {available} available, {total} running"}


def readiness_status(status: dict[str, Any], spec: dict[str, Any], generation: int,
                     deployment: dict[str, Any] | None, now: str,
                     pods: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], list[Event]]:
    """Status fields and transition Events that follow from the Deployment's state.

    ``pods`` (listed only while the Deployment is not fully available) explain why: the first
    informative container problem becomes reason ``ServingFailed`` with the pod's message, phase
    ``Failed`` (no replica ready) or ``Degraded``, and one Warning Event per distinct problem.
    """
    seen = observe(deployment, spec)
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
                    phase="Degraded" if seen["readyReplicas"] else "Failed")
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
    return "CanaryRollingOut", f"{where}; waiting for promotion or rollback"


READINESS_CONDITIONS = ("Ready", "Reconciling", "Stalled")


def rollout_phase(status: dict[str, Any]) -> str:
    """The resource phase, where a canary rollout overrides what the stable Deployment says."""
    ro = status.get("rollout") or {}
    if ro.get("phase") in rollout.ACTIVE:
        return "Progressing"
    if ro.get("phase") == "RolledBack" and ro.get("rejectedVersion") != (status.get("model") or {}).get("version"):
        return "RolledBack"
    return str(status.get("phase") or "Pending")


# ---------------------------------------------------------------------------- the reconciler


class Reconciler:
    """Reconciles ModelVersions with one settings object, one Kubernetes adapter and a registry factory."""

    def __init__(self, settings: OperatorSettings, kube: Kube, registry_factory: RegistryFactory | None = None):
        self.settings = settings
        self.kube = kube
        self.registry_factory = registry_factory or (
            lambda uri, creds: Registry(uri, creds, timeout=settings.registry_timeout_seconds))

    def tracking_uri(self, spec: dict[str, Any]) -> str:
        return ((spec.get("registry") or {}).get("trackingUri") or self.settings.tracking_uri).rstrip("/")

    def credentials(self, namespace: str, spec: dict[str, Any]) -> Credentials:
        ref = ((spec.get("registry") or {}).get("credentialsSecretRef") or {}).get("name")
        if not ref:
            return Credentials()
        try:
            data = self.kube.secret_data(namespace, ref)
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

    def resolve(self, namespace: str, spec: dict[str, Any]) -> ResolvedModel:
        registry = self.registry_factory(self.tracking_uri(spec), self.credentials(namespace, spec))
        try:
            return registry.resolve(model_ref(spec))
        finally:
            registry.close()

    def reconcile(self, body: dict[str, Any], *, refresh: bool = False) -> Result:
        """Bring one ModelVersion's objects in line with its spec.

        ``refresh`` asks MLflow again even when a version is pinned (the alias poll).
        """
        meta, spec = body["metadata"], body.get("spec") or {}
        status = dict(body.get("status") or {})
        name, namespace, generation = meta["name"], meta["namespace"], int(meta.get("generation") or 1)
        owner = builders.Owner(name=name, namespace=namespace, uid=meta["uid"])
        ref = model_ref(spec)
        now = now_iso()
        events: list[Event] = []
        current = pinned(status, ref)  # the stable version, when it still answers the spec
        ro = dict(status.get("rollout") or {})
        known_canary = pinned({"model": ro.get("canaryModel") or {}}, ref) if ro.get("canaryModel") else None
        model = current or known_canary
        if model is None or refresh:
            try:
                model = self.resolve(namespace, spec)
            except (RegistryError, SpecError) as exc:
                return self._unresolved(namespace, name, status, ref, generation, now, exc,
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

        canary_enabled = bool(spec.get("rollout"))
        member = self.abtest_membership(namespace, name)  # the same pod labels and replicas on every path
        if stable_model is None or model.version == stable_model.version or not canary_enabled:
            # First deployment, nothing changed, or a plain rolling update (no spec.rollout).
            if ro.get("phase") in rollout.ACTIVE:
                ro.update(phase="Cancelled", finishedAt=now, reason="the spec no longer asks for the canary version")
                events.append(Event("Normal", "RolloutCancelled", ro["reason"]))
                status["rollout"] = ro
            elif ro.get("phase") == "RolledBack" and ro.get("rejectedVersion") != model.version:
                ro["phase"] = "Superseded"  # the spec moved on from the rejected version
                status["rollout"] = ro
            self.kube.delete_owned("Deployment", namespace, builders.deployment_name(owner, "canary"), owner.uid)
            self._apply_stable(owner, spec, model, member)
            status["model"] = model.as_status()
        else:
            events += self._canary(owner, spec, status, stable_model, model, body, now, member)
        deployment = self.kube.read_deployment(namespace, name)
        status, ready_events = self._write_readiness(namespace, name, status, spec, generation, deployment, now,
                                                     self.pods_of(namespace, deployment, spec))
        return Result(status=status, events=events + ready_events)

    def _write_readiness(self, namespace: str, name: str, status: dict[str, Any], spec: dict[str, Any],
                         generation: int, deployment: dict[str, Any] | None, now: str,
                         pods: list[dict[str, Any]] | None) -> tuple[dict[str, Any], list[Event]]:
        """Write status with readiness judged against the readiness conditions last *written*, not those of the
        (possibly older) body this reconcile started from: a Deployment event's refresh may have written and
        posted the same transition meanwhile. The write only lands on the version read, so each readiness
        transition posts one Event."""
        out, events = status, list[Event]()
        for _ in range(3):
            fresh = self.kube.read_model_version(namespace, name)
            if fresh is None:
                return status, []  # deleted meanwhile: nothing to report on
            latest = {c.get("type"): c for c in (fresh.get("status") or {}).get("conditions") or []
                      if c.get("type") in READINESS_CONDITIONS}
            base = {**status, "conditions": [c for c in status.get("conditions") or []
                                             if c.get("type") not in latest] + list(latest.values())}
            new, events = readiness_status(base, spec, generation, deployment, now, pods)
            out = {**base, **new}
            out["phase"] = rollout_phase(out)
            if self.kube.patch_status(namespace, name, out,
                                      resource_version=fresh["metadata"].get("resourceVersion")):
                return out, events
        self.kube.patch_status(namespace, name, out)  # still contended: readiness was read just now anyway
        return out, events

    def pods_of(self, namespace: str, deployment: dict[str, Any] | None,
                spec: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The pods of a serving Deployment that is not fully available (to say why); None otherwise."""
        if deployment is None or observe(deployment, spec)["ready"]:
            return None
        selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not selector:
            return None
        try:
            return self.kube.list_pods(namespace, selector)
        except KubeError as exc:  # e.g. RBAC without pods: say less, but keep reconciling
            logging.getLogger(__name__).warning("cannot tell why the pods are not ready: %s", exc)
            return None

    # ------------------------------------------------------------------ canary

    def abtest_membership(self, namespace: str, name: str) -> Membership | None:
        """(ABTest name, replicas it assigns or None, shadow?) when an ABTest routes to this ModelVersion."""
        for test in self.kube.list_abtests(namespace):
            for v in abtest.variants(test.get("spec") or {}):
                if v.model_version != name:
                    continue
                replicas = None
                if abtest.provider(test.get("spec") or {}) == "replicas" and not v.shadow:
                    assigned = next((sv for sv in (test.get("status") or {}).get("variants") or []
                                     if sv.get("modelVersion") == name), {})
                    replicas = assigned.get("replicas")
                return Membership(test["metadata"]["name"], int(replicas) if replicas is not None else None,
                                  v.shadow)
        return None

    def _deployment(self, owner: builders.Owner, spec: dict[str, Any], model: ResolvedModel,
                    member: Membership | None, *, track: str = "stable", replicas: int | None = None) -> dict[str, Any]:
        """The one place a serving Deployment is rendered, for every path (plain, canary, promote, rollback,
        rejected): an ABTest member's pods always carry its label, so they never drop out of its Service."""
        return builders.build_deployment(owner, spec, model, self.tracking_uri(spec), self.settings.serving_image,
                                         track=track, replicas=replicas, extra_pod_labels=pod_labels(member))

    def _apply_stable(self, owner: builders.Owner, spec: dict[str, Any], model: ResolvedModel,
                      member: Membership | None, replicas: int | None = None) -> None:
        """Apply the stable track and its companions; ``replicas`` (a canary's split) overrides the ABTest's
        assignment, which overrides ``spec.replicas``."""
        manifests = builders.build_all(owner, spec, model, self.tracking_uri(spec), self.settings.serving_image)
        if replicas is None and member is not None:
            replicas = member.replicas
        manifests["Deployment"] = self._deployment(owner, spec, model, member, replicas=replicas)
        for kind, manifest in manifests.items():
            if manifest is None:
                self.kube.delete_owned(kind, owner.namespace, owner.name, owner.uid)
            else:
                self.kube.apply(manifest)

    def _canary(self, owner: builders.Owner, spec: dict[str, Any], status: dict[str, Any], stable: ResolvedModel,
                candidate: ResolvedModel, body: dict[str, Any], now_text: str,
                member: Membership | None = None) -> list[Event]:
        """One step of a guarded canary: traffic by replica ratio, analysis, promote or roll back."""
        events: list[Event] = []
        now = rollout.parse_time(now_text)
        ro = dict(status.get("rollout") or {})
        canary_name = builders.deployment_name(owner, "canary")
        assigned = member.replicas if member else None  # an ABTest's replica-ratio share, if any
        total = int(assigned if assigned is not None else spec.get("replicas", 1)) or 1
        if ro.get("phase") == "RolledBack" and ro.get("rejectedVersion") == candidate.version:
            # Rejected: keep serving the stable version until the spec or the alias points elsewhere.
            self.kube.delete_owned("Deployment", owner.namespace, canary_name, owner.uid)
            self._apply_stable(owner, spec, stable, member)
            return events
        if ro.get("phase") not in rollout.ACTIVE or ro.get("canaryVersion") != candidate.version:
            decision = rollout.start(stable.as_status(signature=False), candidate.as_status(signature=False),
                                     spec, now)
            if ro.get("handledAction"):  # an annotation already acted on must not hit the next canary
                decision.rollout["handledAction"] = ro["handledAction"]
            events.append(Event("Normal", "RolloutStarted", decision.message))
        else:
            action = self._pending_action(body, ro)
            canary_dep = self.kube.read_deployment(owner.namespace, canary_name)
            canary_ready = observe(canary_dep, spec)["ready"]
            problem = None if canary_ready else diagnosis.serving_problem(
                self.pods_of(owner.namespace, canary_dep, spec) or [])
            verdict, measurements = None, None
            cfg = rollout.settings(spec)
            due = now - rollout.parse_time(ro["stepStartedAt"]) >= cfg["interval"]
            if canary_ready and due and cfg["analysis"] and ro.get("phase") == "Progressing" and not action:
                verdict, measurements = self._analyse(owner, spec, stable, candidate)
            decision = rollout.step(ro, spec, now, canary_ready, verdict, measurements, action,
                                    canary_problem=problem.message if problem else "")
            if action:
                decision.rollout["handledAction"] = self._annotation(body)
            events += self._canary_problem(decision.rollout, candidate, problem)
            kind = {"Advance": ("Normal", "RolloutStep"), "Promote": ("Normal", "Promoted"),
                    "RollBack": ("Warning", "RolledBack"), "Pause": ("Warning", "RolloutPaused")}.get(decision.action)
            if kind:
                events.append(Event(kind[0], kind[1], decision.message))
        ro = decision.rollout
        status["rollout"] = ro
        metrics.observe_rollout(owner.namespace, owner.name, decision.action, ro)
        if decision.action == "Promote":
            candidate = self._with_signature(owner.namespace, spec, candidate)
            self._apply_stable(owner, spec, candidate, member)  # rolling update keeps old pods until new ones are ready
            self.kube.delete_owned("Deployment", owner.namespace, canary_name, owner.uid)
            status["model"] = candidate.as_status()
            events += self._write_back(owner.namespace, spec, status, candidate, promoted=True,
                                       reason=decision.message, now=now_text)
        elif decision.action == "RollBack":
            self.kube.delete_owned("Deployment", owner.namespace, canary_name, owner.uid)
            self._apply_stable(owner, spec, stable, member)
            status["model"] = stable.as_status()
            events += self._write_back(owner.namespace, spec, status, candidate, promoted=False,
                                       reason=decision.message, now=now_text)
        else:
            stable_replicas, canary_replicas = rollout.split(total, int(ro["weight"]))
            ro["replicas"] = {"stable": stable_replicas, "canary": canary_replicas}
            ro["effectiveWeight"] = rollout.effective_weight(stable_replicas, canary_replicas)
            self.kube.apply(self._deployment(owner, spec, candidate, member, track="canary",
                                             replicas=canary_replicas))
            self._apply_stable(owner, spec, stable, member, stable_replicas)
            status["model"] = stable.as_status()
        return events

    def _with_signature(self, namespace: str, spec: dict[str, Any], model: ResolvedModel) -> ResolvedModel:
        """The promoted version with its signature: a canary's copy in ``status.rollout`` has none (a status
        holds one signature), so it is read again from MLflow — best effort, the promotion does not wait on it."""
        if model.signature:
            return model
        try:
            full = self.resolve(namespace, {**spec, "model": {"name": model.name, "version": model.version}})
        except (RegistryError, SpecError) as exc:
            logging.getLogger(__name__).warning("signature of %s version %s: %s", model.name, model.version, exc)
            return model
        return dataclasses.replace(model, signature=full.signature, signature_inputs=full.signature_inputs,
                                   signature_truncated=full.signature_truncated, flavor=model.flavor or full.flavor)

    @staticmethod
    def _canary_problem(ro: dict[str, Any], candidate: ResolvedModel,
                        problem: diagnosis.Problem | None) -> list[Event]:
        """Record why the canary's pods do not become ready in ``status.rollout.canaryProblem`` (the stable
        version still serves, so ``Ready`` is not touched) and post one Warning Event per distinct problem."""
        old = str(ro.get("canaryProblem") or "")
        ro["canaryProblem"] = None  # status is merge-patched: null removes it
        if problem is None or ro.get("phase") not in rollout.ACTIVE:
            return []
        same = bool(old) and diagnosis.same_problem(old, problem.message)
        ro["canaryProblem"] = old if same and problem.reason == "ImagePullBackOff" else problem.message
        return [] if same else [Event("Warning", diagnosis.REASON,
                                      f"canary version {candidate.version}: {ro['canaryProblem']}")]

    @staticmethod
    def _annotation(body: dict[str, Any]) -> str:
        return str(((body.get("metadata") or {}).get("annotations") or {}).get(ACTION_ANNOTATION, "")).strip()

    def _pending_action(self, body: dict[str, Any], ro: dict[str, Any]) -> str:
        """A manual action asked for through the annotation and not handled yet.

        The value is ``<action>`` or ``<action>/<canary version>`` (what ``modelpilot promote`` writes);
        with a version it only applies to that canary. A value is acted on once: the handled value is
        kept in status and carried into later rollouts.
        """
        value = self._annotation(body)
        action, _, version = value.partition("/")
        if action not in ("promote", "abort", "pause", "resume") or value == ro.get("handledAction"):
            return ""
        if version and version != ro.get("canaryVersion"):
            return ""
        return action

    def _analyse(self, owner: builders.Owner, spec: dict[str, Any], stable: ResolvedModel,
                 candidate: ResolvedModel) -> tuple[str, list[dict[str, Any]]]:
        try:
            cfg = analysis.Settings.from_spec((spec.get("rollout") or {}).get("analysis"))
        except analysis.AnalysisSpecError as exc:
            return "Inconclusive", [{"check": "spec", "verdict": "Error", "value": None, "baseline": None,
                                     "threshold": "", "samples": None, "query": "", "message": str(exc)}]
        try:
            prom = Prometheus(self.settings.prometheus_url, timeout=self.settings.registry_timeout_seconds)
        except PrometheusError as exc:
            return "Inconclusive", [{"check": "prometheus", "verdict": "Error", "value": None, "baseline": None,
                                     "threshold": "", "samples": None, "query": "", "message": str(exc)}]
        try:
            results = analysis.measure(prom.scalar, cfg,
                                       analysis.Target(owner.namespace, owner.name, candidate.version),
                                       analysis.Target(owner.namespace, owner.name, stable.version))
        finally:
            prom.close()
        for m in results:
            metrics.observe_measurement(owner.namespace, owner.name, m)
        return analysis.overall(results, cfg.no_data), [m.as_status() for m in results]

    def _write_back(self, namespace: str, spec: dict[str, Any], status: dict[str, Any], model: ResolvedModel,
                    promoted: bool, reason: str, now: str) -> list[Event]:
        """Opt-in registry write-back (``spec.rollout.writeBack``), with the same credentials Secret as
        resolution. Never fatal (the rollout decision stands), but never silent: the outcome is the
        ``RegistryWriteBack`` condition, and a failure is one Warning Event."""
        wb = (spec.get("rollout") or {}).get("writeBack") or {}
        if not wb.get("enabled"):
            return []
        alias = wb.get("promoteAlias", "champion")
        what = (f"set @{alias} on {model.name} version {model.version} and tagged it modelpilot.promoted"
                if promoted else f"tagged {model.name} version {model.version} modelpilot.rejected")
        generation = int(status.get("observedGeneration") or 1)
        try:
            registry = self.registry_factory(self.tracking_uri(spec), self.credentials(namespace, spec))
            try:
                if promoted:
                    registry.set_alias(model.name, alias, model.version)
                    registry.set_tag(model.name, model.version, "modelpilot.promoted", "true")
                else:
                    registry.set_tag(model.name, model.version, "modelpilot.rejected", reason[:500])
            finally:
                registry.close()
        except (RegistryError, SpecError) as exc:
            why = ("Unauthorized" if isinstance(exc, RegistryUnauthorized) else "SpecError"
                   if isinstance(exc, SpecError) else "RegistryNotFound" if isinstance(exc, RegistryNotFound)
                   else "RegistryUnavailable")
            message = f"registry write-back failed (wanted: {what}): {exc}"
            logging.getLogger(__name__).warning("%s", message)
            status["conditions"] = set_condition(list(status.get("conditions") or []), "RegistryWriteBack", "False",
                                                 why, message, generation, now)
            return [Event("Warning", "RegistryWriteBackFailed", message)]
        status["conditions"] = set_condition(list(status.get("conditions") or []), "RegistryWriteBack", "True",
                                             "Written", what, generation, now)
        return []

    def _unresolved(self, namespace: str, name: str, status: dict[str, Any], ref: ModelRef, generation: int,
                    now: str, exc: Exception, keep: bool) -> Result:
        """The registry could not answer: say why, touch nothing that runs, ask for a retry."""
        not_found = isinstance(exc, RegistryNotFound)
        reason = "ModelNotFound" if not_found else "SpecError" if isinstance(exc, SpecError) else "RegistryUnavailable"
        message = str(exc)
        conditions = set_condition(list(status.get("conditions") or []), "Resolved", "False", reason, message,
                                   generation, now)
        if not keep:
            # Nothing pinned for this spec: the resource is not Ready. What already runs stays untouched.
            conditions = set_condition(conditions, "Ready", "False", reason, message, generation, now)
            conditions = set_condition(conditions, "Reconciling", "True", reason, message, generation, now)
            status["phase"] = "Failed" if not_found else "Resolving"
        old: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Resolved"), {})
        repeated = old.get("status") == "False" and old.get("reason") == reason  # a retry: said already
        status.update({"conditions": conditions, "observedGeneration": generation})
        self.kube.patch_status(namespace, name, status)
        events = [] if repeated else [Event("Warning", reason, f"cannot resolve {ref}: {message}")]
        return Result(status=status, events=events, retry=True, message=message)

    def refresh_readiness(self, namespace: str, name: str) -> Result | None:
        """Re-read the Deployment (and, while it is not available, its pods) and update the ModelVersion's
        readiness. Deployment events call this, and a timer while the ModelVersion is not Ready: a crash-looping
        pod changes no Deployment field, so no Deployment event would tell."""
        body = self.kube.read_model_version(namespace, name)
        if body is None:
            return None
        status = dict(body.get("status") or {})
        if not status.get("model"):
            return None  # not reconciled yet; the reconcile handler writes the first status
        generation = int(body["metadata"].get("generation") or 1)
        spec = body.get("spec") or {}
        deployment = self.kube.read_deployment(namespace, name)
        new, events = readiness_status(status, spec, int(status.get("observedGeneration") or generation),
                                       deployment, now_iso(), self.pods_of(namespace, deployment, spec))
        new["phase"] = rollout_phase({**status, **new})
        changed = {k: v for k, v in new.items() if status.get(k) != v}
        if changed and not self.kube.patch_status(namespace, name, new,
                                                  resource_version=body["metadata"].get("resourceVersion")):
            return None  # the reconciler wrote meanwhile; the next Deployment event re-reads
        return Result(status={**status, **new}, events=events)
