"""Where binaries come from: env overrides build nothing, missing Go and corrupt caches are named clearly."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from modelpilot_dev import binaries, pki
from modelpilot_dev.environment import KWOK_STAGES, prometheus_config


def _fake_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho fake\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_kubebuilder_assets_and_per_binary_variables_are_used_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = tmp_path / "assets"
    for name in ("etcd", "kube-apiserver", "kubectl"):
        _fake_binary(assets / name)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    others = {n: _fake_binary(tmp_path / "other" / n) for n in binaries.NAMES
              if n not in ("etcd", "kube-apiserver", "kubectl")}
    for name, path in others.items():
        monkeypatch.setenv("MODELPILOT_" + name.upper().replace("-", "_"), str(path))
    monkeypatch.setenv("MODELPILOT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PATH", "/nonexistent")  # proves no `go` is needed
    found = binaries.resolve(build=True)
    assert found.kube_apiserver == assets / "kube-apiserver"
    assert found.etcd == assets / "etcd"
    assert found.kwok == others["kwok"]
    assert not (tmp_path / "empty-cache").exists()


def test_a_variable_pointing_at_nothing_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPILOT_ETCD", "/no/such/etcd")
    with pytest.raises(binaries.BinaryError, match="MODELPILOT_ETCD=/no/such/etcd"):
        binaries.resolve(build=False)


def test_missing_go_says_what_to_install_or_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    for name in binaries.NAMES:
        monkeypatch.delenv("MODELPILOT_" + name.upper().replace("-", "_"), raising=False)
    monkeypatch.setenv("MODELPILOT_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(binaries.BinaryError) as err:
        binaries.resolve(build=True)
    assert "Go is not installed" in str(err.value)
    assert "KUBEBUILDER_ASSETS" in str(err.value)


def test_without_build_the_missing_binaries_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("MODELPILOT_CACHE", str(tmp_path))
    with pytest.raises(binaries.BinaryError, match="modelpilot dev build"):
        binaries.resolve(build=False)


def test_a_corrupt_cache_entry_is_detected_and_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPILOT_CACHE", str(tmp_path))
    path = _fake_binary(binaries._group_dir("etcd") / "etcd")
    binaries._stamp(path).write_text(binaries._sha256(path) + "\n")
    messages: list[str] = []
    assert binaries._cached_ok(path, messages.append)
    with path.open("a") as fh:  # a truncated or overwritten binary no longer matches its checksum
        fh.write("garbage")
    assert not binaries._cached_ok(path, messages.append)
    assert not path.exists()
    assert "corrupt" in messages[-1]


def test_kwok_simulates_every_pod_on_its_nodes() -> None:
    """``--node kwok`` (benchmarks only): kwok's fast stages, with nothing left to another runtime."""
    stages = list(yaml.safe_load_all(KWOK_STAGES.read_text()))
    names = {s["metadata"]["name"]: s for s in stages}
    assert {"node-initialize", "node-heartbeat-with-lease", "pod-ready", "pod-delete"} <= set(names)
    for pod_stage in ("pod-ready", "pod-delete", "pod-complete"):
        keys = [e["key"] for e in names[pod_stage]["spec"]["selector"]["matchExpressions"]]
        assert not any(".image" in k for k in keys), pod_stage
    assert "${" not in KWOK_STAGES.read_text()


def test_prometheus_scrapes_pods_by_ordinary_kubernetes_discovery(tmp_path: Path) -> None:
    """Pod IP and the ``prometheus.io/port`` annotation, as in Prometheus' own example: no address annotation."""
    keys = pki.ensure(tmp_path / "pki")
    conf = yaml.safe_load(prometheus_config("https://127.0.0.1:6443", keys))
    (job,) = conf["scrape_configs"]
    relabel = job["relabel_configs"]
    assert relabel[0] == {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                          "regex": "true", "action": "keep"}
    (rewrite,) = [r for r in relabel if r.get("target_label") == "__address__"]
    assert rewrite["source_labels"] == ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"]
    import re

    pattern = re.compile(rewrite["regex"])
    assert pattern.fullmatch("10.246.3.7:8080;9090") and pattern.sub(
        rewrite["replacement"].replace("$", "\\"), "10.246.3.7;8080") == "10.246.3.7:8080"
    assert not any("dev_modelpilot_io" in str(r) for r in relabel)
    assert job["kubernetes_sd_configs"][0]["tls_config"]["cert_file"].endswith("admin.crt")
    assert os.stat(keys.client_key("admin")).st_mode & 0o077 == 0


def test_a_kwok_environment_never_scrapes_its_simulated_pods(tmp_path: Path) -> None:
    """kwok's pods have addresses that exist nowhere: scraped, each was a connection attempt every 5 s sent out of
    the machine by its default route. A kwok environment drops them; a real node's pods are scraped."""
    import re

    from modelpilot_dev.environment import POD_CIDR

    keys = pki.ensure(tmp_path / "pki")
    (job,) = yaml.safe_load(prometheus_config("https://127.0.0.1:6443", keys, simulated_pods=POD_CIDR))[
        "scrape_configs"]
    (drop,) = [r for r in job["relabel_configs"] if r.get("action") == "drop"]
    assert drop["source_labels"] == ["__meta_kubernetes_pod_ip"]
    assert re.fullmatch(drop["regex"], "10.244.3.7") and not re.fullmatch(drop["regex"], "10.246.3.7")
    assert not re.fullmatch(drop["regex"], "10.2441.3.7") and not re.fullmatch(drop["regex"], "110.244.3.7")
    (real,) = yaml.safe_load(prometheus_config("https://127.0.0.1:6443", keys))["scrape_configs"]
    assert not [r for r in real["relabel_configs"] if r.get("action") == "drop"]
    with pytest.raises(ValueError, match="/20"):
        prometheus_config("https://127.0.0.1:6443", keys, simulated_pods="10.244.0.0/20")


def test_ngf_is_built_as_the_main_module_with_its_version_stamped_then_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NGINX Gateway Fabric cannot be required by a wrapper module (its go.mod names another path than the
    one the proxy serves): the module is copied and built in place, with the -X values its Makefile sets
    (static-mode refuses to start without them), then reused from the cache."""
    monkeypatch.delenv("MODELPILOT_NGINX_GATEWAY", raising=False)
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("MODELPILOT_CACHE", str(tmp_path / "cache"))
    module = tmp_path / "modcache" / "nginx-gateway-fabric@v1.6.2"
    (module / "cmd" / "gateway").mkdir(parents=True)
    (module / "go.mod").write_text("module github.com/nginx/nginx-gateway-fabric\n")
    (module / "docs").mkdir()
    for path in (module, *module.rglob("*")):  # as read-only as the Go module cache
        path.chmod(0o555 if path.is_dir() else 0o444)
    builds: list[tuple[list[str], Path]] = []

    def fake_go(args: list[str], cwd: Path, label: str, say: binaries.Progress) -> None:
        assert (cwd / "go.mod").read_text().startswith("module github.com/nginx/nginx-gateway-fabric")
        assert not (cwd / "docs").exists()
        builds.append((args, cwd))
        _fake_binary(Path(args[args.index("-o") + 1]))

    monkeypatch.setattr(binaries, "_check_go", lambda: None)
    monkeypatch.setattr(binaries, "_module_dir", lambda mod, version, say: module)
    monkeypatch.setattr(binaries, "_run_go", fake_go)
    try:
        with pytest.raises(binaries.BinaryError, match="modelpilot dev build --node real"):
            binaries.resolve_ngf(build=False)
        path = binaries.resolve_ngf(build=True, progress=lambda msg: None)
        assert path == tmp_path / "cache" / "bin" / "nginx-gateway-fabric-v1.6.2" / "nginx-gateway"
        args, cwd = builds[0]
        assert args[-1] == "./cmd/gateway"
        ldflags = args[args.index("-ldflags") + 1]
        for flag in ("-X main.version=1.6.2", "-X main.telemetryReportPeriod=24h",
                     "-X main.telemetryEndpointInsecure=false"):
            assert flag in ldflags
        assert not cwd.exists(), "the build copy is removed after the build"
        assert binaries.resolve_ngf(build=True) == path and len(builds) == 1, "the cached binary is reused"
        monkeypatch.setenv("MODELPILOT_NGINX_GATEWAY", str(_fake_binary(tmp_path / "ready" / "gateway")))
        assert binaries.resolve_ngf(build=False) == tmp_path / "ready" / "gateway"
    finally:
        for path in (module, *module.rglob("*")):
            path.chmod(0o755)
