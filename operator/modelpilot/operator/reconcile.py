"""The ModelVersion reconciler: observe, plan, act. The I/O half of the operator's "observe → plan → act".

Between the core (which decides when a ModelVersion is reconciled, ``core``) and the adapters (``kube``,
``registry``, ``prometheus``). ``Reconciler.reconcile`` reads nothing it is not asked for: it parses the spec
and ``status.rollout`` once, hands them to the pure planner (``plan.model_version``), observes what the
planner asks for (``plan.Need``: the registry's answer, the ABTest membership, the Gateway's mirror form, both
tracks' Deployments and the canary's pods, an analysis round in Prometheus, a promoted version's signature) and acts
on the plan it gets: applies and deletes in order, the registry write-back, then one status write with readiness
judged on the stable Deployment as its apply answered (read again on a rollout tick; ``plan.readiness_status``),
conditional on the resourceVersion it read.

The rules that keep production safe are the planner's (``plan``): a version is resolved in MLflow once and
pinned in ``status.model``, resolved again only when the spec changes or the alias poll asks; a registry that
cannot answer never touches what runs; status carries kstatus conditions (``Ready``, ``Reconciling``,
``Stalled``) with ``observedGeneration``. What stays here is I/O and the caches that spare it: the newest known
copy of each ModelVersion (``note``), the Deployment state readiness was last written from, one lock per
ModelVersion, pooled MLflow and Prometheus clients, and the readiness refresh a Deployment event triggers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from modelpilot.operator import analysis, api, builders, contract, plan, rollout
from modelpilot.operator.gateways import MirrorStyles
from modelpilot.operator.kube import Kube, KubeError, KubeUnavailable
from modelpilot.operator.logs import about
from modelpilot.operator.metrics import OperatorMetrics
from modelpilot.operator.plan import (
    Event,
    Membership,
    memberships,
    observe,
    pod_health,
    readiness_status,
    READINESS_CONDITIONS,
    rollout_phase,
    spec_errors,
)
from modelpilot.operator.prometheus import Prometheus, PrometheusError
from modelpilot.operator.registry import (
    Credentials,
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


@dataclass
class Result:
    """What one reconcile decided: the status written, Events to post, whether to retry."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    retry: bool = False
    message: str = ""
    involved: dict[str, Any] | None = None
    """The resource as read, for posting the Events against (when the caller has no body of its own)."""


#: Threads for the synchronous MLflow and Prometheus clients (each call bounded by its own timeout).
BLOCKING_THREADS = 32
T = TypeVar("T")

#: How old the stable Deployment's apply answer may be to judge readiness on; older and not ready: read again.
STALE_APPLY_SECONDS = 1.0


class SpecError(Exception):
    """The spec is valid for the schema but cannot work (e.g. a missing credentials Secret key)."""


class InvalidSpec(SpecError):
    """The spec does not parse with the typed API (``api``): the message names each field. Only a new spec
    can fix it, and a new spec is a reconcile of its own, so it is not retried."""


def unresolved_of(exc: Exception) -> plan.Unresolved:
    """A failed resolution as the planner takes it: a model or version MLflow does not have is
    ``ModelNotFound``, a spec that cannot work ``SpecError`` (both stalled: someone has to act; a spec that
    does not parse, ``InvalidSpec``, is not retried either), anything else ``RegistryUnavailable``."""
    not_found = isinstance(exc, RegistryNotFound)
    reason = "ModelNotFound" if not_found else "SpecError" if isinstance(exc, SpecError) else "RegistryUnavailable"
    return plan.Unresolved(reason, str(exc), stalled=not_found or isinstance(exc, SpecError),
                           invalid=isinstance(exc, InvalidSpec))


# ---------------------------------------------------------------------------- readiness bookkeeping


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
        registry, ref = await self.registry(namespace, spec), plan.model_ref(spec)
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
        """Bring one ModelVersion's objects in line with its spec: observe, plan (``plan.model_version``,
        pure), act.

        ``refresh`` asks MLflow again even when a version is pinned (the alias poll). ``member`` is its ABTest
        membership when the caller knows it better than the index (the ABTest reconciler, which has just
        written the replicas it assigns); by default it is looked up. The planner asks for what else it needs
        (``plan.Need``: the registry, the membership, the Gateway's mirror form, both tracks, an analysis round,
        a signature);
        each is observed here and the plan made again with the same time.
        """
        meta = body["metadata"]
        status = dict(body.get("status") or {})
        name, namespace, generation = meta["name"], meta["namespace"], int(meta.get("generation") or 1)
        now = now_iso()
        try:
            # Parsed once, here: everything below reads the typed spec and the model's defaults.
            spec = api.ModelVersionSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            return await self._act(namespace, name, plan.invalid_spec(status, generation, now, spec_errors(exc)),
                                   body, now)
        owner = builders.Owner(name=name, namespace=namespace, uid=meta["uid"])
        known = member != "look up"  # else the planner asks for it once a version is known
        obs = plan.Observed(owner=owner, generation=generation, spec=spec, status=status,
                            rollout_state=rollout_status(status, namespace, name), tracking_uri=self.tracking_uri(spec),
                            default_image=self.settings.serving_image, refresh=refresh,
                            member=None if member == "look up" else member, member_known=known,
                            annotation=str((meta.get("annotations") or {}).get(ACTION_ANNOTATION, "")).strip())
        for _ in range(len(plan.Needed) + 1):  # each need is asked once at most
            decided = plan.model_version(obs, now)
            if decided.need is None:
                return await self._act(namespace, name, decided, body, now, owner=owner, spec=spec)
            obs = await self._observe(obs, decided.need)
        raise RuntimeError(f"the planner asked again for what it was told: {decided.need}")

    async def _observe(self, obs: plan.Observed, need: plan.Need) -> plan.Observed:
        """``obs`` with what the planner asked for observed."""
        owner, spec = obs.owner, obs.spec
        if need.what == plan.Needed.RESOLUTION:
            try:
                resolution: ResolvedModel | plan.Unresolved = await self.resolve(owner.namespace, spec)
            except (RegistryError, SpecError) as exc:
                resolution = unresolved_of(exc)
            return dataclasses.replace(obs, resolution=resolution)
        if need.what == plan.Needed.MEMBERSHIP:
            return dataclasses.replace(obs, member=await self.abtest_membership(owner.namespace, owner.name),
                                       member_known=True)
        if need.what == plan.Needed.MIRROR_STYLE:
            assert spec.routing is not None
            return dataclasses.replace(obs, mirror_style=await self.mirror_styles.of(spec.routing.gateway_ref,
                                                                                     owner.namespace))
        if need.what == plan.Needed.TRACKS:
            return dataclasses.replace(obs, world=await self._observe_tracks(owner))
        if need.what == plan.Needed.ANALYSIS:
            assert need.model is not None and need.stable is not None and need.rollout is not None
            # Prometheus is asked over a synchronous client: off the event loop.
            return dataclasses.replace(obs, analysis=await self.off_loop(
                self._analyse, owner, spec, need.stable, need.model, need.window, need.rollout))
        assert need.model is not None
        return dataclasses.replace(obs, signature_read=True,
                                   full_model=await self._with_signature(owner, spec, need.model))

    async def _act(self, namespace: str, name: str, decided: plan.Plan, body: dict[str, Any], now: str, *,
                   owner: builders.Owner | None = None, spec: api.ModelVersionSpec | None = None) -> Result:
        """Do what the plan says: its objects, the write-back, the status write (with readiness judged on the
        stable Deployment as acted on), in that order; Events are posted by the caller."""
        status, events = decided.status, list(decided.events)
        if not decided.readiness:
            if decided.write:
                await self.kube.patch_status(namespace, name, status)
            return Result(status=status, events=events, retry=decided.retry, message=decided.message)
        assert owner is not None and spec is not None and decided.objects is not None
        tick = decided.rollout_state is not None  # a rollout tick
        if decided.rollout_state is not None:
            self.metrics.observe_rollout(namespace, name, decided.rollout_action, decided.rollout_state)
        if plan.first_reconcile(body.get("status") or {}):
            # Nothing owned by this uid exists yet but what this reconcile applies, so the optional objects are not
            # read only to find them absent (3 reads fewer per new ModelVersion). The one gap — an operator that
            # applied one and died before any status write, and a spec that dropped it meanwhile — is closed when
            # an operator next starts and resumes it with status written.
            for kind, obj in (("Deployment", builders.deployment_name(owner, "canary")),
                              ("HorizontalPodAutoscaler", name), ("PodDisruptionBudget", name),
                              ("HTTPRoute", name), ("Service", f"{name}-stable"), ("Service", f"{name}-canary"),
                              ("SnippetsFilter", builders.canary_mirror_filter_name(owner))):
                self.kube.assume_absent(kind, namespace, obj, owner.uid)
        # A rollout tick judges readiness on the stable Deployment read after everything was done: the answer to a
        # step's apply (a scale) has a generation its controller has not observed yet, which reads as not Ready.
        applied = await self._apply(owner, decided.objects, keep_answer=not tick)
        if decided.write_back is not None:
            events += await self._write_back(owner, spec, status, decided.write_back, now)
        # Otherwise the apply's answer is the Deployment as it is now (status included): no second read.
        deployment = applied if applied is not None else await self.kube.read_deployment(namespace, name)
        status, ready_events = await self._write_readiness(namespace, name, status, int(status["observedGeneration"]),
                                                           deployment, now, await self.pods_of(namespace, deployment),
                                                           first=body)
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

    async def _apply(self, owner: builders.Owner, objects: plan.Objects,
                     keep_answer: bool = True) -> dict[str, Any] | None:
        """Act on the planned objects in order (``plan.desired_objects``). Returns the stable Deployment as its
        apply answered (None if it was not applied, or not ``keep_answer``), read again when that answer is stale
        and not ready."""
        applied: dict[str, Any] | None = None
        applied_at = 0.0
        # Each manifest is let go once applied: a create's Deployment manifest was held while its Service waited
        # seconds at the ClusterIP allocator, for 200 creates at once (benchmarks/README.md).
        steps = list(objects.steps)
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
            if stable and keep_answer:
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
        return applied

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
                          wb: plan.WriteBack, now: str) -> list[Event]:
        """The planned registry write-back, with the same credentials Secret as resolution; its outcome goes
        into ``status`` (``plan.written_back``: the ``RegistryWriteBack`` condition, one Warning on failure)."""
        model = wb.model
        failure: plan.Unresolved | None = None
        try:
            registry = await self.registry(owner.namespace, spec)
            if wb.promoted:
                await self.off_loop(registry.set_alias, model.name, wb.alias, model.version)
                await self.off_loop(registry.set_tag, model.name, model.version, "modelpilot.promoted", "true")
            else:
                await self.off_loop(registry.set_tag, model.name, model.version, "modelpilot.rejected", wb.reason)
        except (RegistryError, SpecError) as exc:
            why = ("Unauthorized" if isinstance(exc, RegistryUnauthorized) else "SpecError"
                   if isinstance(exc, SpecError) else "RegistryNotFound" if isinstance(exc, RegistryNotFound)
                   else "RegistryUnavailable")
            failure = plan.Unresolved(why, str(exc))
            about(_log, owner.namespace, owner.name).warning("registry write-back failed (wanted: %s): %s",
                                                             wb.what, exc)
        return plan.written_back(status, wb, failure, now)

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
