"""The operator's own Prometheus metrics: reconciles, errors, durations, resources by phase, rollouts, analyses.

An adapter of the operator. Each ``OperatorMetrics`` has a registry of its own (not prometheus_client's global
one) and is held by one operator core (kopf's memo): tests and several operators in one process never share
counts, and no module holds state.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from modelpilot.operator import api


class OperatorMetrics:
    """The metrics of one operator process, served on ``MODELPILOT_METRICS_PORT`` (``serve``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.reconciles = Counter("modelpilot_operator_reconciles",
                                  "Reconciles by kind and result (success, retry, error).", ["kind", "result"],
                                  registry=registry)
        self.reconcile_seconds = Histogram("modelpilot_operator_reconcile_duration_seconds",
                                           "Duration of one reconcile.", ["kind"], registry=registry,
                                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.registry_errors = Counter("modelpilot_operator_registry_errors", "MLflow registry failures by reason.",
                                       ["reason"], registry=registry)
        self.resources = Gauge("modelpilot_operator_resources", "Resources this operator watches, by kind and phase.",
                               ["kind", "phase"], registry=registry)
        self.rollbacks = Counter("modelpilot_operator_rollbacks", "Canary rollouts rolled back, by ModelVersion.",
                                 ["namespace", "name"], registry=registry)
        self.promotions = Counter("modelpilot_operator_promotions", "Canary rollouts promoted, by ModelVersion.",
                                  ["namespace", "name"], registry=registry)
        self.rollout_weight = Gauge("modelpilot_operator_rollout_weight",
                                    "Traffic share (%) the canary currently gets.", ["namespace", "name"],
                                    registry=registry)
        self.analysis_value = Gauge("modelpilot_operator_analysis_value", "Last measured value of each analysis check.",
                                    ["namespace", "name", "check", "arm"], registry=registry)
        self.analysis_verdicts = Counter("modelpilot_operator_analysis_verdicts",
                                         "Analysis measurements by check and verdict.",
                                         ["namespace", "name", "check", "verdict"], registry=registry)
        # The series labelled with each ModelVersion (namespace, name): removed when it is deleted (``forget``), so a
        # long-running operator does not keep every deleted ModelVersion's rollout and analysis series.
        self._series: dict[tuple[str, str], set[tuple[Counter | Gauge, tuple[str, ...]]]] = {}
        self._phases: dict[tuple[str, str], str] = {}  # (kind, "namespace/name") → phase
        self._counts: dict[tuple[str, str], int] = {}  # (kind, phase) → resources in it
        self._lock = threading.Lock()

    def set_phase(self, kind: str, key: str, phase: str | None) -> None:
        """Record one resource's phase (``None`` when it is gone) and move the by-phase gauge (O(1))."""
        with self._lock:
            old = self._phases.pop((kind, key), None) if phase is None else self._phases.get((kind, key))
            if old == phase:
                return
            if phase is not None:
                self._phases[(kind, key)] = phase
            if old is not None:
                self._counts[(kind, old)] -= 1
                self.resources.labels(kind=kind, phase=old).set(self._counts[(kind, old)])
            if phase is not None:
                self._counts[(kind, phase)] = self._counts.get((kind, phase), 0) + 1
                self.resources.labels(kind=kind, phase=phase).set(self._counts[(kind, phase)])

    def _of(self, metric: Counter | Gauge, namespace: str, name: str, *more: str) -> Any:
        """``metric``'s child for a ModelVersion's labels, remembered for ``forget``."""
        labels = (namespace, name, *more)
        with self._lock:
            self._series.setdefault((namespace, name), set()).add((metric, labels))
        return metric.labels(*labels)

    def observe_rollout(self, namespace: str, name: str, action: str, rollout: api.RolloutStatus) -> None:
        if action == "RollBack":
            self._of(self.rollbacks, namespace, name).inc()
            self._of(self.rollout_weight, namespace, name).set(0)
        elif action == "Promote":
            self._of(self.promotions, namespace, name).inc()
            self._of(self.rollout_weight, namespace, name).set(0)
        else:
            weight = rollout.effective_weight if rollout.effective_weight is not None else rollout.weight
            self._of(self.rollout_weight, namespace, name).set(float(weight or 0))

    def observe_measurement(self, namespace: str, name: str, m: object) -> None:
        check, verdict = getattr(m, "check"), getattr(m, "verdict")
        self._of(self.analysis_verdicts, namespace, name, check, verdict).inc()
        for arm, value in (("candidate", getattr(m, "value")), ("baseline", getattr(m, "baseline"))):
            if value is not None:
                self._of(self.analysis_value, namespace, name, check, arm).set(float(value))

    def forget(self, namespace: str, name: str) -> None:
        """A ModelVersion was deleted: remove the series labelled with it (as kube-state-metrics does)."""
        with self._lock:
            series = self._series.pop((namespace, name), set())
        for metric, labels in series:
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``address:port`` from a daemon thread (``OSError`` when the port is taken)."""
        start_http_server(port, addr=address, registry=self.registry)
