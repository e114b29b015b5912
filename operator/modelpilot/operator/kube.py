"""Kubernetes adapter: server-side apply of owned objects, status patches, reads.

An adapter of the operator (bottom layer). Owned objects are written with
server-side apply under one field manager, so the operator only ever owns the
fields it renders: ``kubectl scale``, an HPA's replicas or a GitOps tool's own
fields are not fought over. The ModelVersion itself is only ever written
through its ``status`` subresource — never its spec.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

import orjson
import urllib3
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from modelpilot.operator import contract

GROUP, VERSION = contract.GROUP, contract.VERSION
_KINDS = {
    "Deployment": ("apps/v1", "Deployment"),
    "Service": ("v1", "Service"),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "HorizontalPodAutoscaler"),
    "PodDisruptionBudget": ("policy/v1", "PodDisruptionBudget"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "HTTPRoute"),
}


class KubeError(Exception):
    """The API refused or failed a write; retried by the caller."""


class KubeUnavailable(KubeError):
    """The API server could not be reached: connection refused or reset, timed out, TLS or protocol failure.
    Raised instead of urllib3's own exceptions, so callers retry it with back-off like any ``KubeError``."""


# What the client raises when the apiserver cannot be asked at all: urllib3's MaxRetryError,
# ProtocolError, ReadTimeoutError, SSLError … (all urllib3.exceptions.HTTPError) and socket errors.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, OSError)
REQUEST_TIMEOUT_SECONDS = 30.0

F = TypeVar("F", bound=Callable[..., Any])


def describe_transport_error(exc: BaseException) -> str:
    """A short reason for a transport failure, e.g. ``NewConnectionError: connection refused``."""
    reason = getattr(exc, "reason", None)  # MaxRetryError wraps the last underlying error
    inner = reason if isinstance(reason, BaseException) else exc
    text = str(inner)
    if "Connection refused" in text:
        text = "connection refused"
    elif "timed out" in text.lower():
        text = "timed out"
    return f"{type(inner).__name__}: {text}"[:300]


def _classified(method: F) -> F:
    """Turn a transport failure inside an adapter method into one ``KubeUnavailable`` naming the call."""

    @functools.wraps(method)
    def wrapper(self: Kube, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except TRANSPORT_ERRORS as exc:
            raise KubeUnavailable(f"the Kubernetes API at {self.host} is unreachable ({method.__name__}: "
                                  f"{describe_transport_error(exc)})") from exc

    return wrapper  # type: ignore[return-value]


class Kube:
    """The operator's only door to the Kubernetes API."""

    def __init__(self, api_client: client.ApiClient, field_manager: str = "modelpilot",
                 timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.api_client = api_client
        self.host = api_client.configuration.host
        self._dynamic: dynamic.DynamicClient | None = None  # created on first use: its discovery calls the API
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.field_manager = field_manager
        self.timeout = timeout  # every request: a hung apiserver is a timeout, not a stuck worker
        self._resources: dict[str, Any] = {}
        # Owned objects this process knows are absent (a read answered 404, or it deleted them), so each
        # reconcile does not GET the canary Deployment, HPA, PDB … that a spec does not ask for. Only this
        # operator creates them (under its field manager), and it forgets an entry when it applies that object;
        # a restarted operator starts empty and checks each once.
        self._absent: set[tuple[str, str, str, str]] = set()
        self._absent_guard = threading.Lock()

    @property
    def dynamic_client(self) -> dynamic.DynamicClient:
        if self._dynamic is None:
            self._dynamic = dynamic.DynamicClient(self.api_client)
        return self._dynamic

    def _resource(self, kind: str) -> Any:
        if kind not in self._resources:
            api_version, name = _KINDS[kind]
            try:
                self._resources[kind] = self.dynamic_client.resources.get(api_version=api_version, kind=name)
            except dynamic.exceptions.ResourceNotFoundError as exc:
                raise KubeError(f"the cluster does not serve {api_version} {name} (are its CRDs installed?)") from exc
        return self._resources[kind]

    @_classified
    def list_abtests(self, namespace: str) -> list[dict[str, Any]]:
        try:
            found = cast(dict[str, Any], self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "abtests", _request_timeout=self.timeout))
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise KubeError(f"list ABTests: {exc.status} {_reason(exc)}") from exc
        return list(found.get("items") or [])

    @_classified
    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply; ``force`` because these fields are the operator's by contract."""
        resource = self._resource(manifest["kind"])
        meta = manifest["metadata"]
        with self._absent_guard:
            for key in [k for k in self._absent if k[:3] == (manifest["kind"], meta["namespace"], meta["name"])]:
                self._absent.discard(key)
        try:
            # serialize=False: the raw answer, parsed once with json — the dynamic client's own wrapper
            # objects cost more CPU than the rest of a reconcile (benchmarks/README.md).
            resp = resource.server_side_apply(
                body=manifest, name=manifest["metadata"]["name"], namespace=manifest["metadata"]["namespace"],
                field_manager=self.field_manager, force_conflicts=True, _request_timeout=self.timeout,
                serialize=False,
            )
        except ApiException as exc:
            raise KubeError(f"apply {manifest['kind']} {manifest['metadata']['name']}: {exc.status} "
                            f"{_reason(exc)}") from exc
        return _json(resp)

    @_classified
    def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete an object only if this ModelVersion controls it. True if something was deleted."""
        key = (kind, namespace, name, owner_uid)
        with self._absent_guard:
            if key in self._absent:
                return False
        resource = self._resource(kind)
        try:
            current = _json(resource.get(name=name, namespace=namespace, _request_timeout=self.timeout,
                                         serialize=False))
        except ApiException as exc:
            if exc.status == 404:
                with self._absent_guard:
                    self._absent.add(key)
                return False
            raise KubeError(f"read {kind} {name}: {exc.status} {_reason(exc)}") from exc
        owners = (current.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("uid") == owner_uid for o in owners):
            return False
        try:
            resource.delete(name=name, namespace=namespace, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise KubeError(f"delete {kind} {name}: {exc.status} {_reason(exc)}") from exc
        with self._absent_guard:
            self._absent.add(key)
        return True

    def assume_absent(self, kind: str, namespace: str, name: str, owner_uid: str) -> None:
        """Record that no object of ``kind``/``name`` owned by ``owner_uid`` exists, without asking."""
        with self._absent_guard:
            self._absent.add((kind, namespace, name, owner_uid))

    def forget_owner(self, namespace: str, name: str) -> None:
        """Drop what is known absent for objects named after a ModelVersion that is gone (bounds the memory)."""
        with self._absent_guard:
            self._absent = {k for k in self._absent if not (k[1] == namespace and k[2].startswith(name))}

    @_classified
    def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self.apps.read_namespaced_deployment(name, namespace, _request_timeout=self.timeout,
                                                              _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"read Deployment {name}: {exc.status} {_reason(exc)}") from exc

    @_classified
    def list_pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
        """The pods a Deployment selects (by its ``matchLabels``), as plain dicts (camelCase, as the API has them)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        try:
            pods = _json(self.core.list_namespaced_pod(namespace, label_selector=selector,
                                                       _request_timeout=self.timeout, _preload_content=False))
        except ApiException as exc:
            raise KubeError(f"list pods {selector}: {exc.status} {_reason(exc)}") from exc
        return list(pods.get("items") or [])

    def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read_custom("modelversions", "ModelVersion", namespace, name)

    def read_abtest(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read_custom("abtests", "ABTest", namespace, name)

    @_classified
    def _read_custom(self, plural: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _request_timeout=self.timeout, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubeError(f"read {kind} {name}: {exc.status} {_reason(exc)}") from exc

    def post_event(self, involved: dict[str, Any], type: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about a ModelVersion or ABTest (``kubectl describe`` and
        ``kubectl get events`` show it). Works from any thread — kopf's own ``kopf.event`` only works inside
        its handlers, and periodic work runs on the operator's ticker. Never raises: an Event that cannot be
        posted is one warning line, and the decision it reports stands."""
        meta = involved.get("metadata") or {}
        now = datetime.now(timezone.utc)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta.get('name', 'modelpilot')}.",
                                         namespace=meta.get("namespace")),
            involved_object=client.V1ObjectReference(
                api_version=involved.get("apiVersion", f"{GROUP}/{VERSION}"), kind=involved.get("kind"),
                name=meta.get("name"), namespace=meta.get("namespace"), uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion")),
            reason=reason, message=message[:1024], type=type, count=1, first_timestamp=now, last_timestamp=now,
            source=client.V1EventSource(component="modelpilot"), reporting_component="modelpilot",
            reporting_instance=socket.gethostname())
        try:
            self.core.create_namespaced_event(str(meta.get("namespace") or "default"), event,
                                              _request_timeout=self.timeout)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            logging.getLogger(__name__).warning("cannot post Event %s on %s/%s: %s", reason, meta.get("namespace"),
                                                meta.get("name"), exc)

    @_classified
    def patch_status(self, namespace: str, name: str, status: dict[str, Any], plural: str = "modelversions",
                     resource_version: str | None = None) -> bool:
        """Merge-patch status. With ``resource_version`` the write only lands if nothing changed since that
        read (optimistic concurrency); False means it was skipped because someone else wrote first."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, body,
                                                              _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status == 404:  # deleted meanwhile: nothing to report on
                return False
            if exc.status == 409 and resource_version:
                return False
            raise KubeError(f"status of {plural}/{name}: {exc.status} {_reason(exc)}") from exc
        return True

    @_classified
    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        import base64

        try:
            secret = client.CoreV1Api(self.api_client).read_namespaced_secret(name, namespace,
                                                                              _request_timeout=self.timeout)
        except ApiException as exc:
            raise KubeError(f"Secret {namespace}/{name}: {exc.status} {_reason(exc)}") from exc
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def _json(response: Any) -> dict[str, Any]:
    """The body of a raw (not deserialised) client response as the API has it: camelCase dicts."""
    return dict(orjson.loads(response.data))


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)
