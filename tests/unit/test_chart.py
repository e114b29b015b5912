"""The Helm chart (charts/modelpilot), checked with a real helm built by the project's own setup.

helm comes from ``binaries.resolve(build=False)`` (built from helm.sh/helm/v3 by
`modelpilot dev build`, or MODELPILOT_HELM); these tests are never skipped — a
missing helm is a failure that says how to build it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpilot_dev import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelpilot"
RELEASE, NAMESPACE = "mp", "modelpilot-system"
FULLNAME = "mp-modelpilot"


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = binaries.resolve(build=False).helm  # a BinaryError here names what to build or set
    home = tmp_path_factory.mktemp("helm-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    # No user configuration, no repositories, no cluster: everything the chart needs is local.
    env.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"), KUBECONFIG=str(home / "no-kubeconfig"))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(path), *args], capture_output=True, text=True, env=env, timeout=120, check=False)
        if check:
            assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


def _set_args(values: dict[str, Any]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set-json", f"{k}={json.dumps(v)}")]


def render(helm: Any, **values: Any) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *_set_args(values)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


# --------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
def test_helm_lint_passes(helm: Any, strict: bool) -> None:
    for values in ({}, {"scope": "namespace", "watchNamespaces": ["team-a", "team-b"], "replicas": 2,
                        "metrics.serviceMonitor.enabled": True, "metrics.prometheusRule.enabled": True,
                        "grafanaDashboard.enabled": True}):
        out = helm("lint", str(CHART), *(["--strict"] if strict else []), *_set_args(values)).stdout
        assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == \
        ("v2", "modelpilot", "0.1.0", "0.1.0")


def test_cluster_mode_renders_the_operator(helm: Any) -> None:
    docs = render(helm)
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
                                               "ServiceAccount"]
    deployment = one(docs, "Deployment", FULLNAME)
    assert deployment["metadata"]["namespace"] == NAMESPACE and deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two standalone operators at once
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/modelpilot/modelpilot-operator:0.1.0"
    assert c["command"] == ["modelpilot", "operator", "--liveness", "http://0.0.0.0:8081/healthz"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001 and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    env = env_of(docs)
    assert env["MODELPILOT_SERVING_IMAGE"] == "ghcr.io/modelpilot/modelpilot-serve:0.1.0"
    assert env["MODELPILOT_NAMESPACES"] == "" and env["MODELPILOT_PEERING"] == ""
    assert env["MODELPILOT_METRICS_PORT"] == "8080"
    assert env["MODELPILOT_ALIAS_POLL_SECONDS"] == "30" and env["MODELPILOT_ROLLOUT_TICK_SECONDS"] == "5"
    service = one(docs, "Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_values_reach_the_operator_settings(helm: Any) -> None:
    docs = render(helm, **{"image.tag": "0.2.0-rc1", "servingImage.repository": "registry.local/serve",
                           "servingImage.tag": "dev", "mlflow.trackingUri": "http://mlflow.mlflow:5000",
                           "prometheus.url": "http://prometheus.monitoring:9090", "replicas": 2,
                           "config.aliasPollSeconds": 12, "config.rolloutTickSeconds": 2.5,
                           "config.registryTimeoutSeconds": 3, "config.prometheusTimeoutSeconds": 4.5,
                           "livenessPort": 9181,
                           "extraEnv": [{"name": "MODELPILOT_PRIORITY", "value": "7"}],
                           "nodeSelector": {"kubernetes.io/os": "linux"},
                           "tolerations": [{"key": "ml", "operator": "Exists"}]})
    env = env_of(docs)
    assert env["MODELPILOT_MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow:5000"
    assert env["MODELPILOT_PROMETHEUS_URL"] == "http://prometheus.monitoring:9090"
    assert env["MODELPILOT_SERVING_IMAGE"] == "registry.local/serve:dev"
    assert env["MODELPILOT_PEERING"] == "modelpilot"  # more than one replica: they meet in the peering
    assert env["MODELPILOT_ALIAS_POLL_SECONDS"] == "12" and env["MODELPILOT_ROLLOUT_TICK_SECONDS"] == "2.5"
    assert env["MODELPILOT_PRIORITY"] == "7"
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "ghcr.io/modelpilot/modelpilot-operator:0.2.0-rc1"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "ml"
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    # The settings the chart writes are ones the operator accepts.
    from modelpilot.operator.settings import OperatorSettings

    settings = OperatorSettings.from_env({k: v for k, v in env.items() if v is not None})
    assert settings.kubernetes.peering == "modelpilot" and settings.schedule.alias_poll_seconds == 12.0
    assert settings.serving_image == "registry.local/serve:dev"
    assert settings.mlflow.timeout_seconds == 3.0 and settings.prometheus.timeout_seconds == 4.5
    container = pod["containers"][0]
    assert container["command"][-1] == "http://0.0.0.0:9181/healthz"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["healthz"] == 9181
    assert container["livenessProbe"]["httpGet"]["port"] == "healthz"
    clash = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                 *_set_args({"livenessPort": 8080, "metrics.port": 8080}), check=False)
    assert clash.returncode != 0 and "livenessPort and metrics.port are both 8080" in clash.stderr


def test_namespace_mode_renders_a_role_per_watched_namespace(helm: Any) -> None:
    docs = render(helm, scope="namespace", watchNamespaces=["team-a", "team-b"])
    assert env_of(docs)["MODELPILOT_NAMESPACES"] == "team-a,team-b"
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for binding in bindings.values():
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    # Cluster-wide, only what kopf needs to discover CRDs and namespaces, and Gateways read by name.
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert grants([cluster_role]) == FRAMEWORK | GATEWAY_READS
    (crb,) = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert crb["roleRef"]["name"] == cluster_role["metadata"]["name"]

    default = render(helm, scope="namespace")
    assert env_of(default)["MODELPILOT_NAMESPACES"] == NAMESPACE
    assert [d["metadata"]["namespace"] for d in default if d["kind"] == "Role"] == [NAMESPACE]


# --------------------------------------------------------------------------- RBAC: sufficient and minimal

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(roles: list[dict[str, Any]]) -> set[Grant]:
    out: set[Grant] = set()
    for role in roles:
        for rule in role["rules"]:
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
            out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def _g(group: str, resources: list[str], verbs: list[str]) -> set[Grant]:
    return {(group, r, v) for r in resources for v in verbs}


FRAMEWORK = _g("apiextensions.k8s.io", ["customresourcedefinitions"], ["get", "list", "watch"]) | \
    _g("", ["namespaces"], ["list", "watch"])
# The mirror style of a route's Gateway (gateways.MirrorStyles): read by name, cluster-wide in both scopes.
GATEWAY_READS = _g("gateway.networking.k8s.io", ["gateways", "gatewayclasses"], ["get"])
NAMESPACED = (
    _g("modelpilot.io", ["modelversions", "abtests"], ["get", "list", "watch"])
    | _g("modelpilot.io", ["modelversions/status", "abtests/status"], ["patch", "update"])
    | _g("apps", ["deployments"], ["get", "list", "watch", "create", "patch", "update", "delete"])
    | _g("", ["services"], ["get", "list", "watch", "create", "patch", "update", "delete"])
    | _g("", ["pods"], ["get", "list", "watch"])  # read only: why serving pods are not ready
    | _g("autoscaling", ["horizontalpodautoscalers"], ["get", "list", "watch", "create", "patch", "delete"])
    | _g("policy", ["poddisruptionbudgets"], ["get", "list", "watch", "create", "patch", "delete"])
    | _g("gateway.networking.k8s.io", ["httproutes"], ["get", "list", "watch", "create", "patch", "delete"])
    | _g("gateway.nginx.org", ["snippetsfilters"], ["get", "create", "patch", "delete"])  # NGF's mirroring
    | _g("", ["events"], ["create", "patch"]) | _g("events.k8s.io", ["events"], ["create", "patch"])
    | _g("", ["secrets"], ["get"])
)
PEERING = ["get", "list", "watch", "patch", "create"]


def rbac(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("ClusterRole", "Role")]


@pytest.mark.parametrize("mode", ["cluster", "namespace"])
def test_rbac_has_no_wildcards_read_only_pod_access_and_secrets_get_only(helm: Any, mode: str) -> None:
    roles = rbac(render(helm, scope=mode, watchNamespaces=["team-a"]))
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[field]), f"wildcard in {role['metadata']['name']}: {rule}"
            # Pods are only read (their status says why serving fails); no exec, logs, eviction or writes.
            assert not any(r.startswith("pods/") for r in rule["resources"]), rule
            if "pods" in rule["resources"]:
                assert rule["resources"] == ["pods"] and set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"] and rule["resources"] == ["secrets"], rule
    assert {(g, r, v) for g, r, v in grants(roles) if r == "secrets"} == {("", "secrets", "get")}


def test_cluster_mode_rbac_is_exactly_what_the_operator_needs(helm: Any) -> None:
    docs = render(helm)
    (role,) = rbac(docs)
    assert role["kind"] == "ClusterRole"
    assert grants([role]) == FRAMEWORK | GATEWAY_READS | NAMESPACED | _g("kopf.dev", ["clusterkopfpeerings"], PEERING)
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]


def test_namespace_mode_rbac_is_exactly_what_the_operator_needs(helm: Any) -> None:
    docs = render(helm, scope="namespace", watchNamespaces=["team-a"])
    cluster = [r for r in rbac(docs) if r["kind"] == "ClusterRole"]
    (role,) = [r for r in rbac(docs) if r["kind"] == "Role"]
    assert grants(cluster) == FRAMEWORK | GATEWAY_READS
    assert grants([role]) == NAMESPACED | _g("kopf.dev", ["kopfpeerings"], PEERING)


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(("values", "named"), [
    ({"scope": "bogus"}, "scope"),
    ({"replicas": "two"}, "replicas"),
    ({"mlflow.trackingUri": "file:///mlruns"}, "trackingUri"),
    ({"image.pullPolicy": "Sometimes"}, "pullPolicy"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
    ({"metrics.port": 70000}, "port"),
    ({"scop": "cluster"}, "scop"),
])
def test_values_schema_rejects_bad_values_naming_the_key(helm: Any, values: dict[str, Any], named: str) -> None:
    proc = helm("template", RELEASE, str(CHART), *_set_args(values), check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert named in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- monitoring


def test_monitoring_objects_are_off_by_default_and_complete_when_enabled(helm: Any) -> None:
    kinds = {d["kind"] for d in render(helm)}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    docs = render(helm, **{"metrics.serviceMonitor.enabled": True, "metrics.serviceMonitor.labels": {"release": "kps"},
                           "metrics.prometheusRule.enabled": True, "grafanaDashboard.enabled": True})
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics" and monitor["spec"]["endpoints"][0]["honorLabels"]
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()

    rule = one(docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts["ModelpilotRollback"]["expr"] == "increase(modelpilot_operator_rollbacks_total[10m]) > 0"
    errors = alerts["ModelpilotReconcileErrors"]["expr"]
    assert 'rate(modelpilot_operator_reconciles_total{result="error"}[5m])' in errors
    stuck = alerts["ModelpilotRolloutStuck"]
    assert stuck["expr"] == 'modelpilot_operator_resources{phase="Progressing"} > 0' and stuck["for"] == "30m"
    assert "{{ $labels.namespace }}" in alerts["ModelpilotRollback"]["annotations"]["summary"]  # left to Prometheus

    dashboard = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["modelpilot.json"])
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in board["panels"]}
    assert "modelpilot_requests_total" in exprs["Request rate"]
    assert 'code=~"5.."' in exprs["Error rate (5xx share)"]
    assert "modelpilot_request_duration_seconds_bucket" in exprs["p99 latency"]
    for title in ("Request rate", "Error rate (5xx share)", "p99 latency"):
        assert "model, version, variant" in exprs[title] and "namespace" in exprs[title]
    assert "modelpilot_operator_rollout_weight" in exprs["Canary weight"]
    assert "modelpilot_operator_analysis_value" in exprs["Analysis values (candidate vs baseline)"]


# --------------------------------------------------------------------------- CRDs and NOTES


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    packaged = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert set(source) == {"modelpilot.io_modelversions.yaml", "modelpilot.io_abtests.yaml", "kopf.dev_peerings.yaml"}
    assert set(packaged) == set(source), "charts/modelpilot/crds must hold exactly the files of crds/"
    stale = sorted(name for name in source if packaged[name] != source[name])
    assert not stale, f"charts/modelpilot/crds is stale ({', '.join(stale)}): cp crds/*.yaml charts/modelpilot/crds/"


def test_helm_sees_the_crds(helm: Any) -> None:
    shown = helm("show", "crds", str(CHART)).stdout  # the files as helm loaded them, concatenated
    files = sorted((CHART / "crds").glob("*.yaml"))
    assert all(f.read_text() in shown for f in files)
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    assert {d["kind"] for d in docs} == {"CustomResourceDefinition"}
    assert {d["metadata"]["name"] for d in docs} == {"modelversions.modelpilot.io", "abtests.modelpilot.io",
                                                     "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def _notes(helm: Any, tmp_path: Path, **values: Any) -> str:
    """NOTES.txt rendered by helm itself: `helm template` skips NOTES, so a copy of the chart wraps
    the same text in a ConfigMap (install --dry-run would need a reachable cluster)."""
    chart = tmp_path / "modelpilot"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "zz-notes.yaml").write_text(
        '{{- define "test.notes" }}' + notes + "{{- end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rendered-notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n')
    out = helm("template", RELEASE, str(chart), "--namespace", NAMESPACE, "--show-only", "templates/zz-notes.yaml",
               *_set_args(values)).stdout
    return str(yaml.safe_load(out)["data"]["notes"])


def test_notes_render(helm: Any, tmp_path: Path) -> None:
    notes = _notes(helm, tmp_path / "a")
    assert "modelpilot 0.1.0 is installed as release \"mp\" in namespace \"modelpilot-system\"" in notes
    assert "every namespace (scope: cluster)" in notes and "standalone" in notes
    assert "set mlflow.trackingUri" in notes
    assert f"rollout status deployment/{FULLNAME}" in notes
    notes = _notes(helm, tmp_path / "b", scope="namespace", watchNamespaces=["team-a", "team-b"], replicas=3,
                   **{"mlflow.trackingUri": "http://mlflow:5000", "metrics.prometheusRule.enabled": True})
    assert "team-a,team-b (scope: namespace)" in notes and "kubectl apply -n team-a" in notes
    assert "3 replicas, kopf peering \"modelpilot\"" in notes and "MLflow:     http://mlflow:5000" in notes
    assert "alerts: PrometheusRule" in notes
    assert "<no value>" not in notes
