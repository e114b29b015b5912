"""Prometheus metrics of one serving process.

Where it sits: the app records every inference request here and the loader
records load time and readiness; `/metrics` renders this registry. Every
series carries `model`, `version` and `variant` labels (from the operator's
env), which is what lets the operator's analysis compare the arms of an
experiment without hand-written selectors.

A dedicated `CollectorRegistry` (not the global one) keeps several servers in
one process (tests, future multi-model) from colliding, and keeps stray
default collectors out of the scrape.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

IDENTITY_LABELS = ("model", "version", "variant")
PROTOCOLS = ("v2", "invocations")

# Fine-grained at the low end: one in-process prediction costs ~0.1 ms, so the
# interesting differences between two model versions live below 10 ms.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The serving metrics, pre-bound to this process's model identity."""

    def __init__(self, model: str, version: str, variant: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        )
        self.ready = Gauge(
            "modelpilot_model_ready",
            "1 when the model is loaded and passed its validation gate, else 0.",
            IDENTITY_LABELS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "modelpilot_predictions",
            "Predicted rows per class, for classifiers.",
            [*IDENTITY_LABELS, "class"],
            registry=self.registry,
        )
        # Children are bound once: `.labels()` costs a dict lookup plus label
        # validation, which adds up on a path that handles thousands of req/s.
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._duration_children = {p: self.duration.labels(*self._identity, p) for p in PROTOCOLS}
        self._class_children: dict[object, Counter] = {}
        # Zero-valued series exist from the first scrape, so an arm that has
        # not served yet reads as 0 rather than "no data" in the analysis.
        for protocol in PROTOCOLS:
            self._request_child(protocol, 200)
        self.ready.labels(*self._identity).set(0)

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

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _class_key(value: object) -> object:
    # numpy scalars and Python scalars must hit the same dict entry.
    if isinstance(value, np.generic):
        return value.item()
    return value
