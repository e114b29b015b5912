"""Model lifecycle: load in the background, gate, and publish ready / not ready.

Where it sits: created by `app.py`, started from the app's lifespan so the
HTTP server is already listening (liveness answers 200) while MLflow is
imported and the model downloaded and loaded in a daemon thread. The handlers
read `ModelState.snapshot`, an immutable value replaced atomically, so no lock
sits on the request path.

States: loading → ready, or loading → failed. Failed is final: the pod stays
not-ready with the reason visible on the readiness endpoints and in the logs,
instead of crash-looping, so the operator (and a human) can read why.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .errors import NotReady, shorten
from .logs import event
from .metrics import ServeMetrics
from .model import ServedModel, load_model, validate
from .settings import ServeSettings

log = logging.getLogger(__name__)

Loader = Callable[[ServeSettings], ServedModel]


class Phase(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Snapshot:
    phase: Phase
    reason: str
    # Present once loaded — also when the gate failed, so metadata can still
    # show the signature that the example did not match.
    model: ServedModel | None = None


class ModelState:
    def __init__(self, settings: ServeSettings, metrics: ServeMetrics, loader: Loader = load_model) -> None:
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self._thread: threading.Thread | None = None
        self.snapshot = Snapshot(Phase.LOADING, "the model is loading")

    def start(self) -> None:
        """Start loading once; later calls are no-ops (lifespan may run more than once in tests)."""
        if self._thread is not None:
            return
        # Daemon: a SIGTERM during a long download must not wait for it.
        self._thread = threading.Thread(target=self._load, name="modelpilot-model-loader", daemon=True)
        self._thread.start()

    def require_ready(self) -> ServedModel:
        snap = self.snapshot
        if snap.phase is not Phase.READY or snap.model is None:
            raise NotReady(f"model not ready ({snap.phase.value}): {snap.reason}")
        return snap.model

    def _fail(self, reason: str, model: ServedModel | None = None) -> None:
        self.snapshot = Snapshot(Phase.FAILED, reason, model)
        self.metrics.set_ready(False)

    def _load(self) -> None:
        s = self.settings
        start = time.perf_counter()
        event(log, logging.INFO, "loading model", model_uri=s.model_uri)
        try:
            model = self._loader(s)
        except Exception as exc:  # noqa: BLE001 - any load failure is a not-ready reason
            reason = f"loading {s.model_uri} failed: {type(exc).__name__}: {shorten(str(exc), 1000)}"
            event(log, logging.ERROR, "model load failed", exc_info=True, reason=reason)
            self._fail(reason)
            return
        seconds = time.perf_counter() - start
        self.metrics.set_load_seconds(seconds)
        event(
            log, logging.INFO, "model loaded",
            load_seconds=round(seconds, 3), flavor=model.flavor, fast_path=model.fast_path,
            has_input_example=model.serving_example is not None,
        )
        self.snapshot = Snapshot(Phase.LOADING, "validating the model on its own input example", model)
        try:
            gate = validate(model)
        except Exception as exc:  # noqa: BLE001 - validate reports, but never let the thread die silently
            reason = f"validation gate crashed: {type(exc).__name__}: {shorten(str(exc), 1000)}"
            event(log, logging.ERROR, "validation gate failed", exc_info=True, reason=reason)
            self._fail(reason, model)
            return
        if not gate.passed:
            event(log, logging.ERROR, "validation gate failed", reason=gate.reason, gate_seconds=round(gate.seconds, 3))
            self._fail(gate.reason, model)
            return
        if model.classes:
            self.metrics.declare_classes(model.classes)
        # Everything loaded so far (MLflow, the model, numpy, pandas…) lives as
        # long as the process: move it out of the collector's view, so full
        # collections under load scan only what requests allocate (they
        # otherwise pause serving for tens of milliseconds — the p99).
        gc.collect()
        gc.freeze()
        self.snapshot = Snapshot(Phase.READY, gate.reason, model)
        self.metrics.set_ready(True)
        event(
            log, logging.INFO, "model ready",
            gate=gate.reason, gate_seconds=round(gate.seconds, 3), fast_path=model.fast_path,
        )
