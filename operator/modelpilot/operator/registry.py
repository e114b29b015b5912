"""MLflow registry adapter: resolve ``name`` + ``version`` or ``@alias`` to an immutable, pinned model version.

An adapter of the operator (bottom layer). It speaks MLflow's documented REST
API with httpx instead of going through ``MlflowClient``: the operator serves
many resources with different tracking servers and credentials at once, and
MlflowClient takes both from process-wide environment variables and retries
for minutes on an unreachable server — here each call has its own URI,
credentials and a short timeout, and every failure is classified exactly once:

* ``RegistryNotFound``   — the model, version or alias does not exist (the user must act);
* ``RegistryUnavailable`` — the server cannot be reached or answers 5xx (retry later).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import cachetools
import httpx
import yaml

# What a resolution is (pure, no I/O) lives in ``resolved``; re-exported here, where callers ask for it.
from modelpilot.operator.resolved import (
    SIGNATURE_MAX_BYTES,
    SIGNATURE_MAX_INPUTS,
    ModelRef,
    ResolvedModel,
    summarise_signature,
)

__all__ = ["SIGNATURE_MAX_BYTES", "SIGNATURE_MAX_INPUTS", "Credentials", "ModelRef", "Registries", "Registry",
           "RegistryError", "RegistryFactory", "RegistryNotFound", "RegistryUnauthorized", "RegistryUnavailable",
           "ResolvedModel", "summarise_signature"]


class RegistryError(Exception):
    """Base of the registry's small error vocabulary."""


class RegistryNotFound(RegistryError):
    """The registry answered, and the model, version or alias does not exist."""


class RegistryUnavailable(RegistryError):
    """The registry could not be asked: unreachable, timing out, or failing on its side."""


class RegistryUnauthorized(RegistryUnavailable):
    """The registry refused the credentials (HTTP 401/403)."""


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    token: str = ""

    def auth(self) -> dict[str, Any]:
        if self.token:
            return {"headers": {"Authorization": f"Bearer {self.token}"}}
        if self.username:
            return {"auth": (self.username, self.password)}
        return {}


#: How long a resolved version's details (run, artifact URI, flavor, signature) are reused, in seconds.
#: A registered version's fields are immutable once READY; the bound only limits how long a version deleted
#: from the registry still resolves. Aliases are never cached: they move.
VERSION_CACHE_SECONDS = 600.0
VERSION_CACHE_SIZE = 4096


class Registry:
    """One MLflow tracking server, with its credentials: one pooled HTTP client (thread-safe) and a cache of
    the versions it resolved, so a thousand ModelVersions of one model version ask MLflow once, not 3,000
    times (``resolve`` holds one lock per version while it asks, so concurrent first resolutions wait for
    the one in flight instead of all asking)."""

    def __init__(self, tracking_uri: str, credentials: Credentials | None = None, timeout: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not tracking_uri:
            raise RegistryUnavailable(
                "no MLflow tracking URI: set spec.registry.trackingUri or the operator's MODELPILOT_MLFLOW_TRACKING_URI"
            )
        self.base = tracking_uri.rstrip("/")
        kwargs = (credentials or Credentials()).auth()
        self.client = httpx.Client(base_url=self.base, timeout=timeout, transport=transport,
                                   headers=kwargs.pop("headers", {}), **kwargs)
        self._versions: cachetools.TTLCache[tuple[str, str], ResolvedModel] = cachetools.TTLCache(
            VERSION_CACHE_SIZE, VERSION_CACHE_SECONDS)
        self._guard = threading.Lock()
        self._inflight: dict[tuple[str, str], threading.Lock] = {}

    @contextmanager
    def _version_lock(self, key: tuple[str, str]) -> Iterator[None]:
        with self._guard:
            lock = self._inflight.setdefault(key, threading.Lock())
        with lock:
            yield
        with self._guard:
            if not lock.locked():
                self._inflight.pop(key, None)

    def _cached(self, key: tuple[str, str]) -> ResolvedModel | None:
        with self._guard:
            return self._versions.get(key)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The one place HTTP failures become registry errors (reads and write-back alike).
    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"MLflow at {self.base} is unreachable ({type(exc).__name__}: {exc})") from exc
        if resp.status_code >= 500:
            raise RegistryUnavailable(f"MLflow at {self.base} failed on {what}: HTTP {resp.status_code}")
        if resp.status_code in (401, 403):
            raise RegistryUnauthorized(f"MLflow at {self.base} refused the credentials for {what} "
                                      f"(HTTP {resp.status_code})")
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message") or resp.text
            except ValueError:
                message = resp.text
            raise RegistryNotFound(f"{what}: {message.strip()[:300]}")
        return resp

    def _get(self, path: str, params: dict[str, str], what: str) -> httpx.Response:
        return self._request("GET", path, what, params=params)

    def resolve_cached(self, ref: ModelRef) -> ResolvedModel | None:
        """``resolve`` without asking MLflow: a pinned version resolved in the last ``VERSION_CACHE_SECONDS``
        (``resolved_at`` now); None for an alias (asked every time) or a version not in the cache. Lets an
        asynchronous caller skip handing the synchronous client to a thread when nothing is to be asked."""
        if ref.alias:
            return None
        hit = self._cached((ref.name, ref.version))
        if hit is None:
            return None
        return replace(hit, alias=ref.alias, resolved_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def resolve(self, ref: ModelRef) -> ResolvedModel:
        """Pin ``ref`` to one registered version, with its run, artifacts, flavor and signature.

        An alias is asked every time (1 GET); a version's details come from the cache when it resolved the
        version in the last ``VERSION_CACHE_SECONDS`` (else 3 GETs). ``resolved_at`` is always now.
        Raises ``RegistryNotFound``, ``RegistryUnavailable`` (``RegistryUnauthorized``)."""
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        mv: dict[str, Any] | None = None
        if ref.alias:
            data = self._get("/api/2.0/mlflow/registered-models/alias", {"name": ref.name, "alias": ref.alias},
                             f"alias @{ref.alias} of model {ref.name!r}").json()
            mv = data.get("model_version") or {}
            version = str(mv.get("version", ""))
            if not version:
                raise RegistryNotFound(f"MLflow returned no model version for {ref}")
        else:
            version = ref.version
        key = (ref.name, version)
        hit = self._cached(key)
        if hit is None:
            with self._version_lock(key):
                hit = self._cached(key)
                if hit is None:
                    hit = self._resolve_version(ref, version, mv)
                    with self._guard:
                        self._versions[key] = hit
        return replace(hit, alias=ref.alias, resolved_at=now)

    def _resolve_version(self, ref: ModelRef, version: str, mv: dict[str, Any] | None) -> ResolvedModel:
        """Ask MLflow for one version (``mv``: its record when the alias lookup returned it already)."""
        if mv is None:
            data = self._get("/api/2.0/mlflow/model-versions/get", {"name": ref.name, "version": version},
                             f"version {version} of model {ref.name!r}").json()
            mv = data.get("model_version") or {}
        version = str(mv.get("version", ""))
        if not version:
            raise RegistryNotFound(f"MLflow returned no model version for {ref}")
        status = mv.get("status", "READY")
        if status == "PENDING_REGISTRATION":
            raise RegistryUnavailable(f"model {ref.name!r} version {version} is still being registered")
        if status == "FAILED_REGISTRATION":
            raise RegistryNotFound(f"model {ref.name!r} version {version} failed to register: "
                                   f"{mv.get('status_message', '')}")
        uri = self._get("/api/2.0/mlflow/model-versions/get-download-uri", {"name": ref.name, "version": version},
                        f"artifacts of {ref.name!r} version {version}").json().get("artifact_uri", "")
        flavor, signature = self._mlmodel(uri)
        kept, inputs, truncated = summarise_signature(signature)
        return ResolvedModel(
            name=ref.name, version=version, alias=ref.alias, run_id=mv.get("run_id", "") or "",
            artifact_uri=uri, source=mv.get("source", "") or "", flavor=flavor, signature=kept,
            resolved_at="", signature_inputs=inputs, signature_truncated=truncated,
        )

    # Write-back (opt-in, on promotion or rollback).
    def _post(self, path: str, body: dict[str, str], what: str) -> None:
        self._request("POST", path, what, json=body)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._post("/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias, "version": version},
                   f"setting @{alias} on {name} version {version}")

    def set_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._post("/api/2.0/mlflow/model-versions/set-tag",
                   {"name": name, "version": version, "key": key, "value": value},
                   f"tagging {name} version {version}")

    def _mlmodel(self, artifact_uri: str) -> tuple[str, str]:
        """Flavor and signature from the version's MLmodel file, when the server proxies its artifacts.

        Other artifact stores (s3://, gs://…) are read by the serving pod, not by the operator;
        for those the flavor and signature stay empty rather than guessed.
        """
        prefix = "mlflow-artifacts:"
        if not artifact_uri.startswith(prefix):
            return "", ""
        path = artifact_uri[len(prefix):].lstrip("/")
        if artifact_uri.startswith(prefix + "//"):  # mlflow-artifacts://host:port/path
            path = path.split("/", 1)[1] if "/" in path else ""
        try:
            text = self._get(f"/api/2.0/mlflow-artifacts/artifacts/{quote(path)}/MLmodel", {},
                             "the MLmodel file").text
            mlmodel = yaml.safe_load(text) or {}
        except (RegistryNotFound, yaml.YAMLError):
            return "", ""
        flavors = mlmodel.get("flavors") or {}
        flavor = next((f for f in flavors if f != "python_function"), "python_function" if flavors else "")
        signature = mlmodel.get("signature") or {}
        inputs = signature.get("inputs", "") if isinstance(signature, dict) else ""
        return flavor, inputs if isinstance(inputs, str) else ""


RegistryFactory = Callable[[str, Credentials], Registry]


class Registries:
    """The operator's registries: one ``Registry`` (pooled client + version cache) per (tracking URI,
    credentials), made by ``factory`` on first use and kept; the least recently used beyond ``size`` is
    closed. Thread-safe. Rotated credentials are a new key, so a new client."""

    def __init__(self, factory: RegistryFactory, size: int = 32) -> None:
        self.factory = factory
        self._guard = threading.Lock()
        self._open: cachetools.LRUCache[tuple[str, Credentials], Registry] = _ClosingLRU(size)

    def get(self, tracking_uri: str, credentials: Credentials) -> Registry:
        key = (tracking_uri, credentials)
        with self._guard:
            registry = self._open.get(key)
            if registry is None:
                registry = self._open[key] = self.factory(tracking_uri, credentials)
            return registry

    def close(self) -> None:
        with self._guard:
            for registry in list(self._open.values()):
                registry.close()
            self._open.clear()


class _ClosingLRU(cachetools.LRUCache[tuple[str, Credentials], Registry]):
    def popitem(self) -> tuple[tuple[str, Credentials], Registry]:
        key, registry = super().popitem()
        registry.close()
        return key, registry
