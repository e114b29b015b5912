"""Kubernetes adapter: server-side apply of owned objects, status patches, reads — asynchronous.

An adapter of the operator (bottom layer). Owned objects are written with
server-side apply under one field manager, so the operator only ever owns the
fields it renders: ``kubectl scale``, an HPA's replicas or a GitOps tool's own
fields are not fought over. The ModelVersion itself is only ever written
through its ``status`` subresource — never its spec.

Every call is a coroutine on kopf's event loop over one pooled aiohttp session
(``kubernetes_asyncio``'s ``ApiClient``: kubeconfig or in-cluster credentials,
token refresh, TLS). Requests and answers are raw JSON (orjson), never the
client's model objects: those cost more CPU than the rest of a reconcile
(benchmarks/README.md). The session is made on first use, inside the running
loop, and closed by ``close()``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import logging
import os
import socket
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar, cast
from urllib.parse import quote

import aiohttp
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio import config as async_config

from modelpilot.operator import contract

GROUP, VERSION = contract.GROUP, contract.VERSION
#: kind → (apiVersion, URL prefix, plural) of the objects the operator owns.
_KINDS = {
    "Deployment": ("apps/v1", "/apis/apps/v1", "deployments"),
    "Service": ("v1", "/api/v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling/v2", "/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy/v1", "/apis/policy/v1", "poddisruptionbudgets"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "/apis/gateway.networking.k8s.io/v1", "httproutes"),
    # NGINX Gateway Fabric's mirroring (mirroring.py): only rendered for a Gateway of an NGF class.
    "SnippetsFilter": ("gateway.nginx.org/v1alpha1", "/apis/gateway.nginx.org/v1alpha1", "snippetsfilters"),
}
_GATEWAY_API = "/apis/gateway.networking.k8s.io/v1"
_CUSTOM = f"/apis/{GROUP}/{VERSION}"
# Apply patches go out as orjson's bytes under a media type the client passes through untouched (its
# own "apply-patch+yaml" path would json.dumps them again); JSON is YAML, so the apiserver reads them as
# apply patches. Small JSON bodies (status, Events) go as dicts, serialised by the client.
_APPLY = "application/apply-patch+yaml; charset=utf-8"
_MERGE = "application/merge-patch+json"


def clear_url_caches() -> None:
    """Empty the URL-parsing caches of aiohttp's URL library (yarl) and of ``urllib.parse``, once a burst is over.

    Both keep the last 128 URLs parsed (yarl: whole ``URL`` objects with their derived parts), and every
    apiserver request URL names its object: after 200 creates and deletions they hold URLs of objects that are
    gone, allocated late in the burst, where a live object can keep an arena of Python's small-object allocator
    from being returned. Measured, it is a small part of what a burst leaves (~1 point of RSS, within noise;
    benchmarks/README.md). yarl's public ``cache_clear`` covers its host caches only, so every
    ``functools.lru_cache`` in its parsing modules (and in ``urllib.parse``) is cleared; a cache a later yarl
    renames is simply not found. The caches refill on the next requests; nothing but speed depends on them."""
    # yarl's looked up, not imported: private modules of a dependency, so a yarl that moves them costs only this
    # trim. ``urllib.parse.clear_cache`` does the same for the stdlib's two caches, but is not typed.
    for module in (sys.modules.get("yarl._url"), sys.modules.get("yarl._parse"), urllib.parse):
        for value in list(vars(module).values()) if module is not None else ():
            if callable(getattr(value, "cache_clear", None)) and hasattr(value, "cache_info"):
                value.cache_clear()


class KubeError(Exception):
    """The API refused or failed a write; retried by the caller. ``status``: the HTTP status (0: none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeUnavailable(KubeError):
    """The API server could not be reached: connection refused or reset, timed out, TLS or protocol failure.
    Raised instead of aiohttp's own exceptions, so callers retry it with back-off like any ``KubeError``."""


# What the client raises when the apiserver cannot be asked at all: aiohttp's connection, payload and
# protocol errors, timeouts, and socket errors.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
REQUEST_TIMEOUT_SECONDS = 30.0
#: Connections to the apiserver at once when the caller does not size the pool (``run`` sizes it from the
#: reconciles and refreshes that may be in flight): in a burst each reconcile holds one for seconds on a
#: Service apply (the apiserver allocates ClusterIPs one at a time), and the reads and status writes of the
#: others must not queue behind them. Requests beyond wait for one (aiohttp's connector limit).
CONNECTIONS = 256
#: Service applies under way at once. The apiserver allocates a new Service's ClusterIP one at a time (~30 ms
#: each on 2 cores): 200 creates' Services sent at once only waited there, each on its own connection (a TLS
#: session and ~300 KiB of buffers), for seconds — the operator's peak memory, which its allocator then kept.
#: As many at once as this keeps the allocator busy; the rest wait here without a connection.
SERVICE_APPLIES = 16

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def describe_transport_error(exc: BaseException) -> str:
    """A short reason for a transport failure, e.g. ``ClientConnectorError: connection refused``."""
    inner = exc
    for attr in ("os_error", "reason"):  # aiohttp's connector error wraps the OSError; urllib3's MaxRetryError
        wrapped = getattr(inner, attr, None)
        if isinstance(wrapped, BaseException):
            inner = wrapped
            break
    text = str(inner) or type(inner).__name__
    if "Connection refused" in text or "Connect call failed" in text:
        text = "connection refused"
    elif "timed out" in text.lower() or isinstance(inner, asyncio.TimeoutError):
        text = "timed out"
    return f"{type(exc).__name__}: {text}"[:300]


def _classified(method: F) -> F:
    """Turn a transport failure inside an adapter method into one ``KubeUnavailable`` naming the call."""

    @functools.wraps(method)
    async def wrapper(self: Kube, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except TRANSPORT_ERRORS as exc:
            raise KubeUnavailable(f"the Kubernetes API at {self.host} is unreachable ({method.__name__}: "
                                  f"{describe_transport_error(exc)})") from exc
        except async_config.ConfigException as exc:  # e.g. the ServiceAccount token file read mid-rotation
            raise KubeUnavailable(f"no credentials for the Kubernetes API at {self.host} ({method.__name__}: "
                                  f"{exc})") from exc

    return wrapper  # type: ignore[return-value]


class Kube:
    """The operator's only door to the Kubernetes API (coroutines on the running event loop)."""

    def __init__(self, configuration: client.Configuration, field_manager: str = "modelpilot",
                 timeout: float = REQUEST_TIMEOUT_SECONDS, connections: int = CONNECTIONS,
                 token_loader: Any = None) -> None:
        """``connections``: the pool's size (at least what may be in flight at once, see ``run``);
        ``token_loader``: kubernetes_asyncio's kubeconfig loader when its credentials expire (an exec plugin or
        GCP token), refreshed every minute on the running loop."""
        configuration.connection_pool_maxsize = connections
        self.configuration = configuration
        self._token_loader = token_loader
        self._token_refresh: asyncio.Task[None] | None = None
        self.host = str(configuration.host)
        self.field_manager = field_manager
        self.timeout = timeout  # every request: a hung apiserver is a timeout, not a stuck reconcile
        self._service_applies = asyncio.Semaphore(SERVICE_APPLIES)
        self._api: client.ApiClient | None = None  # made in the running loop (its aiohttp session binds to it)
        self._in_flight = 0  # requests under way on the current session
        # Owned objects this process knows are absent (a read answered 404, or it deleted them), so each
        # reconcile does not GET the canary Deployment, HPA, PDB … that a spec does not ask for. Only this
        # operator creates them (under its field manager), and it forgets an entry when it applies that object;
        # a restarted operator starts empty and checks each once.
        # Keyed by (kind, namespace, name) → the owner's uid, with an index by owner, so every apply, check and
        # forget is O(1) (a set scanned per apply cost ~1.5 s of CPU per 1,000 creates).
        self._absent: dict[tuple[str, str, str], str] = {}
        self._absent_by_owner: dict[str, set[tuple[str, str, str]]] = {}
        # Each Deployment's ``metadata.generation`` as this operator's last apply left it, and the Deployments
        # being applied now: a watch event showing a newer generation than the last apply left, and no apply
        # under way, is a change someone else made to the spec (``kubectl scale``, ``kubectl edit``).
        self._applied_generations: dict[tuple[str, str], int] = {}
        self._applying: collections.Counter[tuple[str, str]] = collections.Counter()

    async def close(self) -> None:
        if self._token_refresh is not None:
            self._token_refresh.cancel()
            self._token_refresh = None
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def release_idle_connections(self) -> bool:
        """Close the session and its pooled connections when no request is under way (the next request opens a
        new one): after a burst they hold megabytes of TLS buffers for nothing. True if it was closed. The URL
        caches go either way (``clear_url_caches``)."""
        clear_url_caches()
        if self._api is None or self._in_flight:
            return False
        api, self._api = self._api, None
        await api.close()
        return True

    async def _request(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                       body: Any = None, content_type: str = "application/json") -> tuple[int, bytes]:
        """(HTTP status, raw body) of one request; transport failures raise (classified by the caller)."""
        if self._api is None:
            self._api = self._client()
        if self._token_loader is not None and self._token_refresh is None:
            # kopf logs in on its own; this client's token (EKS, GKE: ~15 min) would expire unnoticed otherwise.
            self._token_refresh = asyncio.create_task(async_config.refresh_token(self._token_loader,
                                                                                 self.configuration))
        self._in_flight += 1
        try:
            response = await self._api.call_api(
                path, method, query_params=query or [], header_params={"Content-Type": content_type,
                                                                        "Accept": "application/json"},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                # No total: waiting for a pooled connection in a burst is not the apiserver being unreachable.
                _request_timeout=aiohttp.ClientTimeout(sock_connect=min(self.timeout, 10.0),
                                                       sock_read=self.timeout))
            try:
                return int(response.status), await response.read()
            finally:
                response.release()
        except TRANSPORT_ERRORS:
            raise  # classified by the caller (``_classified``)
        except Exception as exc:
            # The HTTP client's own failure in the middle of a request (seen: aiohttp 3.14 raising AttributeError
            # from ``ClientResponse.start`` in a burst): the API could not be asked, so it is retried like any
            # transport failure instead of escaping as a bug of the caller.
            raise KubeUnavailable(f"the Kubernetes API at {self.host}: the HTTP client failed "
                                  f"({type(exc).__name__}: {exc})") from exc
        finally:
            self._in_flight -= 1

    def _client(self) -> client.ApiClient:
        api = client.ApiClient(self.configuration)
        if not _proxy_or_netrc_configured():
            # kubernetes_asyncio opens its session with ``trust_env=True``, so aiohttp reads the proxy variables
            # and parses ~/.netrc on every request: a tenth of the operator's CPU at 200 creates. Nothing in
            # the environment can change that answer, so it is asked once, here (aiohttp has no public setter;
            # tests/unit/test_operator_kube.py checks the session reads as ``trust_env`` False).
            api.rest_client.pool_manager._trust_env = False  # noqa: SLF001
        return api

    @staticmethod
    def _refused(what: str, status: int, data: bytes) -> KubeError:
        try:
            reason = str(orjson.loads(data).get("message") or "")
        except (orjson.JSONDecodeError, AttributeError):
            reason = data[:200].decode(errors="replace")
        return KubeError(f"{what}: {status} {reason}", status)

    @staticmethod
    def _path(kind: str, namespace: str, name: str = "") -> str:
        _, prefix, plural = _KINDS[kind]
        return f"{prefix}/namespaces/{quote(namespace)}/{plural}" + (f"/{quote(name)}" if name else "")

    @_classified
    async def list_abtests(self, namespace: str) -> list[dict[str, Any]]:
        status, data = await self._request("GET", f"{_CUSTOM}/namespaces/{quote(namespace)}/abtests")
        if status == 404:
            return []
        if status >= 300:
            raise self._refused("list ABTests", status, data)
        return list(_json(data).get("items") or [])

    @_classified
    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply; ``force`` because these fields are the operator's by contract. Returns the
        object as the API answered (status included)."""
        kind, meta = manifest["kind"], manifest["metadata"]
        self._unmark_absent((kind, meta["namespace"], meta["name"]))
        key = (meta["namespace"], meta["name"])
        if kind == "Deployment":
            self._applying[key] += 1
        try:
            async with self._service_applies if kind == "Service" else contextlib.nullcontext():
                status, data = await self._request(
                    "PATCH", self._path(kind, meta["namespace"], meta["name"]),
                    query=[("fieldManager", self.field_manager), ("force", "true")],
                    body=orjson.dumps(manifest), content_type=_APPLY)
            if status == 404 and b"the server could not find the requested resource" in data:
                raise KubeError(f"the cluster does not serve {_KINDS[kind][0]} {kind} (are its CRDs installed?)",
                                404)
            if status >= 300:
                raise self._refused(f"apply {kind} {meta['name']}", status, data)
            answer = _json(data)
            if kind == "Deployment" and isinstance((answer.get("metadata") or {}).get("generation"), int):
                self._applied_generations[key] = answer["metadata"]["generation"]
            return answer
        finally:
            if kind == "Deployment":
                self._applying[key] -= 1
                if self._applying[key] <= 0:
                    del self._applying[key]

    def changed_by_others(self, deployment: dict[str, Any]) -> bool:
        """Whether a Deployment, as a watch event delivered it, carries a spec this operator did not apply: its
        ``metadata.generation`` is newer than what this process's last apply of it answered, and no apply of it
        is under way (the event of an apply can come before its answer). False when this process has not
        applied it yet (a restarted operator re-applies every ModelVersion's objects on its first listing)."""
        meta = deployment.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if key in self._applying:
            return False
        applied, generation = self._applied_generations.get(key), meta.get("generation")
        return applied is not None and isinstance(generation, int) and generation > applied

    def known_absent(self, kind: str, namespace: str, name: str) -> bool:
        """Whether this process knows the object is absent (it deleted it, or a read answered 404)."""
        return (kind, namespace, name) in self._absent

    def forget_deployment(self, namespace: str, name: str) -> None:
        """A Deployment is gone: drop the generation its last apply left (bounds the memory)."""
        self._applied_generations.pop((namespace, name), None)

    @_classified
    async def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete an object only if this ModelVersion controls it. True if something was deleted."""
        if self._absent.get((kind, namespace, name)) == owner_uid:
            return False
        path = self._path(kind, namespace, name)
        status, data = await self._request("GET", path)
        if status == 404:
            self.assume_absent(kind, namespace, name, owner_uid)
            return False
        if status >= 300:
            raise self._refused(f"read {kind} {name}", status, data)
        owners = (_json(data).get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("uid") == owner_uid for o in owners):
            return False
        # Known absent before the DELETE is sent: its watch event can come before the answer, and must read as
        # this operator's own deletion (``known_absent``), not someone else's.
        self.assume_absent(kind, namespace, name, owner_uid)
        try:
            status, data = await self._request("DELETE", path)
        except BaseException:
            self._unmark_absent((kind, namespace, name))
            raise
        if status >= 300 and status != 404:
            self._unmark_absent((kind, namespace, name))
            raise self._refused(f"delete {kind} {name}", status, data)
        return True

    def assume_absent(self, kind: str, namespace: str, name: str, owner_uid: str) -> None:
        """Record that no object of ``kind``/``name`` owned by ``owner_uid`` exists, without asking."""
        key = (kind, namespace, name)
        self._unmark_absent(key)
        self._absent[key] = owner_uid
        self._absent_by_owner.setdefault(owner_uid, set()).add(key)

    def _unmark_absent(self, key: tuple[str, str, str]) -> None:
        owner_uid = self._absent.pop(key, None)
        if owner_uid is not None:
            keys = self._absent_by_owner.get(owner_uid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._absent_by_owner[owner_uid]

    def forget_owner(self, owner_uid: str) -> None:
        """Drop what is known absent for a ModelVersion that is gone (bounds the memory)."""
        for key in self._absent_by_owner.pop(owner_uid, ()):
            if self._absent.get(key) == owner_uid:
                del self._absent[key]

    @_classified
    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, data = await self._request("GET", self._path("Deployment", namespace, name))
        if status == 404:
            return None
        if status >= 300:
            raise self._refused(f"read Deployment {name}", status, data)
        return _json(data)

    @_classified
    async def list_pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
        """The pods a Deployment selects (by its ``matchLabels``), as plain dicts (camelCase, as the API has them)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        status, data = await self._request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods",
                                           query=[("labelSelector", selector)])
        if status >= 300:
            raise self._refused(f"list pods {selector}", status, data)
        return list(_json(data).get("items") or [])

    @_classified
    async def read_gateway(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Gateway API Gateway (None: absent, or the cluster does not serve the Gateway API)."""
        return await self._read(f"{_GATEWAY_API}/namespaces/{quote(namespace)}/gateways/{quote(name)}",
                                f"Gateway {namespace}/{name}")

    @_classified
    async def read_gateway_class(self, name: str) -> dict[str, Any] | None:
        """A GatewayClass (cluster-scoped; None: absent)."""
        return await self._read(f"{_GATEWAY_API}/gatewayclasses/{quote(name)}", f"GatewayClass {name}")

    async def _read(self, path: str, what: str) -> dict[str, Any] | None:
        status, data = await self._request("GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise self._refused(f"read {what}", status, data)
        return _json(data)

    async def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read_custom(contract.MODELVERSION_PLURAL, "ModelVersion", namespace, name)

    async def read_abtest(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read_custom("abtests", "ABTest", namespace, name)

    @_classified
    async def _read_custom(self, plural: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        status, data = await self._request("GET", f"{_CUSTOM}/namespaces/{quote(namespace)}/{plural}/{quote(name)}")
        if status == 404:
            return None
        if status >= 300:
            raise self._refused(f"read {kind} {name}", status, data)
        return _json(data)

    async def post_event(self, involved: dict[str, Any], type: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about a ModelVersion or ABTest (``kubectl describe`` and
        ``kubectl get events`` show it). Never raises: an Event that cannot be posted is one warning line,
        and the decision it reports stands."""
        meta = involved.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'modelpilot')}.", "namespace": namespace},
            "involvedObject": {"apiVersion": involved.get("apiVersion", f"{GROUP}/{VERSION}"),
                               "kind": involved.get("kind"), "name": meta.get("name"), "namespace": namespace,
                               "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message[:1024], "type": type, "count": 1, "firstTimestamp": now,
            "lastTimestamp": now, "source": {"component": "modelpilot"}, "reportingComponent": "modelpilot",
            "reportingInstance": socket.gethostname()}
        try:
            status, data = await self._request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body=event)
            problem = "" if status < 300 else str(self._refused("Event", status, data))
        except TRANSPORT_ERRORS as exc:
            problem = describe_transport_error(exc)
        except async_config.ConfigException as exc:
            problem = f"no credentials: {exc}"
        if problem:
            logging.getLogger(__name__).warning("cannot post Event %s on %s/%s: %s", reason, namespace,
                                                meta.get("name"), problem)

    @_classified
    async def patch_status(self, namespace: str, name: str, status: dict[str, Any], plural: str = "modelversions",
                           resource_version: str | None = None) -> dict[str, Any] | None:
        """Merge-patch status; returns the object as the write left it. With ``resource_version`` the write only
        lands if nothing changed since that read (optimistic concurrency); None means it was skipped because
        someone else wrote first (or the object is gone)."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        code, data = await self._request(
            "PATCH", f"{_CUSTOM}/namespaces/{quote(namespace)}/{plural}/{quote(name)}/status",
            body=body, content_type=_MERGE)
        if code == 404:  # deleted meanwhile: nothing to report on
            return None
        if code == 409 and resource_version:
            return None
        if code >= 300:
            raise self._refused(f"status of {plural}/{name}", code, data)
        return _json(data) or {"metadata": {}}  # truthy: written

    @_classified
    async def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        status, data = await self._request("GET", f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}")
        if status >= 300:
            raise self._refused(f"Secret {namespace}/{name}", status, data)
        return {k: base64.b64decode(v).decode() for k, v in (_json(data).get("data") or {}).items()}


def _proxy_or_netrc_configured() -> bool:
    """Whether aiohttp's ``trust_env`` would find anything: proxy variables (any case) or a netrc file."""
    if any(k.lower() in ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy") for k in os.environ):
        return True
    netrc = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    return os.path.exists(netrc)


def without_managed_fields(value: Any) -> Any:
    """``value`` (an object, a list's answer or a watch event, as decoded) without ``metadata.managedFields``.

    Server-side apply's bookkeeping lists every field path of every writer — for a serving Deployment or pod
    about as much as the rest of the object — and nothing in the operator (nor kopf) reads it. Dropped as soon
    as an answer or watch event is decoded, so queued events and bodies in flight hold a third less memory
    during a burst (benchmarks/README.md). Mutates and returns ``value``."""
    if not isinstance(value, dict):
        return value
    for obj in (value, value.get("object"), *(value.get("items") or ())):
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
    return value


def _json(data: bytes) -> dict[str, Any]:
    """A raw answer as the API has it (camelCase dicts), without ``managedFields``."""
    return cast(dict[str, Any], without_managed_fields(orjson.loads(data)))
