"""kopf handlers: translate Kubernetes events into reconcile calls. Nothing else lives here.

Layer 1 of the operator. Errors map to kopf's vocabulary: a registry or API
failure is a ``TemporaryError`` retried with exponential back-off (capped at
5 minutes, so a broken MLflow causes no retry storm); everything the operator
knows about the failure is already in the resource's status and Events.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf

from modelpilot.operator import contract, metrics, rollout
from modelpilot.operator.kube import Kube, KubeError
from modelpilot.operator.abtest_reconcile import ABTestReconciler
from modelpilot.operator.contract import SELECTOR_LABEL
from modelpilot.operator.reconcile import Membership, Reconciler, Result, memberships, pending_action
from modelpilot.operator.settings import OperatorSettings
from modelpilot.operator.ticker import Ticker

GROUP, VERSION, PLURAL = contract.GROUP, contract.VERSION, contract.MODELVERSION_PLURAL
MANAGED = {contract.MANAGED_BY_LABEL: contract.MANAGED_BY}
Logger = logging.Logger | logging.LoggerAdapter[Any]  # what kopf passes as ``logger``

_state: dict[str, Any] = {}


def configure(settings: OperatorSettings, kube: Kube) -> None:
    """Wire the handlers to one settings object and one API client (called once at start-up)."""
    _state["settings"] = settings
    _state["reconciler"] = Reconciler(settings, kube)
    _state["abtests"] = ABTestReconciler(_state["reconciler"])
    # Periodic work (rollout ticks, alias polls, ABTest figures) runs on the ticker, not on kopf timers:
    # a timer puts a finalizer on each resource, which blocks its deletion while the operator is down.
    _state["ticker"] = Ticker(_tick)
    _state["readiness_pool"] = ThreadPoolExecutor(settings.readiness_workers, thread_name_prefix="readiness")


def _tick(kind: str, namespace: str, name: str) -> None:
    """One periodic run: re-evaluate an active rollout, ask MLflow where a followed alias points, or refresh
    an ABTest's figures. Each reads the resource afresh; a resource gone meanwhile is forgotten."""
    if kind == "memory":
        if _state.pop("released", True) is False:
            release_memory()  # only after deletions: a trim walks the heap's arenas
        return
    if kind == "abtest":
        body = _reconciler().kube.read_abtest(namespace, name)
        if body is None:
            _state["ticker"].forget(kind, namespace, name)
            return
        abtest_figures(body, logging.getLogger(__name__))
        return
    if _measured_or_logged(namespace, name, refresh=(kind == "alias")) is None:
        _state["ticker"].forget(kind, namespace, name)


#: How often freed memory is handed back to the OS (seconds).
MEMORY_RELEASE_SECONDS = 10.0


def release_memory() -> None:
    """Hand memory freed after deletions back to the OS. CPython frees objects into glibc's arenas (one per
    thread that allocated), which keep the pages: after 200 ModelVersions were created and deleted the RSS
    stayed 45 % above idle (benchmarks/README.md). ``malloc_trim`` returns them (a no-op elsewhere than glibc).
    No ``gc.collect()``: a full collection every 10 s was a fifth of the operator's CPU under load."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reconciler() -> Reconciler:
    return _state["reconciler"]  # type: ignore[no-any-return]


def _settings() -> OperatorSettings:
    return _state["settings"]  # type: ignore[no-any-return]


def _post(body: Any, result: Result | None) -> None:
    """Post the result's Events through the adapter (kopf.event only works inside kopf's own handlers)."""
    for event in (result.events if result else []):
        _reconciler().kube.post_event(dict(body), event.type, event.reason, event.message)


def _backoff(retry: int) -> float:
    return float(min(_settings().retry_delay_seconds * (2 ** retry), 300.0))


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base, built without deep-copying what it throws away.

    kopf extracts each event's "essence" (spec, labels, annotations) by deep-copying the whole body and then
    dropping ``status`` and ``metadata``; with every writer's ``managedFields`` in it, that copy was a third
    of the operator's CPU at 200 ModelVersions (benchmarks/README.md). The same essence comes from a body
    without those two, so they are left out before kopf copies."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if extra_fields:  # a handler on status fields needs them: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        lean = {k: v for k, v in body.items() if k != "status"}
        lean["metadata"] = {k: v for k, v in body.get("metadata", {}).items() if k != "managedFields"}
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)), extra_fields=extra_fields)


@kopf.on.cleanup()
def _cleanup(**_: Any) -> None:
    if "ticker" in _state:
        _state["ticker"].stop()
    if "readiness_pool" in _state:
        _state["readiness_pool"].shutdown(wait=False, cancel_futures=True)
    if "reconciler" in _state:
        _state["reconciler"].registries.close()


@kopf.index(GROUP, VERSION, "abtests")
def abtest_routes(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Membership]:
    """(namespace, ModelVersion) → its membership in this ABTest. kopf keeps the index current from the
    ABTest watch and starts no resource handler before it is filled, so a restarted operator never renders a
    member's pods without their ABTest label, and no reconcile LISTs the ABTests."""
    namespace = body["metadata"]["namespace"]
    return {(namespace, mv): m for mv, m in memberships(dict(body)).items()}


def _member_of(index: kopf.Index[tuple[str, str], Membership]) -> Any:
    def lookup(namespace: str, name: str) -> Membership | None:
        found = sorted(index.get((namespace, name), []), key=lambda m: m.abtest)
        return found[0] if found else None

    return lookup


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    # The index object is live (kopf passes the same one to every handler, named after the index function),
    # so the ticker's reconciles use it too.
    _reconciler().membership_lookup = _member_of(kwargs["abtest_routes"])
    # Progress in annotations only: status belongs to modelpilot's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelpilot.io")
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(prefix="modelpilot.io")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    # kopf waits this long for the watch to deliver its own last patch before acting on an older event of the
    # object. Behind a burst of creates the default 5 s ran out, and kopf took our own status write (made
    # before its annotations) for a new object and ran the create handler again: ~50 % extra reconciles at 200.
    settings.persistence.consistency_timeout = 30.0
    # Reconciles are mostly waiting on the API; readiness refreshes have their own pool (deployment_changed).
    settings.execution.max_workers = _settings().workers
    _state["ticker"].start()
    _state["ticker"].track("memory", "", "", MEMORY_RELEASE_SECONDS)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile_model_version(body: kopf.Body, retry: int, logger: Logger, **_: Any) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        result = _measured(namespace, name, refresh=False)
    except KubeError as exc:  # classified (KubeUnavailable when the apiserver cannot be reached): one log line
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=_backoff(retry)) from None
    if result is not None and result.retry:
        raise kopf.TemporaryError(result.message, delay=_backoff(retry))


def _measured_or_logged(namespace: str, name: str, refresh: bool) -> Result | None:
    """Reconcile from the ticker or an event handler: an API error is one warning line, the next tick retries.
    None when the ModelVersion is gone."""
    try:
        return _measured(namespace, name, refresh=refresh)
    except KubeError as exc:
        logging.getLogger(__name__).warning("reconcile %s/%s: %s", namespace, name, exc)
        return Result(status={}, retry=True, message=str(exc))


def _measured(namespace: str, name: str, refresh: bool) -> Result | None:
    """Reconcile the ModelVersion as it is now (``Reconciler.reconcile_latest``), recording duration, outcome
    and phase; raises ``KubeError`` on an API error, None when it no longer exists."""
    started = time.monotonic()
    key = f"{namespace}/{name}"
    try:
        done = _reconciler().reconcile_latest(namespace, name, refresh=refresh)
    except KubeError:
        metrics.RECONCILES.labels(kind="ModelVersion", result="error").inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.labels(kind="ModelVersion").observe(time.monotonic() - started)
    if done is None:
        return None
    result, body = done
    metrics.RECONCILES.labels(kind="ModelVersion", result="retry" if result.retry else "success").inc()
    if result.retry:
        reason = next((c.get("reason") for c in result.status.get("conditions") or []
                       if c.get("type") == "Resolved" and c.get("status") == "False"), "Unknown")
        metrics.REGISTRY_ERRORS.labels(reason=reason).inc()
    metrics.set_phase("ModelVersion", key, result.status.get("phase"))
    _post(body, result)
    return result


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_version_seen(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Keep the ticker's list current from every watch event (the initial listing included): an active
    rollout is re-evaluated every ``MODELPILOT_ROLLOUT_TICK_SECONDS``, a followed alias polled every
    ``MODELPILOT_ALIAS_POLL_SECONDS``."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    ticker: Ticker = _state["ticker"]
    settings = _settings()
    gone = type == "DELETED" or bool(meta.get("deletionTimestamp"))
    spec, status = body.get("spec") or {}, body.get("status") or {}
    if not gone and (status.get("rollout") or {}).get("phase") in rollout.ACTIVE:
        ticker.track("rollout", namespace, name, settings.rollout_tick_seconds)
    else:
        ticker.forget("rollout", namespace, name)
    if not gone and spec.get("followAlias") and (spec.get("model") or {}).get("alias"):
        ticker.track("alias", namespace, name, settings.alias_poll_seconds)
    else:
        ticker.forget("alias", namespace, name)
    if type == "DELETED":
        _reconciler().forget(namespace, name)
        _state["released"] = False


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget_model_version(body: kopf.Body, **_: Any) -> None:
    """Nothing to clean up (owner references do that); only the phase gauge forgets it."""
    metrics.set_phase("ModelVersion", f"{body['metadata']['namespace']}/{body['metadata']['name']}", None)


def _action_pending(body: kopf.Body, **_: Any) -> bool:
    status = dict(body.get("status") or {})
    value = str((body.get("metadata", {}).get("annotations") or {}).get(rollout.ACTION_ANNOTATION, ""))
    return bool(value) and bool(pending_action(value, dict(status.get("rollout") or {}), status))


@kopf.on.event(GROUP, VERSION, PLURAL, when=_action_pending)
def action_requested(body: kopf.Body, **_: Any) -> None:
    """`modelpilot promote|abort|pause|resume|undo` set an annotation: act on it at once, not at the next tick
    (and for undo there is no tick). An event handler filtered on "set and not handled yet", not a field
    handler: kopf leaves annotations under its own storage prefix (``modelpilot.io/``) out of the diff it
    compares, so a field handler never saw the action. Once acted on, ``status.rollout.handledAction``
    equals the value and the filter is false."""
    _measured_or_logged(body["metadata"]["namespace"], body["metadata"]["name"], refresh=False)


def _pod_has_a_problem(body: kopf.Body, type: str | None, **_: Any) -> bool:
    if type == "DELETED":
        return False
    for c in (body.get("status") or {}).get("containerStatuses") or []:
        if not c.get("ready") and ((c.get("state") or {}).get("waiting") or c.get("lastState")):
            return True
    return False


@kopf.on.event("", "v1", "pods", labels={**MANAGED, SELECTOR_LABEL: kopf.PRESENT}, when=_pod_has_a_problem)
def pod_changed(body: kopf.Body, logger: Logger, **_: Any) -> None:
    """A serving pod's container is failing (waiting, or restarted and not ready): refresh its ModelVersion.

    A crash-looping pod changes no Deployment field, so without this no event would bring its reason
    into status. An event handler, not a timer: kopf puts a finalizer on every resource a timer
    runs for, and a finalizer blocks deletion while the operator is down.
    """
    _refresh(body["metadata"]["namespace"], body["metadata"]["labels"][SELECTOR_LABEL], logger)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
async def deployment_changed(body: kopf.Body, type: str, logger: Logger, **_: Any) -> None:
    """A serving Deployment moved: refresh its ModelVersion's readiness in status.

    Runs on its own small thread pool, not kopf's: behind a burst of creates (each reconcile ~0.5 s) kopf's
    pool queued every readiness refresh for tens of seconds, so Deployments were available long before their
    ModelVersions said Ready (benchmarks/README.md)."""
    owner = next((o for o in body.get("metadata", {}).get("ownerReferences") or []
                  if o.get("kind") == "ModelVersion" and o.get("controller")), None)
    if owner is None:
        return
    namespace = body["metadata"]["namespace"]
    stable = type != "DELETED" and owner["name"] == body["metadata"]["name"]
    if stable and _reconciler().readiness_unchanged(namespace, owner["name"], dict(body)):
        return  # the state readiness was last written from: nothing to refresh
    # The refresh reads the Deployment afresh rather than trusting this event's copy: events can queue
    # behind others, and an older copy judged a Ready ModelVersion not ready again.
    refresh = functools.partial(_refresh, namespace, owner["name"], logger)
    await asyncio.get_running_loop().run_in_executor(_state["readiness_pool"], refresh)


def _refresh(namespace: str, name: str, logger: Logger) -> None:
    try:
        with _reconciler().lock(namespace, name):
            result = _reconciler().refresh_readiness(namespace, name)
        if result:
            metrics.set_phase("ModelVersion", f"{namespace}/{name}", result.status.get("phase"))
        parent = _reconciler().kube.read_model_version(namespace, name) if result and result.events else None
    except KubeError as exc:
        logger.warning("readiness of %s/%s: %s", namespace, name, exc)
        return
    if result and parent:
        _post(parent, result)


# ---------------------------------------------------------------------------- ABTest

@kopf.on.resume(GROUP, VERSION, "abtests")
@kopf.on.create(GROUP, VERSION, "abtests")
@kopf.on.update(GROUP, VERSION, "abtests", field="spec")
def reconcile_abtest(body: kopf.Body, retry: int, **_: Any) -> None:
    started = time.monotonic()
    try:
        result = _state["abtests"].reconcile(dict(body), measure=False)
    except KubeError as exc:
        metrics.RECONCILES.labels(kind="ABTest", result="error").inc()
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=_backoff(retry)) from None
    finally:
        metrics.RECONCILE_SECONDS.labels(kind="ABTest").observe(time.monotonic() - started)
    metrics.RECONCILES.labels(kind="ABTest", result="retry" if result.retry else "success").inc()
    metrics.set_phase("ABTest", f"{body['metadata']['namespace']}/{body['metadata']['name']}",
                      result.status.get("phase"))
    _post(body, result)
    if result.retry:
        raise kopf.TemporaryError(result.message, delay=_backoff(retry))


@kopf.on.event(GROUP, VERSION, "abtests")
def abtest_seen(body: kopf.Body, type: str | None, **_: Any) -> None:
    """Keep the ticker's list of ABTests current: figures refresh every ``MODELPILOT_ABTEST_REFRESH_SECONDS``."""
    meta = body.get("metadata") or {}
    if type == "DELETED" or meta.get("deletionTimestamp"):
        _state["ticker"].forget("abtest", meta.get("namespace", ""), meta.get("name", ""))
    else:
        _state["ticker"].track("abtest", meta.get("namespace", ""), meta.get("name", ""),
                               _settings().abtest_refresh_seconds)


def abtest_figures(body: dict[str, Any], logger: Logger) -> None:
    """Refresh each variant's live figures, the statistical comparison and readiness."""
    try:
        result = _state["abtests"].reconcile(dict(body), measure=True)
    except KubeError as exc:
        logger.warning("ABTest figures: %s", exc)
        return
    metrics.set_phase("ABTest", f"{body['metadata']['namespace']}/{body['metadata']['name']}",
                      result.status.get("phase"))
    _post(body, result)


@kopf.on.delete(GROUP, VERSION, "abtests", optional=True)
def forget_abtest(body: kopf.Body, **_: Any) -> None:
    metrics.set_phase("ABTest", f"{body['metadata']['namespace']}/{body['metadata']['name']}", None)
