"""The process runtime: pods of modelpilot images run as real local processes.

Part of the local environment; it plays the kubelet for one kind of pod. kwok
simulates every other pod (its stages skip the images listed here), so for a
pod whose container image starts with one of ``--image-prefix`` and that the
scheduler bound to a node, this runtime:

* allocates a virtual pod IP (10.245.x.y, an ordinary address the apiserver
  accepts in EndpointSlices) and a loopback address mirroring it (127.245.x.y)
  on which the process listens at the container's port; the loopback
  ``host:port`` goes into the annotation ``dev.modelpilot.io/address``. Nothing
  ever dials the virtual IP: whoever needs the pod resolves the annotation;
* starts the container's command with the pod's env (values, field refs,
  Secret and ConfigMap refs) — the image's entrypoint ``modelpilot`` maps to the
  local console script — in its own process group;
* reports readiness from the container's own readinessProbe (HTTP GET against
  the process), runs the livenessProbe, restarts a crashed process with
  back-off and counts restarts, exactly as the pod status fields a kubelet
  writes;
* emulates the termination message: each container start gets a fresh empty
  file ``<workdir>/termination-log`` (the stand-in for the container's
  ``terminationMessagePath``, by default ``/dev/termination-log``, which a local
  process cannot have), whose path the process receives as
  ``MODELPILOT_SERVE_TERMINATION_MESSAGE_PATH``; when the process exits or the
  livenessProbe kills it, the file's content (its last 4096 bytes, as the
  kubelet reads it) goes into ``lastState.terminated.message`` — or, if it is
  empty, the exit code is not 0 and the container's
  ``terminationMessagePolicy`` is ``FallbackToLogsOnError``, the end of that
  run's log (the last 80 lines, at most 2048 bytes);
* on deletion runs the container's preStop ``sleep`` action (the process keeps
  serving), stops the process (SIGTERM, then SIGKILL after the rest of the grace
  period) and only then removes the pod object.

What is simulated, not real: container isolation (processes share the host),
the image (the local installation stands in for it), volumes, pod networking
(virtual IPs, loopback addresses) and the termination message path (a file in
the pod's work directory named by an environment variable, not a mount at the
container's ``terminationMessagePath``).
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

ADDRESS_ANNOTATION = "dev.modelpilot.io/address"
VIRTUAL_NET = ipaddress.ip_network("10.245.0.0/16")
TERMINATION_MESSAGE_ENV = "MODELPILOT_SERVE_TERMINATION_MESSAGE_PATH"
# The kubelet's bounds (pkg/kubelet/container): a termination message file is read up to 4096 bytes from its
# end; the log fallback keeps the last 80 lines and at most 2048 bytes.
MAX_TERMINATION_MESSAGE_BYTES = 4096
MAX_TERMINATION_LOG_LINES = 80
MAX_TERMINATION_LOG_BYTES = 2048

log = logging.getLogger("modelpilot_dev.runtime")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Probe:
    """The parts of a Kubernetes HTTP probe the runtime honours."""

    path: str
    port: int
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, ports: dict[str, int]) -> Probe | None:
        if not spec or "httpGet" not in spec:
            return None
        http_get = spec["httpGet"]
        port = http_get.get("port", 80)
        port = ports.get(port, 0) if isinstance(port, str) and not port.isdigit() else int(port)
        return cls(
            path=http_get.get("path", "/"),
            port=port,
            initial_delay=float(spec.get("initialDelaySeconds", 0)),
            period=float(spec.get("periodSeconds", 10)),
            timeout=float(spec.get("timeoutSeconds", 1)),
            failure_threshold=int(spec.get("failureThreshold", 3)),
            success_threshold=int(spec.get("successThreshold", 1)),
        )


@dataclass
class PodProcess:
    """One running pod: its process, addresses and the status the runtime reports."""

    namespace: str
    name: str
    uid: str
    pod_ip: str
    loopback: str
    port: int
    workdir: Path
    restart_count: int = 0
    ready: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    last_state: dict[str, Any] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class Runtime:
    """Watches pods and keeps one local process per runnable pod."""

    def __init__(self, core: client.CoreV1Api, state_dir: Path, entrypoint: str, prefixes: list[str],
                 kubeconfig: dict[str, Any] | None = None) -> None:
        self.core = core
        self.kubeconfig = kubeconfig or {}
        self.state_dir = state_dir
        self.entrypoint = entrypoint
        self.prefixes = prefixes
        self.pods: dict[str, PodProcess] = {}
        self.lock = threading.Lock()
        self.shutdown = threading.Event()
        self._next_ip = 2
        #: Nodes whose pods a real kubelet runs (``dev up --node real``): never run those here too.
        self.skip_nodes: set[str] = set()

    # ------------------------------------------------------------------ selection

    def runnable(self, pod: Any) -> bool:
        spec = pod.spec
        return bool(spec and spec.node_name) and spec.node_name not in self.skip_nodes and any(
            (c.image or "").startswith(tuple(self.prefixes)) for c in spec.containers
        )

    def _allocate(self, port: int) -> tuple[str, str]:
        """A free virtual IP and its loopback twin, skipping loopback addresses bound by anything else
        (another local environment on the same machine, say)."""
        used = {p.pod_ip for p in self.pods.values()}
        while True:
            offset = self._next_ip
            self._next_ip += 1
            if self._next_ip >= VIRTUAL_NET.num_addresses - 1:
                self._next_ip = 2
            ip = VIRTUAL_NET.network_address + offset
            if str(ip) in used or int(ip) & 0xFF in (0, 255):
                continue
            octets = str(ip).split(".")
            loopback = f"127.{octets[1]}.{octets[2]}.{octets[3]}"
            if _bindable(loopback, port):
                return str(ip), loopback

    # ------------------------------------------------------------------ events

    def handle(self, event_type: str, pod: Any) -> None:
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        if event_type == "DELETED":
            with self.lock:
                running = self.pods.pop(key, None)
            if running:
                self._stop(running, grace=0)
            return
        if not self.runnable(pod):
            return
        with self.lock:
            running = self.pods.get(key)
            if running and running.uid != pod.metadata.uid:  # same name, new pod
                self.pods.pop(key)
                self._stop(running, grace=0)
                running = None
        if pod.metadata.deletion_timestamp is not None:
            if running and not running.stopping.is_set():
                grace = pod.metadata.deletion_grace_period_seconds
                threading.Thread(target=self._terminate_and_remove, args=(running, pod, grace), daemon=True).start()
            elif not running:
                self._remove(pod)
            return
        if running is None and pod.status.phase in (None, "Pending", "Running"):
            self._launch(pod)

    def _launch(self, pod: Any) -> None:
        meta = pod.metadata
        container = next(c for c in pod.spec.containers if (c.image or "").startswith(tuple(self.prefixes)))
        port = next((p.container_port for p in (container.ports or [])), 8080)
        with self.lock:
            pod_ip, loopback = self._allocate(port)
            workdir = self.state_dir / f"{meta.namespace}_{meta.name}"
            workdir.mkdir(parents=True, exist_ok=True)
            running = PodProcess(meta.namespace, meta.name, meta.uid, pod_ip, loopback, port, workdir)
            self.pods[f"{meta.namespace}/{meta.name}"] = running
        try:
            self.core.patch_namespaced_pod(
                meta.name, meta.namespace, {"metadata": {"annotations": {ADDRESS_ANNOTATION: f"{loopback}:{port}"}}}
            )
        except ApiException as exc:
            log.warning("cannot annotate %s/%s: %s", meta.namespace, meta.name, exc.reason)
        running.thread = threading.Thread(target=self._supervise, args=(running, pod, container), daemon=True)
        running.thread.start()

    # ------------------------------------------------------------------ process

    def _env(self, pod: Any, container: Any, running: PodProcess) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV")}
        env["HOME"] = str(running.workdir)
        env["TMPDIR"] = str(running.workdir)
        env["HOSTNAME"] = pod.metadata.name
        ns = pod.metadata.namespace
        for source in container.env_from or []:
            data: dict[str, str] = {}
            if source.config_map_ref is not None:
                data = self.core.read_namespaced_config_map(source.config_map_ref.name, ns).data or {}
            elif source.secret_ref is not None:
                raw = self.core.read_namespaced_secret(source.secret_ref.name, ns).data or {}
                data = {k: _b64(v) for k, v in raw.items()}
            env.update({(source.prefix or "") + k: v for k, v in data.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            ref = var.value_from
            if ref.field_ref is not None:
                env[var.name] = self._field(pod, ref.field_ref.field_path, running)
            elif ref.secret_key_ref is not None:
                secret = self.core.read_namespaced_secret(ref.secret_key_ref.name, ns)
                env[var.name] = _b64((secret.data or {}).get(ref.secret_key_ref.key, ""))
            elif ref.config_map_key_ref is not None:
                cm = self.core.read_namespaced_config_map(ref.config_map_key_ref.name, ns)
                env[var.name] = (cm.data or {}).get(ref.config_map_key_ref.key, "")
        # Where the process must listen: its own loopback address, the container port.
        env["MODELPILOT_SERVE_HOST"] = running.loopback
        env["MODELPILOT_SERVE_PORT"] = str(running.port)
        env["MODELPILOT_BIND_ADDRESS"] = running.loopback
        if pod.spec.automount_service_account_token is not False:
            env["KUBECONFIG"] = str(self._service_account_kubeconfig(pod, running))
        return env

    def _service_account_kubeconfig(self, pod: Any, running: PodProcess) -> Path:
        """The pod's own identity: a TokenRequest for its ServiceAccount, bound to the pod, in a kubeconfig.

        A kubelet would mount the token at /var/run/secrets/kubernetes.io/serviceaccount; a local process
        cannot have that path, so it gets an equivalent kubeconfig (same token, same CA, the apiserver's
        loopback address) through KUBECONFIG — RBAC applies exactly as for the real pod.
        """
        account = pod.spec.service_account_name or "default"
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=24 * 3600,
            bound_object_ref=client.V1BoundObjectReference(api_version="v1", kind="Pod", name=pod.metadata.name,
                                                           uid=pod.metadata.uid)))
        token = self.core.create_namespaced_service_account_token(account, pod.metadata.namespace, request)
        cluster = self.kubeconfig["clusters"][0]["cluster"]
        config_doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "local", "cluster": {"server": cluster["server"],
                                                       "certificate-authority-data":
                                                           cluster["certificate-authority-data"]}}],
            "users": [{"name": f"system:serviceaccount:{pod.metadata.namespace}:{account}",
                       "user": {"token": token.status.token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "namespace": pod.metadata.namespace,
                                                     "user": f"system:serviceaccount:{pod.metadata.namespace}:"
                                                             f"{account}"}}],
        }
        path = running.workdir / "serviceaccount.kubeconfig"
        path.write_text(json.dumps(config_doc))
        path.chmod(0o600)
        return path

    @staticmethod
    def _field(pod: Any, path: str, running: PodProcess) -> str:
        meta = pod.metadata
        simple = {
            "metadata.name": meta.name, "metadata.namespace": meta.namespace, "metadata.uid": meta.uid,
            "spec.nodeName": pod.spec.node_name, "spec.serviceAccountName": pod.spec.service_account_name,
            "status.podIP": running.pod_ip, "status.hostIP": "10.0.0.1",
        }
        if path in simple:
            return str(simple[path] or "")
        for prefix, values in (("metadata.labels", meta.labels), ("metadata.annotations", meta.annotations)):
            if path.startswith(prefix + "['"):
                return str((values or {}).get(path[len(prefix) + 2:-2], ""))
        return ""

    def _argv(self, container: Any, running: PodProcess) -> list[str]:
        command = list(container.command or ["modelpilot"])  # the images' ENTRYPOINT
        if command[0] in ("modelpilot", "/usr/local/bin/modelpilot"):
            command[0] = self.entrypoint
        # A pod's "all interfaces" is its own network namespace; here that is its loopback address.
        return [a.replace("0.0.0.0", running.loopback) for a in command + list(container.args or [])]

    def _supervise(self, running: PodProcess, pod: Any, container: Any) -> None:
        """Start, probe and restart the process until the pod goes away."""
        ports = {p.name: p.container_port for p in (container.ports or []) if p.name}
        readiness = Probe.from_spec(_probe_dict(container.readiness_probe), ports)
        liveness = Probe.from_spec(_probe_dict(container.liveness_probe), ports)
        backoff = 1.0
        while not running.stopping.is_set() and not self.shutdown.is_set():
            try:
                env = self._env(pod, container, running)
            except ApiException as exc:  # e.g. a Secret that does not exist yet: kubelet retries too
                self._report(running, waiting=("CreateContainerConfigError", f"{exc.status} {exc.reason}"))
                running.stopping.wait(min(backoff, 30))
                backoff *= 2
                continue
            # A fresh termination message file per container start, as the kubelet mounts one per container.
            message_file = running.workdir / "termination-log"
            message_file.write_bytes(b"")
            env.setdefault(TERMINATION_MESSAGE_ENV, str(message_file))
            logfile = (running.workdir / "container.log").open("ab")
            log_offset = logfile.tell()
            running.proc = subprocess.Popen(
                self._argv(container, running), env=env, cwd=running.workdir, stdout=logfile, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
            logfile.close()
            (running.workdir / "pid").write_text(str(running.proc.pid))
            running.started_at = _now()
            running.ready = False
            self._report(running)
            log.info("started %s/%s pid %s on %s:%s", running.namespace, running.name, running.proc.pid,
                     running.loopback, running.port)
            exit_code = self._probe_loop(running, readiness, liveness)
            if running.stopping.is_set() or self.shutdown.is_set():
                return
            if exit_code < 0:  # killed by a signal: a container runtime reports 128 + the signal number
                exit_code = 128 - exit_code
            running.restart_count += 1
            message = termination_message(message_file, running.workdir / "container.log", log_offset, exit_code,
                                          container.termination_message_policy or "File")
            running.last_state = {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else
                                                 "Completed", "startedAt": running.started_at,
                                                 "finishedAt": _now(), **({"message": message} if message else {})}}
            running.ready = False
            self._report(running, waiting=("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting failed "
                                                               f"container (exit code {exit_code})"))
            log.info("%s/%s exited with %s; restarting in %.0fs", running.namespace, running.name, exit_code,
                     backoff)
            running.stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _probe_loop(self, running: PodProcess, readiness: Probe | None, liveness: Probe | None) -> int:
        """Probe until the process exits (returns its exit code) or the pod is stopped."""
        assert running.proc is not None
        start = time.monotonic()
        next_ready = start + (readiness.initial_delay if readiness else 0)
        next_live = start + (liveness.initial_delay if liveness else 0)
        ok_streak = fail_streak = live_fails = 0
        while not running.stopping.is_set():
            code = running.proc.poll()
            if code is not None:
                return code
            now = time.monotonic()
            if readiness is None and not running.ready:
                running.ready = True
                self._report(running)
            if readiness and now >= next_ready:
                next_ready = now + readiness.period
                if self._http_ok(running, readiness):
                    ok_streak, fail_streak = ok_streak + 1, 0
                    if not running.ready and ok_streak >= readiness.success_threshold:
                        running.ready = True
                        self._report(running)
                else:
                    ok_streak, fail_streak = 0, fail_streak + 1
                    if running.ready and fail_streak >= readiness.failure_threshold:
                        running.ready = False
                        self._report(running)
            if liveness and now >= next_live:
                next_live = now + liveness.period
                live_fails = 0 if self._http_ok(running, liveness) else live_fails + 1
                if live_fails >= liveness.failure_threshold:
                    log.info("%s/%s failed its liveness probe; killing it", running.namespace, running.name)
                    _kill_group(running.proc, grace=5)
                    return running.proc.wait()
            running.stopping.wait(0.2)
        return 0

    @staticmethod
    def _http_ok(running: PodProcess, probe: Probe) -> bool:
        url = f"http://{running.loopback}:{probe.port or running.port}{probe.path}"
        try:
            with urllib.request.urlopen(url, timeout=probe.timeout) as resp:
                return 200 <= resp.status < 400
        except (urllib.error.URLError, OSError):
            return False

    # ------------------------------------------------------------------ status

    def _report(self, running: PodProcess, waiting: tuple[str, str] | None = None) -> None:
        ready = "True" if running.ready else "False"
        now = _now()
        if waiting:
            state: dict[str, Any] = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        else:
            state = {"running": {"startedAt": running.started_at or now}}
        try:
            pod = self.core.read_namespaced_pod(running.name, running.namespace)
        except ApiException:
            return
        if pod.metadata.uid != running.uid:
            return
        previous = {c.type: c for c in (pod.status.conditions or [])}

        def cond(kind: str, status: str) -> dict[str, Any]:
            old = previous.get(kind)
            changed = old is None or old.status != status
            stamp = now if changed or old.last_transition_time is None else \
                old.last_transition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
            return {"type": kind, "status": status, "lastTransitionTime": stamp}

        container = pod.spec.containers[0]
        status = {
            "phase": "Running",
            "podIP": running.pod_ip,
            "podIPs": [{"ip": running.pod_ip}],
            "hostIP": "10.0.0.1",
            "hostIPs": [{"ip": "10.0.0.1"}],
            "startTime": (pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ") if pod.status.start_time else now),
            "conditions": [cond("PodScheduled", "True"), cond("Initialized", "True"),
                           cond("ContainersReady", ready), cond("Ready", ready)],
            "containerStatuses": [{
                "name": container.name, "image": container.image, "imageID": "",
                "containerID": f"process://{running.proc.pid if running.proc else 0}",
                "ready": running.ready, "started": waiting is None, "restartCount": running.restart_count,
                "state": state, **({"lastState": running.last_state} if running.last_state else {}),
            }],
        }
        try:
            self.core.patch_namespaced_pod_status(running.name, running.namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s", running.namespace, running.name, exc.reason)

    # ------------------------------------------------------------------ stop

    def _stop(self, running: PodProcess, grace: float) -> int | None:
        running.stopping.set()
        code = _kill_group(running.proc, grace) if running.proc else None
        (running.workdir / "pid").unlink(missing_ok=True)
        return code

    def _terminate_and_remove(self, running: PodProcess, pod: Any, grace: int | None) -> None:
        # The preStop sleep action, as the kubelet runs it: the process keeps serving, then SIGTERM; both
        # within the grace period.
        budget = float(30 if grace is None else grace)
        sleep = 0.0
        for container in pod.spec.containers or []:
            pre_stop = (container.lifecycle.pre_stop if container.lifecycle else None)
            if pre_stop is not None and pre_stop.sleep is not None:
                sleep = max(sleep, float(pre_stop.sleep.seconds or 0))
        if sleep:
            sleep = min(sleep, budget)
            self.shutdown.wait(sleep)
            budget -= sleep
        self._stop(running, grace=max(budget, 1.0))
        with self.lock:
            if self.pods.get(f"{running.namespace}/{running.name}") is running:
                self.pods.pop(f"{running.namespace}/{running.name}")
        self._remove(pod)

    def _remove(self, pod: Any) -> None:
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions=client.V1Preconditions(uid=pod.metadata.uid)),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("cannot remove %s/%s: %s", pod.metadata.namespace, pod.metadata.name, exc.reason)

    def stop_all(self) -> None:
        self.shutdown.set()
        with self.lock:
            pods = list(self.pods.values())
        threads = [threading.Thread(target=self._stop, args=(p, 10.0)) for p in pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    # ------------------------------------------------------------------ watch loop

    def run(self) -> None:
        while not self.shutdown.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces()
                for pod in pods.items:
                    self.handle("ADDED", pod)
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces,
                                              resource_version=pods.metadata.resource_version, timeout_seconds=60)
                for event in stream:
                    if self.shutdown.is_set():
                        return
                    self.handle(event["type"], event["object"])
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: just relist
                    log.warning("watch failed: %s; retrying", exc.reason)
                    time.sleep(1)
            except Exception:  # keep the runtime alive whatever one event does
                log.exception("runtime loop error; relisting")
                time.sleep(1)


def termination_message(message_file: Path, log_file: Path, log_offset: int, exit_code: int, policy: str) -> str:
    """What the kubelet puts into ``lastState.terminated.message`` after a container run ends.

    The termination message file's last 4096 bytes; if the file is empty, the run failed (exit code not 0)
    and the policy is ``FallbackToLogsOnError``, the end of the run's log (``log_offset`` is where the run
    began in the log file): its last 80 lines, at most 2048 bytes.
    """
    data = _tail(message_file, 0, MAX_TERMINATION_MESSAGE_BYTES)
    if not data.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        lines = _tail(log_file, log_offset, 64 * 1024).splitlines(keepends=True)[-MAX_TERMINATION_LOG_LINES:]
        data = b"".join(lines)[-MAX_TERMINATION_LOG_BYTES:]
    return data.decode("utf-8", errors="replace")


def _tail(path: Path, start: int, limit: int) -> bytes:
    """At most ``limit`` bytes from the end of ``path``, not before offset ``start``."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, size - limit))
            return fh.read(limit)
    except OSError:
        return b""


def _bindable(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _probe_dict(probe: Any) -> dict[str, Any] | None:
    if probe is None:
        return None
    return client.ApiClient().sanitize_for_serialization(probe)


def _b64(value: str) -> str:
    import base64

    return base64.b64decode(value).decode()


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.poll()
    try:
        return proc.wait(timeout=max(grace, 0.1))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait()


class _Health(http.server.BaseHTTPRequestHandler):
    runtime: Runtime

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = json.dumps({"pods": {k: {"address": f"{p.loopback}:{p.port}", "ready": p.ready,
                                        "restarts": p.restart_count}
                                    for k, p in self.runtime.pods.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelpilot-dev-runtime", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--health-port", type=int, required=True)
    parser.add_argument("--entrypoint", required=True, help="local command standing in for the image ENTRYPOINT")
    parser.add_argument("--image-prefix", action="append", required=True)
    parser.add_argument("--skip-node", action="append", default=[], help="a node whose pods a real kubelet runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    api = config.new_client_from_config(args.kubeconfig)
    import yaml

    admin = yaml.safe_load(Path(args.kubeconfig).read_text())
    runtime = Runtime(client.CoreV1Api(api), args.state_dir, args.entrypoint, args.image_prefix, admin)
    runtime.skip_nodes = set(args.skip_node)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    handler = type("Health", (_Health,), {"runtime": runtime})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.health_port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def on_term(signum: int, frame: Any) -> None:
        runtime.shutdown.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    worker = threading.Thread(target=runtime.run, daemon=True)
    worker.start()
    runtime.shutdown.wait()
    log.info("stopping %d pod processes", len(runtime.pods))
    runtime.stop_all()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
