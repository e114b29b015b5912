"""Operator settings: one frozen object, read from ``MODELPILOT_*`` environment variables and validated at start-up.

Top of the operator; every other module receives the settings object rather
than reading the environment itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

DEFAULT_SERVING_IMAGE = "ghcr.io/modelpilot/modelpilot-serve:0.1.0"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator process is configured with."""

    tracking_uri: str = ""
    """Operator-wide MLflow tracking URI (``MODELPILOT_MLFLOW_TRACKING_URI``, else ``MLFLOW_TRACKING_URI``).
    A ModelVersion may override it with ``spec.registry.trackingUri``."""

    serving_image: str = DEFAULT_SERVING_IMAGE
    """Image of the model server (``MODELPILOT_SERVING_IMAGE``); ``spec.serving.image`` overrides it."""

    alias_poll_seconds: float = 30.0
    """How often ModelVersions with ``followAlias`` ask MLflow where their alias points
    (``MODELPILOT_ALIAS_POLL_SECONDS``)."""

    registry_timeout_seconds: float = 5.0
    """Timeout of one MLflow request (``MODELPILOT_REGISTRY_TIMEOUT_SECONDS``)."""

    prometheus_timeout_seconds: float = 10.0
    """Timeout of one Prometheus query of the analysis (``MODELPILOT_PROMETHEUS_TIMEOUT_SECONDS``)."""

    retry_delay_seconds: float = 10.0
    """First delay before retrying a failed registry lookup; doubles up to 5 minutes
    (``MODELPILOT_RETRY_DELAY_SECONDS``)."""

    field_manager: str = "modelpilot"
    """Field manager name for server-side apply (``MODELPILOT_FIELD_MANAGER``)."""

    namespaces: tuple[str, ...] = field(default_factory=tuple)
    """Namespaces to watch (``MODELPILOT_NAMESPACES``, comma-separated); empty means the whole cluster."""

    rollout_tick_seconds: float = 5.0
    """How often an active canary rollout is re-evaluated (``MODELPILOT_ROLLOUT_TICK_SECONDS``)."""

    abtest_refresh_seconds: float = 15.0
    """How often ABTests refresh their variants' figures and comparison (``MODELPILOT_ABTEST_REFRESH_SECONDS``)."""

    prometheus_url: str = ""
    """Prometheus the analysis engine queries (``MODELPILOT_PROMETHEUS_URL``, else ``PROMETHEUS_URL``)."""

    metrics_port: int = 8080
    """Port of the operator's own ``/metrics`` (``MODELPILOT_METRICS_PORT``; 0 disables it)."""

    bind_address: str = "0.0.0.0"
    """Address the metrics and liveness endpoints listen on (``MODELPILOT_BIND_ADDRESS``)."""

    liveness_port: int = 8082
    """Port of the liveness endpoint ``/healthz`` (``MODELPILOT_LIVENESS_PORT``; 0 disables it). The
    ``--liveness URL`` flag overrides it."""

    peering: str = "modelpilot"
    """kopf peering object shared by the operator's replicas so only the highest-priority one acts
    (``MODELPILOT_PEERING``; empty runs standalone, for a single replica or tests)."""

    priority: int | None = None
    """This replica's peering priority (``MODELPILOT_PRIORITY``); unset picks a random one at start,
    so two replicas never tie (kopf freezes all operators of equal priority)."""

    workers: int = 20
    """Threads running reconciles (kopf's pool for sync handlers; ``MODELPILOT_WORKERS``)."""

    readiness_workers: int = 4
    """Threads refreshing readiness from Deployment events, apart from the reconciles so a burst of creates
    never queues them (``MODELPILOT_READINESS_WORKERS``)."""

    readiness_recheck_seconds: float = 10.0
    """How often a ModelVersion that is not Ready re-reads its Deployment, whatever events came
    (``MODELPILOT_READINESS_RECHECK_SECONDS``)."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        env = dict(os.environ if env is None else env)

        def number(name: str, default: float, minimum: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number") from None
            if value < minimum:
                raise SettingsError(f"{name}={raw!r} must be at least {minimum:g}")
            return value

        def port(name: str, default: int) -> int:
            value = number(name, default, 0)
            if value != int(value) or value > 65535:
                raise SettingsError(f"{name}={env.get(name)!r} must be a port number 0-65535 (0 disables)")
            return int(value)

        tracking = env.get("MODELPILOT_MLFLOW_TRACKING_URI") or env.get("MLFLOW_TRACKING_URI") or ""
        if tracking:
            parsed = urlparse(tracking)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise SettingsError(
                    f"MODELPILOT_MLFLOW_TRACKING_URI={tracking!r} must be an http(s) URL of an MLflow tracking server"
                )
        prometheus = env.get("MODELPILOT_PROMETHEUS_URL") or env.get("PROMETHEUS_URL") or ""
        if prometheus and urlparse(prometheus).scheme not in ("http", "https"):
            raise SettingsError(f"MODELPILOT_PROMETHEUS_URL={prometheus!r} must be an http(s) URL")
        priority_raw = env.get("MODELPILOT_PRIORITY", "")
        try:
            priority = int(priority_raw) if priority_raw else None
        except ValueError:
            raise SettingsError(f"MODELPILOT_PRIORITY={priority_raw!r} is not an integer") from None
        settings = cls(
            tracking_uri=tracking.rstrip("/"),
            serving_image=env.get("MODELPILOT_SERVING_IMAGE") or DEFAULT_SERVING_IMAGE,
            alias_poll_seconds=number("MODELPILOT_ALIAS_POLL_SECONDS", 30.0, 1.0),
            registry_timeout_seconds=number("MODELPILOT_REGISTRY_TIMEOUT_SECONDS", 5.0, 0.1),
            prometheus_timeout_seconds=number("MODELPILOT_PROMETHEUS_TIMEOUT_SECONDS", 10.0, 0.1),
            retry_delay_seconds=number("MODELPILOT_RETRY_DELAY_SECONDS", 10.0, 0.1),
            field_manager=env.get("MODELPILOT_FIELD_MANAGER") or "modelpilot",
            prometheus_url=prometheus.rstrip("/"),
            abtest_refresh_seconds=number("MODELPILOT_ABTEST_REFRESH_SECONDS", 15.0, 1.0),
            rollout_tick_seconds=number("MODELPILOT_ROLLOUT_TICK_SECONDS", 5.0, 0.5),
            metrics_port=port("MODELPILOT_METRICS_PORT", 8080),
            liveness_port=port("MODELPILOT_LIVENESS_PORT", 8082),
            bind_address=env.get("MODELPILOT_BIND_ADDRESS") or "0.0.0.0",
            peering=env.get("MODELPILOT_PEERING", "modelpilot"),
            priority=priority,
            workers=int(number("MODELPILOT_WORKERS", 20, 1)),
            readiness_workers=int(number("MODELPILOT_READINESS_WORKERS", 4, 1)),
            readiness_recheck_seconds=number("MODELPILOT_READINESS_RECHECK_SECONDS", 10.0, 1.0),
            namespaces=tuple(n.strip() for n in env.get("MODELPILOT_NAMESPACES", "").split(",") if n.strip()),
        )
        return settings
