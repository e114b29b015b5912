"""Operator settings: one frozen object in documented groups, read from ``MODELPILOT_*`` variables at start-up.

Top of the operator; every other module receives the settings object rather than reading the environment
itself. Each group is a pydantic-settings class whose fields name their variable (``validation_alias``), so
the variables stay flat and stable (the chart and users set them) while the code reads
``settings.mlflow.timeout_seconds``. A bad value stops the operator with one line naming the variable
(``SettingsError``), never a traceback.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_SERVING_IMAGE = "ghcr.io/modelpilot/modelpilot-serve:0.1.0"


#: Variables whose empty value means something (not "unset, take the default").
EMPTY_IS_A_VALUE = frozenset({"MODELPILOT_PEERING"})


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


def _var(*names: str) -> Any:
    """The variable(s) a field is read from, the first preferred."""
    return AliasChoices(*names)


class _Group(BaseSettings):
    # Values come only from the mapping ``OperatorSettings.from_env`` passes (os.environ by default), by the
    # fields' aliases: one source, so a test's mapping is never mixed with the process environment, and no
    # .env files or secrets directories.
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _http_url(value: str, variable: str) -> str:
    if value and (urlparse(value).scheme not in ("http", "https") or not urlparse(value).netloc):
        raise ValueError(f"{variable}={value!r} must be an http(s) URL")
    return value.rstrip("/")


class MLflowSettings(_Group):
    """The MLflow tracking server models are resolved in (a ModelVersion may name its own)."""

    tracking_uri: str = Field("", validation_alias=_var("MODELPILOT_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"))
    """Operator-wide tracking URI (``MODELPILOT_MLFLOW_TRACKING_URI``, else ``MLFLOW_TRACKING_URI``);
    ``spec.registry.trackingUri`` overrides it."""
    timeout_seconds: float = Field(5.0, ge=0.1, validation_alias=_var("MODELPILOT_MLFLOW_TIMEOUT_SECONDS",
                                                                      "MODELPILOT_REGISTRY_TIMEOUT_SECONDS"))
    """Timeout of one MLflow request, seconds (``MODELPILOT_MLFLOW_TIMEOUT_SECONDS``; the older
    ``MODELPILOT_REGISTRY_TIMEOUT_SECONDS`` is read too)."""

    @field_validator("tracking_uri")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value, "MODELPILOT_MLFLOW_TRACKING_URI")


class PrometheusSettings(_Group):
    """The Prometheus that canary analysis and ABTest figures query."""

    url: str = Field("", validation_alias=_var("MODELPILOT_PROMETHEUS_URL", "PROMETHEUS_URL"))
    """Base URL (``MODELPILOT_PROMETHEUS_URL``, else ``PROMETHEUS_URL``); empty: no analysis queries."""
    timeout_seconds: float = Field(10.0, ge=0.1, validation_alias=_var("MODELPILOT_PROMETHEUS_TIMEOUT_SECONDS"))
    """Timeout of one query, seconds (``MODELPILOT_PROMETHEUS_TIMEOUT_SECONDS``)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value, "MODELPILOT_PROMETHEUS_URL")


class ScheduleSettings(_Group):
    """How often periodic work runs (seconds)."""

    alias_poll_seconds: float = Field(30.0, ge=1.0, validation_alias=_var("MODELPILOT_ALIAS_POLL_SECONDS"))
    """ModelVersions with ``followAlias`` ask MLflow where their alias points (``MODELPILOT_ALIAS_POLL_SECONDS``)."""
    rollout_tick_seconds: float = Field(5.0, ge=0.5, validation_alias=_var("MODELPILOT_ROLLOUT_TICK_SECONDS"))
    """An active canary rollout is re-evaluated (``MODELPILOT_ROLLOUT_TICK_SECONDS``)."""
    abtest_refresh_seconds: float = Field(15.0, ge=1.0, validation_alias=_var("MODELPILOT_ABTEST_REFRESH_SECONDS"))
    """ABTests refresh their figures and comparison (``MODELPILOT_ABTEST_REFRESH_SECONDS``)."""
    readiness_recheck_seconds: float = Field(10.0, ge=1.0,
                                             validation_alias=_var("MODELPILOT_READINESS_RECHECK_SECONDS"))
    """A ModelVersion that is not Ready re-reads its Deployment (``MODELPILOT_READINESS_RECHECK_SECONDS``)."""
    retry_delay_seconds: float = Field(10.0, ge=0.1, validation_alias=_var("MODELPILOT_RETRY_DELAY_SECONDS"))
    """First delay before retrying a failed registry or API call; doubles up to 5 minutes
    (``MODELPILOT_RETRY_DELAY_SECONDS``)."""


class EndpointSettings(_Group):
    """The operator's own HTTP endpoints."""

    bind_address: str = Field("0.0.0.0", validation_alias=_var("MODELPILOT_BIND_ADDRESS"))
    """Address the metrics and liveness endpoints listen on (``MODELPILOT_BIND_ADDRESS``)."""
    metrics_port: int = Field(8080, ge=0, le=65535, validation_alias=_var("MODELPILOT_METRICS_PORT"))
    """Port of ``/metrics`` (``MODELPILOT_METRICS_PORT``; 0 disables it)."""
    liveness_port: int = Field(8082, ge=0, le=65535, validation_alias=_var("MODELPILOT_LIVENESS_PORT"))
    """Port of ``/healthz`` (``MODELPILOT_LIVENESS_PORT``; 0 disables it); ``--liveness URL`` overrides it."""


class KubernetesSettings(_Group):
    """How the operator acts on the cluster."""

    field_manager: str = Field("modelpilot", min_length=1, validation_alias=_var("MODELPILOT_FIELD_MANAGER"))
    """Field manager of server-side apply (``MODELPILOT_FIELD_MANAGER``)."""
    namespaces: tuple[str, ...] = Field((), validation_alias=_var("MODELPILOT_NAMESPACES"))
    """Namespaces to watch (``MODELPILOT_NAMESPACES``, comma-separated); empty: the whole cluster."""
    peering: str = Field("modelpilot", validation_alias=_var("MODELPILOT_PEERING"))
    """kopf peering object shared by the replicas so only the highest-priority one acts
    (``MODELPILOT_PEERING``; empty runs standalone)."""
    priority: int | None = Field(None, validation_alias=_var("MODELPILOT_PRIORITY"))
    """This replica's peering priority (``MODELPILOT_PRIORITY``); unset picks a random one at start, so two
    replicas never tie (kopf freezes all operators of equal priority)."""
    workers: int = Field(250, ge=1, validation_alias=_var("MODELPILOT_WORKERS"))
    """ModelVersion reconciles in flight at once (``MODELPILOT_WORKERS``). They are coroutines waiting on the
    API, not threads: at 20 a burst of 200 creates waited ~10 s for a slot; at 1,000 a burst of 1,000 got
    slower than at 100–250 (kopf re-ran handlers it could not confirm in time; benchmarks/README.md)."""
    readiness_workers: int = Field(16, ge=1, validation_alias=_var("MODELPILOT_READINESS_WORKERS"))
    """Readiness refreshes from Deployment events and rechecks in flight at once, apart from the reconciles so a
    burst of creates never queues them (``MODELPILOT_READINESS_WORKERS``)."""

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(n.strip() for n in value.split(",") if n.strip())
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value


class OperatorSettings(_Group):
    """Everything the operator process is configured with, in groups."""

    serving_image: str = Field(DEFAULT_SERVING_IMAGE, min_length=1, validation_alias=_var("MODELPILOT_SERVING_IMAGE"))
    """Image of the model server (``MODELPILOT_SERVING_IMAGE``); ``spec.serving.image`` overrides it."""
    mlflow: MLflowSettings = Field(default_factory=lambda: MLflowSettings.model_validate({}))
    prometheus: PrometheusSettings = Field(default_factory=lambda: PrometheusSettings.model_validate({}))
    schedule: ScheduleSettings = Field(default_factory=lambda: ScheduleSettings.model_validate({}))
    endpoints: EndpointSettings = Field(default_factory=lambda: EndpointSettings.model_validate({}))
    kubernetes: KubernetesSettings = Field(default_factory=lambda: KubernetesSettings.model_validate({}))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        """Read every group from ``env`` (default ``os.environ``); raises ``SettingsError`` naming the
        variable of the first bad value. Empty variables count as unset, except where empty is a value
        (``MODELPILOT_PEERING=""``: standalone)."""
        values = {k: v for k, v in (os.environ if env is None else env).items() if v != "" or k in EMPTY_IS_A_VALUE}
        try:
            return cls.model_validate({
                **values,
                "mlflow": MLflowSettings.model_validate(values),
                "prometheus": PrometheusSettings.model_validate(values),
                "schedule": ScheduleSettings.model_validate(values),
                "endpoints": EndpointSettings.model_validate(values),
                "kubernetes": KubernetesSettings.model_validate(values),
            })
        except ValidationError as exc:
            raise SettingsError(_explain(exc, values)) from None

    @classmethod
    def of(cls, **groups: dict[str, Any]) -> OperatorSettings:
        """Settings built in code (tests, tools): ``of(mlflow={"tracking_uri": ...}, schedule={...})``,
        field names not variables; the rest default."""
        parts: dict[str, Any] = {}
        for name, fields in groups.items():
            if name == "serving_image":
                parts[name] = fields
                continue
            group = cls.model_fields[name].annotation
            parts[name] = group.model_validate(fields)  # type: ignore[union-attr]
        return cls.model_validate(parts)


def _explain(exc: ValidationError, values: dict[str, str]) -> str:
    """The first error as ``VARIABLE='value' <what is wrong>``."""
    error = exc.errors()[0]
    variable = str(error["loc"][0]) if error["loc"] else "?"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "=" in message and message.split("=", 1)[0] in values:
        return message  # our own validators name the variable already
    raw = values.get(variable, error.get("input"))
    what = {"int_parsing": "is not an integer", "float_parsing": "is not a number",
            "int_from_float": "is not an integer"}.get(error["type"], message)
    if variable.endswith("_PORT") and error["type"] in ("int_parsing", "int_from_float", "less_than_equal",
                                                        "greater_than_equal"):
        what = "must be a port number 0-65535 (0 disables)"
    elif error["type"] == "greater_than_equal":
        what = f"must be at least {error['ctx']['ge']:g}"
    return f"{variable}={raw!r} {what}"
