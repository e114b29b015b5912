"""A real Kubernetes node for the local environment (``modelpilot dev up --node real``).

Part of the local environment. The node lives as a kind node lives in its container, with every address
on this machine:

* **network**: a network namespace ``mp-<id>`` with a veth pair to the host. The host side gets
  ``10.250.<n>.1/30``, the node side (``eth0`` in the namespace) ``10.250.<n>.2/30``, the node IP.
  Pods get addresses from ``10.246.<n>.0/24`` on a CNI bridge inside the namespace; the host routes that
  range to the node IP, so host-side processes (tests, Prometheus) reach pods directly. The namespace's
  only default route points at the host side of the veth, the host does not forward for it (an iptables
  ``FORWARD … DROP`` for the veth, whatever ``ip_forward`` says) and nothing is masqueraded towards the
  outside: pod traffic never leaves the machine.
* **control-plane endpoints for pods**: the apiserver, MLflow and Prometheus keep listening on 127.0.0.1;
  an iptables ``DNAT`` (host, ``nat PREROUTING``, only packets coming in on the veth, only their ports)
  maps ``10.250.<n>.1:<port>`` to ``127.0.0.1:<port>`` (``route_localnet=1`` on the veth only). The
  apiserver's serving certificate names ``10.250.<n>.1`` and it advertises that address, so the
  ``kubernetes`` Service (the first address of the environment's Service range) leads there too.
* **Services**: each environment has its own /20 of ClusterIPs (``10.96.0.0/12``'s n-th) and the host routes
  it to the node IP, so a host process (a test, the demo, a user's curl) reaches a ClusterIP as a pod does:
  the node's kube-proxy rules balance it.
* **processes**: one supervisor (``python -m modelpilot_dev.node``) is PID 1 of a new PID and mount
  namespace (``unshare --pid --mount --fork --kill-child``) entered into the network namespace
  (``nsenter --net``). It mounts private tmpfs over ``/run/containerd`` and ``/var/lib/cni`` (containerd
  1.6 keeps shim sockets and CNI results there) and runs containerd, kubelet and kube-proxy; if one dies,
  the supervisor stops the others and exits. When PID 1 exits the kernel kills every process left in
  the namespace (shims, containers) and the mount namespace with every mount of the node (a tmpfs for its
  unix sockets, ``NODE_RUN``, where the kubelet's root directory is bind-mounted, so socket paths stay short; overlay
  root filesystems, secret tmpfs, pod network namespaces) disappears with it. ``down`` therefore never
  needs to find or unmount anything.
* **containerd** (Debian 1.6.20): own config/root/state under the environment home, CRI plugin with
  ``runc`` (``BinaryName = /usr/sbin/runc``; crun refuses cgroup v1 hybrid), ``restrict_oom_score_adj =
  true`` (this VM forbids lowering ``oom_score_adj`` even for root: runc fails with "can't get final
  child's PID from pipe: EOF" otherwise), overlayfs snapshotter, ``netns_mounts_under_state_dir``, the
  pause image built locally (see ``images.py``).
* **kubelet**: ``cgroupDriver: cgroupfs``, ``failCgroupV1: false``, ``cgroupsPerQOS: false``,
  ``enforceNodeAllocatable: []``, ``failSwapOn: false``, pods under the cgroup ``/modelpilot-<id>``,
  image garbage collection off (images cannot be pulled again), client certificate
  ``system:node:<name>`` from the environment's CA (the apiserver runs ``--authorization-mode=Node,RBAC``).
* **kube-proxy**: iptables mode, client ``system:kube-proxy``; the conntrack sysctls are left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NODE_NAME = "modelpilot-node"
HOST_NET = ipaddress.ip_network("10.250.0.0/16")  # one /30 per environment: 10.250.<n>.0/30
POD_NET = ipaddress.ip_network("10.246.0.0/16")  # one /24 per environment: 10.246.<n>.0/24
#: One /20 of Services per environment (4,094 ClusterIPs), so the host can route each environment's range to its
#: node and two environments on one machine never overlap: environment <n> gets 10.96.0.0/12's n-th /20.
SERVICE_NET = ipaddress.ip_network("10.96.0.0/12")
SERVICE_PREFIX = 20
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_PROXY_METRICS_PORT = 10249
CONTAINERD_METRICS_PORT = 10257
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
#: A private tmpfs in the node's mount namespace (every node has its own) for its unix sockets: a socket path is
#: limited to 107 bytes, and the kubelet makes several under its root directory (pod-resources, device plugins),
#: which under a long state directory (a pytest tmp path) failed with "bind: invalid argument". containerd's
#: socket lives here; the kubelet's root directory (on disk under the state directory) is bind-mounted here.
NODE_RUN = "/run/modelpilot-node"
KUBELET_ROOT = f"{NODE_RUN}/kubelet"
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer")


class NodeError(RuntimeError):
    """The machine lacks something the real node needs, or the node failed; the message names it."""


@dataclass(frozen=True)
class NodeNet:
    """The addresses and names of one node's network."""

    ident: str
    index: int

    @property
    def netns(self) -> str:
        return f"mp-{self.ident}"

    @property
    def host_veth(self) -> str:
        return f"mph{self.ident}"

    @property
    def host_ip(self) -> str:
        return f"10.250.{self.index}.1"

    @property
    def node_ip(self) -> str:
        return f"10.250.{self.index}.2"

    @property
    def pod_cidr(self) -> str:
        return f"10.246.{self.index}.0/24"

    @property
    def service_cidr(self) -> str:
        """This environment's Service range (``--service-cluster-ip-range``); the host routes it to the node."""
        size = 2 ** (32 - SERVICE_PREFIX)
        return f"{SERVICE_NET.network_address + self.index * size}/{SERVICE_PREFIX}"

    @property
    def kubernetes_service_ip(self) -> str:
        """The ``kubernetes`` Service: the range's first address (the apiserver's certificate names it)."""
        return str(ipaddress.ip_network(self.service_cidr).network_address + 1)

    @property
    def cluster_dns_ip(self) -> str:
        """The ``kube-dns`` Service (CoreDNS on the node, the kubelet's clusterDNS), by convention ``.10``."""
        return str(ipaddress.ip_network(self.service_cidr).network_address + 10)

    @property
    def cgroup(self) -> str:
        return f"/modelpilot-{self.ident}"

    def as_dict(self) -> dict[str, Any]:
        return {"ident": self.ident, "index": self.index, "netns": self.netns, "host_veth": self.host_veth,
                "host_ip": self.host_ip, "node_ip": self.node_ip, "pod_cidr": self.pod_cidr,
                "service_cidr": self.service_cidr, "kubernetes_service_ip": self.kubernetes_service_ip,
                "cluster_dns_ip": self.cluster_dns_ip, "cgroup": self.cgroup}


def _sh(*args: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", netns, *args] if netns else list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def cni_bin_dir() -> str | None:
    for d in CNI_BIN_DIRS:
        if all(Path(d, p).exists() for p in CNI_PLUGINS):
            return d
    return None


def check_machine() -> list[str]:
    """Everything the real node needs that this machine lacks, each named with how to get it."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, mounts and containers need it; run as root)")
    tools = {"ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux", "iptables": "iptables",
             "containerd": "containerd", "ctr": "containerd", "runc": "runc", "mount": "mount", "sysctl": "procps"}
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            missing.append(f"the `{tool}` command (apt-get install {package})")
    if cni_bin_dir() is None:
        missing.append(f"CNI plugins {', '.join(CNI_PLUGINS)} in {' or '.join(CNI_BIN_DIRS)} "
                       "(apt-get install containernetworking-plugins)")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        missing.append("the kernel's overlay filesystem (containerd's overlayfs snapshotter)")
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        missing.append("the kernel's br_netfilter (bridged pod traffic must pass iptables for Services)")
    if not Path("/proc/sys/net/ipv4/conf/all/route_localnet").exists():
        missing.append("the kernel's route_localnet sysctl")
    if not Path("/proc/self/ns/net").exists() or not Path("/proc/self/ns/pid").exists():
        missing.append("network and PID namespaces in the kernel")
    try:
        cgroups = {line.split()[0]: line.split()[3] == "1" for line in
                   Path("/proc/cgroups").read_text().splitlines()[1:] if line.strip()}
    except OSError:
        cgroups = {}
    mounted = {m for m in CGROUP_CONTROLLERS if Path("/sys/fs/cgroup", m).is_dir()} | (
        set(CGROUP_CONTROLLERS) if Path("/sys/fs/cgroup/cgroup.controllers").exists() else set())
    for ctrl in CGROUP_CONTROLLERS:
        if not cgroups.get(ctrl):
            missing.append(f"the cgroup controller `{ctrl}` (not enabled in /proc/cgroups)")
        elif ctrl not in mounted:
            missing.append(f"the cgroup controller `{ctrl}` (not mounted under /sys/fs/cgroup)")
    return missing


# --------------------------------------------------------------------------- network


def allocate(home: Path) -> NodeNet:
    """A free /30 for this environment (another environment on the machine keeps its own)."""
    ident = hashlib.sha256(str(home).encode()).hexdigest()[:8]
    used_addrs = _sh("ip", "-o", "-4", "addr", "show").stdout
    for index in range(1, 255):
        if f" 10.250.{index}.1/" not in used_addrs:
            return NodeNet(ident, index)
    raise NodeError("no free 10.250.<n>.0/30 for the node's veth (254 environments running?)")


def _ipt(*rule: str) -> list[str]:
    return ["iptables", "-w", "5", *rule]


def host_rules(net: NodeNet, ports: list[int]) -> list[list[str]]:
    """The host iptables rules (table, chain, spec…) this node needs; deleted again by ``teardown_network``."""
    rules = [
        ["filter", "FORWARD", "-i", net.host_veth, "-j", "DROP", "-m", "comment", "--comment",
         f"modelpilot node {net.ident}: pod traffic never leaves the machine"],
        ["filter", "FORWARD", "-o", net.host_veth, "-j", "DROP", "-m", "comment", "--comment",
         f"modelpilot node {net.ident}: nothing is forwarded to the node"],
    ]
    if ports:
        rules.append(["nat", "PREROUTING", "-i", net.host_veth, "-d", net.host_ip, "-p", "tcp", "-m",
                      "multiport", "--dports", ",".join(str(p) for p in sorted(set(ports))), "-j", "DNAT",
                      "--to-destination", "127.0.0.1", "-m", "comment", "--comment",
                      f"modelpilot node {net.ident}: control plane for pods"])
        # The same address from the host itself, so one URL (e.g. MLflow's) works for host processes and pods.
        rules.append(["nat", "OUTPUT", "-d", net.host_ip, "-p", "tcp", "-m", "multiport", "--dports",
                      ",".join(str(p) for p in sorted(set(ports))), "-j", "DNAT", "--to-destination", "127.0.0.1",
                      "-m", "comment", "--comment", f"modelpilot node {net.ident}: control plane at the node address"])
    return rules


def setup_network(net: NodeNet, ports: list[int]) -> None:
    """Create the namespace, the veth pair, addresses, routes, sysctls and host rules (idempotent)."""
    teardown_network(net)  # leftovers of a killed environment
    _sh("ip", "netns", "add", net.netns)
    _sh("ip", "link", "add", net.host_veth, "type", "veth", "peer", "name", f"mpn{net.ident}", "netns", net.netns)
    _sh("ip", "addr", "add", f"{net.host_ip}/30", "dev", net.host_veth)
    _sh("ip", "link", "set", net.host_veth, "up")
    _sh("ip", "route", "add", net.pod_cidr, "via", net.node_ip, "dev", net.host_veth)
    # ClusterIPs from the host, as from any machine in a cluster's network: the node's kube-proxy rules
    # (nat PREROUTING) balance them, so tests and the demo reach a Service exactly as a pod does.
    _sh("ip", "route", "add", net.service_cidr, "via", net.node_ip, "dev", net.host_veth)
    _sh("sysctl", "-qw", f"net.ipv4.conf.{net.host_veth}.route_localnet=1")
    ns = net.netns
    _sh("ip", "link", "set", f"mpn{net.ident}", "name", "eth0", netns=ns)
    _sh("ip", "addr", "add", f"{net.node_ip}/30", "dev", "eth0", netns=ns)
    _sh("ip", "link", "set", "eth0", "up", netns=ns)
    _sh("ip", "link", "set", "lo", "up", netns=ns)
    _sh("ip", "route", "add", "default", "via", net.host_ip, "dev", "eth0", netns=ns)
    for key in ("net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1",
                "net.bridge.bridge-nf-call-ip6tables=1", "net.ipv4.conf.all.route_localnet=1"):
        _sh("sysctl", "-qw", key, netns=ns)
    for rule in host_rules(net, ports):
        table, chain, *spec = rule
        _sh(*_ipt("-t", table, "-I" if chain == "FORWARD" else "-A", chain, *spec))


def teardown_network(net: NodeNet | dict[str, Any]) -> list[str]:
    """Delete the host rules, the namespace (and with it the veth pair) and the pods' cgroups."""
    if isinstance(net, dict):
        net = NodeNet(net["ident"], net["index"])
    done: list[str] = []
    for table in ("filter", "nat"):
        listing = _sh(*_ipt("-t", table, "-S"), check=False).stdout
        for line in listing.splitlines():
            if f"modelpilot node {net.ident}:" in line and line.startswith("-A "):
                spec = _split_rule(line[3:])
                if _sh(*_ipt("-t", table, "-D", *spec), check=False).returncode == 0:
                    done.append(f"iptables -t {table} {line}")
    if _sh("ip", "link", "show", net.host_veth, check=False).returncode == 0:
        _sh("ip", "link", "del", net.host_veth, check=False)
        done.append(f"veth {net.host_veth}")
    if Path("/run/netns", net.netns).exists():
        # Normally empty (``down`` stopped the supervisor). After a killed session, the orphaned node is still
        # in there: SIGKILL to its supervisor, PID 1 of the node's PID namespace, ends every process of it.
        pids = [int(p) for p in _sh("ip", "netns", "pids", net.netns, check=False).stdout.split() if p.isdigit()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline and _sh("ip", "netns", "pids", net.netns, check=False).stdout.strip():
            time.sleep(0.2)
        if pids:
            done.append(f"{len(pids)} orphaned node processes")
        _sh("ip", "netns", "del", net.netns, check=False)
        done.append(f"netns {net.netns}")
    for ctrl in (*CGROUP_CONTROLLERS, "systemd"):
        root = Path("/sys/fs/cgroup", ctrl, net.cgroup.lstrip("/"))
        if root.is_dir():
            for sub in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                root.rmdir()
            except OSError:
                pass
    return done


def _split_rule(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


# --------------------------------------------------------------------------- configuration


def write_configs(node_dir: Path, net: NodeNet, api_url: str, kubeconfigs: dict[str, Path], ca_crt: Path) -> dict[str, Any]:
    """containerd, CNI, kubelet and kube-proxy configuration under ``node_dir``; returns the supervisor spec."""
    node_dir.mkdir(parents=True, exist_ok=True)
    cdir = node_dir / "containerd"
    (cdir / "root").mkdir(parents=True, exist_ok=True)
    (cdir / "state").mkdir(parents=True, exist_ok=True)
    sock = Path(NODE_RUN) / "containerd.sock"
    cni_conf = node_dir / "cni" / "net.d"
    cni_conf.mkdir(parents=True, exist_ok=True)
    bin_dir = cni_bin_dir() or CNI_BIN_DIRS[0]
    runc = shutil.which("runc") or "/usr/sbin/runc"
    from modelpilot_dev import images

    (cdir / "config.toml").write_text(f"""version = 2
root = "{cdir / 'root'}"
state = "{cdir / 'state'}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[metrics]
  address = "{net.node_ip}:{CONTAINERD_METRICS_PORT}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = false
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
""")
    (cni_conf / "10-modelpilot.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "modelpilot",
        "plugins": [
            {"type": "bridge", "bridge": "mp0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": net.pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(node_dir / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2))
    kdir = node_dir / "kubelet"
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "config.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca_crt)}},
        "authorization": {"mode": "Webhook"},
        "address": net.node_ip, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": net.node_ip, "healthzPort": KUBELET_HEALTHZ_PORT,
        "containerRuntimeEndpoint": f"unix://{sock}",
        # cgroup v1 hybrid, no systemd (see the module docstring)
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "cgroupsPerQOS": False, "cgroupRoot": net.cgroup,
        "enforceNodeAllocatable": [], "failSwapOn": False,
        # Pods resolve through CoreDNS only (nothing outside the machine): no host resolv.conf.
        "resolvConf": "", "clusterDomain": CLUSTER_DOMAIN, "clusterDNS": [net.cluster_dns_ip],
        "podLogsDir": str(node_dir / "pod-logs"),
        "volumePluginDir": str(kdir / "volume-plugins"),
        # Images are imported, never pulled: never collect them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "maxPods": 110, "serializeImagePulls": False, "registerNode": True,
        "nodeStatusReportFrequency": "10s", "syncFrequency": "10s",
        "rotateCertificates": False, "serverTLSBootstrap": False,
        "protectKernelDefaults": False, "makeIPTablesUtilChains": False,
    }, sort_keys=False))
    pdir = node_dir / "kube-proxy"
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / "config.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfigs["kube-proxy"])},
        "mode": "iptables", "hostnameOverride": NODE_NAME, "bindAddress": net.node_ip,
        "clusterCIDR": net.pod_cidr,
        "healthzBindAddress": f"{net.node_ip}:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"{net.node_ip}:{KUBE_PROXY_METRICS_PORT}",
        "nodePortAddresses": [f"{net.node_ip}/32"],
        # The conntrack sysctls are machine-wide on this kernel: leave them alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"masqueradeAll": False, "localhostNodePorts": False, "syncPeriod": "30s",
                     "minSyncPeriod": "1s"},
    }, sort_keys=False))
    return {"containerd_config": str(cdir / "config.toml"), "socket": str(sock), "kubelet_dir": str(kdir),
            "kube_proxy_config": str(pdir / "config.yaml"), "node_ip": net.node_ip, "cgroup": net.cgroup,
            "node_dir": str(node_dir)}


def coredns_manifests(image: str, dns_ip: str, node_name: str = NODE_NAME) -> list[dict[str, Any]]:
    """Cluster DNS: CoreDNS (kubernetes plugin only, no forwarding: nothing outside the machine is resolved)
    as a Deployment on the real node behind the ``kube-dns`` Service at ``dns_ip`` (``NodeNet.cluster_dns_ip``)."""
    labels = {"k8s-app": "kube-dns"}
    corefile = (f".:1053 {{\n    errors\n    health :8080\n    ready :8181\n"
                f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n        pods insecure\n"
                f"        fallthrough in-addr.arpa ip6.arpa\n    }}\n    cache 30\n    loadbalance\n}}\n")
    meta = {"name": "coredns", "namespace": "kube-system"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "modelpilot:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "modelpilot:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "modelpilot:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {
                 "serviceAccountName": "coredns", "dnsPolicy": "Default",
                 "nodeSelector": {"modelpilot.io/node": "real", "kubernetes.io/hostname": node_name},
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{
                     "name": "coredns", "image": image, "imagePullPolicy": "Never",
                     "args": ["-conf", "/etc/coredns/Corefile"],
                     "ports": [{"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                               {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"}],
                     "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                     "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
                     "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                     "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}},
                     "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                 }],
                 "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
             }}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system",
                                                             "labels": labels},
         "spec": {"selector": labels, "clusterIP": dns_ip,
                  "ports": [{"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"}]}},
    ]


# --------------------------------------------------------------------------- supervisor (PID 1 of the node)


def supervise(spec: dict[str, Any]) -> int:
    """Run containerd, import the images, then kubelet and kube-proxy; stop all when one dies or on SIGTERM."""
    node_dir = Path(spec["node_dir"])
    logs = Path(spec["logs"])
    for path in ("/run/containerd", "/var/lib/cni", NODE_RUN):
        Path(path).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path], check=True)
    kubelet_root = Path(spec["kubelet_dir"]) / "root"
    kubelet_root.mkdir(parents=True, exist_ok=True)
    Path(KUBELET_ROOT).mkdir()
    subprocess.run(["mount", "--bind", str(kubelet_root), KUBELET_ROOT], check=True)
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # cgroup v2 only
        Path("/sys/fs/cgroup", spec["cgroup"].lstrip("/")).mkdir(exist_ok=True)
    for ctrl in CGROUP_CONTROLLERS:  # cgroup v1 (hybrid here): the pods' parent in every hierarchy
        if Path("/sys/fs/cgroup", ctrl).is_dir():
            Path("/sys/fs/cgroup", ctrl, spec["cgroup"].lstrip("/")).mkdir(exist_ok=True)
    stop = [False]

    def on_term(signum: int, frame: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    children: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv: list[str]) -> None:
        log = (logs / f"{name}.log").open("ab")
        children[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        print(f"node: started {name} (pid {children[name].pid})", flush=True)

    def reap() -> str | None:
        for name, proc in children.items():
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None

    def shutdown(reason: str) -> int:
        print(f"node: stopping ({reason})", flush=True)
        for name in ("kube-proxy", "kubelet", "containerd"):
            proc = children.get(name)
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=8)
                except subprocess.TimeoutExpired:
                    proc.kill()
        return 0 if reason == "signal" else 1

    start("containerd", [spec["containerd"], "--config", spec["containerd_config"]])
    sock = Path(spec["socket"])
    deadline = time.monotonic() + 30
    while not sock.exists():
        if stop[0] or reap() or time.monotonic() > deadline:
            return shutdown(reap() or ("signal" if stop[0] else "containerd socket did not appear in 30 s"))
        time.sleep(0.1)
    ctr = ["ctr", "--address", str(sock), "-n", "k8s.io"]
    for item in spec["images"]:
        started = time.monotonic()
        done = subprocess.run([*ctr, "images", "import", item["archive"]], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"node: importing {item['name']} failed: {done.stderr.strip()}", flush=True)
            return shutdown("image import failed")
        for name in item.get("names", []):
            subprocess.run([*ctr, "images", "tag", "--force", item["imported_as"], name],
                           capture_output=True, text=True)
        print(f"node: imported {item['name']} in {time.monotonic() - started:.1f}s", flush=True)
    (node_dir / "images-imported").write_text("ok\n")
    kdir = spec["kubelet_dir"]
    start("kubelet", [spec["kubelet"], f"--config={kdir}/config.yaml", f"--kubeconfig={spec['kubelet_kubeconfig']}",
                      f"--root-dir={KUBELET_ROOT}", f"--cert-dir={kdir}/pki", f"--hostname-override={spec['node_name']}",
                      f"--node-ip={spec['node_ip']}", "--node-labels=modelpilot.io/node=real", "--v=1"])
    start("kube-proxy", [spec["kube_proxy"], f"--config={spec['kube_proxy_config']}", "--v=1"])
    while True:
        if stop[0]:
            return shutdown("signal")
        why = reap()
        if why:
            return shutdown(why)
        time.sleep(0.5)


def supervisor_argv(python: Path, spec_file: Path, netns: str) -> list[str]:
    return ["unshare", "--pid", "--mount", "--fork", "--kill-child", "--propagation", "private", "--mount-proc",
            "nsenter", f"--net=/run/netns/{netns}", str(python), "-m", "modelpilot_dev.node",
            "--spec", str(spec_file)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelpilot-dev-node", description="the real node's supervisor (PID 1)")
    parser.add_argument("--spec", required=True, type=Path)
    args = parser.parse_args(argv)
    return supervise(json.loads(args.spec.read_text()))


if __name__ == "__main__":
    sys.exit(main())
