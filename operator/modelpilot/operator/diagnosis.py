"""Why serving pods do not become ready: pod statuses → the first informative container problem.

Reconcile-level logic, pure (plain dicts in, a value out; no I/O, no clock).
The reconciler lists the pods of a serving Deployment that is not fully
available (through the Kubernetes adapter) and hands them here; what comes back
becomes the ``Ready`` condition's reason ``ServingFailed`` and message, and one
Warning Event per distinct problem.

What counts as a problem is what a kubelet records in a pod's status:

* a container that terminated with a termination message — the model server
  writes why it can never serve (missing Python packages, a model failing its
  own input example, a load failing past its retry budget) to its
  ``terminationMessagePath`` before it exits, and with
  ``terminationMessagePolicy: FallbackToLogsOnError`` a crash without one
  leaves the end of its log there;
* a container that terminated without one (exit code, ``OOMKilled``);
* a container that cannot start: ``ImagePullBackOff``, ``ErrImagePull``,
  ``CreateContainerConfigError`` and the like.

A container that is merely starting (``ContainerCreating``, a model still
loading) is not a problem. Messages are built from what stays the same while a
container crash-loops (never the back-off delay or the restart count), so the
status does not churn and one problem posts one Event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

REASON = "ServingFailed"
MESSAGE_LIMIT = 1000  # what a condition message keeps (reconcile.set_condition)
DETAIL_LIMIT = 800  # of the container's own text (termination message, waiting message)

# Waiting reasons a kubelet reports for a container that keeps crashing (first) or cannot start (the rest;
# these win over an earlier crash: they are what blocks the container now).
WAITING_PROBLEMS = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName",
                    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                    "PreCreateHookError", "PostStartHookError")
_IMAGE = ("ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName")
_POD_PREFIX = re.compile(r"^pod [^\s:]+: ")


@dataclass(frozen=True)
class Problem:
    """One container problem: which pod and container, the kubelet's reason, and what it means."""

    pod: str
    container: str
    reason: str  # e.g. Error, OOMKilled, CrashLoopBackOff, ImagePullBackOff
    detail: str  # human text without the pod name, stable while the problem lasts
    rank: int = 0  # lower is more informative

    @property
    def message(self) -> str:
        return bound(f"pod {self.pod}: {self.detail}", MESSAGE_LIMIT)


def bound(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters: a multi-line text (a log tail) keeps its end, one line its start."""
    text = text.strip()
    if len(text) <= limit:
        return text
    if "\n" in text:
        return "…" + text[-(limit - 1):]
    return text[:limit - 1] + "…"


def _who(container: str) -> str:
    return "model server" if container == "server" else f"container {container}"


def _terminated(who: str, term: dict[str, Any]) -> tuple[str, str, int]:
    """(reason, detail, rank) of a terminated container state."""
    reason = str(term.get("reason") or "Error")
    code = term.get("exitCode")
    message = bound(str(term.get("message") or ""), DETAIL_LIMIT)
    if message:
        return reason, f"{who} failed: {message}", 0
    if reason == "OOMKilled":
        return reason, f"{who} was killed for using more memory than its limit (OOMKilled, exit code {code})", 1
    return reason, f"{who} exited with code {code} ({reason})", 3


def container_problem(pod: str, status: dict[str, Any], init: bool = False) -> Problem | None:
    """The problem one containerStatus shows, if any (``init`` for an init container's status)."""
    if status.get("ready"):
        return None
    name = str(status.get("name") or "")
    who = _who(name)
    state, last = status.get("state") or {}, status.get("lastState") or {}
    waiting = state.get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    term = state.get("terminated") or last.get("terminated")
    if init and term and not term.get("message") and term.get("exitCode") == 0:
        term = None  # an init container that completed
    if term and reason not in WAITING_PROBLEMS[1:]:
        # A crash explains a crash loop better than the back-off message, and it stays the explanation
        # while the restarted container runs (not ready) again: no flapping between the two states.
        kind, detail, rank = _terminated(who, term)
        return Problem(pod, name, kind, detail, rank)
    if reason not in WAITING_PROBLEMS:
        return None
    message = bound(str(waiting.get("message") or ""), DETAIL_LIMIT)
    if reason == "CrashLoopBackOff":  # no terminated state recorded: only the reason is stable
        return Problem(pod, name, reason, f"{who} keeps crashing (CrashLoopBackOff)", 3)
    if reason in _IMAGE:
        image = status.get("image") or ""
        detail = f"{who} cannot pull its image {image!r}" if image else f"{who} cannot pull its image"
        # ImagePullBackOff alternates with ErrImagePull; only the latter carries the pull error.
        if message and reason != "ImagePullBackOff":
            return Problem(pod, name, reason, f"{detail}: {message}", 2)
        return Problem(pod, name, reason, f"{detail} ({reason})", 2)
    return Problem(pod, name, reason, f"{who} cannot start ({reason})" + (f": {message}" if message else ""), 1)


def pod_problem(pod: dict[str, Any]) -> Problem | None:
    """The most informative problem among one pod's containers and init containers."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = str(meta.get("name") or "")
    found = [p for s in status.get("initContainerStatuses") or [] if (p := container_problem(name, s, True))]
    found += [p for s in status.get("containerStatuses") or [] if (p := container_problem(name, s))]
    return min(found, key=lambda p: p.rank) if found else None


def serving_problem(pods: list[dict[str, Any]]) -> Problem | None:
    """The first informative problem among a Deployment's pods; ``None`` when nothing is wrong yet.

    Pods being deleted are skipped (they are going away anyway). Among the rest the most informative
    problem wins (a termination message before an exit code), then the pod name, so the choice is stable.
    """
    found = [p for pod in pods if not (pod.get("metadata") or {}).get("deletionTimestamp")
             if (p := pod_problem(pod)) is not None]
    return min(found, key=lambda p: (p.rank, p.pod)) if found else None


def detail_of(message: str) -> str:
    """A problem message without its ``pod NAME:`` prefix (what makes two problems the same)."""
    return _POD_PREFIX.sub("", message, count=1)


def same_problem(old_message: str, new_message: str) -> bool:
    """Whether two problem messages describe the same problem, possibly on another pod (an image that
    cannot be pulled is one problem whether the kubelet says ErrImagePull, with the error, or
    ImagePullBackOff, without)."""
    a, b = detail_of(old_message), detail_of(new_message)
    return a == b or (_pull_headline(a) is not None and _pull_headline(a) == _pull_headline(b))


def _pull_headline(detail: str) -> str | None:
    m = re.match(r"^(.* cannot pull its image(?: '[^']*')?)(?:: | \()", detail)
    return m.group(1) if m else None
