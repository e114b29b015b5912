"""Worker processes: `--workers N` / MODELPILOT_SERVE_WORKERS=N with N > 1.

Where it sits: `app.run` hands over here when `settings.workers > 1` (with one
worker nothing here runs). This process becomes a supervisor: it creates a
fresh Prometheus multiprocess directory, binds the listening socket once and
lets uvicorn's multiprocess supervisor spawn N workers that share it. Each
worker is a fresh interpreter (spawn) that rebuilds the settings from an
environment variable, sets up logging, loads the model itself and serves the
whole app. Workers record metrics into the mmap files of the shared
directory, and whichever worker answers /metrics merges all of them; health
and readiness answer for the worker that gets the request.

Signals: SIGTERM/SIGINT → the supervisor SIGTERMs every worker (each finishes
its in-flight requests, as one process would), waits for them, removes the
metrics directory and exits 0. A worker that dies is replaced (its live
gauges are dropped from the merge); a worker that fails to start stops the
supervisor with exit code 3.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client import multiprocess
from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess

from .logs import event
from .settings import ServeSettings

if TYPE_CHECKING:  # pragma: no cover
    from socket import socket

    from starlette.applications import Starlette

log = logging.getLogger(__name__)

# Internal: how the supervisor hands the validated settings to its workers.
ENV_WORKER_SETTINGS = "MODELPILOT_SERVE_WORKER_SETTINGS"
ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
WORKER_APP = f"{__name__}:worker_app"


def encode_settings(settings: ServeSettings) -> str:
    return json.dumps(dataclasses.asdict(settings))


def decode_settings(raw: str) -> ServeSettings:
    data = json.loads(raw)
    data["prediction_buckets"] = tuple(data["prediction_buckets"])
    return ServeSettings(**data)


def worker_app() -> Starlette:
    """uvicorn's app factory, called once in each worker process."""
    settings = decode_settings(os.environ[ENV_WORKER_SETTINGS])
    from .logs import configure_logging

    configure_logging(settings.log_level, settings.labels)
    from .app import create_app
    from .metrics import ServeMetrics

    metrics = ServeMetrics(
        settings.model_name, settings.model_version, settings.variant, settings.prediction_buckets,
        multiprocess_dir=os.environ[ENV_MULTIPROC_DIR],
    )
    return create_app(settings, metrics=metrics)


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, plus: why it stopped, and dropping dead workers' live gauges."""

    def __init__(self, config: Config, sockets: list[socket], metrics_dir: str) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir
        self.stopped_by_signal = False

    def handle_term(self) -> None:
        self.stopped_by_signal = True
        super().handle_term()

    def handle_int(self) -> None:
        self.stopped_by_signal = True
        super().handle_int()

    def _pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.pid is not None}

    def _forget_gone(self, before: set[int]) -> None:
        for pid in before - self._pids():
            multiprocess.mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def keep_subprocess_alive(self) -> None:
        before = self._pids()
        super().keep_subprocess_alive()
        self._forget_gone(before)

    def handle_signals(self) -> None:  # SIGHUP (restart all) and SIGTTOU (one fewer) retire workers too
        before = self._pids()
        super().handle_signals()
        self._forget_gone(before)


def run_workers(settings: ServeSettings) -> int:
    """Supervise `settings.workers` worker processes until SIGTERM/SIGINT; return the exit code."""
    from . import __version__
    from .app import server_config

    early: list[int] = []

    # Until uvicorn's supervisor installs its handlers: remember a stop, don't die of it.
    def _early(signum: int, frame: FrameType | None) -> None:
        early.append(signum)

    signal.signal(signal.SIGTERM, _early)
    signal.signal(signal.SIGINT, _early)

    # A fresh, empty directory per start: files of an earlier run must not leak into the sums.
    metrics_dir = tempfile.mkdtemp(prefix="modelpilot-metrics-")
    saved = {k: os.environ.get(k) for k in (ENV_MULTIPROC_DIR, ENV_WORKER_SETTINGS)}
    os.environ[ENV_MULTIPROC_DIR] = metrics_dir
    os.environ[ENV_WORKER_SETTINGS] = encode_settings(settings)
    event(
        log, logging.INFO, "starting",
        host=settings.host, port=settings.port, model_uri=settings.model_uri, workers=settings.workers,
        metrics_dir=metrics_dir, server_version=__version__,
    )
    stopped_by_signal = bool(early)
    try:
        config = server_config(settings, WORKER_APP, factory=True, workers=settings.workers)
        try:
            sock = config.bind_socket()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            code = exc.code if isinstance(exc.code, int) else 1
            event(log, logging.ERROR, "server failed to start", exit_code=code)
            return code
        try:
            supervisor = _Supervisor(config, [sock], metrics_dir)
            if not early:
                supervisor.run()
                stopped_by_signal = supervisor.stopped_by_signal
        finally:
            sock.close()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if not stopped_by_signal:  # the supervisor only stops on its own when a worker could not start
        event(log, logging.ERROR, "a worker failed to start", exit_code=STARTUP_FAILURE)
        return STARTUP_FAILURE
    event(log, logging.INFO, "stopped")
    return 0
