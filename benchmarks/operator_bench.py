#!/usr/bin/env python
"""Operator at scale: how fast does one operator turn N ModelVersions into Deployments and Ready, round after round?

A fixed scenario that prints its numbers (it asserts nothing):

1. starts its own local environment with simulated nodes only (``Environment(home=<tmpdir>).up(node="kwok")``,
   ``modelpilot dev up --node kwok``; stopped again at the end),
   registers one iris model in its MLflow and applies the CRDs;
2. adds kwok nodes through the API until the simulated nodes have N + 20 free pod slots (the
   environment's 2 ``kwok-node-{i}`` hold 110 pods each): ``kwok-bench-{i}``, the same shape as the
   environment's own (annotation ``kwok.x-k8s.io/node: fake``, 110 pods), and waits until they are Ready;
3. starts the operator as its own process, exactly as ``tests/cluster/test_operator.py`` does
   (``python -m modelpilot.cli operator``), and samples its RSS (children included) every 0.2 s;
4. warms up with one ModelVersion (Ready, then deleted), waits until the operator is idle and takes
   its RSS as the idle value;
4a. the floor (``--floor``, on by default): the warm-up's Deployment and Service, as the operator rendered
   them, cloned N times into a namespace of their own (no owner, without the operator's label so its watches
   never see them) and applied directly by 50 clients; first apply → every Deployment available is the
   least "all Ready" can be on this machine, whatever the operator does. The namespace is deleted before
   round 1;
5. runs R rounds (``--rounds``, default 3). A round creates N ModelVersions as fast as possible in one
   namespace and records, per ModelVersion, create call returned → Deployment appeared and → Deployment
   available (a Deployment watch) and → ``Ready=True`` (a ModelVersion watch); waits until all are Ready and the writes stop;
   deletes all N and times until every ModelVersion, Deployment and pod is gone (garbage collection);
   waits until the operator is idle plus ``--settle`` seconds and samples its RSS. Per round: the
   latency percentiles, first create → all Ready, operator CPU seconds (whole round, deletion
   included) and per ModelVersion, RSS idle / peak / after and after-vs-idle in %.

It prints one table with a column per round and one verdict line per target of issue 10 that applies
to this N (N = 200: all Ready ≤ 10 s and create → Deployment p95 ≤ 2 s; N = 1,000: all Ready ≤ 60 s;
any N: operator CPU ≤ 30 ms per ModelVersion, RSS after each round within 10 % of idle); a target is
met when every round meets it. ``--json FILE`` writes every figure.

Every ModelVersion sets ``spec.serving.image: registry.example/simulated-serve:1``; every pod is on a kwok
node and simulated (Running and Ready at once, labelled so: the nodes are ``kwok.x-k8s.io/node: fake``).
So this measures the operator
(registry resolution, server-side apply, status writes, readiness refresh) and the control plane —
not the model server: 200 real servers would need ~40 GB of RAM.

Usage::

    .venv/bin/python benchmarks/operator_bench.py                      # N = 200, 3 rounds
    .venv/bin/python benchmarks/operator_bench.py --count 1000 --json n1000.json
    .venv/bin/python benchmarks/operator_bench.py --count 30 --rounds 2  # quick run
    .venv/bin/python benchmarks/operator_bench.py --keep               # the last round's ModelVersions and the
                                                                       # environment are left running

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
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "modelpilot.io", "v1alpha1", "modelversions"
SIMULATED_IMAGE = "registry.example/simulated-serve:1"
NAMESPACE = "opbench"
WARMUP = "warmup"
MIB = 1024 * 1024
KWOK_ANNOTATION = "kwok.x-k8s.io/node"  # kwok manages the nodes annotated with it = "fake"
NODE_PODS = 110  # pods per added kwok node, as the environment's own
POD_HEADROOM = 20  # free pod slots beyond N


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

    def reset_peak(self) -> None:
        """Start a new peak (a round's) from the current value."""
        self.peak = self.rss() or self.current

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
    # As tests/cluster/test_operator.py: its own metrics port (the default 8080 may be taken on a shared
    # machine) and a fixed peering priority. One difference:
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
        self.dep_available: dict[str, float] = {}  # first seen with every replica available
        self.dep_deleted: dict[str, float] = {}
        self.mv_ready: dict[str, float] = {}
        self.mv_resolved: dict[str, float] = {}
        self.mv_writes: Counter[str] = Counter()  # MODIFIED events per ModelVersion (its status writes)
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
                spec, status = obj.get("spec") or {}, obj.get("status") or {}
                if int(status.get("availableReplicas") or 0) >= int(spec.get("replicas") or 1):
                    self.dep_available.setdefault(name, t)

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
            msg = re.sub(r"\b(r\d+-mv-\d+|warmup)\b", "<mv>", msg)
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


def apiserver_requests(api_client: Any) -> Counter[str]:
    """kube-apiserver's ``apiserver_request_total`` summed by "VERB resource[/subresource]" (all clients)."""
    try:
        cfg = api_client.configuration
        headers = {"Accept": "text/plain"}
        if cfg.api_key.get("authorization"):  # a token kubeconfig; the environment's admin uses a certificate
            headers["Authorization"] = cfg.api_key["authorization"]
        resp = api_client.call_api("GET", f"{cfg.host}/metrics", header_params=headers)
        text = resp.read().decode()
    except Exception:  # noqa: BLE001 - a figure, not a condition of the run
        return Counter()
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if labels.get("verb") == "WATCH" or labels.get("resource") in ("leases", ""):
            continue
        what = labels.get("resource", "?") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        out[f"{labels.get('verb')} {what}"] += int(float(line.rpartition(" ")[2]))
    return out


def component_cpu(components: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system, children included) used so far by each environment component, by name."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name, pid in components.items():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            out[name] = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            pass
    return out


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after if k in before}


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------------------- kwok nodes


def kwok_node(name: str, zone: str) -> dict[str, Any]:
    """A simulated node of the same shape as the environment's own ``kwok-node-{i}``."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "kubernetes.io/role": "agent",
                       "topology.kubernetes.io/zone": zone},
        },
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": str(NODE_PODS)},
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": str(NODE_PODS)}},
    }


def _node_ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def ensure_pod_capacity(core: Any, needed: int, timeout: float) -> dict[str, Any]:
    """Add ``kwok-bench-{i}`` nodes until the kwok nodes have ``needed`` free pod slots; wait until Ready.

    Counts the allocatable pods of every schedulable kwok-managed node (annotation
    ``kwok.x-k8s.io/node: fake``) minus the pods already bound to them.
    """
    nodes = json.loads(core.list_node(_preload_content=False).data)["items"]
    all_names = {n["metadata"]["name"] for n in nodes}
    kwok = [n for n in nodes if (n["metadata"].get("annotations") or {}).get(KWOK_ANNOTATION) == "fake"
            and not (n.get("spec") or {}).get("unschedulable")]
    kwok_names = {n["metadata"]["name"] for n in kwok}
    capacity = sum(int(((n.get("status") or {}).get("allocatable") or {}).get("pods", "0")) for n in kwok)
    pods = json.loads(core.list_pod_for_all_namespaces(_preload_content=False).data)["items"]
    used = sum(1 for p in pods if (p.get("spec") or {}).get("nodeName") in kwok_names
               and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
    free = capacity - used
    added: list[str] = []
    i = 0
    while free < needed:
        name = f"kwok-bench-{i}"
        i += 1
        if name in all_names:
            continue
        core.create_node(kwok_node(name, f"zone-bench-{i - 1}"))
        added.append(name)
        free += NODE_PODS
    t0 = time.monotonic()

    def ready_count() -> int:
        listed = json.loads(core.list_node(_preload_content=False).data)["items"]
        return sum(1 for n in listed if n["metadata"]["name"] in added and _node_ready(n))

    ok = not added or wait_until(lambda: ready_count() == len(added), timeout,
                                 lambda s: say(f"  waiting for {len(added)} added kwok nodes Ready "
                                               f"({ready_count()}/{len(added)}, {s:.0f}s)"), interval=0.5)
    if not ok:
        raise RuntimeError(f"added kwok nodes not Ready after {timeout:.0f} s ({ready_count()}/{len(added)})")
    return {"kwok_nodes_env": len(kwok), "kwok_nodes_added": len(added), "pod_slots_free": free,
            "pod_slots_needed": needed, "nodes_ready_s": time.monotonic() - t0 if added else 0.0}


# ---------------------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    """What every round needs: API clients, the watches' tracker, the operator process and its sampler."""

    custom: Any
    core: Any
    tracker: Tracker
    sampler: RssSampler
    version: str
    metrics_url: str
    operator_alive: Callable[[], bool]
    apps: Any = None
    #: The warm-up ModelVersion's Deployment and Service as the operator rendered them (for the floor round).
    templates: tuple[dict[str, Any], dict[str, Any]] | None = None
    #: The environment's processes by component name (apiserver, etcd, controller-manager …): their CPU per round.
    components: dict[str, int] | None = None


def settle(b: Bench, seconds: float) -> None:
    """Wait until the operator is idle (< 2 % of a core over 1 s, at most 30 s), then ``seconds`` more."""
    deadline = time.monotonic() + 30
    last = b.sampler.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(1)
        b.operator_alive()
        now = b.sampler.cpu_seconds()
        if now - last < 0.02:
            break
        last = now
    time.sleep(seconds)


def setup(args: argparse.Namespace, root: Path, results: dict[str, Any]) -> Bench:
    """Environment, model, CRDs, extra kwok nodes, watches, operator, warm-up and the idle RSS."""
    from kubernetes import client, config

    from modelpilot_dev.environment import Environment, free_port
    from modelpilot_dev.workloads import register_iris_model

    env = Environment(home=root / "env", progress=say)
    results["_env"] = env
    t0 = time.monotonic()
    state = env.up(node="kwok")
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
    for attempt in range(5):
        # kubectl wait can fail at once ("not found") while a just-applied CRD is not yet visible to it.
        waited = subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                                 "crd/modelversions.modelpilot.io", "crd/abtests.modelpilot.io"], env=kenv,
                                capture_output=True, text=True, timeout=90)
        if waited.returncode == 0:
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"the CRDs did not become Established: {waited.stderr.strip()}")
    say("CRDs established")

    api = config.new_client_from_config(kubeconfig)
    api.configuration.connection_pool_maxsize = max(16, args.parallel * 2, FLOOR_CLIENTS)
    # A fresh client so the new pool size applies to its urllib3 pool.
    cfg = api.configuration
    api = client.ApiClient(cfg)
    core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))

    # -------------------------------------------------------------- enough kwok nodes for N pods (+ headroom)
    nodes = ensure_pod_capacity(core, args.count + POD_HEADROOM, 120)
    results.update(nodes)
    say(f"kwok nodes: {nodes['kwok_nodes_env']} of the environment + {nodes['kwok_nodes_added']} added, "
        f"{nodes['pod_slots_free']} free pod slots (need {nodes['pod_slots_needed']})")

    tracker = Tracker()
    watchers = [
        Watcher("deployments", apps.list_namespaced_deployment, (NAMESPACE,), tracker.on_deployment),
        Watcher("modelversions", custom.list_namespaced_custom_object, (GROUP, VERSION, NAMESPACE, PLURAL),
                tracker.on_model_version),
    ]
    results["_watchers"] = watchers
    for w in watchers:
        w.start()
    for w in watchers:
        w.ready.wait(30)

    # -------------------------------------------------------------- operator
    log_path = root / "operator.log"
    results["operator_log"] = str(log_path)
    t_op = time.monotonic()
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
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

    b = Bench(custom=custom, core=core, tracker=tracker, sampler=sampler, version=version,
              metrics_url=metrics_url, operator_alive=operator_alive, apps=apps,
              components={c["name"]: c["pid"] for c in state["components"] if c.get("pid")})

    # -------------------------------------------------------------- warm-up: one ModelVersion end to end
    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, model_version(WARMUP, version))
    if not wait_until(lambda: operator_alive() and WARMUP in tracker.mv_ready, 120,
                      lambda s: say(f"  warm-up: waiting for {WARMUP} Ready ({s:.0f}s)")):
        raise RuntimeError(f"warm-up ModelVersion not Ready after 120 s; see {log_path}")
    results["warmup_ready_s"] = tracker.mv_ready[WARMUP] - t_op
    say(f"warm-up ModelVersion Ready {results['warmup_ready_s']:.1f}s after the operator started")
    # The operator's own rendering of one ModelVersion, cloned by the floor round (--floor).
    b.templates = (json.loads(apps.read_namespaced_deployment(WARMUP, NAMESPACE, _preload_content=False).data),
                   json.loads(core.read_namespaced_service(WARMUP, NAMESPACE, _preload_content=False).data))
    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, WARMUP)
    wait_until(lambda: WARMUP in tracker.dep_deleted and WARMUP in tracker.mv_deleted, 60)
    settle(b, args.settle)
    results["rss_idle_mib"] = sampler.rss() / MIB
    results["rss_peak_warmup_mib"] = sampler.peak / MIB
    say(f"operator idle: RSS {results['rss_idle_mib']:.0f} MiB (peak during warm-up "
        f"{results['rss_peak_warmup_mib']:.0f} MiB)")
    return b


def run_round(args: argparse.Namespace, b: Bench, r: int, delete: bool, rss_idle_mib: float) -> dict[str, Any]:
    """One round: create N, wait all Ready and quiet, then (unless kept) delete N and wait all gone."""
    from kubernetes.client.rest import ApiException

    tracker, sampler, custom = b.tracker, b.sampler, b.custom
    rr: dict[str, Any] = {"round": r}
    n = args.count
    names = [f"r{r}-mv-{i:04d}" for i in range(n)]
    created: dict[str, float] = {}
    failures: list[str] = []
    tag = f"round {r}/{args.rounds}:"

    sampler.reset_peak()
    cpu_before = sampler.cpu_seconds()
    components_before = component_cpu(b.components or {})
    bench_cpu_before = _own_cpu()
    metrics_before = scrape_metrics(b.metrics_url)
    requests_before = apiserver_requests(b.core.api_client)
    rr["load_before"] = loadavg()

    # -------------------------------------------------------------- create N as fast as possible
    say(f"{tag} creating {n} ModelVersions in namespace {NAMESPACE} ({args.parallel} parallel clients), "
        f"image {SIMULATED_IMAGE} (kwok-simulated pods)")

    def create(name: str) -> None:
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, model_version(name, b.version))
            created[name] = time.monotonic()
        except ApiException as exc:
            failures.append(f"{name}: {exc.status} {exc.reason}")

    t_start = time.monotonic()
    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(create, names))
    t_applied = time.monotonic()
    rr.update(count=n, apply_s=t_applied - t_start, create_failures=failures)
    say(f"{tag} {len(created)}/{n} created in {t_applied - t_start:.2f}s"
        + (f"; {len(failures)} failed, e.g. {failures[0]}" if failures else ""))

    def progress(elapsed: float) -> None:
        deps, resolved, ready = tracker.counts(names)
        say(f"  {tag} +{time.monotonic() - t_start:5.1f}s  deployments {deps}/{n}  resolved {resolved}/{n}  "
            f"Ready {ready}/{n}  operator RSS {sampler.current / MIB:.0f} MiB (peak {sampler.peak / MIB:.0f})  "
            f"load {loadavg()}")

    def all_ready() -> bool:
        b.operator_alive()
        return tracker.counts(list(created))[2] == len(created)

    done = wait_until(all_ready, args.timeout, progress, interval=0.05 if n <= 200 else 0.2)
    t_end = time.monotonic()
    progress(0)
    rr["all_ready"] = done
    rr["load_at_ready"] = loadavg()
    with tracker.lock:
        dep_lat = [tracker.dep_added[k] - created[k] for k in created if k in tracker.dep_added]
        avail_lat = [tracker.dep_available[k] - created[k] for k in created if k in tracker.dep_available]
        # What the operator adds after the control plane: its Deployment available → Ready=True written.
        avail_to_ready = [tracker.mv_ready[k] - tracker.dep_available[k] for k in created
                          if k in tracker.mv_ready and k in tracker.dep_available]
        last_avail = max((tracker.dep_available[k] for k in created if k in tracker.dep_available),
                         default=math.nan)
        ready_lat = [tracker.mv_ready[k] - created[k] for k in created if k in tracker.mv_ready]
        pinned_lat = [tracker.mv_resolved[k] - created[k] for k in created if k in tracker.mv_resolved]
        pinned_to_ready = [tracker.mv_ready[k] - tracker.mv_resolved[k] for k in created
                           if k in tracker.mv_ready and k in tracker.mv_resolved]
        last_dep = max((tracker.dep_added[k] for k in created if k in tracker.dep_added), default=math.nan)
        last_ready = max((tracker.mv_ready[k] for k in created if k in tracker.mv_ready), default=math.nan)
        rr["stalled"] = {k: v for k, v in tracker.stalled.items() if k in created}
    rr.update(
        deployments=len(dep_lat), ready=len(ready_lat),
        dep_p50=percentile(dep_lat, 50), dep_p95=percentile(dep_lat, 95), dep_max=max(dep_lat, default=math.nan),
        ready_p50=percentile(ready_lat, 50), ready_p95=percentile(ready_lat, 95),
        ready_max=max(ready_lat, default=math.nan),
        pinned_p50=percentile(pinned_lat, 50), pinned_p95=percentile(pinned_lat, 95),
        pinned_max=max(pinned_lat, default=math.nan),
        gap_p50=percentile(pinned_to_ready, 50), gap_p95=percentile(pinned_to_ready, 95),
        gap_max=max(pinned_to_ready, default=math.nan),
        avail_p50=percentile(avail_lat, 50), avail_p95=percentile(avail_lat, 95),
        avail_max=max(avail_lat, default=math.nan),
        lag_p50=percentile(avail_to_ready, 50), lag_p95=percentile(avail_to_ready, 95),
        lag_max=max(avail_to_ready, default=math.nan),
        all_available_s=last_avail - t_start,
        all_deployments_s=last_dep - t_start, all_ready_s=(last_ready - t_start) if done else t_end - t_start,
    )
    rr["throughput"] = len(ready_lat) / rr["all_ready_s"] if rr["all_ready_s"] > 0 else math.nan

    # Writes keep coming after Ready (readiness refreshes)? Wait until quiet for 3 s.
    wait_until(lambda: time.monotonic() - tracker.last_mv_event > 3.0, 30)
    with tracker.lock:
        rr["quiet_after_s"] = tracker.last_mv_event - t_start
        writes = [tracker.mv_writes[k] for k in created]
        rr["writes_p50"], rr["writes_max"] = percentile(writes, 50), max(writes, default=0)
        rr["flaps"] = sum(tracker.mv_not_ready_after_ready[k] > 0 for k in created)
    rr["cpu_s"] = sampler.cpu_seconds() - cpu_before
    rr["components_cpu_s"] = cpu_delta(components_before, component_cpu(b.components or {}))
    rr["components_cpu_s"]["benchmark"] = _own_cpu() - bench_cpu_before  # its creates and watches
    # Every client's requests, the benchmark's own creates and watches' LISTs included (leases left out).
    rr["apiserver_requests"] = dict((apiserver_requests(b.core.api_client) - requests_before).most_common())
    rr["rss_peak_create_mib"] = sampler.peak / MIB
    rr["rss_ready_mib"] = sampler.rss() / MIB
    try:
        events = b.core.list_namespaced_event(NAMESPACE, field_selector="involvedObject.kind=ModelVersion",
                                              _preload_content=False)
        items = [e for e in json.loads(events.data).get("items") or []
                 if e["involvedObject"].get("name") in created]
        rr["events"] = Counter(f"{e['involvedObject']['kind']}/{e.get('reason')}" for e in items)
        rr["events_total"] = sum(e.get("count") or 1 for e in items)
    except ApiException:
        rr["events"] = Counter()
    metrics_ready = scrape_metrics(b.metrics_url)
    delta = {k: v - metrics_before.get(k, 0.0) for k, v in metrics_ready.items()}
    rr["mean_reconcile_s"] = _mean_reconcile(delta)
    rr["reconciles"] = sum(v for k, v in delta.items()
                           if k.startswith("modelpilot_operator_reconcile_duration_seconds_count"))

    # -------------------------------------------------------------- delete all N
    rr["deleted_round"] = delete
    if not delete:
        say(f"{tag} --keep: leaving its {len(created)} ModelVersions and the environment running")
    else:
        say(f"{tag} deleting {len(created)} ModelVersions")

        def delete_one(name: str) -> None:
            try:
                custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
            except ApiException as exc:
                failures.append(f"delete {name}: {exc.status} {exc.reason}")

        t_del = time.monotonic()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(delete_one, list(created)))
        rr["delete_calls_s"] = time.monotonic() - t_del

        def gone() -> tuple[int, int]:
            with tracker.lock:
                return (sum(k in tracker.dep_deleted for k in created if k in tracker.dep_added),
                        sum(k in tracker.mv_deleted for k in created))

        def del_progress(_: float) -> None:
            deps, mvs = gone()
            say(f"  {tag} +{time.monotonic() - t_del:5.1f}s  deployments gone {deps}/{rr['deployments']}  "
                f"ModelVersions gone {mvs}/{len(created)}  operator RSS {sampler.current / MIB:.0f} MiB  "
                f"load {loadavg()}")

        gone_all = wait_until(lambda: gone() == (rr["deployments"], len(created)), args.timeout, del_progress,
                              interval=0.05 if n <= 200 else 0.2)
        with tracker.lock:
            last_dep_gone = max((tracker.dep_deleted[k] for k in created if k in tracker.dep_deleted),
                                default=math.nan)
            last_mv_gone = max((tracker.mv_deleted[k] for k in created if k in tracker.mv_deleted),
                               default=math.nan)
        rr["delete_deployments_s"] = last_dep_gone - t_del if gone_all else math.nan
        rr["delete_mvs_s"] = last_mv_gone - t_del if gone_all else math.nan
        rr["deleted"], rr["mvs_deleted"] = gone()

        # Pods go after their ReplicaSets (garbage collector); the next round needs their node slots.
        def no_pods() -> bool:
            resp = b.core.list_namespaced_pod(NAMESPACE, limit=1, _preload_content=False)
            return not json.loads(resp.data).get("items")

        pods_gone = wait_until(no_pods, args.timeout, lambda s: say(f"  {tag} waiting for pods to go ({s:.0f}s)"),
                               every=5.0, interval=0.25)
        rr["delete_pods_s"] = time.monotonic() - t_del if pods_gone else math.nan
        rr["delete_all_s"] = max(rr["delete_deployments_s"], rr["delete_mvs_s"], rr["delete_pods_s"]) \
            if gone_all and pods_gone else math.nan
        settle(b, args.settle)
    rr["rss_peak_mib"] = sampler.peak / MIB
    rr["rss_after_mib"] = sampler.rss() / MIB
    rr["rss_after_vs_idle_pct"] = (100 * (rr["rss_after_mib"] / rss_idle_mib - 1)) if rss_idle_mib else math.nan
    rr["cpu_round_s"] = sampler.cpu_seconds() - cpu_before
    rr["cpu_ms_per_mv"] = 1000 * rr["cpu_round_s"] / n if n else math.nan
    say(f"{tag} all Ready {rr['all_ready_s']:.1f}s, CPU {rr['cpu_round_s']:.1f}s "
        f"({rr['cpu_ms_per_mv']:.0f} ms/MV), RSS idle {rss_idle_mib:.0f} → peak {rr['rss_peak_mib']:.0f} → "
        f"after {rr['rss_after_mib']:.0f} MiB ({rr['rss_after_vs_idle_pct']:+.1f} %)")
    return rr


FLOOR_NAMESPACE = "opbench-floor"
FLOOR_CLIENTS = 50
#: Labels the operator selects its watches by: dropped from the floor's clones so the operator never sees them.
OPERATOR_LABELS = ("app.kubernetes.io/managed-by",)


def floor_objects(templates: tuple[dict[str, Any], dict[str, Any]], name: str) -> tuple[dict[str, Any], ...]:
    """The operator's Deployment and Service for one ModelVersion, as clones named ``name`` in the floor
    namespace: no owner (the garbage collector would delete them), no operator label (its watches select by
    it), their own selector (so each Service has its own endpoints, as the operator's have)."""
    out = []
    for template in templates:
        obj = json.loads(json.dumps(template))
        meta = obj["metadata"]
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in OPERATOR_LABELS}
        obj["metadata"] = {"name": name, "namespace": FLOOR_NAMESPACE, "labels": labels,
                           "annotations": meta.get("annotations") or {}}
        obj.pop("status", None)
        spec = obj["spec"]
        if obj["kind"] == "Service":
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"):
                spec.pop(key, None)
            spec["selector"] = {**spec["selector"], "opbench-floor": name}
        else:
            spec["selector"]["matchLabels"] = {**spec["selector"]["matchLabels"], "opbench-floor": name}
            pod_meta = spec["template"]["metadata"]
            pod_meta["labels"] = {**{k: v for k, v in pod_meta["labels"].items() if k not in OPERATOR_LABELS},
                                  "opbench-floor": name}
        out.append(obj)
    return tuple(out)


def run_floor(args: argparse.Namespace, b: Bench) -> dict[str, Any]:
    """The control plane's floor for N: the operator's Deployment + Service for N ModelVersions applied
    directly (server-side apply, ``FLOOR_CLIENTS`` parallel clients, no operator work), timed from the first
    apply until every Deployment is available. Ready can come no sooner than this on the same machine."""
    from kubernetes import client

    assert b.templates is not None
    n = args.count
    fl: dict[str, Any] = {"clients": FLOOR_CLIENTS, "load_before": loadavg()}
    b.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=FLOOR_NAMESPACE)))
    say(f"floor: applying {n} Deployments + Services as the operator renders them, directly "
        f"({FLOOR_CLIENTS} clients, no operator work)")

    def apply(obj: dict[str, Any]) -> None:
        patch = b.apps.patch_namespaced_deployment if obj["kind"] == "Deployment" else b.core.patch_namespaced_service
        patch(obj["metadata"]["name"], FLOOR_NAMESPACE, obj, field_manager="opbench-floor", force=True,
              _content_type="application/apply-patch+yaml", _preload_content=False)

    def one(i: int) -> None:
        for obj in floor_objects(b.templates, f"floor-{i:04d}"):  # type: ignore[arg-type]
            apply(obj)

    cpu0 = component_cpu(b.components or {})
    t0 = time.monotonic()
    with ThreadPoolExecutor(FLOOR_CLIENTS) as pool:
        list(pool.map(one, range(n)))
    fl["apply_s"] = time.monotonic() - t0

    def available() -> int:
        items = json.loads(b.apps.list_namespaced_deployment(FLOOR_NAMESPACE, _preload_content=False).data)["items"]
        return sum(1 for d in items if (d.get("status") or {}).get("availableReplicas", 0) >= d["spec"]["replicas"])

    # Polled once a second (a LIST of N Deployments costs the apiserver what is measured): ±0.5 s.
    done = wait_until(lambda: available() == n, args.timeout,
                      lambda s: say(f"  floor: {available()}/{n} Deployments available ({s:.0f}s)"), interval=0.5)
    fl["all_available_s"] = time.monotonic() - t0 if done else math.nan
    fl["components_cpu_s"] = cpu_delta(cpu0, component_cpu(b.components or {}))
    fl["load_at_available"] = loadavg()
    say(f"floor: applied in {fl['apply_s']:.1f}s, all {n} Deployments available after "
        f"{fl['all_available_s']:.1f}s; deleting the namespace")
    b.core.delete_namespace(FLOOR_NAMESPACE)

    def ns_gone() -> bool:
        names = json.loads(b.core.list_namespace(_preload_content=False).data)["items"]
        return all(x["metadata"]["name"] != FLOOR_NAMESPACE for x in names)

    wait_until(ns_gone, args.timeout, lambda s: say(f"  floor: waiting for its namespace to go ({s:.0f}s)"),
               every=5.0, interval=0.5)
    settle(b, args.settle)
    return fl


def run(args: argparse.Namespace, root: Path, results: dict[str, Any]) -> None:
    b = setup(args, root, results)
    if args.floor:
        results["floor"] = run_floor(args, b)
    rounds: list[dict[str, Any]] = []
    results["rounds"] = rounds
    for r in range(1, args.rounds + 1):
        keep = args.keep and r == args.rounds
        rounds.append(run_round(args, b, r, delete=not keep, rss_idle_mib=results["rss_idle_mib"]))
    results["operator_metrics"] = scrape_metrics(b.metrics_url)


# ---------------------------------------------------------------------------- report


def fmt(value: Any, unit: str = "s", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f} {unit}".strip()


def triple(rr: dict[str, Any], prefix: str) -> str:
    return " / ".join(fmt(rr.get(f"{prefix}_{k}", math.nan), "", 2) for k in ("p50", "p95", "max")) + " s"


def verdicts(args: argparse.Namespace, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that apply to this N, each judged over every round (all must meet it)."""
    rounds: list[dict[str, Any]] = results.get("rounds") or []
    n = args.count
    out: list[dict[str, Any]] = []

    def judge(name: str, values: list[float], limit: float, unit: str, digits: int,
              rounds_used: list[dict[str, Any]]) -> None:
        met = bool(values) and all(not math.isnan(v) and v <= limit for v in values)
        shown = ", ".join(f"round {rr['round']} {fmt(v, unit, digits)}" for rr, v in zip(rounds_used, values))
        out.append({"target": name, "met": met, "limit": limit, "values": values,
                    "line": f"{name}: {'MET' if met else 'NOT MET'} ({shown or 'not measured'})"})

    def ready_s(rr: dict[str, Any]) -> float:
        return float(rr["all_ready_s"]) if rr.get("all_ready") else math.nan  # a timed-out round fails

    if not rounds:
        return out
    floor = (results.get("floor") or {}).get("all_available_s")
    below = f" — the control plane alone: {fmt(floor, 's', 1)} (floor)" if floor is not None else ""
    if n == 200:
        judge("N=200 all Ready ≤ 10 s", [ready_s(rr) for rr in rounds], 10, "s", 1, rounds)
        out[-1]["line"] += below
        judge("N=200 create → Deployment p95 ≤ 2 s", [float(rr["dep_p95"]) for rr in rounds], 2, "s", 2, rounds)
    if n == 1000:
        judge("N=1000 all Ready ≤ 60 s", [ready_s(rr) for rr in rounds], 60, "s", 1, rounds)
        out[-1]["line"] += below
    judge("operator CPU ≤ 30 ms per ModelVersion (whole round)",
          [float(rr["cpu_ms_per_mv"]) for rr in rounds], 30, "ms", 1, rounds)
    deleted = [rr for rr in rounds if rr.get("deleted_round")]
    if deleted:
        judge("RSS after each round within 10 % of idle",
              [float(rr["rss_after_vs_idle_pct"]) for rr in deleted], 10, "%", 1, deleted)
    return out


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    n = args.count
    uname = os.uname()
    rounds: list[dict[str, Any]] = results.get("rounds") or []
    nodes = (f"{results['kwok_nodes_env']} of the environment + {results['kwok_nodes_added']} added "
             f"(kwok-bench-*, {NODE_PODS} pods each), {results['pod_slots_free']} free pod slots for "
             f"{results['pod_slots_needed']} needed" if "kwok_nodes_env" in results else "—")
    head: list[tuple[str, str]] = [
        ("date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("machine", f"{os.cpu_count()} CPUs, {_mem_gib():.0f} GiB, {uname.sysname} {uname.release}"),
        ("ModelVersions", f"{n} per round in one namespace, {args.parallel} parallel create/delete clients, "
                          f"{args.rounds} round{'s' if args.rounds != 1 else ''}"
                          + (" (last round kept: --keep)" if args.keep else "")),
        ("serving image", f"{SIMULATED_IMAGE} (kwok-simulated pods: measures the operator, not the server)"),
        ("kwok nodes", nodes),
        ("environment up", fmt(results.get("env_up_s", math.nan), "s", 1)),
        ("warm-up: operator start → first MV Ready", fmt(results.get("warmup_ready_s", math.nan), "s", 1)),
        ("operator RSS idle (after warm-up, before round 1)", fmt(results.get("rss_idle_mib", math.nan), "MiB", 0)),
    ]
    floor = results.get("floor")
    if floor:
        head.append((f"floor: {n} Deployments + Services applied directly",
                     f"all available {fmt(floor['all_available_s'], 's', 1)} after the first apply (applies "
                     f"{fmt(floor['apply_s'], 's', 1)}, {floor['clients']} clients, no operator; load "
                     f"{floor['load_before'].split()[0]} / {floor['load_at_available'].split()[0]})"))
        head.append(("floor: environment CPU", _components(floor.get("components_cpu_s") or {})))

    def row(label: str, value: Callable[[dict[str, Any]], str]) -> tuple[str, list[str]]:
        return label, [value(rr) for rr in rounds]

    def if_deleted(value: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
        return lambda rr: value(rr) if rr.get("deleted_round") else "kept"

    def gone(key: str, done: str, total: str) -> Callable[[dict[str, Any]], str]:
        return if_deleted(lambda rr: fmt(rr.get(key, math.nan)) + f" ({rr.get(done, 0)}/{rr.get(total, 0)})")

    table: list[tuple[str, list[str]]] = [
        row("load average (1 min) before / at all-Ready",
            lambda rr: f"{rr['load_before'].split()[0]} / {rr['load_at_ready'].split()[0]}"),
        row(f"create calls for {n} MVs", lambda rr: fmt(rr["apply_s"])),
        row("create → Deployment  p50 / p95 / max", lambda rr: triple(rr, "dep")),
        row("create → status.model pinned  p50 / p95 / max", lambda rr: triple(rr, "pinned")),
        row("pinned → Ready=True  p50 / p95 / max", lambda rr: triple(rr, "gap")),
        row("create → Deployment available  p50 / p95 / max", lambda rr: triple(rr, "avail")),
        row("Deployment available → Ready=True  p50 / p95 / max", lambda rr: triple(rr, "lag")),
        row("create → Ready=True  p50 / p95 / max", lambda rr: triple(rr, "ready")),
        row("Deployments seen / Ready", lambda rr: f"{rr['deployments']}/{n} / {rr['ready']}/{n}"),
        row("first create → all Deployments", lambda rr: fmt(rr["all_deployments_s"])),
        row("first create → all Deployments available", lambda rr: fmt(rr.get("all_available_s", math.nan))),
        row("first create → all Ready", lambda rr: fmt(rr["all_ready_s"]) + ("" if rr["all_ready"] else " TIMED OUT")),
        row("throughput (Ready MVs / s)", lambda rr: fmt(rr["throughput"], "MV/s", 1)),
        row("MV writes seen per MV  p50 / max", lambda rr: f"{fmt(rr['writes_p50'], '', 0)} / {rr['writes_max']}"),
        row("last MV write after first create", lambda rr: fmt(rr["quiet_after_s"])),
        row("Ready flaps (Ready → not Ready)", lambda rr: str(rr["flaps"])),
        row("Events on MVs (count incl. repeats)", lambda rr: str(rr.get("events_total", "—"))),
        row("reconciles / mean duration (/metrics)",
            lambda rr: f"{rr['reconciles']:.0f} / {fmt(rr['mean_reconcile_s'])}" if rr["reconciles"] else "—"),
        row("operator CPU create → quiet", lambda rr: fmt(rr["cpu_s"])),
        row("environment CPU create → quiet", lambda rr: _components(rr.get("components_cpu_s") or {})),
        row("delete calls", if_deleted(lambda rr: fmt(rr["delete_calls_s"]))),
        row("delete → all ModelVersions gone", gone("delete_mvs_s", "mvs_deleted", "count")),
        row("delete → all Deployments gone", gone("delete_deployments_s", "deleted", "deployments")),
        row("delete → all pods gone (= all gone)", if_deleted(lambda rr: fmt(rr["delete_all_s"]))),
        row("operator CPU for the round", lambda rr: fmt(rr["cpu_round_s"])),
        row("operator CPU per ModelVersion", lambda rr: fmt(rr["cpu_ms_per_mv"], "ms", 1)),
        row("operator RSS idle / peak / after (MiB)",
            lambda rr: f"{results['rss_idle_mib']:.0f} / {rr['rss_peak_mib']:.0f} / {rr['rss_after_mib']:.0f}"),
        row("RSS after vs idle", lambda rr: f"{rr['rss_after_vs_idle_pct']:+.1f} %"),
    ]

    width = max(len(k) for k, _ in [*head, *((k, "") for k, _ in table)])
    cols = [max([len(f"round {rr['round']}")] + [len(v[i]) for _, v in table]) for i, rr in enumerate(rounds)]
    line = "-" * (width + 2 + sum(c + 3 for c in cols) if cols else width + 60)
    print()
    print("Operator at scale — results")
    print(line)
    for key, value in head:
        print(f"{key:<{width}}  {value}")
    if rounds:
        print(line)
        print(f"{'':<{width}}  " + " | ".join(f"{'round ' + str(rr['round']):>{c}}" for rr, c in zip(rounds, cols)))
        for key, values in table:
            print(f"{key:<{width}}  " + " | ".join(f"{v:>{c}}" for v, c in zip(values, cols)))
    print(line)
    for v in results.get("verdicts") or []:
        print(v["line"])
    if n not in (200, 1000):
        print(f"(the latency targets apply at N = 200 and N = 1000; this run has N = {n})")
    if args.rounds < 3:
        print(f"(issue 10 asks for 3 create/delete rounds; this run has {args.rounds})")
    if results.get("operator_metrics"):
        print("operator /metrics at the end (cumulative, warm-up included):")
        for key, value in results["operator_metrics"].items():
            print(f"  {key} {value:g}")
    for rr in rounds:
        if rr.get("apiserver_requests"):
            reqs = rr["apiserver_requests"]
            print(f"round {rr['round']}: apiserver requests create → quiet (all clients, leases left out): "
                  f"{sum(reqs.values())} —", ", ".join(f"{k} {v}" for k, v in list(reqs.items())[:14]))
    for rr in rounds:
        if rr.get("events"):
            print(f"round {rr['round']}: Events on ModelVersions by reason:",
                  ", ".join(f"{k} {v}" for k, v in sorted(rr["events"].items())))
    log = results.get("log")
    if log:
        print(f"operator log: {log['lines']} lines, levels {log['levels']}, tracebacks {log['tracebacks']}"
              f" ({results['operator_log']})")
        if log["handlers"]:
            print("  handler runs (whole run, warm-up and deletion included): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(log["handlers"].items())))
        for msg, count in log["problems"]:
            print(f"  {count:5d}× {msg}")
    for rr in rounds:
        if rr.get("stalled"):
            print(f"round {rr['round']}: {len(rr['stalled'])} ModelVersions with Resolved=False or Stalled=True "
                  "at some point, e.g.:")
            for k, v in list(rr["stalled"].items())[:3]:
                print(f"  {k}: {v}")
        if rr.get("create_failures"):
            print(f"round {rr['round']}: {len(rr['create_failures'])} failed API calls, "
                  f"e.g. {rr['create_failures'][:3]}")
    if results.get("watch_errors"):
        print(f"benchmark watch reconnects: {len(results['watch_errors'])} (e.g. {results['watch_errors'][0]})")
    if results.get("error"):
        print(f"benchmark failed: {results['error']}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    uname = os.uname()
    doc = {"command": [sys.executable, *sys.argv], "args": vars(args),
           "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": {"cpus": os.cpu_count(), "mem_gib": _mem_gib(), "system": f"{uname.sysname} {uname.release}"},
           "serving_image": SIMULATED_IMAGE, **results}
    path.write_text(json.dumps(_jsonable(doc), indent=2, ensure_ascii=False) + "\n")
    say(f"figures written to {path}")


def _components(cpu: dict[str, float]) -> str:
    """The busiest environment components' CPU seconds, e.g. ``kube-apiserver 9.1, etcd 1.2, …``."""
    if not cpu:
        return "—"
    short = {"kube-apiserver": "apiserver", "kube-controller-manager": "kcm", "kube-scheduler": "scheduler",
             "process-runtime": "runtime"}
    top = sorted(cpu.items(), key=lambda kv: -kv[1])[:5]
    return ", ".join(f"{short.get(k, k)} {v:.1f}" for k, v in top) + f" (all {sum(cpu.values()):.1f} s)"


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
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="ModelVersions per round (default 200)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="create/delete rounds (default 3); each creates N, waits all Ready, deletes N, "
                             "waits all gone, then samples the operator's RSS")
    parser.add_argument("--keep", action="store_true",
                        help="leave the last round's ModelVersions and the environment running "
                             "(that round skips its delete phase)")
    parser.add_argument("--parallel", type=int, default=8, help="parallel create/delete clients (default 8)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for all Ready / all gone")
    parser.add_argument("--settle", type=float, default=5,
                        help="seconds to wait after the operator goes idle before sampling its RSS (default 5)")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="first time the control plane alone: the operator's Deployment + Service for N "
                             "applied directly, until all are available (default on; --no-floor skips it)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    if args.count < 1 or args.rounds < 1:
        parser.error("--count and --rounds must be at least 1")
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="modelpilot-opbench-"))
    results: dict[str, Any] = {}
    code = 0
    try:
        run(args, root, results)
    except KeyboardInterrupt:
        say("interrupted")
        results["error"] = "interrupted"
        code = 130
    except Exception as exc:  # noqa: BLE001 - report what was measured so far
        say(f"benchmark failed: {type(exc).__name__}: {exc}")
        results["error"] = f"{type(exc).__name__}: {exc}"
        code = 1
    finally:
        for w in results.get("_watchers") or []:
            w.stop_event.set()
        results["watch_errors"] = [e for w in results.get("_watchers") or [] for e in w.errors]
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
    if results.get("operator_log"):
        results["log"] = analyse_log(Path(results["operator_log"]))
    results["verdicts"] = verdicts(args, results)
    report(args, results)
    if args.json:
        write_json(args.json, args, results)
    return code


if __name__ == "__main__":
    sys.exit(main())
