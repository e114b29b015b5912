"""Command line of the serving process: `modelpilot serve …` and `python -m modelpilot_serve`.

Where it sits: the entry point. The top-level `modelpilot` dispatcher (in the
operator distribution) calls `main(argv_after_serve)`; `__main__.py` calls
`main()`. It parses flags, builds `ServeSettings` (flags over env), sets up
JSON logging and hands over to `app.run`. Exit codes: 0 after a graceful stop
(SIGTERM/SIGINT), 2 for invalid arguments or settings, uvicorn's non-zero code
(3) if the server could not start (e.g. the port is taken). With `--workers N`
(N > 1) `app.run` hands over to `workers.run_workers`, a supervisor process.
"""

from __future__ import annotations

import argparse
import os
import sys

from .settings import (
    DEFAULT_CACHE_MAX_ENTRIES,
    DEFAULT_CACHE_TTL_SECONDS,
    DEFAULT_FEEDBACK_MAX_PENDING,
    DEFAULT_FEEDBACK_TTL_SECONDS,
    DEFAULT_GRPC_PORT,
    DEFAULT_LOAD_RETRY_SECONDS,
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MODEL_THREADS,
    DEFAULT_TERMINATION_MESSAGE_PATH,
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH_LATENCY_MS,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PORT,
    ENV_BATCHING,
    ENV_CACHE,
    ENV_CACHE_MAX_ENTRIES,
    ENV_CACHE_REDIS_URL,
    ENV_CACHE_TTL_SECONDS,
    ENV_FEEDBACK_MAX_PENDING,
    ENV_FEEDBACK_TTL_SECONDS,
    ENV_GRPC_PORT,
    ENV_LOAD_RETRY_SECONDS,
    ENV_MAX_COLUMNS,
    ENV_MODEL_THREADS,
    ENV_TERMINATION_MESSAGE_PATH,
    ENV_HOST,
    ENV_MAX_BATCH_LATENCY_MS,
    ENV_MAX_BATCH_SIZE,
    ENV_LOG_LEVEL,
    ENV_MAX_REQUEST_BYTES,
    ENV_MODEL_NAME,
    ENV_MODEL_URI,
    ENV_MODEL_VARIANT,
    ENV_MODEL_VERSION,
    ENV_PORT,
    ENV_PREDICTION_BUCKETS,
    ENV_TRACKING_URI,
    ENV_WORKERS,
    MAX_WORKERS,
    LOG_LEVELS,
    ServeSettings,
    SettingsError,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="modelpilot serve",
        description="Serve one MLflow model over Open Inference Protocol v2 and MLflow /invocations.",
        epilog="Every flag falls back to the environment variable shown; flags win.",
    )
    p.add_argument("--model-uri", help=f"models:/name/version, models:/name@alias, runs:/…, or a path [{ENV_MODEL_URI}]")
    p.add_argument("--tracking-uri", help=f"MLflow tracking server, for models:/ and runs:/ URIs [{ENV_TRACKING_URI}]")
    p.add_argument("--model-name", help=f"name in URLs and metric labels; default from a models:/ URI, else 'model' [{ENV_MODEL_NAME}]")
    p.add_argument("--model-version", help=f"version label; default from a models:/name/N URI, else 'unknown' [{ENV_MODEL_VERSION}]")
    p.add_argument("--variant", help=f"experiment arm label, default 'default' [{ENV_MODEL_VARIANT}]")
    p.add_argument("--host", help=f"listen address, default {DEFAULT_HOST} [{ENV_HOST}]")
    p.add_argument("--port", type=int, help=f"listen port, default {DEFAULT_PORT} [{ENV_PORT}]")
    p.add_argument(
        "--max-request-bytes", type=int,
        help=f"largest accepted request body, default {DEFAULT_MAX_REQUEST_BYTES} [{ENV_MAX_REQUEST_BYTES}]",
    )
    p.add_argument("--grpc-port", type=int,
                   help=f"Open Inference Protocol gRPC port, default {DEFAULT_GRPC_PORT}; 0 turns gRPC off "
                        f"[{ENV_GRPC_PORT}]")
    p.add_argument("--max-columns", type=int,
                   help=f"most inputs (columns or tensors) in one request, default {DEFAULT_MAX_COLUMNS} "
                        f"[{ENV_MAX_COLUMNS}]")
    p.add_argument("--load-retry-seconds", type=int,
                   help=f"retry a failing model load with back-off this long, then report unhealthy, default "
                        f"{DEFAULT_LOAD_RETRY_SECONDS} [{ENV_LOAD_RETRY_SECONDS}]")
    p.add_argument("--termination-message-path",
                   help=f"where the reason of a final failure is written, default {DEFAULT_TERMINATION_MESSAGE_PATH} "
                        f"when that file exists [{ENV_TERMINATION_MESSAGE_PATH}]")
    p.add_argument("--model-threads", type=int,
                   help=f"threads of the model's native libraries per predict (BLAS, OpenMP, xgboost, lightgbm), "
                        f"default {DEFAULT_MODEL_THREADS} [{ENV_MODEL_THREADS}]")
    p.add_argument("--log-level", choices=LOG_LEVELS, help=f"default info [{ENV_LOG_LEVEL}]")
    p.add_argument(
        "--workers", type=int,
        help=f"worker processes sharing the port (1-{MAX_WORKERS}), default 1; >1 aggregates /metrics "
             f"across workers [{ENV_WORKERS}]",
    )
    b = p.add_argument_group("batching, cache and feedback")
    b.add_argument("--batching", action=argparse.BooleanOptionalAction, default=None,
                   help=f"micro-batch concurrent requests, default on [{ENV_BATCHING}]")
    b.add_argument("--max-batch-size", type=int,
                   help=f"most rows in one batched predict, default {DEFAULT_MAX_BATCH_SIZE} [{ENV_MAX_BATCH_SIZE}]")
    b.add_argument("--max-batch-latency-ms", type=int,
                   help=f"longest wait for requests already on their way, default {DEFAULT_MAX_BATCH_LATENCY_MS} "
                        f"[{ENV_MAX_BATCH_LATENCY_MS}]")
    b.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                   help=f"cache predictions by model version and input, default off [{ENV_CACHE}]")
    b.add_argument("--cache-max-entries", type=int,
                   help=f"in-process cache size, default {DEFAULT_CACHE_MAX_ENTRIES} [{ENV_CACHE_MAX_ENTRIES}]")
    b.add_argument("--cache-ttl-seconds", type=int,
                   help=f"cache entry lifetime, default {DEFAULT_CACHE_TTL_SECONDS} [{ENV_CACHE_TTL_SECONDS}]")
    b.add_argument("--cache-redis-url", help=f"share the cache through Redis (redis://, rediss://, unix://) [{ENV_CACHE_REDIS_URL}]")
    b.add_argument("--feedback-max-pending", type=int,
                   help=f"prediction ids remembered for feedback, default {DEFAULT_FEEDBACK_MAX_PENDING} "
                        f"[{ENV_FEEDBACK_MAX_PENDING}]")
    b.add_argument("--feedback-ttl-seconds", type=int,
                   help=f"how long an id accepts feedback, default {DEFAULT_FEEDBACK_TTL_SECONDS} "
                        f"[{ENV_FEEDBACK_TTL_SECONDS}]")
    b.add_argument("--prediction-buckets",
                   help=f"comma-separated histogram buckets for regressor predictions [{ENV_PREDICTION_BUCKETS}]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # `python -m modelpilot_serve serve --model-uri …` reads like the real command; allow it.
    if args[:1] == ["serve"]:
        args = args[1:]
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # --help (0) or a usage error (2): return, don't exit the dispatcher
        return exc.code if isinstance(exc.code, int) else 2
    try:
        settings = ServeSettings.load(vars(ns), os.environ)
    except SettingsError as exc:
        print(f"modelpilot serve: {exc}", file=sys.stderr)
        return 2

    # Configure logging before anything imports MLflow, which otherwise sets
    # up its own plain-text handler and progress bars.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from .logs import configure_logging

    configure_logging(settings.log_level, settings.labels)

    from .app import run

    return run(settings)
