"""The local environment: start, inspect and stop every component.

Part of ``modelpilot dev``. Real processes on loopback, each in its own process
group, described by one ``state.json`` in the state directory so that ``status``
and ``down`` (or a later ``up``) find them again:

    etcd → kube-apiserver → kube-controller-manager, kube-scheduler, MLflow, Prometheus,
    and the nodes: a real node (``--node real``, the default: containerd, kubelet,
    kube-proxy, CoreDNS and NGINX Gateway Fabric; see ``modelpilot_dev.node``) or
    simulated kwok nodes (``--node kwok``, for the operator benchmark only: every
    pod on them is simulated, Ready at once with no process behind it)

``up`` is idempotent: a healthy running environment is reported, not restarted.
If anything fails to start, everything already started is stopped again and the
error names the component and shows the end of its log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ipaddress
import os
import shutil
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelpilot_dev import binaries, pki

Progress = Callable[[str], None]

POD_CIDR = "10.244.0.0/16"  # kwok-simulated pods
#: The Service range of a kwok environment (nothing routes to it); a real node's environment has its own /20
#: (``NodeNet.service_cidr``) that the host routes to the node.
SERVICE_CIDR = "10.96.0.0/16"
NODE_COUNT = 2
NODE_KINDS = ("real", "kwok")


class DevError(RuntimeError):
    """The environment cannot start or is broken; the message says what and how to fix it."""


def default_home() -> Path:
    if os.environ.get("MODELPILOT_DEV_HOME"):
        return Path(os.environ["MODELPILOT_DEV_HOME"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "modelpilot" / "dev"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports. All are held open until every one is chosen: one ``free_port`` after
    another can be handed the same port twice (a start-up failed on "port … already in use" that way)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def port_bound(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Component:
    """One process of the environment and how to tell it is healthy."""

    name: str
    argv: list[str]
    health_url: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    extra_ports: list[int] = field(default_factory=list)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Environment:
    """One local environment rooted at a state directory."""

    def __init__(self, home: Path | None = None, progress: Progress | None = None) -> None:
        self.home = (home or default_home()).resolve()
        self.say: Progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.state_file = self.home / "state.json"
        self.env_file = self.home / "env.sh"
        self.kubeconfig = self.home / "kubeconfig"
        self.logs = self.home / "logs"

    def command(self, sub: str) -> str:
        """``modelpilot dev SUB`` as a user must type it to reach this environment: with ``--home`` unless it
        is the default one (a hint without it would act on another environment, or on none)."""
        if self.home == default_home().resolve():
            return f"modelpilot dev {sub}"
        return f"modelpilot dev {sub} --home {shlex.quote(str(self.home))}"

    # ------------------------------------------------------------------ state

    def load_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    def exports(self) -> dict[str, str]:
        state = self.load_state()
        if not state:
            raise DevError(f"no environment at {self.home}; run `{self.command('up')}`")
        return dict(state["exports"])

    # ------------------------------------------------------------------ health

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # component health endpoints serve self-signed certs
        keys = pki.Pki(self.home / "pki")
        if keys.client_crt("admin").exists():
            ctx.load_cert_chain(keys.client_crt("admin"), keys.client_key("admin"))
        return ctx

    def probe(self, url: str, timeout: float = 2.0) -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=self._ssl_context()) as resp:
                return 200 <= resp.status < 300, f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return False, str(getattr(exc, "reason", exc))

    def status(self) -> list[dict[str, Any]]:
        """Each component's health: process alive and its health endpoint answering."""
        state = self.load_state()
        if not state:
            return []
        rows = []
        for comp in state["components"]:
            alive = comp.get("pid") is not None and _pid_alive(comp["pid"])
            healthy, detail = self.probe(comp["health_url"]) if alive else (False, "process not running")
            rows.append({"name": comp["name"], "pid": comp.get("pid"), "alive": alive, "healthy": healthy,
                         "detail": detail, "url": comp["health_url"]})
        return rows

    def running(self) -> bool:
        rows = self.status()
        return bool(rows) and all(r["healthy"] for r in rows)

    # ------------------------------------------------------------------ up

    def up(self, *, build: bool = True, timeout: float = 120.0, node: str = "real") -> dict[str, Any]:
        """Start everything (or report the running environment). Returns the state.

        ``node="real"`` (the default): one real node (containerd, kubelet, kube-proxy in a network namespace,
        images built from the project's Dockerfiles, CoreDNS, NGINX Gateway Fabric; see ``modelpilot_dev.node``);
        every pod runs in a real container and ClusterIPs are reachable from the host. ``node="kwok"``: two
        simulated kwok nodes and no real one, for the operator benchmark (pods are Ready at once, no process).
        """
        if node not in NODE_KINDS:
            raise DevError(f"unknown node kind {node!r}: use one of {', '.join(NODE_KINDS)}")
        started = time.monotonic()
        state = self.load_state()
        if state:
            rows = self.status()
            if rows and all(r["healthy"] for r in rows):
                self.say(f"environment already running at {self.home}")
                return state
            broken = [r["name"] for r in rows if not r["healthy"]]
            self.say(f"environment at {self.home} is broken ({', '.join(broken)} not healthy); restarting it")
            self.down()
        bins = binaries.resolve(build=build, progress=self.say)
        gateway_crds = binaries.gateway_api_crds(self.say)
        prometheus_bin = bins.prometheus
        python_bin = Path(sys.executable)
        mlflow_bin = python_bin.parent / "mlflow"
        if not mlflow_bin.exists():
            found = shutil.which("mlflow")
            if not found:
                raise DevError(
                    "the `mlflow` command is missing; install the development extras: pip install -e '.[dev]'"
                )
            mlflow_bin = Path(found)
        self._real: dict[str, Any] | None = None
        if node == "real":
            self._real = self._prepare_real_node(build)

        if self.home.exists():
            shutil.rmtree(self.home)
        self.logs.mkdir(parents=True)
        if self._real is not None:
            from modelpilot_dev import node as realnode

            net = realnode.allocate(self.home)
            self._real["net"] = net
            keys = pki.ensure(self.home / "pki", extra_ips=(net.host_ip, net.kubernetes_service_ip), extra_clients={
                "kubelet": (f"system:node:{realnode.NODE_NAME}", "system:nodes"),
                "kube-proxy": ("system:kube-proxy", None)})
        else:
            keys = pki.ensure(self.home / "pki")
        ports = dict(zip(("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok",
                          "mlflow", "prometheus"), free_ports(8)))
        api_url = f"https://127.0.0.1:{ports['apiserver']}"
        self._write_kubeconfigs(keys, api_url)
        # With a real node, MLflow and Prometheus are exported at the host side of the node's veth: the one
        # address that answers both host processes (a DNAT to loopback) and pods, so a tracking URI the
        # operator passes on to its serving pods works there too.
        local = self._real["net"].host_ip if self._real is not None else "127.0.0.1"
        mlflow_url = f"http://{local}:{ports['mlflow']}"
        prom_url = f"http://{local}:{ports['prometheus']}"
        exports = {
            "KUBECONFIG": str(self.kubeconfig),
            "MLFLOW_TRACKING_URI": mlflow_url,
            "PROMETHEUS_URL": prom_url,
            "MODELPILOT_DEV_HOME": str(self.home),
        }
        state: dict[str, Any] = {
            "home": str(self.home),
            "started_at": time.time(),
            "ports": ports,
            "binaries": bins.as_dict(),
            "exports": exports,
            "components": [],
        }
        if self._real is not None:
            state["node"] = {"mode": "real", "name": self._real["name"], **self._real["net"].as_dict(),
                             "images": [i.name for i in self._real["images"]]}
        else:
            state["node"] = {"mode": "kwok"}
        self._save_state(state)
        try:
            self._start_all(state, bins, keys, ports, prometheus_bin, mlflow_bin, python_bin, timeout,
                            gateway_crds)
        except BaseException:
            self.say("start-up failed; stopping what was started")
            self.down(quiet=True, keep_logs=True)
            raise
        self.env_file.write_text("".join(f"export {k}={_shell_quote(v)}\n" for k, v in exports.items()))
        state["startup_seconds"] = round(time.monotonic() - started, 1)
        self._save_state(state)
        self.say(f"environment up in {state['startup_seconds']}s at {self.home}")
        self._real = None
        return state

    def _start_all(self, state: dict[str, Any], bins: binaries.Binaries, keys: pki.Pki, ports: dict[str, int],
                   prometheus_bin: Path, mlflow_bin: Path, python_bin: Path,
                   timeout: float, gateway_api_crds: Path) -> None:
        h = self.home
        deadline = time.monotonic() + timeout
        real = getattr(self, "_real", None)
        service_cidr = real["net"].service_cidr if real is not None else SERVICE_CIDR
        etcd = Component(
            "etcd",
            [str(bins.etcd), "--name=default", f"--data-dir={h / 'etcd'}",
             f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
             f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
             f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
             f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
             f"--initial-cluster=default=http://127.0.0.1:{ports['etcd-peer']}",
             "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=4294967296"],
            f"http://127.0.0.1:{ports['etcd']}/health", ports["etcd"], extra_ports=[ports["etcd-peer"]],
        )
        mlflow = Component(
            "mlflow",
            [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{h / 'mlflow' / 'mlflow.db'}",
             "--artifacts-destination", str(h / "mlflow" / "artifacts"), "--host", "127.0.0.1",
             "--port", str(ports["mlflow"]), "--workers", "1"],
            f"http://127.0.0.1:{ports['mlflow']}/health", ports["mlflow"],
            # The job runner is not needed and costs ~3 GiB of worker processes.
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        (h / "mlflow").mkdir()
        # MLflow is the slowest to import: start it first, in parallel with the control plane.
        self._start(state, mlflow)
        self._start(state, etcd)
        self._wait([etcd], deadline)
        apiserver = Component(
            "kube-apiserver",
            [str(bins.kube_apiserver), f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
             "--bind-address=127.0.0.1", f"--secure-port={ports['apiserver']}", "--advertise-address=127.0.0.1",
             "--endpoint-reconciler-type=none", f"--tls-cert-file={keys.apiserver_crt}",
             f"--tls-private-key-file={keys.apiserver_key}", f"--client-ca-file={keys.ca_crt}",
             "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
             f"--service-account-key-file={keys.sa_pub}", f"--service-account-signing-key-file={keys.sa_key}",
             f"--service-cluster-ip-range={service_cidr}", "--authorization-mode=RBAC", "--allow-privileged=true",
             "--profiling=false", "--v=1"],
            f"https://127.0.0.1:{ports['apiserver']}/readyz", ports["apiserver"],
        )
        if real is not None:
            # The real node reaches the apiserver at the host side of its veth (DNAT to loopback), and so do
            # pods through the `kubernetes` Service; the kubelet is authorised by the Node authorizer.
            net = real["net"]
            apiserver.argv = [a for a in apiserver.argv if not a.startswith((
                "--advertise-address=", "--endpoint-reconciler-type=", "--authorization-mode="))]
            apiserver.argv += [f"--advertise-address={net.host_ip}", "--endpoint-reconciler-type=lease",
                               "--authorization-mode=Node,RBAC",
                               f"--kubelet-client-certificate={keys.client_crt('admin')}",
                               f"--kubelet-client-key={keys.client_key('admin')}",
                               "--kubelet-preferred-address-types=InternalIP"]
        self._start(state, apiserver)
        self._wait([apiserver], deadline)
        if real is not None:
            # The node's image import (≈ 13 s) overlaps the rest of the control plane's start.
            self._launch_real_node(state, keys, ports, python_bin)
        kcm = Component(
            "kube-controller-manager",
            [str(bins.kube_controller_manager), f"--kubeconfig={h / 'controller-manager.kubeconfig'}",
             f"--authentication-kubeconfig={h / 'controller-manager.kubeconfig'}",
             f"--authorization-kubeconfig={h / 'controller-manager.kubeconfig'}",
             "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={ports['controller-manager']}",
             f"--root-ca-file={keys.ca_crt}", f"--service-account-private-key-file={keys.sa_key}",
             "--use-service-account-credentials=true", f"--service-cluster-ip-range={service_cidr}",
             "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
             # Simulated nodes never report volumes, GC of terminated pods keeps etcd small.
             "--terminated-pod-gc-threshold=50",
             # The default client limit (20 QPS per controller) made the Deployment controller the bottleneck at
             # 200 Deployments: ~4 writes each took ~40 s (benchmarks/README.md). Large clusters raise it too.
             "--kube-api-qps=200", "--kube-api-burst=400", "--v=1"],
            f"https://127.0.0.1:{ports['controller-manager']}/healthz", ports["controller-manager"],
        )
        scheduler = Component(
            "kube-scheduler",
            [str(bins.kube_scheduler), f"--kubeconfig={h / 'scheduler.kubeconfig'}",
             f"--authentication-kubeconfig={h / 'scheduler.kubeconfig'}",
             f"--authorization-kubeconfig={h / 'scheduler.kubeconfig'}",
             "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
             "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics", "--v=1"],
            f"https://127.0.0.1:{ports['scheduler']}/healthz", ports["scheduler"],
        )
        kwok = Component(
            "kwok",
            [str(bins.kwok), f"--kubeconfig={self.kubeconfig}", f"--config={KWOK_STAGES}",
             "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
             f"--cidr={POD_CIDR}", "--node-ip=10.0.0.1", "--node-lease-duration-seconds=40",
             f"--server-address=127.0.0.1:{ports['kwok']}"],
            f"http://127.0.0.1:{ports['kwok']}/healthz", ports["kwok"],
        )
        prom_dir = h / "prometheus"
        prom_dir.mkdir()
        (prom_dir / "prometheus.yml").write_text(
            prometheus_config(f"https://127.0.0.1:{ports['apiserver']}", keys,
                              simulated_pods=POD_CIDR if real is None else None)
        )
        prometheus = Component(
            "prometheus",
            [str(prometheus_bin), f"--config.file={prom_dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
             "--web.enable-lifecycle", "--storage.tsdb.retention.time=1d", "--log.level=warn"],
            f"http://127.0.0.1:{ports['prometheus']}/-/ready", ports["prometheus"],
        )
        rest = [kcm, scheduler, prometheus] + ([kwok] if real is None else [])
        for comp in rest:
            self._start(state, comp)
        self._wait([*rest, mlflow], deadline)
        self._bootstrap_cluster(deadline, kwok_nodes=real is None)
        # The standard Gateway API CRDs, so HTTPRoutes are validated by the real apiserver (with a real node,
        # NGINX Gateway Fabric implements them, see _apply_gateway; on kwok nodes nothing does).
        subprocess.run([str(bins.kubectl), "apply", "--server-side", "-f", str(gateway_api_crds)],
                       env={**os.environ, "KUBECONFIG": str(self.kubeconfig)}, check=True, capture_output=True,
                       timeout=120)
        self.say("  Gateway API CRDs installed")
        if real is not None:
            self._await_real_node(state)

    # ------------------------------------------------------------------ the real node

    def _prepare_real_node(self, build: bool) -> dict[str, Any]:
        """Check the machine, find (or build) kubelet/kube-proxy and the images, before anything starts."""
        from modelpilot_dev import images
        from modelpilot_dev import node as realnode

        missing = realnode.check_machine() + images.missing_tools()
        if missing:
            raise DevError("this machine cannot run a real node; missing:\n  - " + "\n  - ".join(missing))
        bins = binaries.resolve_node(build=build, progress=self.say)
        coredns = binaries.resolve_coredns(build=build, progress=self.say)
        ngf = binaries.resolve_ngf(build=build, progress=self.say)
        ngf_crds = binaries.ngf_crds(self.say)
        try:
            built = images.ensure_all(self.say, operator=True, coredns=coredns, ngf=ngf)
        except images.ImageError as exc:
            raise DevError(str(exc)) from None
        return {"name": realnode.NODE_NAME, "binaries": bins, "images": built, "ngf_crds": ngf_crds}

    def _launch_real_node(self, state: dict[str, Any], keys: pki.Pki, ports: dict[str, int],
                          python_bin: Path) -> None:
        """Network, configuration and the node's supervisor; ``_await_real_node`` waits for it."""
        from modelpilot_dev import node as realnode

        real = self._real
        assert real is not None
        net = real["net"]
        node_dir = self.home / "node"
        api_url = f"https://{net.host_ip}:{ports['apiserver']}"
        kubeconfigs = {}
        for name in ("kubelet", "kube-proxy"):
            path = node_dir / f"{name}.kubeconfig"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(kubeconfig_yaml(api_url, keys.ca_crt, keys.client_crt(name), keys.client_key(name)))
            path.chmod(0o600)
            kubeconfigs[name] = path
        try:
            realnode.setup_network(net, [ports["apiserver"], ports["mlflow"], ports["prometheus"]])
        except realnode.NodeError as exc:
            raise DevError(f"cannot create the real node's network: {exc}") from None
        self.say(f"  node network: netns {net.netns}, node IP {net.node_ip}, host side {net.host_ip}, "
                 f"pods {net.pod_cidr}")
        spec = realnode.write_configs(node_dir, net, api_url, kubeconfigs, keys.ca_crt)
        spec.update({
            "logs": str(self.logs), "node_name": real["name"], "kubelet_kubeconfig": str(kubeconfigs["kubelet"]),
            "containerd": shutil.which("containerd") or "containerd",
            "kubelet": str(real["binaries"]["kubelet"]), "kube_proxy": str(real["binaries"]["kube-proxy"]),
            "images": [{"name": i.name, "archive": str(i.archive), "imported_as": i.name, "names": []}
                       for i in real["images"]],
        })
        spec_file = node_dir / "supervisor.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        comp = Component("node", realnode.supervisor_argv(python_bin, spec_file, net.netns),
                         f"http://{net.node_ip}:{realnode.KUBELET_HEALTHZ_PORT}/healthz",
                         realnode.KUBELET_HEALTHZ_PORT)
        self._start(state, comp)
        # containerd and kube-proxy run under the same supervisor (same pid): their own health rows.
        for name, url in (("containerd", f"http://{net.node_ip}:{realnode.CONTAINERD_METRICS_PORT}/v1/metrics"),
                          ("kube-proxy", f"http://{net.node_ip}:{realnode.KUBE_PROXY_HEALTHZ_PORT}/healthz")):
            state["components"].append({"name": name, "pid": comp.pid, "port": 0, "extra_ports": [],
                                        "health_url": url, "log": str(self.logs / f"{name}.log"), "argv": []})
        self._save_state(state)
        real["component"] = comp
        state["node"]["endpoints"] = {
            "apiserver": f"https://{net.host_ip}:{ports['apiserver']}",
            "mlflow": f"http://{net.host_ip}:{ports['mlflow']}",
            "prometheus": f"http://{net.host_ip}:{ports['prometheus']}"}
        self._save_state(state)

    def _await_real_node(self, state: dict[str, Any], timeout: float = 240.0) -> None:
        real = self._real
        assert real is not None
        net, comp = real["net"], real["component"]
        deadline = time.monotonic() + timeout
        proxy_url = next(c["health_url"] for c in state["components"] if c["name"] == "kube-proxy")
        try:
            self._wait([comp, Component("kube-proxy", [], proxy_url, 0, pid=comp.pid)], deadline)
        except DevError as exc:
            # containerd, kubelet and kube-proxy share the supervisor's pid: whichever of them ended it, its
            # reason is in the supervisor's log and its own.
            raise DevError(f"{exc}\n{self._node_logs()}") from None
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))
        while True:
            try:
                found = api.read_node(real["name"])
                if any(c.type == "Ready" and c.status == "True" for c in (found.status.conditions or [])):
                    break
                why = "; ".join(f"{c.type}={c.status} {c.message or ''}" for c in (found.status.conditions or []))
            except Exception as exc:  # noqa: BLE001 - not registered yet
                why = str(exc).splitlines()[0]
            if not _pid_alive(comp.pid or 0):
                raise DevError(f"the real node exited during start-up.\n{self._node_logs()}")
            if time.monotonic() > deadline:
                raise DevError(f"the real node {real['name']} did not become Ready ({why}).\n"
                               f"{self._log_tail('kubelet')}")
            time.sleep(0.5)
        self.say(f"  real node {real['name']} Ready (node IP {net.node_ip})")
        # Cluster DNS on the node (kube-dns at the range's .10, the kubelet's clusterDNS).
        from modelpilot_dev import images
        from modelpilot_dev import node as realnode

        manifests = {"apiVersion": "v1", "kind": "List",
                     "items": realnode.coredns_manifests(images.COREDNS_IMAGE, net.cluster_dns_ip)}
        subprocess.run([state["binaries"]["kubectl"], "apply", "--server-side", "-f", "-"], input=json.dumps(manifests),
                       env={**os.environ, "KUBECONFIG": str(self.kubeconfig)}, check=True, capture_output=True,
                       text=True, timeout=60)
        # The Gateway starts while CoreDNS does (neither needs the other).
        self._apply_gateway(real, deadline)
        apps = client.AppsV1Api(api.api_client)
        while True:
            dep = apps.read_namespaced_deployment("coredns", "kube-system")
            if (dep.status.ready_replicas or 0) >= 1:
                break
            if time.monotonic() > deadline:
                raise DevError("cluster DNS (CoreDNS on the real node) did not become ready.\n"
                               + self.kubectl("-n", "kube-system", "get", "pods,events", check=False).stdout[-2000:])
            time.sleep(0.5)
        self.say(f"  cluster DNS ready (CoreDNS, kube-dns {net.cluster_dns_ip})")
        self._await_gateway(state, api.api_client, deadline)

    def _node_logs(self) -> str:
        """The ends of the logs of the node's supervisor and of what it runs (why a node stopped)."""
        return "\n".join(self._log_tail(name, lines) for name, lines in (
            ("node", 10), ("containerd", 10), ("kubelet", 20), ("kube-proxy", 10)))

    def _apply_gateway(self, real: dict[str, Any], deadline: float) -> None:
        """NGINX Gateway Fabric on the real node: its CRDs, then its pod, GatewayClass, NginxProxy and Gateway."""
        from modelpilot_dev import gateway, images

        crds_file: Path = real["ngf_crds"]
        applied = self.kubectl("apply", "--server-side", "-f", str(crds_file), check=False)
        if applied.returncode != 0:
            raise DevError(f"applying NGINX Gateway Fabric's CRDs ({crds_file}) failed: {applied.stderr.strip()}")
        names = gateway.crd_names(list(yaml.safe_load_all(crds_file.read_text())))
        while True:  # `kubectl wait` fails at once while a just-created CRD is not visible yet
            done = self.kubectl("wait", "--for=condition=Established", "--timeout=20s",
                                *(f"crd/{n}" for n in names), check=False)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise DevError(f"NGINX Gateway Fabric's CRDs did not become Established: {done.stderr.strip()}")
            time.sleep(0.5)
        # SnippetsFilters on: NGF 1.6.2 has no RequestMirror, and nginx's `mirror` through a SnippetsFilter is how
        # the local environment mirrors traffic (a development cluster: raw nginx config from routes is fine).
        items = gateway.manifests(images.NGF_IMAGE, images.NGF_NGINX_IMAGE, real["name"], snippets=True)
        applied = self.kubectl("apply", "--server-side", "-f", "-",
                               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}), check=False)
        if applied.returncode != 0:
            raise DevError(f"applying the Gateway (NGINX Gateway Fabric) failed: {applied.stderr.strip()}")

    def _await_gateway(self, state: dict[str, Any], api_client: Any, deadline: float) -> None:
        """Wait until the Gateway is Programmed (NGF configured nginx for it); record it in the state."""
        from kubernetes import client

        from modelpilot_dev import gateway

        custom = client.CustomObjectsApi(api_client)
        why = "not created yet"
        while True:
            try:
                found = dict(custom.get_namespaced_custom_object(  # type: ignore[call-overload]
                    "gateway.networking.k8s.io", "v1", gateway.GATEWAY_NAMESPACE, "gateways", gateway.GATEWAY_NAME))
                ok, why = gateway.programmed(found)
                if ok:
                    break
            except client.ApiException as exc:
                why = f"HTTP {exc.status} reading it"
            if time.monotonic() > deadline:
                pods = self.kubectl("-n", gateway.NGF_NAMESPACE, "get", "pods,events", check=False).stdout[-2000:]
                logs = self.kubectl("-n", gateway.NGF_NAMESPACE, "logs", f"deploy/{gateway.NGF_NAME}",
                                    "--all-containers", "--tail=15", check=False).stdout[-3000:]
                raise DevError(f"the Gateway {gateway.GATEWAY_NAMESPACE}/{gateway.GATEWAY_NAME} was not Programmed "
                               f"({why}).\n{pods}\n{logs}")
            time.sleep(0.5)
        spec = client.CoreV1Api(api_client).read_namespaced_service(gateway.NGF_NAME, gateway.NGF_NAMESPACE).spec
        cluster_ip = spec.cluster_ip if spec is not None else None
        node = state["node"]
        node["gateway"] = {
            "class": gateway.GATEWAY_CLASS, "namespace": gateway.GATEWAY_NAMESPACE, "name": gateway.GATEWAY_NAME,
            "implementation": "NGINX Gateway Fabric 1.6.2 + Debian nginx",
            "service": f"{gateway.NGF_NAMESPACE}/{gateway.NGF_NAME}", "cluster_ip": cluster_ip,
            # The Gateway's address for clients: its ClusterIP (the host routes the environment's Service range to
            # the node); the NodePort on the node IP answers too.
            "url": f"http://{cluster_ip}", "node_port_url": f"http://{node['node_ip']}:{gateway.HTTP_NODE_PORT}"}
        health_url = f"http://{node['node_ip']}:{gateway.HEALTH_NODE_PORT}/readyz"
        # Programmed can come before the pod is Ready and kube-proxy has programmed the NodePorts: `up` returns
        # once the host reaches the Gateway, so the `gateway` row of `dev status` is healthy from the start.
        while not (reached := self.probe(health_url, timeout=1.0))[0]:
            if time.monotonic() > deadline:
                raise DevError(f"the Gateway is Programmed but its health endpoint {health_url} does not answer from "
                               f"the host ({reached[1]})")
            time.sleep(0.25)
        state["components"].append({
            "name": "gateway", "pid": real_pid(state), "port": 0, "extra_ports": [],
            "health_url": health_url, "log": str(self.logs / "kubelet.log"), "argv": []})
        self._save_state(state)
        self.say(f"  Gateway {gateway.GATEWAY_NAMESPACE}/{gateway.GATEWAY_NAME} Programmed (class "
                 f"{gateway.GATEWAY_CLASS}, NGINX Gateway Fabric; {node['gateway']['url']})")

    def _start(self, state: dict[str, Any], comp: Component) -> None:
        if port_bound(comp.port):
            raise DevError(f"port {comp.port} for {comp.name} is already in use; free it and retry")
        log = (self.logs / f"{comp.name}.log").open("ab")
        env = {**os.environ, **comp.env}
        proc = subprocess.Popen(comp.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=self.home, start_new_session=True)
        log.close()
        comp.pid = proc.pid
        state["components"].append({"name": comp.name, "pid": proc.pid, "port": comp.port,
                                    "extra_ports": comp.extra_ports, "health_url": comp.health_url,
                                    "log": str(self.logs / f"{comp.name}.log"), "argv": comp.argv})
        self._save_state(state)
        self.say(f"  started {comp.name} (pid {proc.pid}, port {comp.port})")

    def _wait(self, comps: list[Component], deadline: float) -> None:
        pending = list(comps)
        while pending:
            for comp in list(pending):
                assert comp.pid is not None
                if not _pid_alive(comp.pid):
                    raise DevError(f"{comp.name} exited during start-up.\n{self._log_tail(comp.name)}")
                ok, _ = self.probe(comp.health_url, timeout=1.0)
                if ok:
                    pending.remove(comp)
                    self.say(f"  {comp.name} is healthy")
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise DevError(
                    f"timed out waiting for {names} to become healthy.\n{self._log_tail(pending[0].name)}"
                )
            if pending:
                time.sleep(0.25)

    def _log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logs / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"(no log at {path})"
        return f"--- last lines of {path} ---\n" + "\n".join(tail)

    def _bootstrap_cluster(self, deadline: float, kwok_nodes: bool) -> None:
        """Create the simulated nodes (``kwok_nodes``) and wait until pods can be created (and scheduled)."""
        from kubernetes import client, config  # imported lazily: `dev status` must stay fast

        api = client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))
        for i in range(NODE_COUNT if kwok_nodes else 0):
            node = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": f"kwok-node-{i}",
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"type": "kwok", "kubernetes.io/hostname": f"kwok-node-{i}",
                               "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                               "kubernetes.io/role": "agent", "topology.kubernetes.io/zone": f"zone-{i}"},
                },
                "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                           "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
            }
            api.create_node(node)
        while True:
            nodes = api.list_node().items
            ready = [n for n in nodes if n.metadata.name.startswith("kwok-node-")  # not the real node
                     and any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))]
            accounts = api.list_namespaced_service_account("default").items
            if len(ready) == (NODE_COUNT if kwok_nodes else 0) and any(
                    a.metadata.name == "default" for a in accounts):
                if kwok_nodes:
                    self.say(f"  {NODE_COUNT} simulated nodes Ready")
                return
            if time.monotonic() > deadline:
                raise DevError(
                    f"nodes not Ready ({len(ready)}/{NODE_COUNT}) or no default ServiceAccount in time.\n"
                    f"{self._log_tail('kwok')}"
                )
            time.sleep(0.5)

    def _write_kubeconfigs(self, keys: pki.Pki, api_url: str) -> None:
        for name, path in (("admin", self.kubeconfig),
                           ("controller-manager", self.home / "controller-manager.kubeconfig"),
                           ("scheduler", self.home / "scheduler.kubeconfig")):
            path.write_text(kubeconfig_yaml(api_url, keys.ca_crt, keys.client_crt(name), keys.client_key(name)))
            path.chmod(0o600)

    # ------------------------------------------------------------------ extras

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        state = self.load_state()
        if not state:
            raise DevError(f"no environment at {self.home}; run `{self.command('up')}`")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        return subprocess.run([state["binaries"]["kubectl"], *args], env=env, input=input, text=True,
                              capture_output=True, check=check, timeout=120)

    def install_crds(self, crds_dir: Path) -> None:
        """Apply the project's CRDs and wait until the apiserver serves them."""
        self.kubectl("apply", "--server-side", "-f", str(crds_dir))
        # `kubectl wait` fails at once while a just-created CRD is not visible yet: retry briefly.
        deadline = time.monotonic() + 120
        while True:
            done = self.kubectl("wait", "--for=condition=Established", "--timeout=20s",
                                "crd/modelversions.modelpilot.io", "crd/abtests.modelpilot.io", check=False)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise DevError(f"the CRDs did not become Established: {done.stderr.strip()}")
            time.sleep(1)

    def start_operator(self, extra_env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        """Run the operator as one more component (stopped by ``down``), against this environment."""
        state = self.load_state()
        if not state:
            raise DevError(f"no environment at {self.home}; run `{self.command('up')}`")
        existing = next((c for c in state["components"] if c["name"] == "operator"), None)
        if existing and _pid_alive(existing["pid"]):
            return
        state["components"] = [c for c in state["components"] if c["name"] != "operator"]
        port, metrics_port = free_port(), free_port()
        state["ports"]["operator-metrics"] = metrics_port
        exports = state["exports"]
        comp = Component(
            "operator",
            [sys.executable, "-m", "modelpilot.cli", "operator", "--liveness", f"http://127.0.0.1:{port}/healthz"],
            f"http://127.0.0.1:{port}/healthz", port, extra_ports=[metrics_port],
            env={"KUBECONFIG": exports["KUBECONFIG"], "MODELPILOT_MLFLOW_TRACKING_URI": exports["MLFLOW_TRACKING_URI"],
                 "MODELPILOT_PROMETHEUS_URL": exports["PROMETHEUS_URL"], "MODELPILOT_METRICS_PORT": str(metrics_port),
                 "MODELPILOT_ALIAS_POLL_SECONDS": "5", **(extra_env or {})},
        )
        self._start(state, comp)
        self._wait([comp], time.monotonic() + timeout)

    # ------------------------------------------------------------------ down

    def down(self, quiet: bool = False, keep_logs: bool = False) -> list[str]:
        """Stop every process the environment started; return the names stopped."""
        state = self.load_state()
        stopped: list[str] = []
        if not state:
            if not quiet:
                self.say(f"no environment at {self.home}")
            return stopped
        pids: list[tuple[str, int]] = []
        for c in state["components"]:  # the real node's rows share its supervisor's pid: stop it once
            if c.get("pid") and all(c["pid"] != p for _, p in pids):
                pids.append((c["name"], c["pid"]))
        # In reverse start order (the node's supervisor ends its containers with it).
        for name, pid in reversed(pids):
            if _terminate_group(pid):
                stopped.append(name)
                if not quiet:
                    self.say(f"  stopped {name} (pid {pid})")
        ports = [c["port"] for c in state["components"]] + [p for c in state["components"]
                                                             for p in c.get("extra_ports", [])]
        deadline = time.monotonic() + 10
        while any(port_bound(p) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.2)
        still = [p for p in ports if port_bound(p)]
        if (state.get("node") or {}).get("mode") == "real":  # a kwok environment has no network of its own
            from modelpilot_dev import node as realnode

            for item in realnode.teardown_network(state["node"]):
                if not quiet:
                    self.say(f"  deleted {item}")
        if keep_logs:
            self.state_file.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.home, ignore_errors=True)
        if still:
            raise DevError(f"ports still bound after stopping the environment: {still}")
        if not quiet:
            self.say(f"environment at {self.home} stopped")
        return stopped


def real_pid(state: dict[str, Any]) -> int | None:
    """The pid of the real node's supervisor (the rows of what runs on the node share it)."""
    return next((c["pid"] for c in state["components"] if c["name"] == "node"), None)


def _terminate_group(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left. True if anything ran."""
    if not _pid_alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            break
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)  # also reaps grandchildren left in the group
    except (ProcessLookupError, PermissionError):
        pass
    try:  # reap it if it is our child (pytest fixtures start the environment in-process)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def kubeconfig_yaml(server: str, ca: Path, crt: Path, key: Path, user: str = "admin") -> str:
    """A kubeconfig with embedded data (kopf's login reads client-certificate-data)."""
    b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "modelpilot-dev",
        "clusters": [{"name": "modelpilot-dev",
                      "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(crt), "client-key-data": b64(key)}}],
        "contexts": [{"name": "modelpilot-dev", "context": {"cluster": "modelpilot-dev", "user": user}}],
    })


#: kwok's fast stages (``--node kwok``): every pod on a kwok node is Running and Ready at once.
KWOK_STAGES = Path(__file__).parent / "assets" / "kwok-stages.yaml"


#: Relabelling every pod scrape job ends with: the metrics path from the annotation, the pod's labels, and
#: its namespace, name and IP as target labels.
_POD_LABELS: list[dict[str, Any]] = [
    {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
     "regex": "(.+)", "target_label": "__metrics_path__"},
    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    {"source_labels": ["__meta_kubernetes_pod_ip"], "target_label": "pod_ip"},
]


def _octet_regex(cidr: str) -> str:
    """A regex for the IPv4 addresses of an octet-aligned network, e.g. ``10.244.0.0/16`` → ``10\\.244\\..+``
    (Prometheus relabelling matches regexes, not networks). Raises ``ValueError`` for any other prefix length."""
    net = ipaddress.IPv4Network(cidr)
    if net.prefixlen % 8 or not 8 <= net.prefixlen <= 24:
        raise ValueError(f"{cidr}: only /8, /16 and /24 networks are supported here")
    fixed = str(net.network_address).split(".")[: net.prefixlen // 8]
    return "\\.".join(fixed) + "\\..+"


def prometheus_config(api_url: str, keys: pki.Pki, scrape_interval: str = "5s",
                      simulated_pods: str | None = None) -> str:
    """Scrape pods annotated ``prometheus.io/scrape`` the ordinary way, as in Prometheus' own Kubernetes example:
    Kubernetes service discovery, the pod IP (the host routes the real node's pod range to it) and the
    ``prometheus.io/port`` annotation. No address annotation, no relabelling trick.

    ``simulated_pods``: the pod network of kwok's simulated pods (a kwok environment), whose addresses exist
    nowhere: their targets are dropped. Scraped, each would be a connection attempt every ``scrape_interval``
    sent out of the machine by its default route."""
    tls = {"ca_file": str(keys.ca_crt), "cert_file": str(keys.client_crt("admin")),
           "key_file": str(keys.client_key("admin"))}
    conf = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "kubernetes_sd_configs": [{"role": "pod", "api_server": api_url, "tls_config": tls}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                 "regex": "true", "action": "keep"},
                *([{"source_labels": ["__meta_kubernetes_pod_ip"], "regex": _octet_regex(simulated_pods),
                    "action": "drop"}] if simulated_pods else []),
                {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                 "regex": "([^:]+)(?::\\d+)?;(\\d+)", "replacement": "$1:$2", "target_label": "__address__"},
                *_POD_LABELS,
            ],
        }],
    }
    return yaml.safe_dump(conf, sort_keys=False)
