"""Where the local control plane's binaries come from.

Part of the local environment (`modelpilot dev`). Two sources, in this order:

1. Ready binaries named by the environment: ``MODELPILOT_<NAME>`` per binary
   (``MODELPILOT_KUBE_APISERVER=/path/kube-apiserver``) or a directory in
   ``KUBEBUILDER_ASSETS`` (the envtest convention; setup-envtest ships etcd,
   kube-apiserver and kubectl). Nothing is built for those.
2. Otherwise each binary is built once from pinned, published Go modules into a
   cache outside the repository (``$MODELPILOT_CACHE`` or
   ``~/.cache/modelpilot``), keyed by version, and reused afterwards.

``k8s.io/kubernetes`` cannot be ``go install``-ed directly (it maps its staging
modules to ``./staging``), so a small wrapper module requires it and replaces
every staging module by its published ``v0.X.Y``; the replace list is derived
from the upstream ``go.mod`` of the pinned version, never hard-coded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "1.36.3"
ETCD_VERSION = "3.6.16"
KWOK_VERSION = "0.8.0"
#: Prometheus 3.16.0 (its Go module is versioned v0.316.0). Debian's package
#: (2.42+ds) is built without Kubernetes service discovery ("field
#: kubernetes_sd_configs not found"), so the upstream server is built instead.
PROMETHEUS_MODULE_VERSION = "0.316.0"
#: Gateway API standard-channel CRDs, taken from the published Go module (not a download of release assets).
GATEWAY_API_VERSION = "1.4.1"
#: Helm, built from its Go module; the chart's tests run `helm lint` / `helm template` with it.
HELM_VERSION = "3.22.0"
#: CoreDNS, the real node's cluster DNS: only the plugins it needs (a main of our own, as CoreDNS documents
#: for custom builds; its stock main links every plugin, and the Go proxy here lacks some of their modules).
COREDNS_VERSION = "1.15.0"
COREDNS_PLUGINS = ("ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes")  # directive order
#: NGINX Gateway Fabric, the real node's Gateway API implementation (control plane; the data plane is Debian's
#: nginx, see ``images.py``). The proxy serves it as ``github.com/nginxinc/…`` but its ``go.mod`` declares
#: ``github.com/nginx/nginx-gateway-fabric``, so no wrapper module can require it ("module declares its path
#: as …"): the downloaded module is copied and built as the main module. v2.x is not served here.
NGF_VERSION = "1.6.2"
NGF_MODULE = "github.com/nginxinc/nginx-gateway-fabric"
#: The -X values NGF's Makefile stamps. Without them ``static-mode`` refuses to start: an empty
#: ``telemetryReportPeriod`` is not a duration and an empty ``telemetryEndpointInsecure`` not a bool.
_NGF_LDFLAGS = (f"-X main.version={NGF_VERSION}", "-X main.telemetryReportPeriod=24h",
                "-X main.telemetryEndpointInsecure=false")

#: binary name -> (build group, Go package path)
_K8S_PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
NAMES = ("etcd", *_K8S_PACKAGES, "kwok", "prometheus", "helm")
#: The real node's Kubernetes binaries (``modelpilot dev up --node real``): built from the same
#: wrapper module into the same cache directory, only when a real node is asked for.
_NODE_PACKAGES = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}
NODE_NAMES = tuple(_NODE_PACKAGES)

Progress = Callable[[str], None]


class BinaryError(RuntimeError):
    """A binary is missing and cannot be built; the message says how to fix it."""


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary the local environment runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    prometheus: Path
    helm: Path

    def as_dict(self) -> dict[str, str]:
        return {name: str(getattr(self, name.replace("-", "_"))) for name in NAMES}


def cache_root() -> Path:
    """The cache outside the repository that holds built binaries and build modules."""
    if os.environ.get("MODELPILOT_CACHE"):
        return Path(os.environ["MODELPILOT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelpilot"


def _group_dir(name: str) -> Path:
    if name == "etcd":
        key = f"etcd-v{ETCD_VERSION}"
    elif name == "kwok":
        key = f"kwok-v{KWOK_VERSION}"
    elif name == "prometheus":
        key = f"prometheus-v{PROMETHEUS_MODULE_VERSION}"
    elif name == "helm":
        key = f"helm-v{HELM_VERSION}"
    elif name == "coredns":
        key = f"coredns-v{COREDNS_VERSION}"
    elif name == "nginx-gateway":
        key = f"nginx-gateway-fabric-v{NGF_VERSION}"
    else:
        key = f"kubernetes-v{K8S_VERSION}"
    return cache_root() / "bin" / key


def _override(name: str) -> Path | None:
    var = "MODELPILOT_" + name.upper().replace("-", "_")
    if os.environ.get(var):
        path = Path(os.environ[var]).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BinaryError(f"{var}={path} is not an executable file; unset it or point it at a {name} binary")
        return path
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        path = Path(assets).expanduser() / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_ok(path: Path, progress: Progress) -> bool:
    """A cached binary counts only if its checksum matches the one written after its build."""
    if not path.exists():
        return False
    stamp = _stamp(path)
    if stamp.exists() and stamp.read_text().strip() == _sha256(path):
        return True
    progress(f"cache entry {path} is incomplete or corrupt (checksum mismatch); rebuilding it")
    path.unlink(missing_ok=True)
    stamp.unlink(missing_ok=True)
    return False


def _find(names: tuple[str, ...], say: Progress) -> tuple[dict[str, Path], list[str]]:
    """(found, missing) binaries among ``names``: an override from the environment, else a good cached build."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        path = _override(name)
        if path is None:
            cached = _group_dir(name) / name
            if _cached_ok(cached, say):
                path = cached
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    return found, missing


def resolve(build: bool = True, progress: Progress | None = None) -> Binaries:
    """Find every binary, building the missing ones into the cache when ``build`` is true."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    found, missing = _find(NAMES, say)
    if missing and not build:
        raise BinaryError(
            f"not built yet: {', '.join(missing)}; run `modelpilot dev build` "
            "or set KUBEBUILDER_ASSETS / MODELPILOT_<NAME> to ready binaries"
        )
    if missing:
        _check_go()
        if "etcd" in missing:
            found["etcd"] = _build_etcd(say)
        k8s_missing = [n for n in missing if n in _K8S_PACKAGES]
        if k8s_missing:
            found.update(_build_kubernetes(k8s_missing, say))
        if "kwok" in missing:
            found["kwok"] = _build_kwok(say)
        if "prometheus" in missing:
            found["prometheus"] = _build_prometheus(say)
        if "helm" in missing:
            found["helm"] = _build_helm(say)
    return Binaries(**{name.replace("-", "_"): found[name] for name in NAMES})


# --------------------------------------------------------------------------- builds


def _check_go() -> None:
    go = shutil.which("go")
    if go is None:
        raise BinaryError(
            "Go is not installed, and it is needed to build the local control plane "
            f"(etcd v{ETCD_VERSION}, Kubernetes v{K8S_VERSION}, kwok v{KWOK_VERSION}, Prometheus). "
            "Install Go >= 1.26 (https://go.dev/dl), or point KUBEBUILDER_ASSETS / "
            "MODELPILOT_<NAME> (e.g. MODELPILOT_KUBE_APISERVER) at ready binaries."
        )
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False).stdout.strip()
    match = re.match(r"go(\d+)\.(\d+)", out)
    if not match or (int(match.group(1)), int(match.group(2))) < (1, 26):
        raise BinaryError(f"Go >= 1.26 is needed to build Kubernetes v{K8S_VERSION}; found {out or 'unknown'}")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Fail clearly instead of silently downloading another toolchain.
    env.update({"GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"})
    return env


def _run_go(args: list[str], cwd: Path, label: str, say: Progress) -> None:
    """Run a go command, printing a progress line every 15 s (packages compiled so far)."""
    say(f"[build] {label}: go {' '.join(args[:2])} … (first build takes minutes on 2 cores)")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["go", *args], cwd=cwd, env=_go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    count = [0]

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if not line.startswith("go: "):
                count[0] += 1

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=15)
        if thread.is_alive():
            say(f"[build] {label}: {count[0]} packages compiled, {time.monotonic() - started:.0f}s")
    proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(lines[-25:])
        raise BinaryError(f"building {label} failed (go {' '.join(args[:2])}, exit {proc.returncode}):\n{tail}")
    say(f"[build] {label}: done in {time.monotonic() - started:.0f}s")


def _module_gomod(module: str, version: str, workdir: Path, say: Progress) -> str:
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=workdir, env=_go_env(), capture_output=True, text=True, check=False,
    )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or "GoMod" not in info:
        raise BinaryError(
            f"cannot download {module}@{version} from the Go module proxy "
            f"({info.get('Error') or proc.stderr.strip() or 'no answer'}); check GOPROXY and network access"
        )
    return Path(info["GoMod"]).read_text()


def _install(built: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, dest)
    _stamp(dest).write_text(_sha256(dest) + "\n")
    return dest


def _wrapper_dir(key: str) -> Path:
    path = cache_root() / "build" / key
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def resolve_node(build: bool = True, progress: Progress | None = None) -> dict[str, Path]:
    """kubelet and kube-proxy for the real node, found like the control plane's (override → cache → build)."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    found, missing = _find(NODE_NAMES, say)
    if missing and not build:
        raise BinaryError(f"not built yet: {', '.join(missing)}; run `modelpilot dev build --node real`")
    if missing:
        _check_go()
        found.update(_build_kubernetes(missing, say))
    return found


def resolve_coredns(build: bool = True, progress: Progress | None = None) -> Path:
    """CoreDNS for the real node's cluster DNS (``MODELPILOT_COREDNS`` → cache → build)."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = _override("coredns")
    if path is not None:
        return path
    cached = _group_dir("coredns") / "coredns"
    if _cached_ok(cached, say):
        return cached
    if not build:
        raise BinaryError("coredns is not built yet; run `modelpilot dev build --node real`")
    _check_go()
    version = f"v{COREDNS_VERSION}"
    module = "github.com/coredns/coredns"
    work = _wrapper_dir(f"coredns-{version}")
    upstream = _module_gomod(module, version, work, say)
    go_line = re.search(r"^go\s+(\S+)", upstream, re.M)
    (work / "go.mod").write_text(f"module modelpilot.local/corednsbuild\n\ngo {go_line.group(1) if go_line else '1.26.0'}"
                                 f"\n\nrequire {module} {version}\n")
    imports = "".join(f'\t_ "{module}/plugin/{p}"\n' for p in COREDNS_PLUGINS)
    directives = ", ".join(f'"{p}"' for p in COREDNS_PLUGINS)
    (work / "main.go").write_text(
        "package main\n\nimport (\n"
        f'\t"{module}/core/dnsserver"\n\t"{module}/coremain"\n{imports})\n\n'
        f"func init() {{ dnsserver.Directives = []string{{{directives}}} }}\n\nfunc main() {{ coremain.Run() }}\n")
    out = work / "out"
    out.mkdir()
    _run_go(["build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "coredns"), "."], work,
            f"coredns {version}", say)
    dest = _install(out / "coredns", _group_dir("coredns") / "coredns")
    shutil.rmtree(work, ignore_errors=True)
    return dest


def _module_dir(module: str, version: str, say: Progress) -> Path:
    """The module's directory in the Go module cache (downloaded through the proxy when missing)."""
    work = cache_root() / "build"
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"],
                          cwd=work, env=_go_env(), capture_output=True, text=True, check=False)
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or "Dir" not in info:
        raise BinaryError(
            f"cannot download {module}@{version} from the Go module proxy "
            f"({info.get('Error') or proc.stderr.strip() or 'no answer'}); check GOPROXY and network access"
        )
    return Path(info["Dir"])


def resolve_ngf(build: bool = True, progress: Progress | None = None) -> Path:
    """NGINX Gateway Fabric's ``gateway`` binary (``MODELPILOT_NGINX_GATEWAY`` → cache → build).

    Built only when a real node is asked for (``dev up --node real``, ``dev build --node real``).
    """
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = _override("nginx-gateway")
    if path is not None:
        return path
    cached = _group_dir("nginx-gateway") / "nginx-gateway"
    if _cached_ok(cached, say):
        return cached
    if not build:
        raise BinaryError("nginx-gateway (NGINX Gateway Fabric) is not built yet; run `modelpilot dev build --node real`")
    _check_go()
    version = f"v{NGF_VERSION}"
    work = _wrapper_dir(f"nginx-gateway-fabric-{version}")
    source = work / "src"
    # The module cache is read-only: copy it (≈ 8 MB; its docs are not needed) and make the copy writable,
    # so that `go build` may update go.sum and the copy can be removed afterwards.
    shutil.copytree(_module_dir(NGF_MODULE, version, say), source,
                    ignore=shutil.ignore_patterns("docs", "design", "examples", "site"))
    for path in (source, *source.rglob("*")):
        path.chmod(path.stat().st_mode | 0o200)
    out = work / "out"
    out.mkdir()
    _run_go(["build", "-v", "-trimpath", "-ldflags", " ".join(["-s -w", *_NGF_LDFLAGS]),
             "-o", str(out / "nginx-gateway"), "./cmd/gateway"], source, f"nginx-gateway-fabric {version}", say)
    dest = _install(out / "nginx-gateway", cached)
    shutil.rmtree(work, ignore_errors=True)
    return dest


def ngf_crds(progress: Progress | None = None) -> Path:
    """NGINX Gateway Fabric's own CRDs (NginxProxy, NginxGateway, SnippetsFilter, its policies): the
    ``deploy/crds.yaml`` of the pinned module, copied once into the cache."""
    dest = cache_root() / "nginx-gateway-fabric" / f"v{NGF_VERSION}" / "crds.yaml"
    if dest.exists():
        return dest
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    _check_go()
    say(f"[fetch] NGINX Gateway Fabric v{NGF_VERSION} CRDs from the Go module proxy")
    source = _module_dir(NGF_MODULE, f"v{NGF_VERSION}", say) / "deploy" / "crds.yaml"
    if not source.exists():
        raise BinaryError(f"{NGF_MODULE}@v{NGF_VERSION} has no deploy/crds.yaml; cannot install its CRDs")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(source.read_text())
    os.replace(tmp, dest)
    return dest


def _build_kubernetes(names: list[str], say: Progress) -> dict[str, Path]:
    version = f"v{K8S_VERSION}"
    staging = "v0." + K8S_VERSION.split(".", 1)[1]
    work = _wrapper_dir(f"kubernetes-{version}")
    upstream = _module_gomod("k8s.io/kubernetes", version, work, say)
    replaces = re.findall(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+\./staging/\S+\s*$", upstream, re.M)
    if not replaces:
        raise BinaryError(f"k8s.io/kubernetes {version} go.mod lists no staging replaces; cannot build")
    go_line = re.search(r"^go\s+(\S+)", upstream, re.M)
    godebug = re.findall(r"^godebug\s+.*$", upstream, re.M)
    gomod = [f"module modelpilot.local/kubebuild\n\ngo {go_line.group(1) if go_line else '1.26.0'}\n"]
    gomod += [line + "\n" for line in godebug]
    gomod.append(f"\nrequire k8s.io/kubernetes {version}\n\n")
    gomod += [f"replace {mod} => {mod} {staging}\n" for mod in replaces]
    (work / "go.mod").write_text("".join(gomod))
    (work / "doc.go").write_text("package kubebuild\n")
    major, minor = K8S_VERSION.split(".")[:2]
    ldflags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    out = work / "out"
    out.mkdir()
    _run_go(
        ["build", "-v", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(out) + "/",
         *({**_K8S_PACKAGES, **_NODE_PACKAGES}[n] for n in names)],
        work, f"kubernetes {version} ({', '.join(names)})", say,
    )
    result = {n: _install(out / n, _group_dir(n) / n) for n in names}
    shutil.rmtree(work, ignore_errors=True)
    return result


def _build_simple(name: str, module: str, version: str, package: str, say: Progress, tags: str = "",
                  ldflags: str = "") -> Path:
    """Build one binary from a module that needs its own replaces honoured (etcd) or none (kwok)."""
    work = _wrapper_dir(f"{name}-{version}")
    upstream = _module_gomod(module, version, work, say)
    # Copy the module's own replace directives that point at other published modules
    # (local ./ paths cannot be honoured outside its repository).
    replaces = [
        line.strip() if line.strip().startswith("replace") else "replace " + line.strip()
        for line in re.findall(r"^(?:replace\s+)?\S+(?:\s+\S+)?\s+=>\s+[^./\s]\S*\s+\S+\s*$", upstream, re.M)
    ]
    go_line = re.search(r"^go\s+(\S+)", upstream, re.M)
    (work / "go.mod").write_text(
        f"module modelpilot.local/{name}build\n\ngo {go_line.group(1) if go_line else '1.26.0'}\n\n"
        f"require {module} {version}\n\n" + "".join(r + "\n" for r in replaces)
    )
    (work / "doc.go").write_text(f"package {name}build\n")
    out = work / "out"
    out.mkdir()
    _run_go(["build", "-v", "-trimpath", "-ldflags", " ".join(["-s -w", ldflags]).strip(),
             *(["-tags", tags] if tags else []),
             "-o", str(out / name), package], work,
            f"{name} {version}", say)
    dest = _install(out / name, _group_dir(name) / name)
    shutil.rmtree(work, ignore_errors=True)
    return dest


def _build_etcd(say: Progress) -> Path:
    return _build_simple("etcd", "go.etcd.io/etcd/server/v3", f"v{ETCD_VERSION}", "go.etcd.io/etcd/server/v3", say)


def _build_kwok(say: Progress) -> Path:
    return _build_simple("kwok", "sigs.k8s.io/kwok", f"v{KWOK_VERSION}", "sigs.k8s.io/kwok/cmd/kwok", say)


def _build_prometheus(say: Progress) -> Path:
    return _build_simple("prometheus", "github.com/prometheus/prometheus", f"v{PROMETHEUS_MODULE_VERSION}",
                         "github.com/prometheus/prometheus/cmd/prometheus", say,
                         # Only Kubernetes discovery: smaller, faster to build, and some other SD
                         # plugins pin module versions the Go proxy no longer serves.
                         tags="remove_all_sd,enable_kubernetes_sd")


def _build_helm(say: Progress) -> Path:
    # The same -X flags as helm's own Makefile: its version, and the Kubernetes version `helm template`
    # and `helm lint` assume (taken from the client-go it requires; the source default is 1.20).
    work = cache_root() / "build"
    work.mkdir(parents=True, exist_ok=True)
    upstream = _module_gomod("helm.sh/helm/v3", f"v{HELM_VERSION}", work, say)
    client_go = re.search(r"^\s*(?:require\s+)?k8s\.io/client-go\s+v0\.(\d+)\.", upstream, re.M)
    flags = [f"-X helm.sh/helm/v3/internal/version.version=v{HELM_VERSION}",
             "-X helm.sh/helm/v3/internal/version.gitTreeState=clean"]
    if client_go:
        for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={client_go.group(1)}"]
    return _build_simple("helm", "helm.sh/helm/v3", f"v{HELM_VERSION}", "helm.sh/helm/v3/cmd/helm", say,
                         ldflags=" ".join(flags))


def gateway_api_crds(progress: Progress | None = None) -> Path:
    """Directory with the Gateway API standard CRDs, copied once from the Go module into the cache.

    ``MODELPILOT_GATEWAY_API_CRDS`` may point at a directory of ready CRD files instead.
    """
    if os.environ.get("MODELPILOT_GATEWAY_API_CRDS"):
        path = Path(os.environ["MODELPILOT_GATEWAY_API_CRDS"]).expanduser()
        if not any(path.glob("*.yaml")):
            raise BinaryError(f"MODELPILOT_GATEWAY_API_CRDS={path} holds no CRD files")
        return path
    dest = cache_root() / "gateway-api" / f"v{GATEWAY_API_VERSION}" / "standard"
    if (dest / "gateway.networking.k8s.io_httproutes.yaml").exists():
        return dest
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    _check_go()
    say(f"[fetch] Gateway API v{GATEWAY_API_VERSION} CRDs from the Go module proxy")
    work = cache_root() / "build"
    work.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["go", "mod", "download", "-json", f"sigs.k8s.io/gateway-api@v{GATEWAY_API_VERSION}"],
                          cwd=work, env=_go_env(), capture_output=True, text=True, check=False)
    try:
        module_dir = Path(json.loads(proc.stdout)["Dir"])
    except (json.JSONDecodeError, KeyError):
        raise BinaryError(f"cannot download sigs.k8s.io/gateway-api@v{GATEWAY_API_VERSION}: "
                          f"{proc.stderr.strip() or proc.stdout.strip()}") from None
    tmp = dest.with_name("standard.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(module_dir / "config" / "crd" / "standard", tmp)
    for path in tmp.iterdir():
        path.chmod(0o644)
    tmp.chmod(0o755)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest
