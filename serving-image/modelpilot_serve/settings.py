"""Start-up settings of the serving process.

Where it sits: read once by `cli.py` (CLI flags over environment variables),
validated here, then passed down as one frozen `ServeSettings` to the app, the
model loader and the metrics. Nothing else in the package reads the
environment, so this module is the whole operator ⇄ pod contract on the
configuration side.

The operator sets the contract variables without a prefix (they are shared
with MLflow's own conventions); knobs of this server carry the
`MODELPILOT_SERVE_` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Operator contract (set by the operator on every serving container).
ENV_MODEL_URI = "MODEL_URI"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_MODEL_NAME = "MODEL_NAME"
ENV_MODEL_VERSION = "MODEL_VERSION"
ENV_MODEL_VARIANT = "MODEL_VARIANT"
# Server knobs.
ENV_HOST = "MODELPILOT_SERVE_HOST"
ENV_PORT = "MODELPILOT_SERVE_PORT"
ENV_MAX_REQUEST_BYTES = "MODELPILOT_SERVE_MAX_REQUEST_BYTES"
ENV_LOG_LEVEL = "MODELPILOT_SERVE_LOG_LEVEL"
ENV_WORKERS = "MODELPILOT_SERVE_WORKERS"
# Batching, cache and feedback knobs (the operator renders spec.serving.batching/cache into these).
ENV_BATCHING = "MODELPILOT_SERVE_BATCHING"
ENV_MAX_BATCH_SIZE = "MODELPILOT_SERVE_MAX_BATCH_SIZE"
ENV_MAX_BATCH_LATENCY_MS = "MODELPILOT_SERVE_MAX_BATCH_LATENCY_MS"
ENV_CACHE = "MODELPILOT_SERVE_CACHE"
ENV_CACHE_MAX_ENTRIES = "MODELPILOT_SERVE_CACHE_MAX_ENTRIES"
ENV_CACHE_TTL_SECONDS = "MODELPILOT_SERVE_CACHE_TTL_SECONDS"
ENV_CACHE_REDIS_URL = "MODELPILOT_SERVE_CACHE_REDIS_URL"
ENV_FEEDBACK_MAX_PENDING = "MODELPILOT_SERVE_FEEDBACK_MAX_PENDING"
ENV_FEEDBACK_TTL_SECONDS = "MODELPILOT_SERVE_FEEDBACK_TTL_SECONDS"
ENV_PREDICTION_BUCKETS = "MODELPILOT_SERVE_PREDICTION_BUCKETS"
# gRPC (Open Inference Protocol `inference.GRPCInferenceService`), request bounds, model loading.
ENV_GRPC_PORT = "MODELPILOT_SERVE_GRPC_PORT"
ENV_MAX_COLUMNS = "MODELPILOT_SERVE_MAX_COLUMNS"
ENV_LOAD_RETRY_SECONDS = "MODELPILOT_SERVE_LOAD_RETRY_SECONDS"
ENV_TERMINATION_MESSAGE_PATH = "MODELPILOT_SERVE_TERMINATION_MESSAGE_PATH"
ENV_MODEL_THREADS = "MODELPILOT_SERVE_MODEL_THREADS"

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8080
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_MODEL_NAME = "model"
DEFAULT_VERSION = "unknown"
DEFAULT_VARIANT = "default"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_WORKERS = 1
MAX_WORKERS = 64
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_LATENCY_MS = 5
DEFAULT_CACHE_MAX_ENTRIES = 10000
DEFAULT_CACHE_TTL_SECONDS = 300
DEFAULT_FEEDBACK_MAX_PENDING = 100_000
DEFAULT_FEEDBACK_TTL_SECONDS = 3600
# The KServe / Triton convention: HTTP on 8080, gRPC on 8081. 0 turns gRPC off.
DEFAULT_GRPC_PORT = 8081
# Inputs (columns or tensors) one request may carry: far above any tabular model
# (the test zoo's widest has 12,000), low enough that checks stay cheap.
DEFAULT_MAX_COLUMNS = 100_000
# How long a failing model load is retried (with back-off) before the server
# reports itself unhealthy, so the kubelet restarts it. MLflow's own download
# retries take about 2.5 min before the first attempt fails.
DEFAULT_LOAD_RETRY_SECONDS = 600
# Kubernetes' default terminationMessagePath: the last error lands in the pod's
# containerStatuses[].lastState.terminated.message when the container dies.
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# Threads of the model's native libraries (BLAS, OpenMP, xgboost, lightgbm) per
# predict. A server makes many small predicts concurrently; thread pools sized
# to every core spin and fight the event loop (measured: xgboost fell from
# ~7,900 to ~220 requests/s on a busy 2-core machine). Raise it for models
# that score large batches.
DEFAULT_MODEL_THREADS = 1
# Histogram buckets of regressor predictions: symmetric, roughly logarithmic.
# Override with MODELPILOT_SERVE_PREDICTION_BUCKETS for a model's real range
# (with only non-negative buckets the histogram also exposes its _sum).
DEFAULT_PREDICTION_BUCKETS: tuple[float, ...] = tuple(
    sorted({sign * m * 10.0**e for sign in (-1, 1) for e in range(-2, 6) for m in (1, 2.5, 5)} | {0.0})
)
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_REDIS_URL = re.compile(r"^(rediss?|unix)://")

# models:/name/3, models:/name@alias, models:/name/latest (MLflow's registry URIs).
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))")


class SettingsError(ValueError):
    """Invalid start-up settings; the message lists every problem and how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid serving settings:\n{lines}")


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything the serving process needs to know before it starts."""

    model_uri: str
    model_name: str = DEFAULT_MODEL_NAME
    model_version: str = DEFAULT_VERSION
    variant: str = DEFAULT_VARIANT
    tracking_uri: str | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    log_level: str = "info"
    workers: int = DEFAULT_WORKERS
    batching: bool = True
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_batch_latency_ms: int = DEFAULT_MAX_BATCH_LATENCY_MS
    cache: bool = False
    cache_max_entries: int = DEFAULT_CACHE_MAX_ENTRIES
    cache_ttl_seconds: int = DEFAULT_CACHE_TTL_SECONDS
    cache_redis_url: str | None = None
    feedback_max_pending: int = DEFAULT_FEEDBACK_MAX_PENDING
    feedback_ttl_seconds: int = DEFAULT_FEEDBACK_TTL_SECONDS
    prediction_buckets: tuple[float, ...] = DEFAULT_PREDICTION_BUCKETS
    grpc_port: int = 0  # 0 = no gRPC server (the CLI default is DEFAULT_GRPC_PORT)
    max_columns: int = DEFAULT_MAX_COLUMNS
    load_retry_seconds: int = DEFAULT_LOAD_RETRY_SECONDS
    # Written only if this file already exists (the kubelet creates it in a
    # container) or the path was configured explicitly.
    termination_message_path: str = DEFAULT_TERMINATION_MESSAGE_PATH
    termination_message_explicit: bool = False
    model_threads: int = DEFAULT_MODEL_THREADS

    @property
    def labels(self) -> dict[str, str]:
        """The identity every metric and log line carries."""
        return {"model": self.model_name, "version": self.model_version, "variant": self.variant}

    @classmethod
    def load(
        cls,
        cli: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ServeSettings:
        """Build settings from CLI values (None = not given) over environment variables.

        Every problem is collected before raising, so one failed start shows
        all of them instead of one per restart of a crash-looping pod.
        """
        cli = cli or {}
        env = environ if environ is not None else {}
        problems: list[str] = []

        def pick(key: str, env_name: str) -> tuple[str | None, str]:
            # Returns the value and where it came from, for error messages.
            value = cli.get(key)
            if value is not None:
                return str(value).strip(), f"--{key.replace('_', '-')}"
            raw = env.get(env_name)
            # Kubernetes renders unset optional values as "", which means "not set".
            if raw is not None and raw.strip() != "":
                return raw.strip(), env_name
            return None, env_name

        model_uri, _ = pick("model_uri", ENV_MODEL_URI)
        if not model_uri:
            problems.append(
                f"the model URI is required: set {ENV_MODEL_URI} or pass --model-uri "
                "(models:/name/version, models:/name@alias, runs:/run-id/path or a local path)"
            )
            model_uri = ""
        match = _REGISTRY_URI.match(model_uri)

        name, name_src = pick("model_name", ENV_MODEL_NAME)
        if name is None:
            name = match.group("name") if match else DEFAULT_MODEL_NAME
        elif "/" in name or not name:
            problems.append(f"{name_src}={name!r}: the model name is a URL path segment: non-empty, no '/'")

        version, _ = pick("model_version", ENV_MODEL_VERSION)
        if version is None:
            # Only a pinned number is a version; models:/name/latest or an alias is not.
            pinned = match.group("version") if match else None
            version = pinned if pinned and pinned.isdigit() else DEFAULT_VERSION

        variant, _ = pick("variant", ENV_MODEL_VARIANT)
        tracking_uri, _ = pick("tracking_uri", ENV_TRACKING_URI)
        host, _ = pick("host", ENV_HOST)

        port = _int_setting(*pick("port", ENV_PORT), DEFAULT_PORT, 1, 65535, problems)
        max_bytes = _int_setting(
            *pick("max_request_bytes", ENV_MAX_REQUEST_BYTES), DEFAULT_MAX_REQUEST_BYTES, 1, None, problems
        )

        log_level, level_src = pick("log_level", ENV_LOG_LEVEL)
        log_level = (log_level or "info").lower()
        if log_level not in LOG_LEVELS:
            problems.append(f"{level_src}={log_level!r}: must be one of {', '.join(LOG_LEVELS)}")

        worker_problems: list[str] = []
        workers = _int_setting(*pick("workers", ENV_WORKERS), DEFAULT_WORKERS, 1, MAX_WORKERS, worker_problems)
        if worker_problems:  # name both spellings: the value may come from either
            problems.append(f"{worker_problems[0]} (worker processes: {ENV_WORKERS} / --workers)")
            workers = DEFAULT_WORKERS
        batching = _bool_setting(*pick("batching", ENV_BATCHING), True, problems)
        max_batch = _int_setting(*pick("max_batch_size", ENV_MAX_BATCH_SIZE), DEFAULT_MAX_BATCH_SIZE, 1, 4096, problems)
        max_latency = _int_setting(
            *pick("max_batch_latency_ms", ENV_MAX_BATCH_LATENCY_MS), DEFAULT_MAX_BATCH_LATENCY_MS, 0, 1000, problems
        )
        cache = _bool_setting(*pick("cache", ENV_CACHE), False, problems)
        cache_entries = _int_setting(
            *pick("cache_max_entries", ENV_CACHE_MAX_ENTRIES), DEFAULT_CACHE_MAX_ENTRIES, 1, None, problems
        )
        cache_ttl = _int_setting(
            *pick("cache_ttl_seconds", ENV_CACHE_TTL_SECONDS), DEFAULT_CACHE_TTL_SECONDS, 1, None, problems
        )
        redis_url, redis_src = pick("cache_redis_url", ENV_CACHE_REDIS_URL)
        if redis_url is not None and not _REDIS_URL.match(redis_url):
            problems.append(f"{redis_src}={redis_url!r}: must be empty or a redis://, rediss:// or unix:// URL")
        feedback_pending = _int_setting(
            *pick("feedback_max_pending", ENV_FEEDBACK_MAX_PENDING), DEFAULT_FEEDBACK_MAX_PENDING, 0, None, problems
        )
        feedback_ttl = _int_setting(
            *pick("feedback_ttl_seconds", ENV_FEEDBACK_TTL_SECONDS), DEFAULT_FEEDBACK_TTL_SECONDS, 1, None, problems
        )
        buckets = _buckets_setting(*pick("prediction_buckets", ENV_PREDICTION_BUCKETS), problems)
        grpc_port = _int_setting(*pick("grpc_port", ENV_GRPC_PORT), DEFAULT_GRPC_PORT, 0, 65535, problems)
        max_columns = _int_setting(*pick("max_columns", ENV_MAX_COLUMNS), DEFAULT_MAX_COLUMNS, 1, None, problems)
        load_retry = _int_setting(
            *pick("load_retry_seconds", ENV_LOAD_RETRY_SECONDS), DEFAULT_LOAD_RETRY_SECONDS, 0, None, problems
        )
        termination_path, _ = pick("termination_message_path", ENV_TERMINATION_MESSAGE_PATH)
        model_threads = _int_setting(*pick("model_threads", ENV_MODEL_THREADS), DEFAULT_MODEL_THREADS, 1, 256, problems)

        if problems:
            raise SettingsError(problems)
        return cls(
            model_uri=model_uri,
            model_name=name,
            model_version=version,
            variant=variant or DEFAULT_VARIANT,
            tracking_uri=tracking_uri,
            host=host or DEFAULT_HOST,
            port=port,
            max_request_bytes=max_bytes,
            log_level=log_level,
            workers=workers,
            batching=batching,
            max_batch_size=max_batch,
            max_batch_latency_ms=max_latency,
            cache=cache,
            cache_max_entries=cache_entries,
            cache_ttl_seconds=cache_ttl,
            cache_redis_url=redis_url,
            feedback_max_pending=feedback_pending,
            feedback_ttl_seconds=feedback_ttl,
            prediction_buckets=buckets,
            grpc_port=grpc_port,
            max_columns=max_columns,
            load_retry_seconds=load_retry,
            termination_message_path=termination_path or DEFAULT_TERMINATION_MESSAGE_PATH,
            termination_message_explicit=termination_path is not None,
            model_threads=model_threads,
        )


def _int_setting(
    raw: str | None,
    source: str,
    default: int,
    minimum: int,
    maximum: int | None,
    problems: list[str],
) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{source}={raw!r}: not an integer")
        return default
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        problems.append(f"{source}={value}: must be {bounds}")
    return value


def _bool_setting(raw: str | None, source: str, default: bool, problems: list[str]) -> bool:
    if raw is None:
        return default
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    problems.append(f"{source}={raw!r}: must be true or false")
    return default


def _buckets_setting(raw: str | None, source: str, problems: list[str]) -> tuple[float, ...]:
    if raw is None:
        return DEFAULT_PREDICTION_BUCKETS
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        problems.append(f"{source}={raw!r}: must be comma-separated numbers")
        return DEFAULT_PREDICTION_BUCKETS
    if not values or any(v != v or v in (float("inf"), float("-inf")) for v in values) or values != sorted(set(values)):
        problems.append(f"{source}={raw!r}: must be finite, strictly increasing numbers")
        return DEFAULT_PREDICTION_BUCKETS
    return tuple(values)
