"""The operator ⇄ serving-pod contract, from both sides: a Deployment the operator renders starts the
server's own settings from the container's env, args and ports.

The two packages never import each other (import-linter), so the contract has no shared module; this test
is what keeps the two sides from drifting apart.
"""

from __future__ import annotations

from typing import Any

from modelpilot.operator import builders
from modelpilot.operator.registry import ResolvedModel
from modelpilot_serve import settings as serve_settings
from modelpilot_serve.settings import ServeSettings

MODEL = ResolvedModel(name="iris", version="7", alias="champion", run_id="r7", artifact_uri="mlflow-artifacts:/1/r7",
                      source="models:/m-7", flavor="sklearn", signature="", resolved_at="2026-01-01T00:00:00Z")
SECRET = {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_TOKEN": "t0ken"}


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The env a kubelet would give the container (Secret keys resolved; missing optional keys left out)."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["key"] in SECRET:
                env[item["name"]] = SECRET[ref["key"]]
            else:
                assert ref.get("optional"), ref
    return env


def test_a_rendered_deployment_starts_the_servers_settings() -> None:
    spec = {"model": {"name": "iris", "alias": "champion"}, "replicas": 2,
            "registry": {"credentialsSecretRef": {"name": "mlflow-creds"}},
            "serving": {"batching": {"maxBatchSize": 32, "maxLatencyMs": 3},
                        "cache": {"enabled": True, "maxEntries": 100, "ttlSeconds": 60,
                                  "redisUrl": "redis://cache:6379/0"},
                        "env": [{"name": "MODELPILOT_SERVE_MODEL_THREADS", "value": "2"}]}}
    owner = builders.Owner(name="iris-prod", namespace="ml", uid="u1")
    deployment = builders.build_deployment(owner, spec, MODEL, "http://mlflow:5000", "modelpilot-serve:test")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve"]  # the image's entrypoint is `modelpilot`
    settings = ServeSettings.load(cli=None, environ=_env(container))
    assert settings.model_uri == MODEL.model_uri and settings.tracking_uri == "http://mlflow:5000"
    assert (settings.model_name, settings.model_version, settings.variant) == ("iris", "7", "iris-prod")
    assert (settings.batching, settings.max_batch_size, settings.max_batch_latency_ms) == (True, 32, 3)
    assert (settings.cache, settings.cache_max_entries, settings.cache_ttl_seconds) == (True, 100, 60)
    assert settings.cache_redis_url == "redis://cache:6379/0" and settings.model_threads == 2
    # Ports: what the server listens on by default is what the pod declares and the Service targets.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": serve_settings.DEFAULT_PORT, "grpc": serve_settings.DEFAULT_GRPC_PORT}
    assert builders.SERVING_PORT == serve_settings.DEFAULT_PORT and builders.GRPC_PORT == serve_settings.DEFAULT_GRPC_PORT
    service = builders.build_service(owner, MODEL)
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)


def test_the_probes_and_the_scrape_path_are_routes_of_the_server() -> None:
    from modelpilot_serve.app import create_app

    owner = builders.Owner(name="iris", namespace="ml", uid="u1")
    deployment = builders.build_deployment(owner, {"model": {"name": "iris", "version": "7"}}, MODEL,
                                           "http://mlflow:5000", "modelpilot-serve:test")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    paths = {container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"],
             template["metadata"]["annotations"]["prometheus.io/path"]}
    settings = ServeSettings.load(cli=None, environ=_env(container))
    app = create_app(settings)  # loads nothing: loading starts in the app's lifespan

    assert paths <= {getattr(route, "path", None) for route in app.routes}, paths
