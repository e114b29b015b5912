#!/usr/bin/env bash
# Install everything modelpilot needs on a fresh machine, idempotently and cached:
#   1. a Python virtualenv in .venv with the project and all extras, and the local environment's own
#      package from devenv/ (pip's cache makes reruns quick; nothing is reinstalled while
#      pyproject.toml and devenv/pyproject.toml are unchanged);
#   2. the local control plane's binaries (etcd, kube-apiserver, kube-controller-manager,
#      kube-scheduler, kubectl, kwok, Prometheus, helm), built once from pinned Go modules into
#      ~/.cache/modelpilot (or $MODELPILOT_CACHE) — skipped for any binary that
#      KUBEBUILDER_ASSETS or MODELPILOT_<NAME> already provides.
# Nothing is downloaded into the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
need() { command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is missing: $2" >&2; exit 1; }; }
need "$PYTHON" "install Python >= 3.11"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "error: Python >= 3.11 is needed, found $("$PYTHON" --version)" >&2; exit 1; }

# Debian packages: redis-server (the serving cache's Redis backend is tested against a real one),
# wrk (the serving benchmarks' load generator) and lua5.4 (runs the Argo CD health checks in
# tests/unit/test_argocd_health.py). The real node (`modelpilot dev up`, the default) needs containerd,
# runc, the CNI plugins, iptables, podman/buildah and debootstrap (its images), and gcc with a static libc
# (the pause program). Installed only when missing.
APT_PACKAGES=(redis-server wrk lua5.4 containerd runc containernetworking-plugins iptables podman buildah debootstrap
              gcc libc6-dev)
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v lua5.4 >/dev/null 2>&1 || missing+=(lua5.4)
for tool in containerd runc iptables podman buildah debootstrap gcc; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || missing+=(containernetworking-plugins)
[ -f /usr/include/stdio.h ] || missing+=(libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  command -v apt-get >/dev/null 2>&1 \
    || { echo "error: apt-get not found; install ${missing[*]} with your package manager" >&2; exit 1; }
  $SUDO apt-get update -qq >/dev/null || { echo "error: apt-get update failed (no apt access?); install ${missing[*]} yourself" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { echo "error: apt-get install ${missing[*]} failed" >&2; exit 1; }
else
  echo "==> Debian packages present (${APT_PACKAGES[*]})"
fi

# Two distributions from this checkout, both editable: the product (`modelpilot`: operator/ and
# serving-image/, what the images hold) and the local environment (`modelpilot-dev`: devenv/,
# the `modelpilot-dev` command behind `modelpilot dev` and `modelpilot demo`; never in an image).
stamp_src=$(cat pyproject.toml devenv/pyproject.toml | sha256sum | cut -c1-16)
stamp=.venv/.installed-$stamp_src
if [ ! -f "$stamp" ] || ! .venv/bin/python -c 'import modelpilot, modelpilot_serve, modelpilot_dev' 2>/dev/null; then
  echo "==> installing Python packages into .venv (pip install -e '.[dev]' -e ./devenv)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]' -e ./devenv
  rm -f .venv/.installed-*
  touch "$stamp"
else
  echo "==> Python packages up to date (.venv)"
fi

echo "==> control-plane binaries (built once from Go modules, then cached)"
# With the real node's pieces (the default; MODELPILOT_DEV_NODE=kwok skips them): kubelet, kube-proxy, CoreDNS,
# NGINX Gateway Fabric and the node's images (base, pause, serving, operator, CoreDNS, NGF).
.venv/bin/modelpilot dev build --node "${MODELPILOT_DEV_NODE:-real}"
