#!/usr/bin/env bash
# End-to-end: install the chart into a cluster and run e2e/test_scenarios.py against it.
#
#   e2e/run.sh local   the local environment (default; what CI runs here): its own `modelpilot dev`
#                      environment in a temporary state directory, stopped at the end
#   e2e/run.sh kind    a kind cluster (needs Docker and kind): builds and loads both images,
#                      deploys MLflow and Prometheus from e2e/manifests/, then the same steps
#
# Everything after cluster creation and image loading is identical in both modes.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-local}
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: run ./scripts/bootstrap.sh first (no .venv)" >&2; exit 1; }
bin() { "$PY" -c "from modelpilot_dev import binaries; print(getattr(binaries.resolve(build=False), '$1'))"; }
HELM=$(bin helm)
CLEANUP=()
cleanup() { for c in "${CLEANUP[@]}"; do eval "$c" || true; done; }
trap cleanup EXIT

case "$MODE" in
  local)
    KUBECTL=$(bin kubectl)
    HOME_DIR=$(mktemp -d)/env
    CLEANUP+=(".venv/bin/modelpilot dev --home '$HOME_DIR' down >/dev/null")
    echo "==> local environment in $HOME_DIR"
    .venv/bin/modelpilot dev --home "$HOME_DIR" up
    eval "$(.venv/bin/modelpilot dev --home "$HOME_DIR" env)"
    # Exported at the host side of the real node's veth: the same URLs work from the host and from pods.
    IN_CLUSTER_MLFLOW=$MLFLOW_TRACKING_URI
    IN_CLUSTER_PROMETHEUS=$PROMETHEUS_URL
    export E2E_SERVICE_ACCESS=cluster-ip   # the host routes the environment's Service range to the node
    # Both images were built from the project's Dockerfiles and imported into the node's containerd by `dev up`.
    EXTRA_HELM=(--set image.pullPolicy=Never)
    ;;
  kind)
    command -v kind >/dev/null || { echo "error: kind is not installed" >&2; exit 1; }
    KUBECTL=$(command -v kubectl || bin kubectl)
    CLUSTER=${KIND_CLUSTER:-modelpilot-e2e}
    kind create cluster --name "$CLUSTER" --wait 120s
    CLEANUP+=("kind delete cluster --name '$CLUSTER'")
    export KUBECONFIG=$(mktemp)
    kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG"
    IMAGE_REGISTRY=ghcr.io/modelpilot IMAGE_TAG=e2e ./scripts/build-images.sh
    kind load docker-image --name "$CLUSTER" ghcr.io/modelpilot/modelpilot-operator:e2e ghcr.io/modelpilot/modelpilot-serve:e2e
    "$KUBECTL" apply --server-side -f "$("$PY" -c 'from modelpilot_dev import binaries; print(binaries.gateway_api_crds())')"
    "$KUBECTL" apply -f e2e/manifests/
    "$KUBECTL" -n modelpilot-e2e rollout status deploy/mlflow deploy/prometheus --timeout=300s
    "$KUBECTL" -n modelpilot-e2e port-forward svc/mlflow 15000:5000 >/dev/null & CLEANUP+=("kill $!")
    "$KUBECTL" -n modelpilot-e2e port-forward svc/prometheus 19090:9090 >/dev/null & CLEANUP+=("kill $!")
    sleep 3
    export MLFLOW_TRACKING_URI=http://127.0.0.1:15000 PROMETHEUS_URL=http://127.0.0.1:19090
    IN_CLUSTER_MLFLOW=http://mlflow.modelpilot-e2e:5000
    IN_CLUSTER_PROMETHEUS=http://prometheus.modelpilot-e2e:9090
    EXTRA_HELM=(--set image.tag=e2e --set image.pullPolicy=Never --set servingImage.tag=e2e)
    ;;
  *) echo "usage: e2e/run.sh [local|kind]" >&2; exit 2 ;;
esac

echo "==> CRDs and the Helm chart"
"$KUBECTL" apply --server-side -f crds/
"$HELM" install modelpilot charts/modelpilot -n modelpilot-system --create-namespace --skip-crds \
  --wait --timeout 300s \
  --set "mlflow.trackingUri=$IN_CLUSTER_MLFLOW" --set "prometheus.url=$IN_CLUSTER_PROMETHEUS" \
  --set config.rolloutTickSeconds=2 --set config.abtestRefreshSeconds=3 "${EXTRA_HELM[@]}"

echo "==> scenarios"
KUBECTL=$KUBECTL "$PY" -m pytest e2e -q -p no:cacheprovider
