"""The operator's own Prometheus metrics: reconciles, errors, durations, resources by phase.

A small adapter used by the handlers; its own registry (not the global one)
so tests and several operators in one process never collide.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from modelpilot.operator import api

REGISTRY = CollectorRegistry()

RECONCILES = Counter("modelpilot_operator_reconciles", "Reconciles by kind and result (success, retry, error).",
                     ["kind", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("modelpilot_operator_reconcile_duration_seconds", "Duration of one reconcile.",
                              ["kind"], registry=REGISTRY,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
REGISTRY_ERRORS = Counter("modelpilot_operator_registry_errors", "MLflow registry failures by reason.",
                          ["reason"], registry=REGISTRY)
RESOURCES = Gauge("modelpilot_operator_resources", "Resources this operator watches, by kind and phase.",
                  ["kind", "phase"], registry=REGISTRY)

ROLLBACKS = Counter("modelpilot_operator_rollbacks", "Canary rollouts rolled back, by ModelVersion.",
                    ["namespace", "name"], registry=REGISTRY)
PROMOTIONS = Counter("modelpilot_operator_promotions", "Canary rollouts promoted, by ModelVersion.",
                     ["namespace", "name"], registry=REGISTRY)
ROLLOUT_WEIGHT = Gauge("modelpilot_operator_rollout_weight", "Traffic share (%) the canary currently gets.",
                       ["namespace", "name"], registry=REGISTRY)
ANALYSIS_VALUE = Gauge("modelpilot_operator_analysis_value", "Last measured value of each analysis check.",
                       ["namespace", "name", "check", "arm"], registry=REGISTRY)
ANALYSIS_VERDICTS = Counter("modelpilot_operator_analysis_verdicts", "Analysis measurements by check and verdict.",
                            ["namespace", "name", "check", "verdict"], registry=REGISTRY)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def set_phase(kind: str, key: str, phase: str | None) -> None:
    """Record one resource's phase (``None`` when it is gone) and refresh the by-phase gauge."""
    with _lock:
        if phase is None:
            _phases.pop((kind, key), None)
        else:
            _phases[(kind, key)] = phase
        counts: dict[tuple[str, str], int] = {}
        for (k, _), p in _phases.items():
            counts[(k, p)] = counts.get((k, p), 0) + 1
        RESOURCES.clear()
        for (k, p), n in counts.items():
            RESOURCES.labels(kind=k, phase=p).set(n)


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address, registry=REGISTRY)


def observe_rollout(namespace: str, name: str, action: str, rollout: api.RolloutStatus) -> None:
    if action == "RollBack":
        ROLLBACKS.labels(namespace, name).inc()
        ROLLOUT_WEIGHT.labels(namespace, name).set(0)
    elif action == "Promote":
        PROMOTIONS.labels(namespace, name).inc()
        ROLLOUT_WEIGHT.labels(namespace, name).set(0)
    else:
        weight = rollout.effective_weight if rollout.effective_weight is not None else rollout.weight
        ROLLOUT_WEIGHT.labels(namespace, name).set(float(weight or 0))


def observe_measurement(namespace: str, name: str, m: object) -> None:
    check, verdict = getattr(m, "check"), getattr(m, "verdict")
    ANALYSIS_VERDICTS.labels(namespace, name, check, verdict).inc()
    for arm, value in (("candidate", getattr(m, "value")), ("baseline", getattr(m, "baseline"))):
        if value is not None:
            ANALYSIS_VALUE.labels(namespace, name, check, arm).set(float(value))
