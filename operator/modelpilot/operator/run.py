"""``modelpilot operator``: validate settings, connect, register handlers, run kopf.

Entry point of the operator process (above the handlers). Settings errors stop
the process at once with a message naming the variable.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelpilot operator", description="Run the modelpilot operator.")
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8082/healthz", help="kopf liveness endpoint")
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

    api = client.ApiClient()
    handlers.configure(settings, Kube(api, settings.field_manager))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.metrics_port:
        from modelpilot.operator import metrics

        metrics.serve(settings.metrics_port, settings.bind_address)
    priority = settings.priority if settings.priority is not None else random.randint(1, 1_000_000)
    if settings.peering:
        _ensure_peering(api, settings)
    kopf.run(
        standalone=not settings.peering,
        peering_name=settings.peering or None,
        priority=priority,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=args.liveness,
    )
    return 0


def _ensure_peering(api: object, settings: object) -> None:
    """Create the kopf peering object the replicas meet in (its CRDs ship in crds/)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(api)
    name = settings.peering  # type: ignore[attr-defined]
    namespaces = settings.namespaces  # type: ignore[attr-defined]
    try:
        if namespaces:
            for ns in namespaces:
                try:
                    custom.create_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings",
                                                           {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                                                            "metadata": {"name": name}})
                except ApiException as exc:
                    if exc.status != 409:
                        raise
        else:
            custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                                                 "metadata": {"name": name}})
    except ApiException as exc:
        if exc.status == 404:
            raise SystemExit("error: the kopf peering CRDs are missing; apply crds/kopf.dev_peerings.yaml "
                             "or set MODELPILOT_PEERING= to run a single standalone replica") from exc
        if exc.status != 409:
            raise


def _has_kubeconfig() -> bool:
    import os
    from pathlib import Path

    return bool(os.environ.get("KUBECONFIG")) or (Path.home() / ".kube" / "config").exists()
