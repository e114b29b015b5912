#!/usr/bin/env bash
# Build both images where a Docker engine exists:
#   IMAGE_REGISTRY (default ghcr.io/modelpilot) and IMAGE_TAG (default: the project version).
#   ./scripts/build-images.sh            → <registry>/modelpilot-operator:<tag>, <registry>/modelpilot-serve:<tag>
# Point the chart at them with --set image.repository=…,image.tag=…,servingImage.repository=…,servingImage.tag=…
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/modelpilot}
TAG=${IMAGE_TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}
command -v docker >/dev/null 2>&1 || { echo "error: docker is not installed; images need a Docker engine" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers (docker info failed); start one or build elsewhere" >&2; exit 1; }
docker build -f operator/Dockerfile -t "$REGISTRY/modelpilot-operator:$TAG" .
docker build -f serving-image/Dockerfile -t "$REGISTRY/modelpilot-serve:$TAG" .
echo "built $REGISTRY/modelpilot-operator:$TAG and $REGISTRY/modelpilot-serve:$TAG"
