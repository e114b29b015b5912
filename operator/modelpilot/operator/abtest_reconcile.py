"""Reconcile logic for ABTest: routing, the variants' live figures, and the statistical verdict.

Layer 2 of the operator (beside ``reconcile``). The ABTest never writes the
variants' Deployments itself: it records the replicas each variant should
have in its status and asks the ModelVersion reconciler to apply them, so each
Deployment keeps exactly one writer.
"""

from __future__ import annotations

import logging
from typing import Any

from modelpilot.operator import abtest, analysis
from modelpilot.operator.kube import KubeError
from modelpilot.operator.prometheus import Prometheus, PrometheusError
from modelpilot.operator.reconcile import Event, Reconciler, Result, memberships, now_iso, set_condition

log = logging.getLogger(__name__)

FIGURES = {
    "requests": "sum(increase(modelpilot_requests_total{{{sel}}}[{interval}]))",
    "errors": 'sum(increase(modelpilot_requests_total{{{sel},code=~"5.."}}[{interval}]))',
    "p99": ("histogram_quantile(0.99, sum by (le) "
            "(rate(modelpilot_request_duration_seconds_bucket{{{sel}}}[{interval}])))"),
    "correct": 'sum(increase(modelpilot_feedback_total{{{sel},outcome="correct"}}[{interval}]))',
    "feedback": "sum(increase(modelpilot_feedback_total{{{sel}}}[{interval}]))",
}


class ABTestReconciler:
    def __init__(self, models: Reconciler) -> None:
        self.models = models
        self.kube = models.kube
        self.settings = models.settings

    def reconcile(self, body: dict[str, Any], measure: bool = True) -> Result:
        meta, spec = body["metadata"], body.get("spec") or {}
        status = dict(body.get("status") or {})
        name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
        generation = int(meta.get("generation") or 1)
        now = now_iso()
        events: list[Event] = []
        vs = abtest.variants(spec)
        bodies = {v.model_version: self.kube.read_model_version(namespace, v.model_version) for v in vs}
        conditions = list(status.get("conditions") or [])
        missing = [mv for mv, b in bodies.items() if b is None]
        if missing:
            message = f"ModelVersion(s) not found in {namespace}: {', '.join(missing)}"
            conditions = set_condition(conditions, "Ready", "False", "ModelVersionMissing", message, generation, now)
            status.update(conditions=conditions, observedGeneration=generation, phase="Pending")
            self.kube.patch_status(namespace, name, status, plural="abtests")
            return Result(status=status, events=[Event("Warning", "ModelVersionMissing", message)], retry=True,
                          message=message)

        weights = {v.name: v.weight for v in vs if not v.shadow}
        winner = status.get("winner") or ""
        if spec.get("autoPromote") and winner in weights:
            weights = {n: (100 if n == winner else 0) for n in weights}
        prov = abtest.provider(spec)
        routing_ok, routing_msg = True, ""
        if prov == "replicas":
            own = {mv: int(((b or {}).get("spec") or {}).get("replicas", 1)) for mv, b in bodies.items()}
            split = abtest.replica_split(vs, own, weights)
            effective = abtest.effective_weights(vs, split)
            unsupported = [k for k in ("headerPinning", "sticky") if (spec.get("routing") or {}).get(k)]
            if unsupported or any(v.shadow for v in vs):
                routing_msg = ("replica-ratio routing cannot honour " +
                               ", ".join(unsupported + (["shadow mirroring"] if any(v.shadow for v in vs) else [])) +
                               "; name a Gateway in spec.routing.gatewayRef")
        else:
            split, effective = {}, weights
        try:
            self.kube.apply(abtest.build_service(name, namespace, uid))
            if prov == "gateway":
                self.kube.apply(abtest.build_httproute(name, namespace, uid, spec, vs, effective))
                if (spec.get("routing") or {}).get("sticky"):
                    routing_msg = ("sticky assignment needs Gateway API session persistence (experimental "
                                   "channel), which this route does not request; requests are split by weight")
        except KubeError as exc:
            routing_ok, routing_msg = False, str(exc)

        previous = {sv.get("name"): sv for sv in status.get("variants") or []}
        figures = self._figures(namespace, vs, spec, bodies) if measure else {}
        variant_status = []
        for v in vs:
            mv_status = (bodies[v.model_version] or {}).get("status") or {}
            row: dict[str, Any] = {"name": v.name, "modelVersion": v.model_version, "shadow": v.shadow,
                                   "version": (mv_status.get("model") or {}).get("version", ""),
                                   "weight": 0 if v.shadow else effective.get(v.name, 0)}
            if v.model_version in split:
                row["replicas"] = split[v.model_version]
            figs = figures.get(v.name) or {k: previous.get(v.name, {}).get(k) for k in
                                           ("requests", "errorRate", "p99LatencySeconds", "accuracy")}
            row.update({k: val for k, val in figs.items() if val is not None and not k.startswith("_")})
            variant_status.append(row)
        status["variants"] = variant_status
        status["split"] = abtest.split_text(vs, effective)
        comparison = self._compare(vs, figures, spec) if figures else status.get("comparison")
        if comparison:
            status["comparison"] = comparison
            decided = comparison.get("winner") or ""
            if decided and decided != winner:
                events.append(Event("Normal", "WinnerDeclared", f"variant {decided} wins: {comparison['message']}"))
                status["winner"] = decided
        all_ready = all(any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in ((b or {}).get("status") or {}).get("conditions") or []) for b in bodies.values())
        if not routing_ok:
            conditions = set_condition(conditions, "Ready", "False", "RoutingFailed", routing_msg, generation, now)
            events.append(Event("Warning", "RoutingFailed", routing_msg))
        elif not all_ready:
            conditions = set_condition(conditions, "Ready", "False", "VariantsNotReady",
                                       "waiting for every variant's ModelVersion to be Ready", generation, now)
        else:
            conditions = set_condition(conditions, "Ready", "True", "Routing",
                                       f"{prov} routing applied: {status['split']}", generation, now)
        conditions = set_condition(conditions, "RoutingLimited", "True" if routing_msg and routing_ok else "False",
                                   "Unsupported" if routing_msg else "None", routing_msg or "all requested routing "
                                   "features are applied", generation, now)
        status["conditions"] = conditions
        status["observedGeneration"] = generation
        status["phase"] = ("Promoted" if spec.get("autoPromote") and status.get("winner") else
                           "Concluded" if status.get("winner") else "Running" if all_ready else "Pending")
        self.kube.patch_status(namespace, name, status, plural="abtests")
        # The variants' Deployments follow the replicas just recorded (one writer per Deployment): only the
        # variants whose share changed, or all of them on a spec change — not on every refresh of the figures.
        if prov == "replicas":
            before = {v.get("modelVersion"): v.get("replicas") for v in (body.get("status") or {}).get("variants") or []}
            after = {v.get("modelVersion"): v.get("replicas") for v in status.get("variants") or []}
            for mv in bodies:
                if measure and before.get(mv) == after.get(mv):
                    continue
                try:
                    # The membership just written, not the index's: its watch event may not have come yet.
                    member = memberships({"metadata": meta, "spec": spec, "status": status}).get(mv)
                    self.models.reconcile_latest(namespace, mv, member=member)
                except KubeError as exc:
                    log.warning("re-applying %s for ABTest %s: %s", mv, name, exc)
        return Result(status=status, events=events, retry=not routing_ok, message=routing_msg)

    def _figures(self, namespace: str, vs: list[abtest.Variant], spec: dict[str, Any],
                 bodies: dict[str, Any]) -> dict[str, dict[str, Any]]:
        if not self.settings.prometheus.url:
            return {}
        interval = str((spec.get("analysis") or {}).get("interval", "5m"))
        try:
            prom = Prometheus(self.settings.prometheus.url, timeout=self.settings.prometheus.timeout_seconds)
        except PrometheusError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        try:
            for v in vs:
                sel = f'namespace="{namespace}",variant="{v.model_version}"'
                values = {k: prom.scalar(q.format(sel=sel, interval=interval)) for k, q in FIGURES.items()}
                requests = values["requests"] or 0.0
                out[v.name] = {
                    "requests": int(round(requests)),
                    "errorRate": round((values["errors"] or 0.0) / requests, 6) if requests else None,
                    "p99LatencySeconds": round(values["p99"], 6) if values["p99"] is not None else None,
                    "accuracy": (round((values["correct"] or 0.0) / values["feedback"], 6)
                                 if values["feedback"] else None),
                    "_errors": values["errors"] or 0.0, "_correct": values["correct"] or 0.0,
                    "_feedback": values["feedback"] or 0.0,
                }
        except PrometheusError as exc:
            log.warning("ABTest figures: %s", exc)
            return {}
        finally:
            prom.close()
        return out

    @staticmethod
    def _compare(vs: list[abtest.Variant], figures: dict[str, dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
        """Two-proportion test between the control (first variant) and each challenger.

        The success measure is accuracy from ground-truth feedback when both arms have feedback, the share
        of non-5xx answers otherwise.
        """
        cfg = spec.get("analysis") or {}
        alpha = float(cfg.get("significance", 0.05))
        minimum = int(cfg.get("minSamples", 100))
        serving = [v for v in vs if not v.shadow and v.name in figures]
        if len(serving) < 2:
            return {}
        control = serving[0]
        best: dict[str, Any] = {}
        for challenger in serving[1:]:
            a, b = figures[control.name], figures[challenger.name]
            if a["_feedback"] and b["_feedback"]:
                metric = "accuracy"
                result = analysis.two_proportion_test(a["_correct"], a["_feedback"], b["_correct"], b["_feedback"],
                                                      alpha, minimum)
            else:
                metric = "success-rate"
                result = analysis.two_proportion_test(a["requests"] - a["_errors"], a["requests"],
                                                      b["requests"] - b["_errors"], b["requests"], alpha, minimum)
            result = {**result, "metric": metric, "control": control.name, "challenger": challenger.name,
                      "significance": alpha}
            result["winner"] = {"A": control.name, "B": challenger.name}.get(result["decision"], "")
            if not best or (result["winner"] and not best.get("winner")):
                best = result
        for f in figures.values():
            for key in ("_errors", "_correct", "_feedback"):
                f.pop(key, None)
        return best
