"""``modelpilot operator``: validate settings, connect, register handlers, run kopf.

Entry point of the operator process (above the handlers). Settings errors stop
the process at once with a message naming the variable.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelpilot operator", description="Run the modelpilot operator.")
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    from modelpilot.operator.settings import OperatorSettings, SettingsError

    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        print(f"error: invalid operator settings: {exc}", file=sys.stderr)
        return 2

    import kopf
    from kubernetes import client, config

    if args.kubeconfig:
        import os

        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's own login reads it too
    try:
        config.load_kube_config(args.kubeconfig) if (args.kubeconfig or _has_kubeconfig()) else \
            config.load_incluster_config()
    except config.ConfigException as exc:
        print(f"error: cannot find Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    from modelpilot.operator import handlers
    from modelpilot.operator.kube import Kube

    handlers.configure(settings, Kube(client.ApiClient(), settings.field_manager))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    kopf.run(
        standalone=True,  # one replica; no peering objects to clean up or to freeze handling
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=args.liveness,
    )
    return 0


def _has_kubeconfig() -> bool:
    import os
    from pathlib import Path

    return bool(os.environ.get("KUBECONFIG")) or (Path.home() / ".kube" / "config").exists()
