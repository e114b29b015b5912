"""Container images for the real node, built here from the project's own Dockerfiles, without a registry.

Part of the local environment (``modelpilot dev up --node real``). Its images, all cached in podman's
storage under the cache (``~/.cache/modelpilot/images/``, never in the repository):

* a **base image** made from Debian packages: ``debootstrap --variant=minbase`` of bookworm with
  ``python3``, ``python3-venv``, ``python-is-python3`` and ``ca-certificates``, imported with
  ``podman import`` as ``localhost/modelpilot/python:3.11-bookworm``. It is the Dockerfiles'
  ``PYTHON_IMAGE`` build argument and is rebuilt only when missing;
* the **serving** and **operator** images, ``podman build`` of ``serving-image/Dockerfile`` and
  ``operator/Dockerfile`` (the same files Docker builds elsewhere). Podman's layer cache keeps the
  dependency layer (``pip install -r requirements.txt``), so a code change rebuilds only the project layer;
* a **pause image** for pod sandboxes: a ten-line static C program (``gcc -static``) in a ``FROM scratch``
  image, because the usual ``registry.k8s.io/pause`` would need a registry.
* the **Gateway** (NGINX Gateway Fabric 1.6.2): its control plane, a static binary built from its Go
  module (``binaries.resolve_ngf``), in a ``FROM scratch`` image; its data plane, Debian bookworm's
  ``nginx-light`` + ``libnginx-mod-http-js`` installed with apt on the base image
  (``assets/ngf/nginx.Containerfile``), with the project's ``nginx.conf`` and ``httpmatches.js`` — the
  two files NGF's own nginx image carries.

Quirks of this machine kind, handled here: podman needs ``runtime = "runc"`` (crun refuses cgroup v1
hybrid) and explicit ``default_ulimits`` (the open-file hard limit is 20000; podman's default of 1048576 is
refused), both in a ``containers.conf`` written into the cache and passed through ``CONTAINERS_CONF``.
Package registries are reached through TLS interception, so ``pip`` inside a build sees the machine's CA
bundle (mounted read-only, with a ``pip.conf`` whose ``cert`` points at it). Verification is never
switched off.

Each image is handed to a node's containerd as an OCI archive (``podman save --format oci-archive``,
cached next to the image ID it was saved from) and ``ctr -n k8s.io images import``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelpilot_dev import binaries

Progress = Callable[[str], None]

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/modelpilot/python:3.11-bookworm"
PAUSE_IMAGE = "localhost/modelpilot/pause:1"
COREDNS_IMAGE = f"localhost/modelpilot/coredns:{binaries.COREDNS_VERSION}"
NGF_IMAGE = f"localhost/modelpilot/nginx-gateway-fabric:{binaries.NGF_VERSION}"
NGF_NGINX_IMAGE = f"localhost/modelpilot/nginx-gateway-fabric/nginx:{binaries.NGF_VERSION}"
#: The data-plane image's build context: its Containerfile, nginx.conf and httpmatches.js.
NGF_ASSETS = Path(__file__).resolve().parent / "assets" / "ngf"
#: NGF's uid and group in its own images; both containers of the Gateway pod run as this user.
NGF_USER = "101:1001"
#: The names the operator and the chart use by default, so their pods find the images on the node.
SERVE_IMAGE = "ghcr.io/modelpilot/modelpilot-serve:0.1.0"
OPERATOR_IMAGE = "ghcr.io/modelpilot/modelpilot-operator:0.1.0"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
#: The open-file hard limit on this machine kind is 20000: podman's default ulimit is refused.
ULIMITS = ("nofile=20000:20000", "nproc=4096:4096")

PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


class ImageError(RuntimeError):
    """An image cannot be built; the message says what is missing."""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    image_id: str
    archive: Path
    extra_names: tuple[str, ...] = ()


def images_dir() -> Path:
    return binaries.cache_root() / "images"


def ca_bundle() -> Path:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ImageError("no CA bundle found (SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt); "
                     "builds need it to verify package registries: apt-get install ca-certificates")


def podman_env() -> dict[str, str]:
    """Environment for podman: the project's containers.conf and a storage inside the cache."""
    d = images_dir()
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "containers.conf"
    text = ('[containers]\n'
            f'default_ulimits = [{", ".join(chr(34) + u + chr(34) for u in ULIMITS)}]\n'
            '\n[engine]\n# crun refuses cgroup v1 hybrid ("cgroups in hybrid mode not supported")\n'
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    storage = d / "storage.conf"
    stext = (f'[storage]\ndriver = "overlay"\ngraphroot = "{d / "storage"}"\n'
             f'runroot = "{d / "run"}"\n')
    if not storage.exists() or storage.read_text() != stext:
        storage.write_text(stext)
    return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}


def missing_tools() -> list[str]:
    need = {"podman": "apt-get install podman", "debootstrap": "apt-get install debootstrap",
            "gcc": "apt-get install gcc libc6-dev (static pause program)", "runc": "apt-get install runc"}
    missing = [f"{tool} ({hint})" for tool, hint in need.items() if shutil.which(tool) is None]
    if shutil.which("gcc") and not any(Path(p).exists() for p in ("/usr/lib/x86_64-linux-gnu/libc.a",
                                                                    "/usr/lib/aarch64-linux-gnu/libc.a",
                                                                    "/usr/lib/libc.a")):
        missing.append("libc.a (apt-get install libc6-dev: the pause program is linked statically)")
    return missing


def _run(args: list[str], say: Progress, label: str, **kw: object) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run(args, env=podman_env(), capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise ImageError(f"{label} failed ({' '.join(args[:3])} …, exit {proc.returncode}):\n{tail}")
    if time.monotonic() - started > 5:
        say(f"[image] {label}: done in {time.monotonic() - started:.0f}s")
    return proc


def _stream(args: list[str], say: Progress, label: str, cwd: Path | None = None) -> None:
    """Run a long build, printing its STEP lines and a heartbeat every 20 s."""
    say(f"[image] {label} …")
    started = time.monotonic()
    proc = subprocess.Popen(args, env=podman_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    last = time.monotonic()
    for line in proc.stdout:
        lines.append(line.rstrip())
        if "STEP " in line:
            say(f"[image] {label}: {line.strip()[:110]}")
            last = time.monotonic()
        elif time.monotonic() - last > 20:
            say(f"[image] {label}: {time.monotonic() - started:.0f}s …")
            last = time.monotonic()
    proc.wait()
    if proc.returncode != 0:
        raise ImageError(f"{label} failed (exit {proc.returncode}):\n" + "\n".join(lines[-30:]))
    say(f"[image] {label}: done in {time.monotonic() - started:.0f}s")


def image_id(name: str) -> str | None:
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", name], env=podman_env(),
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def ensure_base(say: Progress) -> str:
    """The Debian-made Python base image; built (≈ 1 min) only when missing."""
    found = image_id(BASE_IMAGE)
    if found:
        return found
    say(f"[image] base {BASE_IMAGE}: debootstrap --variant=minbase {DEBIAN_SUITE} (+{BASE_PACKAGES})")
    started = time.monotonic()
    work = images_dir() / "rootfs.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", DEBIAN_SUITE,
                               str(work), DEBIAN_MIRROR], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ImageError("debootstrap failed:\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-20:]))
        # Smaller image: no apt lists or package caches.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (work / sub).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(work), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "--change", "CMD [\"python3\"]", "-", BASE_IMAGE],
                             stdin=tar.stdout, env=podman_env(), capture_output=True, text=True, check=False)
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise ImageError(f"podman import of the base image failed: {imp.stderr.strip()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"[image] base {BASE_IMAGE}: done in {time.monotonic() - started:.0f}s")
    return image_id(BASE_IMAGE) or ""


def ensure_pause(say: Progress) -> str:
    found = image_id(PAUSE_IMAGE)
    if found:
        return found
    with tempfile.TemporaryDirectory(prefix="mp-pause-") as tmp:
        ctx = Path(tmp)
        (ctx / "pause.c").write_text(PAUSE_C)
        _run(["gcc", "-static", "-Os", "-s", "-o", str(ctx / "pause"), str(ctx / "pause.c")], say, "pause program")
        (ctx / "Containerfile").write_text('FROM scratch\nCOPY pause /pause\nUSER 65535:65535\n'
                                           'ENTRYPOINT ["/pause"]\n')
        _run(["podman", "build", "-q", "-t", PAUSE_IMAGE, str(ctx)], say, "pause image")
    return image_id(PAUSE_IMAGE) or ""


def _binary_image(binary: Path, name: str, containerfile: str, say: Progress) -> str:
    """A static binary (copied into the context as ``binary``) in a ``FROM scratch`` image; rebuilt only when
    the binary or the Containerfile changes."""
    digest = hashlib.sha256(binary.read_bytes() + containerfile.encode()).hexdigest()[:16]
    found = image_id(name)
    stamp = images_dir() / (name.removeprefix("localhost/modelpilot/").replace("/", "_").replace(":", "_")
                            + ".binary")
    if found and stamp.exists() and stamp.read_text().strip() == f"{digest} {found}":
        return found
    with tempfile.TemporaryDirectory(prefix="mp-image-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(binary, ctx / "binary")
        (ctx / "Containerfile").write_text(containerfile)
        _run(["podman", "build", "-q", "-t", name, str(ctx)], say, f"image {name}")
    found = image_id(name) or ""
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{digest} {found}\n")
    return found


def ensure_coredns(binary: Path, say: Progress) -> str:
    """CoreDNS (built from its Go module, static) in a ``FROM scratch`` image; rebuilt when the binary changes."""
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    found = image_id(COREDNS_IMAGE)
    stamp = images_dir() / "coredns.binary"
    if found and stamp.exists() and stamp.read_text().strip() == f"{digest} {found}":
        return found
    with tempfile.TemporaryDirectory(prefix="mp-coredns-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(binary, ctx / "coredns")
        (ctx / "Containerfile").write_text('FROM scratch\nCOPY coredns /coredns\nUSER 65532:65532\n'
                                           'EXPOSE 1053 1053/udp\nENTRYPOINT ["/coredns"]\n')
        _run(["podman", "build", "-q", "-t", COREDNS_IMAGE, str(ctx)], say, "coredns image")
    found = image_id(COREDNS_IMAGE) or ""
    stamp.write_text(f"{digest} {found}\n")
    return found


def ensure_ngf(binary: Path, say: Progress) -> str:
    """NGINX Gateway Fabric's control plane (static ``gateway`` binary) in a ``FROM scratch`` image.

    Same path as NGF's own image (``/usr/bin/gateway``), without its file capability ``cap_kill``: in the
    local environment it runs as nginx's user, so signalling nginx needs no capability at all.
    """
    return _binary_image(binary, NGF_IMAGE, f'FROM scratch\nCOPY binary /usr/bin/gateway\nUSER {NGF_USER}\n'
                                            'ENTRYPOINT ["/usr/bin/gateway"]\n', say)


def ngf_nginx_digest(base_id: str) -> str:
    """A digest of the data-plane image's inputs: its context (``assets/ngf``) and the base image."""
    digest = hashlib.sha256(f"{base_id}\0".encode())
    for path in sorted(p for p in NGF_ASSETS.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def ensure_ngf_nginx(say: Progress) -> str:
    """The Gateway's data plane: Debian's nginx-light + njs on the base image (apt inside ``podman build``).

    apt reaches Debian's mirror from the build (``--network host``) with the machine's CA bundle mounted, as the
    other builds do; packages are checked against Debian's archive keys as always. Skipped when neither the
    assets nor the base image changed.
    """
    base_id = ensure_base(say)
    stamp = images_dir() / "ngf-nginx.context"
    current = ngf_nginx_digest(base_id)
    built = image_id(NGF_NGINX_IMAGE)
    if built and stamp.exists() and stamp.read_text().split() == [current, built]:
        return built
    _stream(["podman", "build", "--layers", "--network", "host",
             "-v", f"{ca_bundle()}:/etc/ssl/certs/ca-certificates.crt:ro",
             "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "-f", str(NGF_ASSETS / "nginx.Containerfile"),
             "-t", NGF_NGINX_IMAGE, str(NGF_ASSETS)], say, f"build {NGF_NGINX_IMAGE} (nginx-light + njs)")
    previous = built
    built = image_id(NGF_NGINX_IMAGE) or ""
    stamp.write_text(f"{current} {built}\n")
    if previous and previous != built:
        subprocess.run(["podman", "rmi", previous], env=podman_env(), capture_output=True, check=False)
    return built


def _pip_conf() -> Path:
    path = images_dir() / "pip.conf"
    text = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def context_digest(dockerfile: str, base_id: str) -> str:
    """A digest of everything the Dockerfiles copy (what ``.dockerignore`` leaves), the Dockerfile and the base."""
    digest = hashlib.sha256(f"{dockerfile}\0{base_id}\0".encode())
    files = [REPO / "pyproject.toml", REPO / "README.md", REPO / dockerfile, REPO / ".dockerignore"]
    for top in ("operator", "serving-image"):
        files += sorted(p for p in (REPO / top).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
                        and not any(part.endswith(".egg-info") for part in p.parts))
    for path in files:
        if path.exists():
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_project_image(dockerfile: str, name: str, say: Progress) -> str:
    """``podman build`` of one of the project's Dockerfiles on the Debian-made base (layer cache reused).

    Skipped altogether when nothing the build reads changed since the image was last built.
    """
    base_id = ensure_base(say)
    stamp = images_dir() / (name.replace("/", "_").replace(":", "_") + ".context")
    current = context_digest(dockerfile, base_id)
    built = image_id(name)
    if built and stamp.exists() and stamp.read_text().split() == [current, built]:
        return built
    _stream(["podman", "build", "--layers", "--network", "host",
             "-v", f"{ca_bundle()}:/etc/ssl/certs/ca-certificates.crt:ro", "-v", f"{_pip_conf()}:/etc/pip.conf:ro",
             "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "-f", dockerfile, "-t", name, "."],
            say, f"build {name} ({dockerfile})", cwd=REPO)
    previous = built
    built = image_id(name) or ""
    stamp.write_text(f"{current} {built}\n")
    if previous and previous != built:  # the replaced image: its project layer is not needed any more
        subprocess.run(["podman", "rmi", previous], env=podman_env(), capture_output=True, check=False)
    return built


#: Archives kept per image name, the current one included (each of the serving image's is ~750 MB).
KEPT_ARCHIVES = 3


def archive(name: str, say: Progress) -> Path:
    """The image as an OCI archive, saved again only when the image changed."""
    ident = image_id(name)
    if not ident:
        raise ImageError(f"image {name} is not built")
    safe = name.replace("/", "_").replace(":", "_")
    path = images_dir() / "archives" / f"{safe}-{ident[:16]}.tar"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Older archives of this image go, but not the newest few: another checkout on the machine (a worktree, a CI
    # clone) builds its own image of the same name, and an environment of it imports its archive when it starts
    # (deleting all but the current one made two checkouts' environments fail each other's start-ups).
    older = sorted(path.parent.glob(f"{safe}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in older[KEPT_ARCHIVES - 1:]:
        old.unlink(missing_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two checkouts may save the same image at once
    tmp.unlink(missing_ok=True)
    # Uncompressed: gzip of ~750 MB was most of the save (10 s instead of 16–29 s), and containerd
    # unpacks an uncompressed layer as fast as it decompresses and unpacks a gzipped one.
    _run(["podman", "save", "--format", "oci-archive", "--uncompressed", "-o", str(tmp), name], say,
         f"save {name}")
    os.replace(tmp, path)
    return path


def ensure_all(say: Progress | None = None, operator: bool = False, coredns: Path | None = None,
               ngf: Path | None = None) -> list[BuiltImage]:
    """Build (or reuse) every image the real node needs; return them with their archives.

    ``coredns`` / ``ngf``: the binaries of CoreDNS and NGINX Gateway Fabric, whose images are built when given
    (NGF: its control-plane image and the nginx data-plane image).
    """
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    missing = missing_tools()
    if missing:
        raise ImageError("cannot build the node's images; missing: " + "; ".join(missing))
    started = time.monotonic()
    ensure_pause(say)
    wanted = [PAUSE_IMAGE]
    if coredns is not None:
        ensure_coredns(coredns, say)
        wanted.append(COREDNS_IMAGE)
    if ngf is not None:
        ensure_ngf(ngf, say)
        ensure_ngf_nginx(say)
        wanted += [NGF_IMAGE, NGF_NGINX_IMAGE]
    build_project_image("serving-image/Dockerfile", SERVE_IMAGE, say)
    wanted.append(SERVE_IMAGE)
    if operator:
        build_project_image("operator/Dockerfile", OPERATOR_IMAGE, say)
        wanted.append(OPERATOR_IMAGE)
    out = [BuiltImage(n, image_id(n) or "", archive(n, say)) for n in wanted]
    say(f"[image] images ready in {time.monotonic() - started:.0f}s")
    return out


def size(name: str) -> int:
    proc = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", name], env=podman_env(),
                          capture_output=True, text=True, check=False)
    return int(proc.stdout.strip() or 0)
