"""``modelpilot operator``: validate settings, connect, register handlers, run kopf.

Entry point of the operator process (above the handlers). Settings errors stop
the process at once with a message naming the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import orjson

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the settings module is imported in main(), after argument parsing
    from modelpilot.operator.settings import OperatorSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelpilot operator", description="Run the modelpilot operator.")
    parser.add_argument("--kubeconfig", help="kubeconfig to use (default: $KUBECONFIG, else in-cluster)")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="liveness endpoint, e.g. http://0.0.0.0:8082/healthz (default: "
                             "MODELPILOT_BIND_ADDRESS and MODELPILOT_LIVENESS_PORT; port 0 disables it)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    from modelpilot.operator.settings import OperatorSettings, SettingsError

    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        print(f"error: invalid operator settings: {exc}", file=sys.stderr)
        return 2
    try:
        liveness = _liveness(args.liveness, settings.endpoints.bind_address, settings.endpoints.liveness_port)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Ports first, before anything connects: a port that cannot be listened on is one clear line naming
    # the variable or flag and the port, and a non-zero exit (not a traceback from deep inside a server).
    if liveness is not None:
        _, host, port, name = liveness
        problem = _cannot_listen(host, port)
        if problem:
            print(f"error: {name}: cannot listen on {host}:{port}: {problem}; choose a free port "
                  "(MODELPILOT_LIVENESS_PORT=0 disables the liveness endpoint)", file=sys.stderr)
            return 2
    from modelpilot.operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()  # served here, counted by the core the memo carries
    if settings.endpoints.metrics_port:
        try:
            metrics.serve(settings.endpoints.metrics_port, settings.endpoints.bind_address)
        except OSError as exc:
            endpoints = settings.endpoints
            print(f"error: MODELPILOT_METRICS_PORT={endpoints.metrics_port}: cannot listen on "
                  f"{endpoints.bind_address}:{endpoints.metrics_port}: {exc.strerror or exc}; choose a free port "
                  "(MODELPILOT_METRICS_PORT=0 disables the metrics endpoint)", file=sys.stderr)
            return 2

    import kopf
    import urllib3
    from kubernetes import client, config
    from kubernetes_asyncio import config as async_config

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

    try:
        async_configuration, token_loader = asyncio.run(_async_configuration(args.kubeconfig))
    except (config.ConfigException, async_config.ConfigException) as exc:
        print(f"error: cannot find Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    configuration = client.Configuration.get_default_copy()
    api = client.ApiClient(configuration)  # start-up only (the peering object); reconciles use ``Kube``
    # A connection for everything that may be in flight at once (reconciles, readiness refreshes, and a margin
    # for Events, ABTests and periodic work), so none waits on the pool behind a burst of slow Service applies.
    connections = settings.kubernetes.workers + settings.kubernetes.readiness_workers + 32
    memo = handlers.configure(settings, Kube(async_configuration, settings.kubernetes.field_manager,
                                             connections=connections, token_loader=token_loader), metrics)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # urllib3 logs each connection retry as a warning; the failure that follows is classified (KubeUnavailable)
    # and logged once by the handler, so the retries' lines are noise.
    logging.getLogger("urllib3.connectionpool").addFilter(lambda record: not record.getMessage().startswith("Retrying"))
    priority = settings.kubernetes.priority
    if priority is None:
        priority = random.randint(1, 1_000_000)
    if settings.kubernetes.peering:
        try:
            _ensure_peering(api, settings)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            from modelpilot.operator.kube import describe_transport_error

            print(f"error: cannot reach the Kubernetes API at {configuration.host}: "
                  f"{describe_transport_error(exc)}", file=sys.stderr)
            return 1
    fast_watch_decoding()
    try:
        asyncio.run(operate(
            memo, STOP_SECONDS, configuration.host,
            standalone=not settings.kubernetes.peering,
            peering_name=settings.kubernetes.peering or None,
            priority=priority,
            clusterwide=not settings.kubernetes.namespaces,
            namespaces=list(settings.kubernetes.namespaces),
            liveness_endpoint=liveness[0] if liveness else None,
        ))
    except asyncio.CancelledError:  # as kopf.run: a cancelled operator is a stopped one
        pass
    return 0


#: How long kopf may take to stop after SIGTERM or SIGINT before what it still waits on is cancelled (seconds).
#: kopf's own stop has no bound: with the apiserver gone it retried taking this replica out of the peering
#: object for ~55 s (9 attempts), holding the metrics and liveness ports meanwhile, so a restart could not
#: bind them. A healthy stop takes well under a second.
STOP_SECONDS = 5.0


async def operate(memo: Any, stop_seconds: float, api_host: str, **kopf_options: Any) -> None:
    """Run kopf (``kopf.spawn_tasks`` + ``kopf.run_tasks``, what ``kopf.run`` does) until SIGTERM or SIGINT,
    then stop it within ``stop_seconds``: kopf is asked to stop through its stop flag, and whatever it still
    waits on after that — a request to an apiserver that does not answer, retried with kopf's back-off — is
    cancelled, with one line saying so. A second signal cancels at once. The operator's own parts (ticker,
    threads, API sessions) are stopped either way."""
    import signal

    import kopf
    from kopf._cogs.structs.credentials import Vault  # kopf's own default, made here to be closed below

    loop = asyncio.get_running_loop()
    stop_flag: asyncio.Future[None] = loop.create_future()
    vault = Vault()  # kopf's API sessions: its cleanup closes them, which a cancelled stop never reaches
    existing = asyncio.all_tasks()  # this task among them: kopf cancels only what it spawned
    tasks = await kopf.spawn_tasks(memo=memo, stop_flag=stop_flag, vault=vault, **kopf_options)
    runner = asyncio.create_task(kopf.run_tasks(tasks, ignored=existing), name="modelpilot operator")
    forced = False

    def force() -> None:
        nonlocal forced
        if runner.done():
            return
        forced = True
        log.warning("the operator did not stop within %g s: kopf is still waiting on the Kubernetes API at %s "
                    "(e.g. to take this replica out of the peering object, whose record then expires on its "
                    "own); cancelling what is left", stop_seconds, api_host)
        runner.cancel()

    def on_signal(sig: signal.Signals) -> None:
        if stop_flag.done():
            force()  # asked twice: at once
            return
        log.info("%s received: the operator is stopping (at most %g s)", sig.name, stop_seconds)
        stop_flag.set_result(None)
        loop.call_later(stop_seconds, force)

    # spawn_tasks has just installed kopf's own handlers for these signals (unbounded); these replace them.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await runner
    except asyncio.CancelledError:
        if not forced:
            raise
    finally:
        # kopf's cleanup handler stops the core once kopf's tasks are done; when they were cancelled it never
        # ran (the core stops once, whoever asks first), nor did kopf close its sessions.
        await memo.core.stop()
        if forced:
            await vault.close()


def _liveness(flag: str | None, bind_address: str, liveness_port: int) -> tuple[str, str, int, str] | None:
    """(URL, host, port, what configured it) of the liveness endpoint; None when disabled."""
    if flag:
        parsed = urlparse(flag)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme != "http" or not parsed.hostname or not port:
            raise ValueError(f"--liveness {flag!r} must be an http URL with a host and a port, "
                             "e.g. http://0.0.0.0:8082/healthz")
        return flag, parsed.hostname, port, f"--liveness {flag}"
    if not liveness_port:
        return None
    return (f"http://{bind_address}:{liveness_port}/healthz", bind_address, liveness_port,
            f"MODELPILOT_LIVENESS_PORT={liveness_port}")


def _cannot_listen(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on (empty if it can), binding as the liveness server will."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does: a TIME_WAIT port is free
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def _ensure_peering(api: object, settings: OperatorSettings) -> None:
    """Create the kopf peering object the replicas meet in (its CRDs ship in crds/)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api)
    name = settings.kubernetes.peering
    namespaces = settings.kubernetes.namespaces
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


class _OrjsonFirst:
    """``json.loads`` as kopf's watch stream calls it, decoded by orjson (the apiserver sends int64 and float64
    numbers, which orjson reads to the same values); anything orjson refuses (a NaN literal, say) is decoded
    by the standard library as before. ``managedFields`` are dropped at once (``kube.without_managed_fields``):
    kopf keeps queued events until their object's handlers ran, and in a burst that is thousands."""

    JSONDecodeError = json.JSONDecodeError

    def __init__(self) -> None:
        from modelpilot.operator.kube import without_managed_fields

        self._lean = without_managed_fields

    def loads(self, text: str | bytes) -> Any:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = json.loads(text)
        return self._lean(value)


def fast_watch_decoding() -> bool:
    """Decode kopf's watch events with orjson. kopf reads every event of every watched resource with the
    standard library's ``json`` — a fifth of the operator's CPU while 200 ModelVersions were created
    (benchmarks/README.md) — and has no setting for it, so the one name its stream uses is replaced. The same
    text gives the same values. False (and kopf's own decoding) if kopf's stream no longer looks as expected;
    tests/unit/test_operator_kube.py fails then."""
    from kopf._cogs.clients import api as kopf_api

    if getattr(kopf_api, "json", None) is not json:
        return isinstance(getattr(kopf_api, "json", None), _OrjsonFirst)
    setattr(kopf_api, "json", _OrjsonFirst())
    return True


async def _async_configuration(kubeconfig: str | None) -> tuple[Any, Any]:
    """The asynchronous client's configuration from the same source as kopf's login: the kubeconfig
    (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``) or the pod's ServiceAccount (token re-read as the
    kubelet rotates it). Second: the kubeconfig's loader when its token expires and must be refreshed (an
    exec plugin or GCP credentials), else None. The kubeconfig file is never written back."""
    import os

    from kubernetes_asyncio import client as async_client, config as async_config

    configuration = async_client.Configuration()
    if kubeconfig or _has_kubeconfig():
        # None: $KUBECONFIG (every file it lists, merged) or ~/.kube/config, as kopf reads them.
        loader = await async_config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"),
                                                     client_configuration=configuration, persist_config=False)
        expiring = loader.provider == "gcp" or "exec" in (loader._user or {})  # noqa: SLF001 — as refresh_token reads it
        return configuration, loader if expiring else None
    async_config.load_incluster_config(client_configuration=configuration)
    return configuration, None


def _has_kubeconfig() -> bool:
    import os
    from pathlib import Path

    return bool(os.environ.get("KUBECONFIG")) or (Path.home() / ".kube" / "config").exists()
