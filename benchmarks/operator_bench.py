#!/usr/bin/env python
"""Operator at scale: how fast does one operator turn N ModelVersions into Deployments and Ready?

A fixed scenario that prints its numbers (it asserts nothing):

1. starts its own local environment (``Environment(home=<tmpdir>).up()``, stopped again at the end),
   registers one iris model in its MLflow and applies the CRDs;
2. starts the operator as its own process, exactly as ``tests/cluster/test_operator.py`` does
   (``python -m modelpilot.cli operator``), and samples its RSS (children included) every 0.2 s;
3. warms up with one ModelVersion (Ready, then deleted), then creates N ModelVersions as fast as
   possible in one namespace and records, per ModelVersion, create call returned → Deployment
   appeared (a Deployment watch) and → ``Ready=True`` (a ModelVersion watch);
4. deletes all N and records how long until every Deployment is gone (garbage collection).

Every ModelVersion sets ``spec.serving.image: registry.example/simulated-serve:1``. Only pods of
``ghcr.io/modelpilot/*`` images are run as real model-server processes by the process runtime;
any other image is simulated by kwok (Running and Ready at once). So this measures the operator
(registry resolution, server-side apply, status writes, readiness refresh) and the control plane —
not the model server: 200 real servers would need ~40 GB of RAM.

Usage::

    .venv/bin/python benchmarks/operator_bench.py                # N = 200
    .venv/bin/python benchmarks/operator_bench.py --count 20
    .venv/bin/python benchmarks/operator_bench.py --keep         # leave environment + ModelVersions running

Operator settings come from the operator's defaults (``MODELPILOT_*`` variables in this process's
environment are passed through, e.g. ``MODELPILOT_RETRY_DELAY_SECONDS``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "modelpilot.io", "v1alpha1", "modelversions"
SIMULATED_IMAGE = "registry.example/simulated-serve:1"
NAMESPACE = "opbench"
WARMUP = "warmup"
MIB = 1024 * 1024


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# ---------------------------------------------------------------------------- operator process + RSS


class RssSampler(threading.Thread):
    """Samples the RSS of a process and its children (recursively) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak = 0
        self.current = 0
        self.samples = 0

    def rss(self) -> int:
        total = 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except self.psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except self.psutil.Error:
                pass
        return total

    def cpu_seconds(self) -> float:
        try:
            t = self.proc.cpu_times()
            return float(t.user + t.system + t.children_user + t.children_system)
        except self.psutil.Error:
            return math.nan

    def run(self) -> None:
        while not self.stop_event.is_set():
            value = self.rss()
            if value:
                self.current = value
                self.peak = max(self.peak, value)
                self.samples += 1
            self.stop_event.wait(self.interval)


def start_operator(kubeconfig: str, tracking_uri: str, log_path: Path,
                   metrics_port: int, liveness_port: int) -> tuple[subprocess.Popen[bytes], Any]:
    # As tests/cluster/test_operator.py: its own metrics port (the default 8080 collides with serving
    # pods of the process runtime on 127.245.x.y:8080) and a fixed peering priority. One difference:
    # the tests' ``--liveness http://127.0.0.1:0/healthz`` does not pick a free port — kopf reads
    # port 0 as "no port" and binds 127.0.0.1:80, so a second operator on the machine dies with
    # "address already in use". The benchmark passes a free port instead.
    env = {**os.environ, "KUBECONFIG": kubeconfig, "MODELPILOT_MLFLOW_TRACKING_URI": tracking_uri,
           "MODELPILOT_METRICS_PORT": str(metrics_port), "MODELPILOT_PRIORITY": "100"}
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "modelpilot.cli", "operator", "--liveness",
                             f"http://127.0.0.1:{liveness_port}/healthz"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log


def stop_operator(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------- watches


class Watcher(threading.Thread):
    """List + watch one namespaced collection, calling ``on_event(type, obj, t)`` for each change.

    Raw JSON dicts (no model deserialization: the benchmark shares 2 cores with what it measures);
    relists on 410 Gone and reports objects it missed meanwhile as ``ADDED``/``MODIFIED``.
    """

    def __init__(self, name: str, list_fn: Callable[..., Any], args: tuple[Any, ...],
                 on_event: Callable[[str, dict[str, Any], float], None]) -> None:
        super().__init__(daemon=True, name=name)
        self.list_fn, self.args, self.on_event = list_fn, args, on_event
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.errors: list[str] = []

    def _relist(self) -> str:
        resp = self.list_fn(*self.args, _preload_content=False)
        body = json.loads(resp.data)
        now = time.monotonic()
        for item in body.get("items") or []:
            self.on_event("LISTED", item, now)
        return str(body["metadata"]["resourceVersion"])

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        rv = ""
        while not self.stop_event.is_set():
            try:
                if not rv:
                    rv = self._relist()
                    self.ready.set()
                w = watch.Watch()
                for event in w.stream(self.list_fn, *self.args, resource_version=rv, timeout_seconds=10,
                                      allow_watch_bookmarks=True, deserialize=False):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        rv = ""  # 410 Gone or similar: relist
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind != "BOOKMARK":
                        self.on_event(kind, obj, time.monotonic())
                    if self.stop_event.is_set():
                        w.stop()
                        break
            except ApiException as exc:
                if exc.status == 410:
                    rv = ""
                    continue
                self.errors.append(f"{exc.status} {exc.reason}")
                time.sleep(0.5)
            except Exception as exc:  # noqa: BLE001 - a dropped connection: watch again from rv
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)


class Tracker:
    """What the two watches saw, per ModelVersion name (monotonic times)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dep_added: dict[str, float] = {}
        self.dep_deleted: dict[str, float] = {}
        self.mv_ready: dict[str, float] = {}
        self.mv_resolved: dict[str, float] = {}
        self.mv_writes: Counter[str] = Counter()  # MODIFIED events per ModelVersion (status + kopf annotations)
        self.mv_not_ready_after_ready: Counter[str] = Counter()
        self.mv_deleted: dict[str, float] = {}
        self.last_mv_event = 0.0
        self.stalled: dict[str, str] = {}

    def on_deployment(self, kind: str, obj: dict[str, Any], t: float) -> None:
        name = obj["metadata"]["name"]
        with self.lock:
            if kind == "DELETED":
                self.dep_deleted.setdefault(name, t)
            else:
                self.dep_added.setdefault(name, t)

    def on_model_version(self, kind: str, obj: dict[str, Any], t: float) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        name = meta["name"]
        with self.lock:
            self.last_mv_event = t
            if kind == "DELETED":
                self.mv_deleted.setdefault(name, t)
                return
            if kind == "MODIFIED":
                self.mv_writes[name] += 1
            conditions = {c.get("type"): c for c in status.get("conditions") or []}
            if status.get("model"):
                self.mv_resolved.setdefault(name, t)
            ready = (conditions.get("Ready", {}).get("status") == "True"
                     and status.get("observedGeneration") == meta.get("generation"))
            if ready:
                self.mv_ready.setdefault(name, t)
            elif name in self.mv_ready:
                self.mv_not_ready_after_ready[name] += 1
            if conditions.get("Stalled", {}).get("status") == "True" or \
                    conditions.get("Resolved", {}).get("status") == "False":
                self.stalled[name] = f"{conditions.get('Resolved', {}).get('reason')}: " \
                                     f"{conditions.get('Resolved', {}).get('message', '')[:120]}"

    def counts(self, names: list[str]) -> tuple[int, int, int]:
        with self.lock:
            return (sum(n in self.dep_added for n in names), sum(n in self.mv_resolved for n in names),
                    sum(n in self.mv_ready for n in names))


# ---------------------------------------------------------------------------- scenario helpers


def model_version(name: str, version: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": name},
            "spec": {"model": {"name": "iris", "version": version},
                     "serving": {"image": SIMULATED_IMAGE}}}


def wait_until(predicate: Callable[[], bool], timeout: float, progress: Callable[[float], None] | None = None,
               every: float = 2.0, interval: float = 0.05) -> bool:
    start = time.monotonic()
    last = start
    while time.monotonic() - start < timeout:
        if predicate():
            return True
        now = time.monotonic()
        if progress and now - last >= every:
            progress(now - start)
            last = now
        time.sleep(interval)
    return predicate()


def analyse_log(path: Path) -> dict[str, Any]:
    """Level counts and the most frequent warning/error messages (names and numbers folded)."""
    levels: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    handlers: Counter[str] = Counter()
    handler_re = re.compile(r"Handler '([^']+)' (succeeded|failed[^.]*)")
    tracebacks = 0
    line_re = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) (.*)$")
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"levels": {}, "problems": [], "tracebacks": 0, "lines": 0, "handlers": {}}
    for line in lines:
        if line.startswith("Traceback"):
            tracebacks += 1
        m = line_re.match(line)
        if not m:
            continue
        levels[m.group(1)] += 1
        h = handler_re.search(m.group(3))
        if h:
            handlers[f"{h.group(1)} {h.group(2)}"] += 1
        if m.group(1) in ("WARNING", "ERROR", "CRITICAL"):
            msg = re.sub(r"\[[^\]]*\]", "[…]", m.group(3))
            msg = re.sub(r"(mv|warmup)-?\d*", "<mv>", msg)
            msg = re.sub(r"\d+(\.\d+)?", "N", msg)
            problems[f"{m.group(1)} {m.group(2)}: {msg[:160]}"] += 1
    return {"levels": dict(levels), "problems": problems.most_common(8), "tracebacks": tracebacks,
            "lines": len(lines), "handlers": dict(handlers)}


def scrape_metrics(url: str) -> dict[str, float]:
    """The operator's own reconcile counters and duration sums (``{}`` if it has no /metrics)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        return {}
    wanted = ("modelpilot_operator_reconciles_total", "modelpilot_operator_reconcile_duration_seconds_sum",
              "modelpilot_operator_reconcile_duration_seconds_count", "modelpilot_operator_registry_errors_total")
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace, root: Path, results: dict[str, Any]) -> None:
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    from modelpilot.dev.environment import Environment, free_port
    from modelpilot.dev.workloads import register_iris_model

    env = Environment(home=root / "env", progress=say)
    results["_env"] = env
    t0 = time.monotonic()
    state = env.up()
    results["env_up_s"] = time.monotonic() - t0
    exports = state["exports"]
    kubeconfig, tracking = exports["KUBECONFIG"], exports["MLFLOW_TRACKING_URI"]
    kubectl = state["binaries"]["kubectl"]

    t0 = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links; keep stdout for the results
        version = register_iris_model(tracking, "iris")
    say(f"registered iris version {version} in MLflow ({time.monotonic() - t0:.1f}s)")

    kenv = {**os.environ, "KUBECONFIG": kubeconfig}
    subprocess.run([kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], env=kenv, check=True,
                   capture_output=True, timeout=60)
    subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modelversions.modelpilot.io", "crd/abtests.modelpilot.io"], env=kenv, check=True,
                   capture_output=True, timeout=90)
    say("CRDs established")

    api = config.new_client_from_config(kubeconfig)
    api.configuration.connection_pool_maxsize = max(16, args.parallel * 2)
    # A fresh client so the new pool size applies to its urllib3 pool.
    cfg = api.configuration
    api = client.ApiClient(cfg)
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))

    tracker = Tracker()
    watchers = [
        Watcher("deployments", apps.list_namespaced_deployment, (NAMESPACE,), tracker.on_deployment),
        Watcher("modelversions", custom.list_namespaced_custom_object, (GROUP, VERSION, NAMESPACE, PLURAL),
                tracker.on_model_version),
    ]
    for w in watchers:
        w.start()
    for w in watchers:
        w.ready.wait(30)

    # -------------------------------------------------------------- operator
    log_path = root / "operator.log"
    results["operator_log"] = str(log_path)
    t_op = time.monotonic()
    metrics_port = free_port()
    results["_metrics_url"] = f"http://127.0.0.1:{metrics_port}/metrics"
    proc, log = start_operator(kubeconfig, tracking, log_path, metrics_port, free_port())
    results["_proc"], results["_log"] = proc, log
    sampler = RssSampler(proc.pid)
    sampler.start()
    results["_sampler"] = sampler
    say(f"operator started (pid {proc.pid}, log {log_path})")

    def operator_alive() -> bool:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the operator exited with {proc.returncode}; end of its log:\n{tail}")
        return True

    # -------------------------------------------------------------- warm-up: one ModelVersion end to end
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, model_version(WARMUP, version))
    if not wait_until(lambda: operator_alive() and WARMUP in tracker.mv_ready, 120,
                      lambda s: say(f"  warm-up: waiting for {WARMUP} Ready ({s:.0f}s)")):
        raise RuntimeError(f"warm-up ModelVersion not Ready after 120 s; see {log_path}")
    results["warmup_ready_s"] = tracker.mv_ready[WARMUP] - t_op
    say(f"warm-up ModelVersion Ready {results['warmup_ready_s']:.1f}s after the operator started")
    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, WARMUP)
    wait_until(lambda: WARMUP in tracker.dep_deleted, 60)
    time.sleep(2)
    results["rss_idle_mib"] = sampler.rss() / MIB
    results["rss_peak_warmup_mib"] = sampler.peak / MIB
    cpu_before = sampler.cpu_seconds()
    results["load_before"] = loadavg()

    # -------------------------------------------------------------- create N as fast as possible
    n = args.count
    names = [f"mv-{i:04d}" for i in range(n)]
    created: dict[str, float] = {}
    failures: list[str] = []
    say(f"creating {n} ModelVersions in namespace {NAMESPACE} ({args.parallel} parallel clients), "
        f"image {SIMULATED_IMAGE} (kwok-simulated pods)")

    def create(name: str) -> None:
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, model_version(name, version))
            created[name] = time.monotonic()
        except ApiException as exc:
            failures.append(f"{name}: {exc.status} {exc.reason}")

    t_start = time.monotonic()
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(create, names))
    t_applied = time.monotonic()
    results.update(count=n, apply_s=t_applied - t_start, create_failures=failures)
    say(f"{len(created)}/{n} created in {t_applied - t_start:.2f}s"
        + (f"; {len(failures)} failed, e.g. {failures[0]}" if failures else ""))

    def progress(elapsed: float) -> None:
        deps, resolved, ready = tracker.counts(names)
        say(f"  +{time.monotonic() - t_start:5.1f}s  deployments {deps}/{n}  resolved {resolved}/{n}  "
            f"Ready {ready}/{n}  operator RSS {sampler.current / MIB:.0f} MiB (peak {sampler.peak / MIB:.0f})  "
            f"load {loadavg()}")

    def all_ready() -> bool:
        operator_alive()
        return tracker.counts(list(created))[2] == len(created)

    done = wait_until(all_ready, args.timeout, progress)
    t_end = time.monotonic()
    progress(0)
    results["all_ready"] = done
    results["load_at_ready"] = loadavg()
    with tracker.lock:
        dep_lat = [tracker.dep_added[k] - created[k] for k in created if k in tracker.dep_added]
        ready_lat = [tracker.mv_ready[k] - created[k] for k in created if k in tracker.mv_ready]
        pinned_lat = [tracker.mv_resolved[k] - created[k] for k in created if k in tracker.mv_resolved]
        pinned_to_ready = [tracker.mv_ready[k] - tracker.mv_resolved[k] for k in created
                           if k in tracker.mv_ready and k in tracker.mv_resolved]
        last_dep = max((tracker.dep_added[k] for k in created if k in tracker.dep_added), default=math.nan)
        last_ready = max((tracker.mv_ready[k] for k in created if k in tracker.mv_ready), default=math.nan)
        stalled = {k: v for k, v in tracker.stalled.items() if k in created}
    results.update(
        deployments=len(dep_lat), ready=len(ready_lat),
        dep_p50=percentile(dep_lat, 50), dep_p95=percentile(dep_lat, 95), dep_max=max(dep_lat, default=math.nan),
        ready_p50=percentile(ready_lat, 50), ready_p95=percentile(ready_lat, 95),
        ready_max=max(ready_lat, default=math.nan),
        pinned_p50=percentile(pinned_lat, 50), pinned_p95=percentile(pinned_lat, 95),
        pinned_max=max(pinned_lat, default=math.nan),
        gap_p50=percentile(pinned_to_ready, 50), gap_p95=percentile(pinned_to_ready, 95),
        gap_max=max(pinned_to_ready, default=math.nan),
        all_deployments_s=last_dep - t_start, all_ready_s=(last_ready - t_start) if done else t_end - t_start,
        stalled=stalled,
    )
    results["throughput"] = len(ready_lat) / results["all_ready_s"] if results["all_ready_s"] > 0 else math.nan

    # Writes keep coming after Ready (readiness refreshes, kopf annotations)? Wait until quiet for 3 s.
    wait_until(lambda: time.monotonic() - tracker.last_mv_event > 3.0, 30)
    with tracker.lock:
        results["quiet_after_s"] = tracker.last_mv_event - t_start
        writes = [tracker.mv_writes[k] for k in created]
        results["writes_p50"], results["writes_max"] = percentile(writes, 50), max(writes, default=0)
        results["flaps"] = sum(tracker.mv_not_ready_after_ready[k] > 0 for k in created)
    results["cpu_s"] = sampler.cpu_seconds() - cpu_before
    results["rss_peak_mib"] = sampler.peak / MIB
    results["rss_after_mib"] = sampler.rss() / MIB
    try:
        events = core.list_namespaced_event(NAMESPACE, _preload_content=False)
        items = json.loads(events.data).get("items") or []  # type: ignore[attr-defined]
        results["events"] = Counter(f"{e['involvedObject']['kind']}/{e.get('reason')}" for e in items
                                    if e["involvedObject"]["kind"] == "ModelVersion")
        results["events_total"] = sum(e.get("count") or 1 for e in items
                                      if e["involvedObject"]["kind"] == "ModelVersion")
    except ApiException:
        results["events"] = Counter()

    results["operator_metrics"] = scrape_metrics(results["_metrics_url"])

    # -------------------------------------------------------------- delete all N
    if args.keep:
        say("--keep: leaving the ModelVersions and the environment running")
    else:
        say(f"deleting {len(created)} ModelVersions")

        def delete(name: str) -> None:
            try:
                custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
            except ApiException as exc:
                failures.append(f"delete {name}: {exc.status} {exc.reason}")

        t_del = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(delete, list(created)))
        results["delete_calls_s"] = time.monotonic() - t_del

        def gone() -> int:
            with tracker.lock:
                return sum(k in tracker.dep_deleted for k in created if k in tracker.dep_added)

        def del_progress(_: float) -> None:
            say(f"  +{time.monotonic() - t_del:5.1f}s  deployments gone {gone()}/{results['deployments']}  "
                f"operator RSS {sampler.current / MIB:.0f} MiB  load {loadavg()}")

        gone_all = wait_until(lambda: gone() == results["deployments"], args.timeout, del_progress)
        with tracker.lock:
            last = max((tracker.dep_deleted[k] for k in created if k in tracker.dep_deleted), default=math.nan)
        results["delete_all_s"] = (last - t_del) if gone_all else math.nan
        results["deleted"] = gone()
        results["rss_peak_mib"] = sampler.peak / MIB
    for w in watchers:
        w.stop_event.set()
    results["watch_errors"] = [e for w in watchers for e in w.errors]


def fmt(value: Any, unit: str = "s", digits: int = 2) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "—"
    return f"{value:.{digits}f} {unit}".strip()


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    n = results.get("count", args.count)
    uname = os.uname()
    rows: list[tuple[str, str]] = [
        ("date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("machine", f"{os.cpu_count()} CPUs, {_mem_gib():.0f} GiB, {uname.sysname} {uname.release}"),
        ("load average before / at all-Ready", f"{results.get('load_before', '?')} / "
                                              f"{results.get('load_at_ready', '?')}"),
        ("ModelVersions", f"{n} in one namespace, {args.parallel} parallel create clients"),
        ("serving image", f"{SIMULATED_IMAGE} (kwok-simulated pods: measures the operator, not the server)"),
        ("environment up", fmt(results.get("env_up_s", math.nan), "s", 1)),
        ("warm-up: operator start → first MV Ready", fmt(results.get("warmup_ready_s", math.nan), "s", 1)),
        (f"create calls for {n} MVs", fmt(results.get("apply_s", math.nan))),
        ("create → Deployment  p50 / p95 / max",
         " / ".join(fmt(results.get(k, math.nan)) for k in ("dep_p50", "dep_p95", "dep_max"))),
        ("create → status.model pinned  p50 / p95 / max",
         " / ".join(fmt(results.get(k, math.nan)) for k in ("pinned_p50", "pinned_p95", "pinned_max"))),
        ("pinned → Ready=True  p50 / p95 / max",
         " / ".join(fmt(results.get(k, math.nan)) for k in ("gap_p50", "gap_p95", "gap_max"))),
        ("create → Ready=True  p50 / p95 / max",
         " / ".join(fmt(results.get(k, math.nan)) for k in ("ready_p50", "ready_p95", "ready_max"))),
        (f"Deployments seen / Ready", f"{results.get('deployments', 0)}/{n} / {results.get('ready', 0)}/{n}"),
        ("first create → all Deployments", fmt(results.get("all_deployments_s", math.nan))),
        ("first create → all Ready" + ("" if results.get("all_ready", False) else " (TIMED OUT)"),
         fmt(results.get("all_ready_s", math.nan))),
        ("throughput (Ready MVs / s)", fmt(results.get("throughput", math.nan), "MV/s")),
        ("MV writes seen per MV  p50 / max", f"{fmt(results.get('writes_p50', math.nan), '', 0)} / "
                                             f"{results.get('writes_max', '—')}"),
        ("last MV write after first create", fmt(results.get("quiet_after_s", math.nan))),
        ("Ready flaps (Ready → not Ready)", str(results.get("flaps", "—"))),
        ("operator RSS idle / peak / after", " / ".join(fmt(results.get(k, math.nan), "MiB", 0)
                                                         for k in ("rss_idle_mib", "rss_peak_mib", "rss_after_mib"))),
        ("operator CPU time for the batch", fmt(results.get("cpu_s", math.nan))),
        ("mean reconcile duration (operator /metrics)", fmt(_mean_reconcile(results.get("operator_metrics") or {}))),
        ("Events on MVs (count incl. repeats)", str(results.get("events_total", "—"))),
    ]
    if not args.keep:
        rows += [("delete calls", fmt(results.get("delete_calls_s", math.nan))),
                 ("delete → all Deployments gone", fmt(results.get("delete_all_s", math.nan)) +
                  f" ({results.get('deleted', 0)}/{results.get('deployments', 0)})")]
    width = max(len(k) for k, _ in rows)
    print()
    print("Operator at scale — results")
    print("-" * (width + 50))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("-" * (width + 50))
    if results.get("operator_metrics"):
        print("operator /metrics after all Ready:")
        for key, value in results["operator_metrics"].items():
            print(f"  {key} {value:g}")
    if results.get("events"):
        print("Events on ModelVersions by reason:", ", ".join(f"{k} {v}" for k, v in sorted(results["events"].items())))
    log = analyse_log(Path(results["operator_log"])) if results.get("operator_log") else None
    if log:
        print(f"operator log: {log['lines']} lines, levels {log['levels']}, tracebacks {log['tracebacks']}"
              f" ({results['operator_log']})")
        if log["handlers"]:
            print("  handler runs (whole run, warm-up and deletion included): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(log["handlers"].items())))
        for msg, count in log["problems"]:
            print(f"  {count:5d}× {msg}")
    if results.get("stalled"):
        print(f"{len(results['stalled'])} ModelVersions with Resolved=False or Stalled=True at some point, e.g.:")
        for k, v in list(results["stalled"].items())[:3]:
            print(f"  {k}: {v}")
    if results.get("create_failures"):
        print(f"{len(results['create_failures'])} failed API calls, e.g. {results['create_failures'][:3]}")
    if results.get("watch_errors"):
        print(f"benchmark watch reconnects: {len(results['watch_errors'])} (e.g. {results['watch_errors'][0]})")


def _mean_reconcile(metrics: dict[str, float]) -> float:
    total = sum(v for k, v in metrics.items() if k.startswith("modelpilot_operator_reconcile_duration_seconds_sum"))
    count = sum(v for k, v in metrics.items() if k.startswith("modelpilot_operator_reconcile_duration_seconds_count"))
    return total / count if count else math.nan


def _mem_gib() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().total) / 1024 ** 3
    except ImportError:
        return math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="number of ModelVersions (default 200)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the ModelVersions and the environment running (skips the delete phase)")
    parser.add_argument("--parallel", type=int, default=8, help="parallel create/delete clients (default 8)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for all Ready / all gone")
    args = parser.parse_args(argv)
    if args.count > 200:
        say("note: the 2 kwok nodes hold 110 pods each; more than ~220 ModelVersions leave pods Pending")
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="modelpilot-opbench-"))
    results: dict[str, Any] = {}
    code = 0
    try:
        run(args, root, results)
    except KeyboardInterrupt:
        say("interrupted")
        code = 130
    except Exception as exc:  # noqa: BLE001 - report what was measured so far
        say(f"benchmark failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        if "_sampler" in results:
            results["_sampler"].stop_event.set()
        stop_operator(results.get("_proc"))
        if results.get("_log"):
            results["_log"].close()
        env = results.get("_env")
        if env is not None and not args.keep:
            try:
                env.down(quiet=True)
            except Exception as exc:  # noqa: BLE001
                say(f"stopping the environment: {exc}")
        elif env is not None:
            say(f"environment left running: MODELPILOT_DEV_HOME={env.home} .venv/bin/modelpilot dev status")
    report(args, results)
    return code


if __name__ == "__main__":
    sys.exit(main())
