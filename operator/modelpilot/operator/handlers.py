"""kopf handlers: translate Kubernetes events into reconcile calls. Nothing else lives here.

Layer 1 of the operator. ModelVersions and ABTests are reconciled from their
watch events, level-triggered (``model_version_event``, ``abtest_event``): no
kopf create/update/resume handler, so kopf writes no annotation on them. A
registry or API failure is retried by the ticker, for a ModelVersion with
exponential back-off (capped at 5 minutes, so a broken MLflow causes no retry
storm). Everything the operator knows about a failure is already in the
resource's status and Events. The process's state (``core.OperatorCore``)
reaches each handler through kopf's ``memo``: nothing here is a module global.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from modelpilot.operator import api, contract, rollout
from modelpilot.operator.core import OperatorCore
from modelpilot.operator.kube import Kube
from modelpilot.operator.metrics import OperatorMetrics
from modelpilot.operator.plan import ACTION_FIELDS, Membership, memberships, pending_action
from modelpilot.operator.settings import OperatorSettings

GROUP, VERSION, PLURAL = contract.GROUP, contract.VERSION, contract.MODELVERSION_PLURAL


def configure(settings: OperatorSettings, kube: Kube, metrics: OperatorMetrics | None = None) -> kopf.Memo:
    """The memo to run kopf with: it carries the one ``OperatorCore`` of this process (with ``metrics``, the ones
    its endpoint serves) to every handler."""
    memo = kopf.Memo()
    memo.core = OperatorCore(settings, kube, metrics)
    return memo


def _core(memo: kopf.Memo) -> OperatorCore:
    """The process's core (kopf hands each resource a shallow copy of the memo: the core is shared)."""
    core: OperatorCore = memo.core
    return core


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    await _core(memo).stop()


@kopf.index(GROUP, VERSION, "abtests")
async def abtest_routes(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Membership]:
    """(namespace, ModelVersion) → its membership in this ABTest. kopf keeps the index current from the
    ABTest watch and starts no resource handler before it is filled, so a restarted operator never renders a
    member's pods without their ABTest label, and no reconcile LISTs the ABTests."""
    namespace = body["metadata"]["namespace"]
    return {(namespace, mv): m for mv, m in memberships(dict(body)).items()}


def _member_of(index: kopf.Index[tuple[str, str], Membership]) -> Callable[[str, str], Membership | None]:
    def lookup(namespace: str, name: str) -> Membership | None:
        found = sorted(index.get((namespace, name), []), key=lambda m: m.abtest)
        return found[0] if found else None

    return lookup


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    core = _core(memo)
    # No kopf create/update/resume handler exists (both kinds are level-triggered from watch events), so kopf
    # keeps no progress or diff-base annotation on any resource.
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    # A server-side label selector: the operator is sent only the Deployments it manages, not every one in the
    # cluster (kopf's ``labels=`` filters on the handlers alone are applied after decoding). Pods are not
    # watched: a ModelVersion whose Deployment is not available is re-checked by the ticker, which reads its
    # pods then (``MODELPILOT_READINESS_RECHECK_SECONDS``); a pod watch delivered every serving pod's every
    # change, ~6 events per pod, to find the few that explain a failure (benchmarks/README.md).
    settings.watching.label_selectors["deployments"] = f"{contract.MANAGED_BY_LABEL}={contract.MANAGED_BY}"
    # Every handler is a coroutine on kopf's event loop (the API adapter is asynchronous): kopf's thread pool
    # only runs what is left synchronous, i.e. nothing of ours. Concurrency is bounded by the core's slots.
    # The index object is live (kopf passes the same one to every handler, named after the index function),
    # so the ticker's reconciles use it too.
    core.start(_member_of(kwargs["abtest_routes"]))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_version_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event of a ModelVersion (the initial listing included): keep the ticker's list current, and
    reconcile when the event shows a spec not yet observed (``metadata.generation`` ≠
    ``status.observedGeneration``), or once per process for each ModelVersion that exists when it starts.

    Level-triggered, not kopf's create/update/resume handlers: those record what they handled in an annotation
    on the resource (a PATCH per create, and a watch event back to every watcher: 200 of ~4,850 apiserver
    requests at 200 creates, benchmarks/README.md) and decide from a diff of it. Here the decision is the
    resource's own state, so a missed or reordered event is healed by the next one, or by kopf's re-listing.
    A failed reconcile is retried by the ticker with back-off (``OperatorCore.reconcile_seen``)."""
    core = _core(memo)
    seen = dict(body)
    core.seen(seen, type)
    if type == "DELETED":  # nothing to clean up (owner references do that); only its metrics series go
        core.metrics_gone(body["metadata"]["namespace"], body["metadata"]["name"])
        return
    if core.wants_reconcile(seen, type):
        await core.reconcile_seen(seen)


def _action_pending(body: kopf.Body, **_: Any) -> bool:
    status = dict(body.get("status") or {})
    value = str((body.get("metadata", {}).get("annotations") or {}).get(rollout.ACTION_ANNOTATION, ""))
    if not value:
        return False
    # Only what pending_action reads is parsed: this filter runs on every watch event of a ModelVersion.
    raw = status.get("rollout") or {}
    ro = api.RolloutStatus.model_validate({k: raw[k] for k in ACTION_FIELDS if k in raw})
    return bool(pending_action(value, ro, status))


@kopf.on.event(GROUP, VERSION, PLURAL, when=_action_pending)
async def action_requested(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """`modelpilot promote|abort|pause|resume|undo` set an annotation: act on it at once, not at the next tick
    (and for undo there is no tick). An event handler filtered on "set and not handled yet", not a field
    handler: kopf leaves annotations under its own storage prefix (``modelpilot.io/``) out of the diff it
    compares, so a field handler never saw the action. Once acted on, ``status.rollout.handledAction``
    equals the value and the filter is false."""
    await _core(memo).measured_or_logged(body["metadata"]["namespace"], body["metadata"]["name"], refresh=False)


@kopf.on.event("apps", "v1", "deployments")
async def deployment_changed(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    """A serving Deployment moved: refresh its ModelVersion's readiness in status. One deleted, or whose spec
    someone else changed (``kubectl delete deployment``, ``kubectl scale``, or a label edit that takes it out of
    the watch: the API sends that as DELETED), has its ModelVersion reconciled, which puts back what the spec
    asks for — except a spec change of an autoscaled one (its HorizontalPodAutoscaler scales it).

    The watch is server-side selected on the managed-by label (``_startup``); no kopf ``labels=`` filter here,
    which would drop the DELETED event of a Deployment whose label was edited away.

    Bounded by its own slots (``MODELPILOT_READINESS_WORKERS``), not the reconciles': behind a burst of creates a
    shared pool queued every readiness refresh for tens of seconds, so Deployments were available long before
    their ModelVersions said Ready (benchmarks/README.md)."""
    owner = next((o for o in body.get("metadata", {}).get("ownerReferences") or []
                  if o.get("kind") == "ModelVersion" and o.get("controller")), None)
    if owner is None:
        return
    core = _core(memo)
    namespace = body["metadata"]["namespace"]
    kube = core.reconciler.kube
    if type == "DELETED":
        kube.forget_deployment(namespace, body["metadata"]["name"])
        # Not after the ModelVersion's own deletion (the garbage collector's: it is no longer known then), nor a
        # canary Deployment this operator deleted itself (a promotion or rollback).
        if core.lives(namespace, owner["name"]) and \
                not kube.known_absent("Deployment", namespace, body["metadata"]["name"]):
            core.request_reconcile(namespace, owner["name"], "its Deployment was deleted")
    elif kube.changed_by_others(dict(body)) and not core.autoscaled(namespace, owner["name"]):
        core.request_reconcile(namespace, owner["name"], "its Deployment's spec was changed by someone else")
    stable = type != "DELETED" and owner["name"] == body["metadata"]["name"]
    if stable and core.reconciler.readiness_unchanged(namespace, owner["name"], dict(body)):
        return  # the state readiness was last written from: nothing to refresh
    # The stable Deployment's copy is judged as delivered, unless readiness was last written from a newer copy
    # of it (events can queue behind others, and an older copy once judged a Ready ModelVersion not ready
    # again): refresh_readiness compares resourceVersions. A canary's event refreshes from a fresh read.
    # Not awaited: the event is not held while the ModelVersion's reconcile holds its lock (see request_refresh).
    core.request_refresh(namespace, owner["name"], dict(body) if stable else None)


# ---------------------------------------------------------------------------- ABTest

@kopf.on.event(GROUP, VERSION, "abtests")
async def abtest_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event of an ABTest: keep the ticker's list current, and reconcile when the event shows a spec
    not yet observed, or on the first listing since this process started — level-triggered, as ModelVersions
    are (``model_version_event``). A failed reconcile is retried by the ticker's periodic run of the ABTest
    (every ``MODELPILOT_ABTEST_REFRESH_SECONDS``), itself a whole reconcile."""
    core = _core(memo)
    seen = dict(body)
    core.abtest_seen(seen, type)
    if type == "DELETED":
        core.metrics.set_phase("ABTest", f"{body['metadata']['namespace']}/{body['metadata']['name']}", None)
        core.abtest_gone(seen)
        return
    if core.wants_reconcile(seen, type):
        await core.reconcile_abtest_seen(seen)
