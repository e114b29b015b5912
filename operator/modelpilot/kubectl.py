"""Resource verbs for people: ``modelpilot promote|abort|pause|resume|undo|status NAME``.

The same commands are the kubectl plugin (``kubectl modelpilot ...``, console script
``kubectl-modelpilot``), which offers only these verbs — not ``operator``, ``serve`` or ``dev``.
Top of the operator side, beside ``cli``: it talks to the apiserver only. Every action is an
annotation on the ModelVersion (``modelpilot.io/rollout-action: <verb>/<version>``), visible to
GitOps tools and kubectl, acted on once by the operator; nothing is kept anywhere else.
``status`` renders ``status`` of the resource, as ``kubectl argo rollouts get rollout`` does.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from typing import Any

from modelpilot.operator import contract
from modelpilot.operator.contract import ACTION_ANNOTATION
from modelpilot.operator.rollout import ACTIVE, STEPPING

GROUP, VERSION, PLURAL = contract.GROUP, contract.VERSION, contract.MODELVERSION_PLURAL
STEP_ACTIONS = contract.STEP_ACTIONS
VERBS = (*STEP_ACTIONS, "undo", "status")


def add_verbs(sub: Any) -> None:
    """Add the resource verbs to an argparse sub-parser collection."""
    helps = {"promote": "promote the canary of a ModelVersion now (it still becomes ready at full size first)",
             "abort": "abort the canary of a ModelVersion and roll back to the stable version",
             "pause": "pause the canary of a ModelVersion at its current step",
             "resume": "resume a paused canary",
             "undo": "bring back the version that served before the last promotion (or rolling update)",
             "status": "show a ModelVersion's rollout at a glance: versions, step, weights, checks, history"}
    for verb in VERBS:
        cmd = sub.add_parser(verb, help=helps[verb], description=helps[verb])
        cmd.add_argument("name", help="ModelVersion name")
        cmd.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        cmd.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG)")
        if verb == "status":
            cmd.add_argument("-w", "--watch", action="store_true", help="redraw whenever the resource changes")
            cmd.add_argument("--timeout", type=float, default=0, help="with --watch: stop after this many seconds")
        cmd.set_defaults(verb=verb)


def run(args: argparse.Namespace) -> int:
    """Run one verb; 0 on success, 1 when the resource cannot take it, 2 without credentials."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    try:
        api = config.new_client_from_config(args.kubeconfig)
    except config.ConfigException as exc:
        print(f"error: no Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    namespace = args.namespace or _current_namespace(args.kubeconfig)
    custom = client.CustomObjectsApi(api)
    try:
        found: Any = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)
        body: dict[str, Any] = dict(found)
    except ApiException as exc:
        print(f"error: modelversion {namespace}/{args.name}: {exc.reason}", file=sys.stderr)
        return 1
    if args.verb == "status":
        return _status(custom, namespace, args, body)
    status = body.get("status") or {}
    ro = status.get("rollout") or {}
    if args.verb == "undo":
        if ro.get("phase") in STEPPING:
            print(f"error: modelversion {namespace}/{args.name} has a rollout in progress (phase {ro['phase']}); "
                  "abort it instead", file=sys.stderr)
            return 1
        if ro.get("phase") in ACTIVE:
            print(f"error: modelversion {namespace}/{args.name} is finishing a rollout (phase {ro['phase']}: the "
                  "surviving version is coming up at full size); wait for it to finish, then undo", file=sys.stderr)
            return 1
        current = (status.get("model") or {}).get("version")
        previous = (status.get("previousModel") or {}).get("version")
        if not current or not previous or previous == current:
            print(f"error: modelversion {namespace}/{args.name}: nothing to undo (no earlier version is recorded "
                  "in status.previousModel)", file=sys.stderr)
            return 1
        value, what = f"undo/{current}", f"undo requested: version {previous} comes back, version {current} goes"
    else:
        if ro.get("phase") in ACTIVE and ro.get("phase") not in STEPPING:
            print(f"error: modelversion {namespace}/{args.name} is finishing its rollout (phase {ro['phase']}: the "
                  f"surviving version is coming up at full size); `{args.verb}` no longer applies — wait for it to "
                  "finish (then `modelpilot undo` can bring the previous version back)", file=sys.stderr)
            return 1
        if ro.get("phase") not in STEPPING:
            print(f"error: modelversion {namespace}/{args.name} has no rollout in progress "
                  f"(rollout phase: {ro.get('phase') or 'none'})", file=sys.stderr)
            return 1
        value = f"{args.verb}/{ro.get('canaryVersion')}"
        what = f"{args.verb} requested for canary version {ro.get('canaryVersion')}"
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name,
                                          {"metadata": {"annotations": {ACTION_ANNOTATION: value}}})
    print(f"modelversion {namespace}/{args.name}: {what}")
    return 0


def _status(custom: Any, namespace: str, args: argparse.Namespace, body: dict[str, Any]) -> int:
    if not args.watch:
        print(render(body))
        return 0
    from kubernetes import watch

    deadline = time.monotonic() + args.timeout if args.timeout else None
    print("\033[2J\033[H" + render(body), flush=True)
    w = watch.Watch()
    try:
        while deadline is None or time.monotonic() < deadline:
            timeout = int(max(1, min(30, (deadline - time.monotonic()) if deadline else 30)))
            events = w.stream(custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                              PLURAL, field_selector=f"metadata.name={args.name}", timeout_seconds=timeout)
            for event in events:
                if event["type"] == "DELETED":
                    print(f"modelversion {namespace}/{args.name} was deleted")
                    return 1
                print("\033[2J\033[H" + render(event["object"]), flush=True)
                if deadline is not None and time.monotonic() >= deadline:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        w.stop()
    return 0


def _ago(value: str | None, now: float) -> str:
    if not value:
        return ""
    try:
        then = datetime.strptime(value, contract.TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return value
    seconds = int(now - then)
    text = f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"
    return f"{value} ({text} ago)"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]


def render(body: dict[str, Any], now: float | None = None) -> str:
    """A ModelVersion at a glance (plain text, one screen): what serves, the rollout's step and weights,
    each check's latest value against its threshold, and the decision history."""
    now = time.time() if now is None else now
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    ro = status.get("rollout") or {}
    model = status.get("model") or {}
    ref = spec.get("model") or {}
    asked = f"@{ref['alias']}" if ref.get("alias") else f"version {ref.get('version', '?')}"
    ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    lines = [f"Name:          {meta.get('name')}", f"Namespace:     {meta.get('namespace')}",
             f"Phase:         {status.get('phase') or 'Pending'}"
             + (f" — {ready.get('message')}" if ready.get("message") else ""),
             f"Model:         {ref.get('name', '?')} (spec: {asked}"
             + (", follows the alias" if spec.get("followAlias") else "") + ")",
             f"Serving:       version {model.get('version', '-')}"
             + (f" (run {model['runId']})" if model.get("runId") else "")
             + f", {status.get('readyReplicas', 0)}/{status.get('replicas', spec.get('replicas', 1))} ready"]
    if status.get("previousModel"):
        lines.append(f"Previous:      version {status['previousModel'].get('version')} "
                     f"(modelpilot undo {meta.get('name')} brings it back)")
    if not ro:
        lines.append("Rollout:       none yet")
        return "\n".join(lines)
    kind = "undo" if ro.get("kind") == "Undo" else "canary"
    lines += ["", f"Rollout:       {ro.get('phase')} ({kind} of version {ro.get('canaryVersion')} against "
                  f"{ro.get('stableVersion')})",
              f"  Started:     {_ago(ro.get('startedAt'), now)}"]
    if ro.get("finishedAt"):
        lines.append(f"  Finished:    {_ago(ro.get('finishedAt'), now)}")
    steps = (spec.get("rollout") or {}).get("steps") or [10, 25, 50, 100]
    replicas = ro.get("replicas") or {}
    if ro.get("phase") in ACTIVE:
        lines += [f"  Step:        {int(ro.get('step') or 0) + 1} of {len(steps)} "
                  f"({' → '.join(f'{s}%' for s in steps)})",
                  f"  Weight:      {ro.get('weight')}% requested, {ro.get('effectiveWeight', '-')}% effective",
                  f"  Replicas:    stable {replicas.get('stable', '-')}, canary {replicas.get('canary', '-')}"]
        if ro.get("stepStartedAt"):
            lines.append(f"  Step since:  {_ago(ro.get('stepStartedAt'), now)}")
        elif ro.get("phase") == "Progressing":
            lines.append("  Step since:  waiting for the step's replicas to be ready")
    for label, key in (("Warning:", "weightWarning"), ("Problem:", "canaryProblem"), ("Reason:", "reason"),
                       ("Rejected:", "rejectedVersion")):
        if ro.get(key):
            lines.append(f"  {label:<12} {ro[key]}")
    checks = ro.get("analysis") or []
    if checks:
        lines += ["", "Checks (latest round):"]
        lines += _table([["CHECK", "VALUE", "BASELINE", "THRESHOLD", "SAMPLES", "VERDICT"]] + [
            [str(m.get("check")), _num(m.get("value")), _num(m.get("baseline")), str(m.get("threshold") or ""),
             _num(m.get("samples")), str(m.get("verdict"))] for m in checks])
    history = ro.get("history") or []
    if history:
        lines += ["", "History:"]
        lines += _table([["TIME", "STEP", "WEIGHT", "DECISION", "MESSAGE"]] + [
            [str(h.get("time")), str(int(h.get("step") or 0) + 1), f"{h.get('weight')}%", str(h.get("decision")),
             str(h.get("message") or "")[:100]] for h in history])
    return "\n".join(lines)


def _current_namespace(kubeconfig: str | None = None) -> str:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(kubeconfig)
        return str(active["context"].get("namespace") or "default")
    except (config.ConfigException, KeyError, TypeError):
        return "default"


def plugin_main(argv: list[str] | None = None) -> int:
    """``kubectl modelpilot VERB NAME``: only the resource verbs."""
    parser = argparse.ArgumentParser(prog="kubectl modelpilot",
                                     description="Drive and watch modelpilot ModelVersion rollouts.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    add_verbs(sub)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return run(args)
