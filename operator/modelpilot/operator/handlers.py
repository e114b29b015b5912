"""kopf handlers: translate Kubernetes events into reconcile calls. Nothing else lives here.

Layer 1 of the operator. Errors map to kopf's vocabulary: a registry or API
failure is a ``TemporaryError`` retried with exponential back-off (capped at
5 minutes, so a broken MLflow causes no retry storm); everything the operator
knows about the failure is already in the resource's status and Events.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from modelpilot.operator.kube import Kube, KubeError
from modelpilot.operator.reconcile import Reconciler, Result
from modelpilot.operator.settings import OperatorSettings

GROUP, VERSION, PLURAL = "modelpilot.io", "v1alpha1", "modelversions"
MANAGED = {"app.kubernetes.io/managed-by": "modelpilot"}

_state: dict[str, Any] = {}


def configure(settings: OperatorSettings, kube: Kube) -> None:
    """Wire the handlers to one settings object and one API client (called once at start-up)."""
    _state["settings"] = settings
    _state["reconciler"] = Reconciler(settings, kube)
    # Registered here rather than at import so its interval comes from the validated settings.
    kopf.timer(GROUP, VERSION, PLURAL, interval=settings.alias_poll_seconds, when=_follows_alias)(follow_alias)


def _reconciler() -> Reconciler:
    return _state["reconciler"]  # type: ignore[no-any-return]


def _settings() -> OperatorSettings:
    return _state["settings"]  # type: ignore[no-any-return]


def _post(body: Any, result: Result | None) -> None:
    for event in (result.events if result else []):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _backoff(retry: int) -> float:
    return float(min(_settings().retry_delay_seconds * (2 ** retry), 300.0))


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress in annotations only: status belongs to modelpilot's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="modelpilot.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="modelpilot.io")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    settings.execution.max_workers = 8


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def reconcile_model_version(body: kopf.Body, retry: int, logger: logging.Logger, **_: Any) -> None:
    try:
        result = _reconciler().reconcile(dict(body))
    except KubeError as exc:
        raise kopf.TemporaryError(str(exc), delay=_backoff(retry)) from exc
    _post(body, result)
    if result.retry:
        raise kopf.TemporaryError(result.message, delay=_backoff(retry))


def _follows_alias(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("followAlias")) and bool((spec.get("model") or {}).get("alias"))


def follow_alias(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """Ask MLflow where the alias points; a moved alias rolls the new version out."""
    try:
        result = _reconciler().reconcile(dict(body), refresh=True)
    except KubeError as exc:
        logger.warning("alias poll: %s", exc)
        return
    _post(body, result)


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def deployment_changed(body: kopf.Body, type: str | None, logger: logging.Logger, **_: Any) -> None:
    """A serving Deployment moved: refresh its ModelVersion's readiness in status."""
    owner = next((o for o in body.get("metadata", {}).get("ownerReferences") or []
                  if o.get("kind") == "ModelVersion" and o.get("controller")), None)
    if owner is None:
        return
    namespace = body["metadata"]["namespace"]
    try:
        result = _reconciler().refresh_readiness(namespace, owner["name"])
    except KubeError as exc:
        logger.warning("readiness of %s/%s: %s", namespace, owner["name"], exc)
        return
    if result and result.events:
        parent = _reconciler().kube.read_model_version(namespace, owner["name"])
        if parent:
            _post(parent, result)
