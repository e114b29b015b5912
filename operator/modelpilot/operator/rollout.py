"""Guarded canary rollout of a ModelVersion: a state machine whose whole state lives in ``status.rollout``.

Reconcile-level logic, pure: ``step()`` takes the rollout status, the spec,
what was observed (canary readiness, an analysis round if one was due) and the
time, and returns the next rollout status plus the decision. Given the same
inputs it makes the same decision, so a restarted operator resumes at the same
step and never applies a step twice: a step is only left when its recorded
``stepStartedAt`` is older than the interval *and* its analysis passed.

Traffic is split by replica ratio (the bare-cluster provider): the Service
selects the pods of both tracks, so the share a canary gets is
``canaryReplicas / (canaryReplicas + stableReplicas)``. With N replicas the
weights quantise to multiples of 100/N %, and the canary always has at least
one replica and the stable track at least one until the last step; the
effective weight is recorded next to the requested one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

DEFAULT_STEPS = [10, 25, 50, 100]
HISTORY_LIMIT = 20
ACTIVE = ("Progressing", "Paused")


@dataclass(frozen=True)
class Decision:
    """What the reconciler must do after one step of the state machine."""

    action: str  # Start | Wait | Advance | Promote | RollBack | Pause | None
    rollout: dict[str, Any]
    message: str = ""


def parse_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def settings(spec: dict[str, Any]) -> dict[str, Any]:
    rollout = spec.get("rollout") or {}
    analysis = rollout.get("analysis") or {}
    return {
        "steps": [int(s) for s in rollout.get("steps") or DEFAULT_STEPS],
        "interval": float(rollout.get("stepIntervalSeconds", 60)),
        "deadline": float(rollout.get("progressDeadlineSeconds", 600)),
        "analysis": bool(analysis.get("enabled", True)),
        "failure_limit": int(analysis.get("failureLimit", 0)),
        "inconclusive_limit": int(analysis.get("inconclusiveLimit", 3)),
    }


def split(total: int, weight: int) -> tuple[int, int]:
    """(stable, canary) replicas approximating ``weight`` % for the canary."""
    total = max(total, 1)
    if weight >= 100:
        return 0, total
    canary = min(max(1, math.floor(total * weight / 100 + 0.5)), max(total - 1, 1))
    return max(total - canary, 1), canary


def effective_weight(stable: int, canary: int) -> int:
    return round(100 * canary / max(stable + canary, 1))


def _history(rollout: dict[str, Any], now: float, decision: str, message: str) -> list[dict[str, Any]]:
    entry = {"time": fmt_time(now), "step": rollout.get("step", 0), "weight": rollout.get("weight", 0),
             "decision": decision, "message": message[:500]}
    return [*(rollout.get("history") or []), entry][-HISTORY_LIMIT:]


def start(stable: dict[str, Any], canary: dict[str, Any], spec: dict[str, Any], now: float) -> Decision:
    cfg = settings(spec)
    weight = cfg["steps"][0]
    rollout = {"phase": "Progressing", "stableVersion": stable["version"], "canaryVersion": canary["version"],
               "canaryModel": canary, "step": 0, "weight": weight, "startedAt": fmt_time(now),
               "stepStartedAt": fmt_time(now), "failures": 0, "inconclusive": 0, "analysis": [], "history": []}
    rollout["history"] = _history(rollout, now, "Start",
                                  f"canary {canary['version']} against stable {stable['version']} at {weight}%")
    return Decision("Start", rollout, f"canary rollout of version {canary['version']} started at {weight}%")


def step(rollout: dict[str, Any], spec: dict[str, Any], now: float, canary_ready: bool,
         verdict: str | None, measurements: list[dict[str, Any]] | None, action: str = "",
         canary_problem: str = "") -> Decision:
    """Advance the state machine once. ``verdict`` is None when no analysis round was due or run;
    ``canary_problem`` says why the canary's pods are not ready, if that is known (it goes into the reason)."""
    cfg = settings(spec)
    r = dict(rollout)
    if r.get("phase") not in ACTIVE:
        return Decision("None", r)
    if measurements is not None:
        r["analysis"] = measurements
    # Manual control wins over everything else.
    if action == "abort":
        return _rollback(r, now, "aborted by the user")
    if action == "promote":
        return _promote(r, now, "promoted by the user")
    if action == "pause" and r["phase"] != "Paused":
        r["phase"] = "Paused"
        r["history"] = _history(r, now, "Pause", "paused by the user")
        return Decision("Pause", r, "paused by the user")
    if action == "resume" and r["phase"] == "Paused":
        r.update(phase="Progressing", stepStartedAt=fmt_time(now), inconclusive=0)
        r["history"] = _history(r, now, "Resume", "resumed by the user")
        return Decision("Wait", r, "resumed by the user")
    if r["phase"] == "Paused":
        return Decision("Wait", r, "paused")

    elapsed_total = now - parse_time(r["startedAt"])
    if not canary_ready:
        if elapsed_total > cfg["deadline"]:
            why = f"the canary was not ready within progressDeadlineSeconds={cfg['deadline']:.0f}"
            return _rollback(r, now, f"{why}: {canary_problem}" if canary_problem else why)
        return Decision("Wait", r, "waiting for the canary to be ready")
    if now - parse_time(r["stepStartedAt"]) < cfg["interval"]:
        return Decision("Wait", r, f"holding step {r['step']} ({r['weight']}%)")
    if not cfg["analysis"]:
        verdict = "Pass"
    if verdict is None:
        return Decision("Wait", r, "waiting for analysis")
    if verdict == "Fail":
        r["failures"] = int(r.get("failures", 0)) + 1
        if r["failures"] > cfg["failure_limit"]:
            return _rollback(r, now, "analysis failed: " + _evidence(measurements or []))
        r["history"] = _history(r, now, "Fail", "analysis failed (within failureLimit): " +
                                _evidence(measurements or []))
        r["stepStartedAt"] = fmt_time(now)
        return Decision("Wait", r, "analysis failed; within failureLimit")
    if verdict == "Hold":
        if elapsed_total > cfg["deadline"]:
            return _rollback(r, now, "no data before progressDeadlineSeconds: " + _evidence(measurements or []))
        return Decision("Wait", r, "holding: not enough data yet")
    if verdict == "Inconclusive":
        r["inconclusive"] = int(r.get("inconclusive", 0)) + 1
        if r["inconclusive"] > cfg["inconclusive_limit"]:
            r["phase"] = "Paused"
            msg = "paused after too many inconclusive analyses; promote or abort"
            r["history"] = _history(r, now, "Pause", msg + ": " + _evidence(measurements or []))
            return Decision("Pause", r, msg)
        r["stepStartedAt"] = fmt_time(now)
        return Decision("Wait", r, "analysis inconclusive")
    # Pass: next step, or promotion after the last one.
    steps = cfg["steps"]
    if r["step"] + 1 >= len(steps) or r["weight"] >= 100:
        return _promote(r, now, "every step passed analysis")
    r["history"] = _history(r, now, "Pass", _evidence(measurements or []) or "passed")
    r.update(step=r["step"] + 1, weight=steps[r["step"] + 1], stepStartedAt=fmt_time(now), failures=0,
             inconclusive=0)
    return Decision("Advance", r, f"analysis passed; canary weight {r['weight']}%")


def _evidence(measurements: list[dict[str, Any]]) -> str:
    return "; ".join(f"{m['check']}={m['value'] if m['value'] is not None else 'n/a'} "
                     f"({m['verdict']}: {m['message']})" for m in measurements)


def _rollback(r: dict[str, Any], now: float, why: str) -> Decision:
    r.update(phase="RolledBack", rejectedVersion=r["canaryVersion"], finishedAt=fmt_time(now), reason=why[:1000])
    r["history"] = _history(r, now, "RollBack", why)
    return Decision("RollBack", r, f"rolled back version {r['canaryVersion']}: {why}")


def _promote(r: dict[str, Any], now: float, why: str) -> Decision:
    r.update(phase="Promoted", finishedAt=fmt_time(now), reason=why)
    r["history"] = _history(r, now, "Promote", why)
    return Decision("Promote", r, f"promoted version {r['canaryVersion']}: {why}")
