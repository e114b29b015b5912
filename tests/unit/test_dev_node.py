"""The real node's pieces that need no root: addresses, host rules, configuration files, machine checks,
image build inputs. The node itself is proven by tests/cluster/test_real_node.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpilot_dev import images, node


def test_addresses_of_one_node() -> None:
    net = node.NodeNet("abcd1234", 7)
    assert (net.netns, net.host_veth) == ("mp-abcd1234", "mphabcd1234")
    assert len(net.host_veth) <= 15, "interface names are limited to 15 characters"
    assert (net.host_ip, net.node_ip, net.pod_cidr) == ("10.250.7.1", "10.250.7.2", "10.246.7.0/24")
    # Each environment has its own /20 of Services (the host routes it to this node): .1 is the `kubernetes`
    # Service, .10 kube-dns.
    assert (net.service_cidr, net.kubernetes_service_ip, net.cluster_dns_ip) == (
        "10.96.112.0/20", "10.96.112.1", "10.96.112.10")
    import ipaddress

    other = node.NodeNet("ffff0000", 8)
    assert not ipaddress.ip_network(net.service_cidr).overlaps(ipaddress.ip_network(other.service_cidr))
    assert ipaddress.ip_network(node.NodeNet("x", 254).service_cidr).subnet_of(node.SERVICE_NET)
    # Nothing overlaps the ranges the environment already uses (kwok pods, other environments' Services).
    for used in ("10.244.0.0/16",):
        for mine in (f"{net.host_ip}/30", net.pod_cidr, net.service_cidr):
            assert not ipaddress.ip_network(mine, strict=False).overlaps(ipaddress.ip_network(used))


def test_allocate_skips_an_address_in_use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Done:
        stdout = "5: mphx inet 10.250.1.1/30 scope global mphx\n"

    monkeypatch.setattr(node, "_sh", lambda *a, **k: Done())
    net = node.allocate(tmp_path)
    assert net.index == 2 and len(net.ident) == 8
    assert node.allocate(tmp_path).ident == net.ident, "the same home keeps its names"


def test_host_rules_never_let_pod_traffic_leave() -> None:
    net = node.NodeNet("abcd1234", 3)
    rules = node.host_rules(net, [6443, 5000, 6443])
    forward = [r for r in rules if r[:2] == ["filter", "FORWARD"]]
    assert {tuple(r[2:4]) for r in forward} == {("-i", net.host_veth), ("-o", net.host_veth)}
    assert all("DROP" in r for r in forward)
    (dnat,) = [r for r in rules if r[:2] == ["nat", "PREROUTING"]]
    assert ["-i", net.host_veth] == dnat[2:4] and net.host_ip in dnat
    assert "5000,6443" in dnat and dnat[dnat.index("--to-destination") + 1] == "127.0.0.1"
    (local,) = [r for r in rules if r[:2] == ["nat", "OUTPUT"]]
    assert local[2:4] == ["-d", net.host_ip] and "5000,6443" in local
    assert not any("MASQUERADE" in r for r in rules)
    # Every rule carries the node's comment, which is how teardown finds exactly its own rules.
    assert all(any(f"modelpilot node {net.ident}:" in part for part in r) for r in rules)


def test_configs_carry_the_quirks_of_this_machine_kind(tmp_path: Path) -> None:
    net = node.NodeNet("abcd1234", 4)
    kubeconfigs = {"kubelet": tmp_path / "k.kubeconfig", "kube-proxy": tmp_path / "p.kubeconfig"}
    spec = node.write_configs(tmp_path / "node", net, "https://10.250.4.1:6443", kubeconfigs, tmp_path / "ca.crt")
    containerd = Path(spec["containerd_config"]).read_text()
    for needle in ("restrict_oom_score_adj = true", 'snapshotter = "overlayfs"', "BinaryName = ",
                   "SystemdCgroup = false", f'sandbox_image = "{images.PAUSE_IMAGE}"',
                   "netns_mounts_under_state_dir = true", f'address = "{spec["socket"]}"'):
        assert needle in containerd, needle
    assert str(tmp_path / "node") in containerd.split("root = ")[1].split("\n")[0]
    kubelet = yaml.safe_load((Path(spec["kubelet_dir"]) / "config.yaml").read_text())
    assert kubelet["cgroupDriver"] == "cgroupfs" and kubelet["failCgroupV1"] is False
    assert kubelet["cgroupsPerQOS"] is False and kubelet["enforceNodeAllocatable"] == []
    assert kubelet["failSwapOn"] is False and kubelet["cgroupRoot"] == net.cgroup
    assert kubelet["address"] == net.node_ip and kubelet["imageGCHighThresholdPercent"] == 100
    assert kubelet["containerRuntimeEndpoint"] == f"unix://{spec['socket']}"
    # Unix socket paths are limited to 107 bytes: however long the state directory, the node's sockets live in its
    # own short tmpfs (the kubelet's root directory is bind-mounted there by the supervisor).
    assert spec["socket"].startswith(node.NODE_RUN + "/") and len(node.KUBELET_ROOT) + 40 < 107
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["clusterDNS"] == [net.cluster_dns_ip] and kubelet["resolvConf"] == ""
    proxy = yaml.safe_load(Path(spec["kube_proxy_config"]).read_text())
    assert proxy["mode"] == "iptables" and proxy["clusterCIDR"] == net.pod_cidr
    assert proxy["conntrack"]["maxPerCore"] == 0, "conntrack sysctls are machine-wide: left alone"
    (conflist,) = (tmp_path / "node" / "cni" / "net.d").glob("*.conflist")
    cni: dict[str, Any] = json.loads(conflist.read_text())
    bridge, portmap = cni["plugins"]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is False and portmap["type"] == "portmap"
    assert bridge["ipam"]["type"] == "host-local" and bridge["ipam"]["ranges"] == [[{"subnet": net.pod_cidr}]]


def test_cluster_dns_resolves_only_inside_the_cluster() -> None:
    items = {m["kind"]: m for m in node.coredns_manifests("localhost/modelpilot/coredns:x", "10.96.16.10")}
    corefile = items["ConfigMap"]["data"]["Corefile"]
    assert "kubernetes cluster.local" in corefile and "forward" not in corefile, "nothing outside is resolved"
    assert items["Service"]["spec"]["clusterIP"] == "10.96.16.10"
    pod = items["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["containers"][0]["imagePullPolicy"] == "Never"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_supervisor_is_pid_1_of_its_own_namespaces() -> None:
    argv = node.supervisor_argv(Path("/venv/bin/python"), Path("/home/node/supervisor.json"), "mp-x")
    assert argv[0] == "unshare" and {"--pid", "--mount", "--fork", "--kill-child", "--mount-proc"} <= set(argv)
    assert argv[argv.index("--propagation") + 1] == "private"
    assert "nsenter" in argv and "--net=/run/netns/mp-x" in argv
    assert argv[-4:] == ["-m", "modelpilot_dev.node", "--spec", "/home/node/supervisor.json"]


def test_check_machine_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.shutil, "which", lambda tool: None if tool in ("containerd", "runc") else "/bin/x")
    monkeypatch.setattr(node, "cni_bin_dir", lambda: None)
    missing = "\n".join(node.check_machine())
    assert "`containerd` command (apt-get install containerd)" in missing
    assert "`runc` command (apt-get install runc)" in missing
    assert "containernetworking-plugins" in missing


def test_images_config_and_build_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPILOT_CACHE", str(tmp_path))
    env = images.podman_env()
    conf = Path(env["CONTAINERS_CONF"]).read_text()
    assert 'runtime = "runc"' in conf and '"nofile=20000:20000"' in conf
    storage = Path(env["CONTAINERS_STORAGE_CONF"]).read_text()
    assert str(tmp_path) in storage, "podman's storage lives in the cache, never in the repository"
    assert images.images_dir() == tmp_path / "images"
    one = images.context_digest("serving-image/Dockerfile", "base1")
    assert one == images.context_digest("serving-image/Dockerfile", "base1")
    assert one != images.context_digest("serving-image/Dockerfile", "base2")
    assert one != images.context_digest("operator/Dockerfile", "base1")
    pip_conf = images._pip_conf().read_text()
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in pip_conf and "trusted-host" not in pip_conf


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    root = Path(__file__).resolve().parents[2]
    ignored = (root / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "**/__pycache__"):
        assert entry in ignored


def test_saving_an_image_archive_keeps_the_newest_older_ones_for_other_checkouts(tmp_path: Path,
                                                                                  monkeypatch: Any) -> None:
    """Two checkouts on one machine (a worktree, a CI clone) build the serving image under one name with different
    contents; each environment imports its own archive when it starts. Saving one archive deleted every other, so
    the other checkout's next start-up failed ("ctr: open …tar: no such file"). Now the newest few stay. podman
    is replaced at its boundary (image id and ``save``): the pruning is what is tested."""
    import os
    import time

    from modelpilot_dev import images

    monkeypatch.setattr(images, "images_dir", lambda: tmp_path)
    saved: list[str] = []

    def fake_save(args: list[str], say: Any, label: str, **kw: Any) -> None:
        out = Path(args[args.index("-o") + 1])
        out.write_bytes(b"oci")
        saved.append(out.name)

    monkeypatch.setattr(images, "_run", fake_save)
    name = "ghcr.io/modelpilot/modelpilot-serve:0.1.0"
    for i, ident in enumerate(["a" * 16, "b" * 16, "c" * 16, "d" * 16]):
        monkeypatch.setattr(images, "image_id", lambda _name, ident=ident: ident + "0" * 48)
        path = images.archive(name, lambda _msg: None)
        os.utime(path, (time.time() + i, time.time() + i))  # saved one after the other
        assert path.read_bytes() == b"oci" and not list(tmp_path.glob("archives/*.tmp"))
    left = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "archives").glob("*.tar"))
    assert left == ["bbbbbbbbbbbbbbbb.tar", "cccccccccccccccc.tar", "dddddddddddddddd.tar"], left
    # The current image's archive is reused, not saved again.
    assert images.archive(name, lambda _msg: None).name.endswith("dddddddddddddddd.tar") and len(saved) == 4
