"""The operator ⇄ serving-pod contract, from both sides: a Deployment the operator renders starts the
server's own settings from the container's env, args and ports.

The two packages never import each other (import-linter): the operator's side of the contract is
``modelpilot.operator.contract``, the server's is ``modelpilot_serve.settings``; this test is what keeps the
two sides from drifting apart.
"""

from __future__ import annotations

from typing import Any

from modelpilot.operator import api, builders, contract
from modelpilot.operator.registry import ResolvedModel
from modelpilot_serve import settings as serve_settings
from modelpilot_serve.settings import ServeSettings

MODEL = ResolvedModel(name="iris", version="7", alias="champion", run_id="r7", artifact_uri="mlflow-artifacts:/1/r7",
                      source="models:/m-7", flavor="sklearn", signature="", resolved_at="2026-01-01T00:00:00Z")
SECRET = {contract.ENV_TRACKING_USERNAME: "", contract.ENV_TRACKING_TOKEN: "t0ken"}


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
    deployment = builders.build_deployment(owner, api.ModelVersionSpec.model_validate(spec), MODEL,
                                           "http://mlflow:5000", "modelpilot-serve:test")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == list(contract.SERVE_ARGS) == ["serve"]  # the image's entrypoint is `modelpilot`
    env = _env(container)
    # Every variable of the contract the spec asks for is rendered, under the name the server reads.
    assert set(contract.SERVER_ENV) <= set(env)
    assert env[contract.ENV_TRACKING_TOKEN] == "t0ken" and contract.ENV_TRACKING_PASSWORD not in env
    settings = ServeSettings.load(cli=None, environ=env)
    assert settings.model_uri == MODEL.model_uri and settings.tracking_uri == "http://mlflow:5000"
    assert (settings.model_name, settings.model_version, settings.variant) == ("iris", "7", "iris-prod")
    assert (settings.batching, settings.max_batch_size, settings.max_batch_latency_ms) == (True, 32, 3)
    assert (settings.cache, settings.cache_max_entries, settings.cache_ttl_seconds) == (True, 100, 60)
    assert settings.cache_redis_url == "redis://cache:6379/0" and settings.model_threads == 2
    # Ports: what the server listens on by default is what the pod declares and the Service targets.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {contract.SERVING_PORT_NAME: serve_settings.DEFAULT_PORT,
                     contract.GRPC_PORT_NAME: serve_settings.DEFAULT_GRPC_PORT}
    assert (contract.SERVING_PORT, contract.GRPC_PORT) == (serve_settings.DEFAULT_PORT, serve_settings.DEFAULT_GRPC_PORT)
    service = builders.build_service(owner, MODEL)
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)


def test_the_probes_and_the_scrape_path_are_routes_of_the_server() -> None:
    from modelpilot_serve.app import create_app

    owner = builders.Owner(name="iris", namespace="ml", uid="u1")
    spec = api.ModelVersionSpec.model_validate({"model": {"name": "iris", "version": "7"}})
    deployment = builders.build_deployment(owner, spec, MODEL, "http://mlflow:5000", "modelpilot-serve:test")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    paths = {container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"],
             template["metadata"]["annotations"]["prometheus.io/path"]}
    settings = ServeSettings.load(cli=None, environ=_env(container))
    app = create_app(settings)  # loads nothing: loading starts in the app's lifespan

    assert paths <= {getattr(route, "path", None) for route in app.routes}, paths


def test_the_operators_env_names_are_the_servers() -> None:
    """``contract.ENV_X`` is ``modelpilot_serve.settings.ENV_X`` for every variable the server's settings read;
    the credentials are MLflow's own variables (read by its client in the server, not by the settings)."""
    names = {name: value for name, value in vars(contract).items() if name.startswith("ENV_")}
    served = {name: getattr(serve_settings, name) for name in names if hasattr(serve_settings, name)}
    assert {names[n] for n in served} == set(contract.SERVER_ENV)
    assert served == {n: names[n] for n in served}
    assert set(names.values()) - set(contract.SERVER_ENV) == set(contract.CREDENTIAL_KEYS)
    assert contract.TERMINATION_MESSAGE_PATH == serve_settings.DEFAULT_TERMINATION_MESSAGE_PATH


def test_the_probes_and_the_scrape_path_are_the_contracts() -> None:
    owner = builders.Owner(name="iris", namespace="ml", uid="u1")
    spec = api.ModelVersionSpec.model_validate({"model": {"name": "iris", "version": "7"}})
    deployment = builders.build_deployment(owner, spec, MODEL, "http://mlflow:5000", "modelpilot-serve:test")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": contract.READY_PATH, "port": contract.SERVING_PORT_NAME}
    assert container["livenessProbe"]["httpGet"] == {"path": contract.LIVE_PATH, "port": contract.SERVING_PORT_NAME}
    assert template["metadata"]["annotations"]["prometheus.io/path"] == contract.METRICS_PATH
    assert template["metadata"]["labels"][contract.SELECTOR_LABEL] == "iris"
    assert template["metadata"]["annotations"][contract.MODEL_URI_ANNOTATION] == MODEL.model_uri
