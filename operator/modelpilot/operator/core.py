"""The operator's running parts, one set per process: settings, reconcilers, ticker and readiness pool.

Between the kopf handlers (layer 1, ``handlers``) and the reconcilers (layer 2). ``OperatorCore`` is made
once at start-up (``run``) and handed to kopf in its ``memo``; every handler reaches it there and the ticker
calls it directly, so nothing lives in module globals and two operators in one process (tests) cannot see
each other's state. The handlers translate kopf's vocabulary; everything else they need is here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from modelpilot.operator import rollout
from modelpilot.operator.abtest_reconcile import ABTestReconciler
from modelpilot.operator.kube import Kube, KubeError
from modelpilot.operator.logs import about
from modelpilot.operator.metrics import OperatorMetrics
from modelpilot.operator.plan import Membership, memberships
from modelpilot.operator.reconcile import Reconciler, Result, readiness_view, resource_version
from modelpilot.operator.settings import OperatorSettings
from modelpilot.operator.ticker import Ticker

log = logging.getLogger(__name__)

Logger = logging.Logger | logging.LoggerAdapter[Any]  # what kopf passes as ``logger``

#: How often the memory tick looks whether a burst is over (seconds).
MEMORY_TICK_SECONDS = 2.0
#: How long no reconcile or refresh ran before a burst counts as over (seconds).
MEMORY_QUIET_SECONDS = 3.0
#: Reconciles and refreshes that make a burst worth releasing memory after, deletions apart.
MEMORY_BURST = 50


def release_memory() -> None:
    """Hand memory freed after deletions back to the OS: a full garbage collection (what a burst of deleted
    resources leaves in reference cycles — kopf's per-object tasks, exceptions with their frames — stays in the
    oldest generation of an idle process until some later collection), then glibc's ``malloc_trim`` for the
    pages freed into its arenas (a no-op elsewhere than glibc). Called once a burst is over (see
    ``OperatorCore.tick``): a full collection every 10 s was a fifth of the CPU under load."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _said_reconciled(namespace: str, name: str, what: str, generation: Any, result: Result) -> None:
    """One INFO line per reconcile a watch event started (kopf's own handlers said as much before), e.g.
    ``[ml/iris] reconciled generation 2: phase Ready``; ``what``: "" or "ABTest "."""
    about(log, namespace, name).info("reconciled %sgeneration %s: phase %s%s", what, generation,
                                     result.status.get("phase") or "unchanged",
                                     f", retrying ({result.message})" if result.retry else "")


class OperatorCore:
    """What the handlers and the ticker share: one settings object, one API adapter, the reconcilers."""

    def __init__(self, settings: OperatorSettings, kube: Kube, metrics: OperatorMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or OperatorMetrics()  # what ``MODELPILOT_METRICS_PORT`` serves (``run``)
        self.reconciler = Reconciler(settings, kube, metrics=self.metrics)
        self.abtests = ABTestReconciler(self.reconciler)
        self.abtests.post_variant = self.post
        self.abtests.request_reconcile = self.request_reconcile
        # Periodic work (rollout ticks, alias polls, ABTest figures) runs on the ticker, not on kopf timers:
        # a timer puts a finalizer on each resource, which blocks its deletion while the operator is down.
        self.ticker = Ticker(self._tick_from_thread)
        # Readiness refreshes at once (each is two reads and a write): bounded so a burst of Deployment events
        # does not crowd the apiserver ahead of the reconciles that create objects.
        self.readiness_slots = asyncio.Semaphore(settings.kubernetes.readiness_workers)
        # Reconciles at once (MODELPILOT_WORKERS): each mostly waits on the API; the bound keeps a burst of
        # creates from holding hundreds of requests open at the apiserver at one time.
        self.reconcile_slots = asyncio.Semaphore(settings.kubernetes.workers)
        self.loop: asyncio.AbstractEventLoop | None = None  # kopf's, set by ``start``: the ticker's work runs on it
        self._ticks: set[concurrent.futures.Future[None]] = set()  # periodic runs the ticker's threads wait on
        self._ticks_guard = threading.Lock()
        self._deleted = threading.Event()  # something was deleted since memory was last released
        self._busy_at = time.monotonic()  # when a reconcile or refresh last ran
        self._busy_since_release = 0  # reconciles and refreshes since memory was last released
        self._stopped = False
        # Deployment events waiting for their ModelVersion's refresh: the newest Deployment to judge per
        # ModelVersion (None: read it then). One refresh waits per ModelVersion and judges the newest copy
        # when its turn comes; the events themselves are not held (see ``request_refresh``).
        self._refresh_due: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._refreshers: set[asyncio.Task[None]] = set()
        # ModelVersions to reconcile because something else than their spec changed (``request_reconcile``) →
        # whether it was asked again while its reconcile runs.
        self._reconcile_due: dict[tuple[str, str], bool] = {}
        self._live: set[tuple[str, str]] = set()  # ModelVersions that exist, as their watch events show (``lives``)
        # ModelVersions (uid) reconciled since this process started: kopf lists them again whenever its watch
        # must start over (410 Gone after a long disconnection, a failed stream), and an unchanged one is
        # reconciled only on the first listing (a resume).
        self._resumed: set[str] = set()
        self._retries: dict[tuple[str, str], int] = {}  # failed reconciles in a row, per ModelVersion

    @property
    def kube(self) -> Kube:
        return self.reconciler.kube

    def start(self, membership_lookup: Callable[[str, str], Membership | None]) -> None:
        """Start periodic work (call it on kopf's event loop); ABTest membership is looked up in kopf's live
        index from now on."""
        self.loop = asyncio.get_running_loop()
        self.reconciler.membership_lookup = membership_lookup
        self.ticker.start()
        self.ticker.track("memory", "", "", MEMORY_TICK_SECONDS)

    async def stop(self) -> None:
        """Stop periodic work, the threads and the API sessions. Run once: by kopf's cleanup handler, or by
        ``run.operate`` when kopf's stop was cut short and that handler never ran."""
        if self._stopped:
            return
        self._stopped = True
        for task in list(self._refreshers):
            task.cancel()
        with self._ticks_guard:
            self.loop = None  # no new periodic run starts; those waiting on the loop are cancelled
            for running in list(self._ticks):
                running.cancel()
        self.ticker.stop()
        self.reconciler.blocking.shutdown(wait=False, cancel_futures=True)
        self.reconciler.close()
        await self.kube.close()

    def _tick_from_thread(self, kind: str, namespace: str, name: str) -> None:
        """The ticker's threads hand each periodic run to the event loop the reconciles run on and wait for it,
        so a resource is still never ticked twice at once."""
        with self._ticks_guard:  # never submitted after stop() cancelled what was waiting
            loop = self.loop
            if loop is None or loop.is_closed():
                return
            running = asyncio.run_coroutine_threadsafe(self.tick(kind, namespace, name), loop)
            self._ticks.add(running)
        try:
            running.result()
        except concurrent.futures.CancelledError:
            pass  # the operator is stopping
        finally:
            self._ticks.discard(running)

    def backoff(self, retry: int) -> float:
        """Seconds before kopf's next retry: ``MODELPILOT_RETRY_DELAY_SECONDS`` doubling, at most 5 minutes."""
        return float(min(self.settings.schedule.retry_delay_seconds * (2 ** retry), 300.0))

    async def post(self, body: Any, result: Result | None) -> None:
        """Post the result's Events through the adapter (kopf.event only works inside kopf's own handlers)."""
        for event in (result.events if result else []):
            await self.kube.post_event(dict(body), event.type, event.reason, event.message)

    # ------------------------------------------------------------------ ModelVersion

    async def tick(self, kind: str, namespace: str, name: str) -> None:
        """One periodic run: re-evaluate an active rollout, ask MLflow where a followed alias points, retry a
        failed reconcile, re-check readiness, refresh an ABTest's figures, or release memory. Each reads the
        resource afresh; one gone meanwhile is forgotten."""
        if kind == "memory":
            burst = self._deleted.is_set() or self._busy_since_release >= MEMORY_BURST
            if burst and time.monotonic() - self._busy_at >= MEMORY_QUIET_SECONDS:
                self._deleted.clear()
                self._busy_since_release = 0
                # A burst leaves hundreds of idle TLS connections to the apiserver, each holding aiohttp's 256 KiB
                # read buffer and OpenSSL's state: most of what the RSS kept after 200 creates and deletions
                # (tracemalloc). The next request opens a fresh session.
                await self.kube.release_idle_connections()
                # Once quiet: a collection and a trim walk the heap (the trim off the loop: it releases the GIL).
                await self.reconciler.off_loop(release_memory)
            return
        if kind == "readiness":
            await self.refresh(namespace, name, log)
            return
        if kind == "abtest":
            body = await self.kube.read_abtest(namespace, name)
            if body is None:
                self.ticker.forget(kind, namespace, name)
                return
            await self.abtest_figures(body)
            return
        result = await self.measured_or_logged(namespace, name, refresh=(kind == "alias"))
        if kind == "retry":
            self._retry_if_failed(namespace, name, result)
        if result is None:
            self.ticker.forget(kind, namespace, name)

    async def measured_or_logged(self, namespace: str, name: str, refresh: bool) -> Result | None:
        """Reconcile from the ticker or an event handler: an API error is one warning line, the next tick
        retries. None when the ModelVersion is gone."""
        try:
            # Periodic runs and actions are not queued behind a burst's reconciles: the ticker's own threads bound
            # them, and a canary's analysis must not wait on 250 creates.
            return await self.measured(namespace, name, refresh=refresh, bounded=False)
        except KubeError as exc:
            about(log, namespace, name).warning("reconcile: %s", exc)
            return Result(status={}, retry=True, message=str(exc))

    async def measured(self, namespace: str, name: str, refresh: bool,
                       seen: dict[str, Any] | None = None, bounded: bool = True) -> Result | None:
        """Reconcile the ModelVersion as it is now (``Reconciler.reconcile_latest``; ``seen``: the body an event
        delivered), recording duration, outcome and phase; raises ``KubeError`` on an API error, None when it
        no longer exists."""
        started = self._busy_at = time.monotonic()
        self._busy_since_release += 1
        try:
            async with self.reconcile_slots if bounded else contextlib.nullcontext():
                done = await self.reconciler.reconcile_latest(namespace, name, refresh=refresh, seen=seen)
        except KubeError:
            self.metrics.reconciles.labels(kind="ModelVersion", result="error").inc()
            raise
        finally:
            self.metrics.reconcile_seconds.labels(kind="ModelVersion").observe(time.monotonic() - started)
        if done is None:
            return None
        result, body = done
        self.metrics.reconciles.labels(kind="ModelVersion", result="retry" if result.retry else "success").inc()
        if result.retry:
            reason = next((c.get("reason") for c in result.status.get("conditions") or []
                           if c.get("type") == "Resolved" and c.get("status") == "False"), "Unknown")
            self.metrics.registry_errors.labels(reason=reason).inc()
        self._phase_of(namespace, name, result.status.get("phase"))
        await self.post(body, result)
        return result

    def _phase_of(self, namespace: str, name: str, phase: str | None) -> None:
        """Count a ModelVersion's phase after a reconcile or refresh — unless it was deleted while that ran: then
        its series go (a late count would keep a deleted ModelVersion in the gauge for good)."""
        if self.lives(namespace, name):
            self.metrics.set_phase("ModelVersion", f"{namespace}/{name}", phase)
        else:
            self.metrics_gone(namespace, name)

    def metrics_gone(self, namespace: str, name: str) -> None:
        """A ModelVersion is deleted: out of the phase gauge, and its rollout and analysis series removed."""
        self.metrics.set_phase("ModelVersion", f"{namespace}/{name}", None)
        self.metrics.forget(namespace, name)

    def seen(self, body: dict[str, Any], type: str | None) -> None:
        """Keep the ticker's list current from a ModelVersion watch event: an active rollout is re-evaluated
        every ``MODELPILOT_ROLLOUT_TICK_SECONDS``, a followed alias polled every ``MODELPILOT_ALIAS_POLL_SECONDS``."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        gone = type == "DELETED" or bool(meta.get("deletionTimestamp"))
        spec, status = body.get("spec") or {}, body.get("status") or {}
        if not gone and (status.get("rollout") or {}).get("phase") in rollout.ACTIVE:
            self.ticker.track("rollout", namespace, name, self.settings.schedule.rollout_tick_seconds)
        else:
            self.ticker.forget("rollout", namespace, name)
        if not gone and spec.get("followAlias") and (spec.get("model") or {}).get("alias"):
            self.ticker.track("alias", namespace, name, self.settings.schedule.alias_poll_seconds)
        else:
            self.ticker.forget("alias", namespace, name)
        # Level-triggered readiness: a ModelVersion that serves a pinned model but is not Ready (or whose
        # readiness was judged on an older generation) is re-checked until it is, whatever events were missed.
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        ready = conditions.get("Ready") or {}
        settled = ready.get("status") == "True" and ready.get("observedGeneration") == meta.get("generation")
        if not gone and status.get("model") and not settled:
            self.ticker.track("readiness", namespace, name, self.settings.schedule.readiness_recheck_seconds)
        else:
            self.ticker.forget("readiness", namespace, name)
        if type == "DELETED":
            self._live.discard((namespace, name))
            self.reconciler.forget(namespace, name, str(meta.get("uid") or ""))
            self._resumed.discard(str(meta.get("uid") or ""))
            if self._retries.pop((namespace, name), None) is not None:
                self.ticker.forget("retry", namespace, name)
            self._deleted.set()
        else:
            self._live.add((namespace, name))
        if not gone:
            self.reconciler.note(body)  # the newest copy a readiness refresh starts from

    def wants_reconcile(self, body: dict[str, Any], type: str | None) -> bool:
        """Whether a watch event calls for a reconcile: a spec this operator has not observed yet
        (``metadata.generation`` ≠ ``status.observedGeneration``; the CRD defaults the latter to 0, so a new
        ModelVersion qualifies), or the first listing of one since this process started (``type`` None: it is
        resumed, so objects an older operator rendered differently are brought in line). Not when it is being
        deleted, and not for the listings kopf repeats when its watch starts over."""
        meta = body.get("metadata") or {}
        if type == "DELETED" or meta.get("deletionTimestamp"):
            return False
        observed = (body.get("status") or {}).get("observedGeneration")
        if observed != meta.get("generation"):
            return True
        return type is None and str(meta.get("uid") or "") not in self._resumed

    async def reconcile_seen(self, body: dict[str, Any]) -> None:
        """Reconcile a ModelVersion a watch event delivered (``body``); a failure (an API error, an unreachable
        registry) is one warning line, and the ticker retries it after ``backoff`` — doubling per failure in a
        row — until one succeeds, whatever events come meanwhile."""
        meta = body["metadata"]
        self._resumed.add(str(meta.get("uid") or ""))
        await self._reconcile_retried(meta["namespace"], meta["name"], body)

    async def _reconcile_retried(self, namespace: str, name: str, seen: dict[str, Any] | None = None) -> None:
        """Reconcile a ModelVersion (``seen``: the body a watch event delivered, else it is read) with one log
        line; a failure — an API error, an unreachable registry, or a bug — is retried by the ticker."""
        try:
            result = await self.measured(namespace, name, refresh=False, seen=seen)
        except KubeError as exc:  # classified (KubeUnavailable when the apiserver cannot be reached)
            about(log, namespace, name).warning("reconcile: %s", exc)
            result = Result(status={}, retry=True, message=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the ModelVersion unreconciled for good
            # kopf would log and drop an event handler's exception: nothing would ever retry it.
            about(log, namespace, name).exception("reconcile failed; retrying")
            result = Result(status={}, retry=True, message=f"{type(exc).__name__}: {exc}")
        else:
            if result is not None:
                _said_reconciled(namespace, name, "", result.status.get("observedGeneration")
                                 or (seen or {}).get("metadata", {}).get("generation"), result)
        self._retry_if_failed(namespace, name, result)

    async def reconcile_abtest_seen(self, body: dict[str, Any]) -> None:
        """Reconcile an ABTest a watch event delivered (``body``), with its metrics, Events and one log line. A
        failure is one warning line; the ticker's periodic run of the ABTest (a whole reconcile, tracked by
        ``abtest_seen``) retries it."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        self._resumed.add(str(meta.get("uid") or ""))
        started = time.monotonic()
        try:
            result = await self.abtests.reconcile(body, measure=False)
        except KubeError as exc:
            self.metrics.reconciles.labels(kind="ABTest", result="error").inc()
            about(log, namespace, name).warning("ABTest reconcile: %s", exc)
            return
        except Exception:  # noqa: BLE001 - logged with its traceback; the ABTest's periodic run retries it
            self.metrics.reconciles.labels(kind="ABTest", result="error").inc()
            about(log, namespace, name).exception("ABTest reconcile failed; its periodic run retries it")
            return
        finally:
            self.metrics.reconcile_seconds.labels(kind="ABTest").observe(time.monotonic() - started)
        self.metrics.reconciles.labels(kind="ABTest", result="retry" if result.retry else "success").inc()
        self.metrics.set_phase("ABTest", f"{namespace}/{name}", result.status.get("phase"))
        _said_reconciled(namespace, name, "ABTest ", meta.get("generation"), result)
        await self.post(body, result)

    def _retry_if_failed(self, namespace: str, name: str, result: Result | None) -> None:
        """Track a failed reconcile's retry on the ticker (kind ``retry``), or forget it once one succeeded."""
        key = (namespace, name)
        if result is None or not result.retry:
            if self._retries.pop(key, None) is not None:
                self.ticker.forget("retry", namespace, name)
            return
        failed = self._retries.get(key, 0)
        self._retries[key] = failed + 1
        self.ticker.track("retry", namespace, name, self.backoff(failed))

    def request_refresh(self, namespace: str, name: str, deployment: dict[str, Any] | None = None) -> None:
        """Have a ModelVersion's readiness refreshed from ``deployment`` (its stable Deployment as an event
        delivered it; None: read it then) as soon as its lock is free, without waiting for that here.

        A Deployment event used to wait for the refresh, and the refresh for its ModelVersion's lock, which a
        create's reconcile holds for seconds while its Service waits at the apiserver's ClusterIP allocator.
        Meanwhile kopf queued each Deployment's further events (~4 per Deployment), whole bodies, behind the
        waiting one: ~800 Deployment bodies at once at 200 creates, most of the operator's peak memory, which
        the allocator then kept (benchmarks/README.md). Now each event only leaves the newest copy here and
        returns; at most one refresh waits per ModelVersion, and it judges the newest copy when its turn comes
        (``refresh_readiness`` still skips one older than the copy last judged)."""
        key = (namespace, name)
        if deployment is not None:
            # What readiness is judged on, not the pod template: up to one copy per ModelVersion waits here.
            deployment = readiness_view(deployment) if resource_version(deployment) is not None else None
        if key in self._refresh_due:  # a refresh is waiting already: it judges the newer of the two copies
            known = self._refresh_due[key]
            if known is not None and (deployment is None or
                                      (resource_version(deployment) or 0) > (resource_version(known) or 0)):
                self._refresh_due[key] = deployment  # None wins: a read is newer than any copy
            return
        self._refresh_due[key] = deployment
        # The refresh logs through the module's logger, not the event's: kopf's binds the event's whole body,
        # which a waiting refresh would keep alive.
        task = asyncio.get_running_loop().create_task(self._refresh_due_one(namespace, name))
        self._refreshers.add(task)
        task.add_done_callback(self._refreshed)

    def request_reconcile(self, namespace: str, name: str, why: str) -> None:
        """Have a ModelVersion reconciled as soon as its lock is free, without waiting for that here, when
        something other than its spec changed what it should have: one of its Deployments was deleted or its spec
        changed by someone else (``kubectl delete deployment``, ``kubectl scale``), or the ABTest it was a variant
        of is gone. Level-triggered: its own spec did not change, so no ModelVersion event would. ``why`` is
        logged. One waits per ModelVersion; a failure is retried by the ticker."""
        key = (namespace, name)
        if key in self._reconcile_due:  # one is queued or running: it runs once more if asked meanwhile
            self._reconcile_due[key] = True
            return
        self._reconcile_due[key] = False
        task = asyncio.get_running_loop().create_task(self._reconcile_due_one(namespace, name, why))
        self._refreshers.add(task)
        task.add_done_callback(self._refreshed)

    async def _reconcile_due_one(self, namespace: str, name: str, why: str) -> None:
        key = (namespace, name)
        try:
            again = True
            while again:
                self._reconcile_due[key] = False
                about(log, namespace, name).info("%s: reconciling", why)
                await self._reconcile_retried(namespace, name)
                again = self._reconcile_due[key]  # asked again while it ran: the change may have come after its read
        finally:
            self._reconcile_due.pop(key, None)

    def autoscaled(self, namespace: str, name: str) -> bool:
        """Whether a ModelVersion's spec turns autoscaling on (its Deployment's replicas are its HPA's to change),
        as its watch events last showed it."""
        body = self.reconciler.known_body(namespace, name) or {}
        return bool(((body.get("spec") or {}).get("autoscaling") or {}).get("enabled"))

    def lives(self, namespace: str, name: str) -> bool:
        """Whether a ModelVersion exists, as its watch events last showed it (one being deleted may still read
        True: its reconcile reads it afresh and does nothing then)."""
        return (namespace, name) in self._live

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshers.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug, not an API error: say so
            log.error("readiness refresh failed", exc_info=task.exception())

    async def _refresh_due_one(self, namespace: str, name: str) -> None:
        await self.refresh(namespace, name, about(log, namespace, name), due=True)

    async def refresh(self, namespace: str, name: str, logger: Logger,
                      deployment: dict[str, Any] | None = None, *, due: bool = False) -> None:
        """Refresh a ModelVersion's readiness from its Deployment (and pods); an API error is one line.
        ``deployment``: its stable Deployment as an event delivered it (else it is read); ``due``: judge the
        copy ``request_refresh`` left instead."""
        self._busy_at = time.monotonic()
        self._busy_since_release += 1
        try:
            # The lock first: a refresh waiting for its ModelVersion's reconcile (a create's waits seconds for
            # its Service) must not hold a slot other ModelVersions' refreshes need meanwhile.
            async with self.reconciler.lock(namespace, name), self.readiness_slots:
                if due:  # the newest copy the events left (``request_refresh``); later ones queue a new refresh
                    deployment = self._refresh_due.pop((namespace, name), None)
                result = await self.reconciler.refresh_readiness(namespace, name, deployment)
            if result:
                self._phase_of(namespace, name, result.status.get("phase"))
        except KubeError as exc:
            logger.warning("readiness of %s/%s: %s", namespace, name, exc)
            return
        if result and result.involved:
            await self.post(result.involved, result)  # against the body the refresh read: no second read

    # ------------------------------------------------------------------ ABTest

    async def abtest_figures(self, body: dict[str, Any]) -> None:
        """Refresh each variant's live figures, the statistical comparison and readiness (the ticker's run)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            result = await self.abtests.reconcile(dict(body), measure=True)
        except KubeError as exc:
            about(log, namespace, name).warning("ABTest figures: %s", exc)
            return
        self.metrics.set_phase("ABTest", f"{namespace}/{name}", result.status.get("phase"))
        await self.post(body, result)

    def abtest_gone(self, body: dict[str, Any]) -> None:
        """An ABTest was deleted: its variants' ModelVersions still carry its pod label and the replica share it
        assigned; each is reconciled as it now stands (in no ABTest, or in another one)."""
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace", ""))
        for model_version in sorted(memberships(body)):
            self.request_reconcile(namespace, model_version, f"ABTest {meta.get('name')} was deleted")

    def abtest_seen(self, body: dict[str, Any], type: str | None) -> None:
        """Keep the ticker's list of ABTests current: figures refresh every
        ``MODELPILOT_ABTEST_REFRESH_SECONDS``."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if type == "DELETED":
            self._resumed.discard(str(meta.get("uid") or ""))
        if type == "DELETED" or meta.get("deletionTimestamp"):
            self.ticker.forget("abtest", namespace, name)
        else:
            self.ticker.track("abtest", namespace, name, self.settings.schedule.abtest_refresh_seconds)
