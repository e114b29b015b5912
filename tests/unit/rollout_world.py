"""Test helpers for the rollout planner: observed worlds, and a simulated cluster that follows decisions.

Not a test module (no ``test_`` prefix); the planner's tests import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelpilot.operator import api, rollout


def spec_of(fields: dict[str, Any]) -> api.ModelVersionSpec:
    """The typed spec the planner takes, from the fields a test gives; ``spec.model`` (which the planner never
    reads, but the spec requires) is iris version 1 unless given."""
    return api.ModelVersionSpec.model_validate({"model": {"name": "iris", "version": "1"}, **fields})


def settled(r: api.RolloutStatus, spec: api.ModelVersionSpec, total: int = 4, *, verdict: str | None = None,
            measurements: list[dict[str, Any]] | None = None, action: str = "", restarts: int = 0,
            last_ready_change: float | None = None, stable_version: str = "1", canary_version: str = "2",
            problem: str = "") -> rollout.World:
    """Both tracks exactly at the current step's replicas, every pod ready."""
    s, c, _ = rollout.targets(r, total, rollout.settings(spec))
    return rollout.World(stable=rollout.Track(s, s, True, stable_version, True),
                         canary=rollout.Track(c, c, True, canary_version, True),
                         health=rollout.Health(restarts=restarts, last_ready_change=last_ready_change, problem=problem),
                         action=action, verdict=verdict, measurements=measurements)


def not_ready(r: api.RolloutStatus, spec: api.ModelVersionSpec, total: int = 4, problem: str = "", restarts: int = 0,
              action: str = "") -> rollout.World:
    """The step's replicas are applied but the canary's pods never become ready."""
    s, c, _ = rollout.targets(r, total, rollout.settings(spec))
    return rollout.World(stable=rollout.Track(s, s, True, "1", True), canary=rollout.Track(c, 0, False, "2", True),
                         health=rollout.Health(restarts=restarts, not_ready=("iris-canary-x",), problem=problem),
                         action=action)


@dataclass
class Cluster:
    """Two Deployments that follow the planner's decisions; a scaled-up replica becomes ready after
    ``start_ticks`` ticks, a scaled-down one goes at once. ``ready_history`` records the ready pods after
    every tick (what a Service would have as endpoints)."""

    total: int
    start_ticks: int = 2
    stable_version: str = "1"
    canary_version: str = "2"
    stable: list[int] = field(default_factory=list)  # per replica: ticks until ready (0 = ready)
    canary: list[int] | None = None
    stable_runs: str = "1"
    old_stable: int = 0  # ready pods of the previous template, kept until the new ones are ready
    ready_history: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stable = [0] * self.total

    def world(self, **extra: Any) -> rollout.World:
        def track(pods: list[int] | None, version: str) -> rollout.Track:
            if pods is None:
                return rollout.Track()
            ready = sum(1 for p in pods if p == 0)
            old = self.old_stable if pods is self.stable else 0
            return rollout.Track(len(pods), ready, ready == len(pods) and not old, version, True)
        return rollout.World(stable=track(self.stable, self.stable_runs),
                             canary=track(self.canary, self.canary_version), **extra)

    def apply(self, d: rollout.Decision) -> None:
        version = self.canary_version if d.stable_model == "canary" else self.stable_version
        if version != self.stable_runs:  # a new template: a rolling update (maxSurge 1, maxUnavailable 0)
            self.stable_runs = version
            self.old_stable = sum(1 for p in self.stable if p == 0)
            self.stable = [self.start_ticks] * (d.stable_replicas or 0)
        else:
            self.stable = _scale(self.stable, d.stable_replicas or 0, self.start_ticks)
        self.canary = None if d.canary_replicas is None else _scale(self.canary or [], d.canary_replicas,
                                                                    self.start_ticks)
        self.ready_history.append(self.ready())

    def tick(self) -> None:
        self.stable = [max(0, p - 1) for p in self.stable]
        if all(p == 0 for p in self.stable):
            self.old_stable = 0
        if self.canary is not None:
            self.canary = [max(0, p - 1) for p in self.canary]

    def ready(self) -> int:
        return self.old_stable + sum(1 for p in self.stable if p == 0) + sum(1 for p in self.canary or [] if p == 0)


def _scale(pods: list[int], replicas: int, start_ticks: int) -> list[int]:
    if replicas <= len(pods):
        return sorted(pods)[:replicas]  # a ReplicaSet removes not-ready pods first
    return pods + [start_ticks] * (replicas - len(pods))
