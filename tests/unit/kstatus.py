"""kstatus' generic reading of a custom resource, for the unit tests (not a test module: no ``test_`` prefix).

The rules of sigs.k8s.io/cli-utils pkg/kstatus as Flux applies them: an ``observedGeneration`` behind the
resource's generation is InProgress; then the conditions in list order: ``Reconciling=True`` is InProgress,
``Stalled=True`` is Failed; otherwise Current. (tests/cluster/test_crd_admission.py reads live objects the same
way.)
"""

from __future__ import annotations

from typing import Any


def kstatus(status: dict[str, Any], generation: int = 1) -> str:
    """InProgress, Failed or Current for ``status`` of a resource at ``generation``."""
    if "observedGeneration" in status and status["observedGeneration"] != generation:
        return "InProgress"
    for c in status.get("conditions") or []:
        if c.get("type") == "Reconciling" and c.get("status") == "True":
            return "InProgress"
        if c.get("type") == "Stalled" and c.get("status") == "True":
            return "Failed"
    return "Current"
