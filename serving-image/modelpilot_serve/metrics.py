"""Prometheus metrics of one serving process.

Where it sits: the app records every inference request here and the loader
records load time and readiness; `/metrics` renders this registry. Every
series carries `model`, `version` and `variant` labels (from the operator's
env), which is what lets the operator's analysis compare the arms of an
experiment without hand-written selectors.

A dedicated `CollectorRegistry` (not the global one) keeps several servers in
one process (tests, future multi-model) from colliding, and keeps stray
default collectors out of the scrape.

With worker processes (`--workers N`, see `workers.py`) every worker records
into prometheus_client's per-process mmap files (the supervisor sets
`PROMETHEUS_MULTIPROC_DIR` before any worker imports prometheus_client) and
`render` merges all workers' files, so any worker answers /metrics for the
whole pod. Gauges say how they merge (`multiprocess_mode`, ignored in one
process); the accuracy gauge is recomputed from the merged feedback counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

IDENTITY_LABELS = ("model", "version", "variant")
PROTOCOLS = ("v2", "invocations", "grpc")

# Fine-grained at the low end: one in-process prediction costs ~0.1 ms, so the
# interesting differences between two model versions live below 10 ms.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# Rows per predict call of the batcher (powers of two up to the largest allowed batch).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Absolute error of a regressor's prediction against the ground truth.
ERROR_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0, 1000.0)
DEFAULT_VALUE_BUCKETS = (-1000.0, -100.0, -10.0, -1.0, 0.0, 1.0, 10.0, 100.0, 1000.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The serving metrics, pre-bound to this process's model identity."""

    def __init__(
        self, model: str, version: str, variant: str, prediction_buckets: Iterable[float] = DEFAULT_VALUE_BUCKETS,
        multiprocess_dir: str | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Set only with worker processes: render merges every worker's files from there.
        self.multiprocess_dir = multiprocess_dir
        self._identity = (model, version, variant)
        self.requests = Counter(
            "modelpilot_requests",
            "Inference requests by protocol and HTTP status code.",
            [*IDENTITY_LABELS, "protocol", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "modelpilot_request_duration_seconds",
            "Inference request latency inside the server, by protocol.",
            [*IDENTITY_LABELS, "protocol"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.load_seconds = Gauge(
            "modelpilot_model_load_seconds",
            "Seconds spent downloading and loading the model (before the validation gate).",
            IDENTITY_LABELS,
            registry=self.registry,
            multiprocess_mode="livemax",  # workers: the slowest live worker's load
        )
        self.ready = Gauge(
            "modelpilot_model_ready",
            "1 when the model is loaded and passed its validation gate, else 0.",
            IDENTITY_LABELS,
            registry=self.registry,
            multiprocess_mode="livemin",  # workers: 1 only once every live worker is ready
        )
        self.predictions = Counter(
            "modelpilot_predictions",
            "Predicted rows per class, for classifiers.",
            [*IDENTITY_LABELS, "class"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelpilot_batch_size",
            "Rows per predict call made by the micro-batcher (1 = a request predicted alone).",
            IDENTITY_LABELS,
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "modelpilot_cache_requests",
            "Inference cache lookups by result (hit or miss; a failed Redis lookup counts as a miss).",
            [*IDENTITY_LABELS, "result"],
            registry=self.registry,
        )
        self.cache_errors = Counter(
            "modelpilot_cache_errors",
            "Cache backend failures (Redis unreachable, bad entry); the request is served uncached.",
            IDENTITY_LABELS,
            registry=self.registry,
        )
        self.prediction_value = Histogram(
            "modelpilot_prediction_value",
            "Distribution of predicted values, for regressors (one observation per row).",
            IDENTITY_LABELS,
            buckets=tuple(prediction_buckets),
            registry=self.registry,
        )
        self.feedback = Counter(
            "modelpilot_feedback",
            "Ground-truth feedback rows for classifiers, by outcome (correct or incorrect).",
            [*IDENTITY_LABELS, "outcome"],
            registry=self.registry,
        )
        self.feedback_error = Histogram(
            "modelpilot_feedback_absolute_error",
            "Absolute error of regressor predictions against ground-truth feedback (one per row).",
            IDENTITY_LABELS,
            buckets=ERROR_BUCKETS,
            registry=self.registry,
        )
        self.accuracy = Gauge(
            "modelpilot_feedback_accuracy",
            "Share of classifier predictions that ground-truth feedback confirmed, since start.",
            IDENTITY_LABELS,
            registry=self.registry,
            multiprocess_mode="livemax",  # workers: replaced in render by the merged counters' ratio
        )
        self.pending = Gauge(
            "modelpilot_feedback_pending_ids",
            "Prediction ids currently remembered for feedback.",
            IDENTITY_LABELS,
            registry=self.registry,
            multiprocess_mode="livesum",  # workers: each remembers its own ids
        )
        # Children are bound once: `.labels()` costs a dict lookup plus label
        # validation, which adds up on a path that handles thousands of req/s.
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._duration_children = {p: self.duration.labels(*self._identity, p) for p in PROTOCOLS}
        self._class_children: dict[object, Counter] = {}
        # Zero-valued series exist from the first scrape, so an arm that has
        # not served yet reads as 0 rather than "no data" in the analysis.
        for protocol in PROTOCOLS:
            # Success and server-error series start at 0: a counter that is born already at N hides
            # its first increase from rate()/increase(), so a burst of errors right after start-up
            # would read as "no errors" to the rollout analysis.
            for code in (200, 500, 503):
                self._request_child(protocol, code)
        self.ready.labels(*self._identity).set(0)
        self._batch_child = self.batch_size.labels(*self._identity)
        self._cache_hit = self.cache_requests.labels(*self._identity, "hit")
        self._cache_miss = self.cache_requests.labels(*self._identity, "miss")
        self._cache_error = self.cache_errors.labels(*self._identity)
        self._value_child = self.prediction_value.labels(*self._identity)
        self._correct = self.feedback.labels(*self._identity, "correct")
        self._incorrect = self.feedback.labels(*self._identity, "incorrect")
        self._error_child = self.feedback_error.labels(*self._identity)
        self._accuracy_child = self.accuracy.labels(*self._identity)
        self._pending_child = self.pending.labels(*self._identity)
        self._n_correct = 0
        self._n_feedback = 0

    def _request_child(self, protocol: str, code: int) -> Counter:
        key = (protocol, code)
        child = self._request_children.get(key)
        if child is None:
            child = self.requests.labels(*self._identity, protocol, str(code))
            self._request_children[key] = child
        return child

    def observe_request(self, protocol: str, code: int, seconds: float) -> None:
        self._request_child(protocol, code).inc()
        child = self._duration_children.get(protocol)
        if child is None:
            child = self._duration_children[protocol] = self.duration.labels(*self._identity, protocol)
        child.observe(seconds)

    def set_load_seconds(self, seconds: float) -> None:
        self.load_seconds.labels(*self._identity).set(seconds)

    def set_ready(self, ready: bool) -> None:
        self.ready.labels(*self._identity).set(1 if ready else 0)

    def declare_classes(self, classes: Iterable[object]) -> None:
        """Create one zero series per known class; only these are ever counted.

        Restricting to the estimator's own classes bounds label cardinality even
        if a model returns something unexpected.
        """
        for cls in classes:
            key = _class_key(cls)
            if key not in self._class_children:
                self._class_children[key] = self.predictions.labels(*self._identity, str(key))

    def count_classes(self, predicted: np.ndarray) -> None:
        if not self._class_children or predicted.ndim != 1 or predicted.size == 0:
            return
        if predicted.size == 1:
            child = self._class_children.get(_class_key(predicted[0]))
            if child is not None:
                child.inc()
            return
        values, counts = np.unique(predicted, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            child = self._class_children.get(_class_key(value))
            if child is not None:
                child.inc(count)

    def observe_batch(self, rows: int) -> None:
        self._batch_child.observe(rows)

    def cache_result(self, hit: bool) -> None:
        (self._cache_hit if hit else self._cache_miss).inc()

    def cache_error(self) -> None:
        self._cache_error.inc()

    def observe_values(self, predicted: np.ndarray) -> None:
        """Regressor predictions into the value histogram (finite values only)."""
        if predicted.size == 1:
            value = float(predicted.reshape(-1)[0])
            if np.isfinite(value):
                self._value_child.observe(value)
            return
        for value in predicted.reshape(-1).tolist():
            if np.isfinite(value):
                self._value_child.observe(value)

    def observe_feedback_classes(self, correct: int, incorrect: int) -> None:
        if correct:
            self._correct.inc(correct)
        if incorrect:
            self._incorrect.inc(incorrect)
        self._n_correct += correct
        self._n_feedback += correct + incorrect
        if self._n_feedback:
            self._accuracy_child.set(self._n_correct / self._n_feedback)

    def observe_feedback_errors(self, errors: Iterable[float]) -> None:
        for e in errors:
            self._error_child.observe(e)

    def set_pending(self, count: int) -> None:
        self._pending_child.set(count)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        registry.register(_MergedWorkers(self.multiprocess_dir))
        return generate_latest(registry)


class _MergedWorkers(Collector):
    """Every worker's metrics, merged from the multiprocess directory.

    A ratio cannot be merged from per-worker ratios, so the accuracy gauge is
    recomputed from the merged correct / incorrect feedback counters.
    """

    def __init__(self, path: str) -> None:
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        families = list(self._files.collect())  # type: ignore[no-untyped-call]
        outcomes: dict[tuple[str, ...], dict[str, float]] = {}
        for fam in families:
            if fam.name == "modelpilot_feedback":
                for s in fam.samples:
                    if s.name.endswith("_total"):
                        key = tuple(s.labels.get(k, "") for k in IDENTITY_LABELS)
                        outcomes.setdefault(key, {})[s.labels.get("outcome", "")] = s.value
        for fam in families:
            if fam.name == "modelpilot_feedback_accuracy":
                merged = Metric(fam.name, fam.documentation, fam.type)
                seen: set[tuple[str, ...]] = set()
                for s in fam.samples:
                    key = tuple(s.labels.get(k, "") for k in IDENTITY_LABELS)
                    if key in seen:
                        continue
                    seen.add(key)
                    counts = outcomes.get(key, {})
                    total = counts.get("correct", 0.0) + counts.get("incorrect", 0.0)
                    value = counts.get("correct", 0.0) / total if total else 0.0
                    merged.add_sample(fam.name, dict(zip(IDENTITY_LABELS, key)), value)
                fam = merged
            yield fam


def _class_key(value: object) -> object:
    # numpy scalars and Python scalars must hit the same dict entry.
    if isinstance(value, np.generic):
        return value.item()
    return value
