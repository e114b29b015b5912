"""Model lifecycle: load in the background, retry, gate, and publish ready / not ready / unhealthy.

Where it sits: created by `app.py`, started from the app's lifespan so the
HTTP server is already listening (liveness answers 200) while MLflow is
imported and the model downloaded and loaded in a daemon thread. The handlers
read `ModelState.snapshot`, an immutable value replaced atomically, so no lock
sits on the request path.

States:

* loading — the first attempt, or a failed attempt waiting for its retry. A
  load that fails for a reason that may pass (the registry or artifact store
  unreachable, a 5xx) is retried with exponential back-off (1 s doubling to
  60 s) for `settings.load_retry_seconds`; the ready reason names the attempt
  and the last error, so `kubectl describe` shows why a pod is not ready.
* ready — loaded and the validation gate passed.
* failed — final: a load that can never pass (the model needs packages this
  image lacks, the local path does not exist, the model fails its own input
  example) or the retry budget is spent. The reason is written to the
  termination message file and the server turns *unhealthy*: liveness answers
  503, so the kubelet restarts the container and the reason lands in the pod's
  `lastState.terminated.message`, where the operator reads it. A restart is
  also one more fresh attempt for failures that were transient after all.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .errors import NotReady, shorten
from .logs import event
from .metrics import ServeMetrics
from .model import ModelLoadError, ServedModel, load_model, validate
from .settings import ServeSettings

log = logging.getLogger(__name__)

Loader = Callable[[ServeSettings], ServedModel]

# Back-off between load attempts: 1 s doubling to this cap.
RETRY_BACKOFF_MAX_SECONDS = 60.0
# The kubelet reads at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_MAX_BYTES = 4096


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
    attempts: int = 0

    @property
    def healthy(self) -> bool:
        """False once failed: liveness answers 503 so the kubelet restarts the container."""
        return self.phase is not Phase.FAILED


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying the same load can ever succeed (see the module docstring)."""
    if isinstance(exc, ModelLoadError):
        return exc.permanent
    # A missing module does not appear by waiting.
    return isinstance(exc, ImportError)


class ModelState:
    def __init__(
        self,
        settings: ServeSettings,
        metrics: ServeMetrics,
        loader: Loader = load_model,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # Waits between attempts; returns True when the server is stopping. A seam for tests.
        self._sleep = sleep or self._stop.wait
        self.snapshot = Snapshot(Phase.LOADING, "the model is loading")

    def start(self) -> None:
        """Start loading once; later calls are no-ops (lifespan may run more than once in tests)."""
        if self._thread is not None:
            return
        # Daemon: a SIGTERM during a long download must not wait for it.
        self._thread = threading.Thread(target=self._load, name="modelpilot-model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End a pending retry wait (the server is shutting down)."""
        self._stop.set()

    def require_ready(self) -> ServedModel:
        snap = self.snapshot
        if snap.phase is not Phase.READY or snap.model is None:
            raise NotReady(f"model not ready ({snap.phase.value}): {snap.reason}")
        return snap.model

    def _fail(self, reason: str, model: ServedModel | None = None, attempts: int = 0) -> None:
        self.snapshot = Snapshot(Phase.FAILED, reason, model, attempts)
        self.metrics.set_ready(False)
        self._write_termination_message(reason)

    def _write_termination_message(self, reason: str) -> None:
        s = self.settings
        path = s.termination_message_path
        # Only where the kubelet (or whoever configured the path) expects it:
        # never create files under /dev of a host the server runs on directly.
        if not s.termination_message_explicit and not os.path.isfile(path):
            return
        data = reason.encode("utf-8", "replace")[:TERMINATION_MESSAGE_MAX_BYTES]
        try:
            with open(path, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            event(log, logging.WARNING, "could not write the termination message", path=path, error=str(exc))

    def _load(self) -> None:
        s = self.settings
        start = time.perf_counter()
        deadline = time.monotonic() + s.load_retry_seconds
        backoff = 1.0
        attempt = 0
        event(log, logging.INFO, "loading model", model_uri=s.model_uri)
        while True:
            attempt += 1
            try:
                model = self._loader(s)
                break
            except Exception as exc:  # noqa: BLE001 - any load failure is a not-ready reason
                error = f"{type(exc).__name__}: {shorten(str(exc), 1000)}"
                permanent = is_permanent(exc)
                remaining = deadline - time.monotonic()
                if permanent or remaining <= 0:
                    why = "cannot succeed" if permanent else f"gave up after {attempt} attempt(s)"
                    reason = f"loading {s.model_uri} failed ({why}): {error}"
                    event(log, logging.ERROR, "model load failed", exc_info=True, reason=reason, attempt=attempt)
                    self._fail(reason, attempts=attempt)
                    return
                wait = min(backoff, RETRY_BACKOFF_MAX_SECONDS, max(remaining, 0.0))
                reason = (
                    f"loading {s.model_uri}: attempt {attempt} failed, retrying in {wait:.0f} s "
                    f"(giving up in {remaining:.0f} s): {error}"
                )
                event(log, logging.WARNING, "model load failed; retrying", reason=reason, attempt=attempt)
                self.snapshot = Snapshot(Phase.LOADING, reason, None, attempt)
                if self._sleep(wait):
                    return
                backoff *= 2
        seconds = time.perf_counter() - start
        self.metrics.set_load_seconds(seconds)
        event(
            log, logging.INFO, "model loaded",
            load_seconds=round(seconds, 3), flavor=model.flavor, fast_path=model.fast_path,
            has_input_example=model.serving_example is not None, attempts=attempt,
            missing_requirements=list(model.missing_requirements) or None,
        )
        self.snapshot = Snapshot(Phase.LOADING, "validating the model on its own input example", model, attempt)
        try:
            gate = validate(model)
        except Exception as exc:  # noqa: BLE001 - validate reports, but never let the thread die silently
            reason = f"validation gate crashed: {type(exc).__name__}: {shorten(str(exc), 1000)}"
            event(log, logging.ERROR, "validation gate failed", exc_info=True, reason=reason)
            self._fail(reason, model, attempt)
            return
        if not gate.passed:
            event(log, logging.ERROR, "validation gate failed", reason=gate.reason, gate_seconds=round(gate.seconds, 3))
            self._fail(gate.reason, model, attempt)
            return
        if model.classes:
            self.metrics.declare_classes(model.classes)
        # Everything loaded so far (MLflow, the model, numpy, pandas…) lives as
        # long as the process: move it out of the collector's view, so full
        # collections under load scan only what requests allocate (they
        # otherwise pause serving for tens of milliseconds — the p99).
        gc.collect()
        gc.freeze()
        self.snapshot = Snapshot(Phase.READY, gate.reason, model, attempt)
        self.metrics.set_ready(True)
        event(
            log, logging.INFO, "model ready",
            gate=gate.reason, gate_seconds=round(gate.seconds, 3), fast_path=model.fast_path,
            batching=model.batching,
        )
